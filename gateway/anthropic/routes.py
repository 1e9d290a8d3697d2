"""`POST /v1/messages`, Anthropic's Messages API. Thin: parse, translate (`gateway.anthropic.translate`), call the
same `ChatService` as the OpenAI route — so capture, cascade and rollout apply unchanged — and render."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import APIRouter, Request, Response

from gateway.anthropic.errors import ANTHROPIC
from gateway.anthropic.stream import StreamTranslator, anthropic_events
from gateway.anthropic.translate import MessagesRequest, from_openai, message_id, parse_request, to_openai
from gateway.auth import bearer_token
from gateway.chat.request import build_chat_request, route_headers
from gateway.chat.service import ChatService
from gateway.chat.types import ChatRequest, RouteInfo
from gateway.direct_routes import DirectRoute
from gateway.errors import AuthenticationError
from gateway.feedback import FEEDBACK_HEADER
from gateway.http_errors import dialect_route
from gateway.http_utils import SSEResponse, gateway_state, read_json_object

if TYPE_CHECKING:
    from gateway.state import GatewayState

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"


def api_key(request: Request) -> str | None:
    """The gateway key: Anthropic's SDK sends `x-api-key`; `Authorization: Bearer` works too."""
    return request.headers.get("x-api-key") or bearer_token(request.headers.get("authorization"))


def messages_openapi() -> dict[str, Any]:
    schema = MessagesRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def messages(request: Request) -> Response:
    """`POST /v1/messages` (also served by `gateway.direct_routes`, past FastAPI's routing)."""
    state = gateway_state(request)
    client = await _client(state, request)
    state.service.limiter.admit(client)
    raw = await read_json_object(request, state)
    parsed = parse_request(raw)
    req = build_chat_request(to_openai(parsed), request.headers, client=client, user=parsed.user_id,
                             skip_tasks=state.settings.capture.skip_tasks)
    state.feedback.submit_header(request.headers.get(FEEDBACK_HEADER), client=client)
    msg_id = message_id(req.request_id)
    service: ChatService = state.service
    if req.stream:
        chunks, info = await service.open_stream(req)
        translator = StreamTranslator(msg_id, parsed.model, parsed.stop_sequences)
        return SSEResponse(anthropic_events(chunks, translator),
                           headers={**_headers(req, info), "cache-control": "no-cache"})
    result, info = await service.complete(req)
    message = from_openai(result, msg_id=msg_id, model=parsed.model, stop_sequences=parsed.stop_sequences)
    return Response(orjson.dumps(message), media_type="application/json", headers=_headers(req, info))


def direct_routes() -> list[DirectRoute]:
    return [DirectRoute("POST", MESSAGES_PATH, messages, ANTHROPIC)]


def build_anthropic_router() -> APIRouter:
    router = APIRouter(route_class=dialect_route(ANTHROPIC))

    router.add_api_route(MESSAGES_PATH, messages, methods=["POST"], openapi_extra=messages_openapi(),
                         response_model=None)

    @router.post(COUNT_TOKENS_PATH, response_model=None)
    async def count_tokens(request: Request) -> Response:
        """The input tokens a Messages request would take, for clients that budget their context (Claude Code
        and Anthropic's SDK call it). An estimate: litellm's local tokenizers on the translated request (the
        teacher's own count needs its provider, and most upstreams have no such route)."""
        state = gateway_state(request)
        client = await _client(state, request)
        state.service.limiter.admit(client)
        raw = await read_json_object(request, state)
        body = to_openai(parse_request({"max_tokens": 1, **raw}))  # a count needs no max_tokens
        teacher = state.service.teachers.select(body["model"])
        tokens = await asyncio.to_thread(count_input_tokens, teacher.config.model, body)
        return Response(orjson.dumps({"input_tokens": tokens}), media_type="application/json")

    return router


def count_input_tokens(model: str, body: dict[str, Any]) -> int:
    """litellm's count of a chat body's prompt (messages and tools), offline (its tokenizers are bundled)."""
    from gateway.providers.litellm_provider import import_litellm

    counted = import_litellm().token_counter(model=model, messages=body["messages"], tools=body.get("tools"))
    return int(counted)


async def _client(state: GatewayState, request: Request) -> str:
    try:
        return await state.keys.check(api_key(request))
    except AuthenticationError as exc:
        if exc.code != "missing_api_key":
            raise
        raise AuthenticationError("missing API key: send 'x-api-key: <key>'", code=exc.code) from None


def _headers(req: ChatRequest, info: RouteInfo) -> dict[str, str]:
    # `request-id` is the header Anthropic's SDK exposes as `_request_id`
    return {**route_headers(req, info), "request-id": req.request_id}
