"""`POST /v1/messages`, Anthropic's Messages API. Thin: parse, translate (`gateway.anthropic.translate`), call the
same `ChatService` as the OpenAI route — so capture, cascade and rollout apply unchanged — and render."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from gateway.anthropic.errors import ANTHROPIC
from gateway.anthropic.stream import StreamTranslator, anthropic_events
from gateway.anthropic.translate import MessagesRequest, from_openai, message_id, parse_request, to_openai
from gateway.auth import bearer_token
from gateway.chat.request import build_chat_request, route_headers
from gateway.chat.service import ChatService
from gateway.chat.types import ChatRequest, RouteInfo
from gateway.errors import AuthenticationError
from gateway.http_errors import dialect_route
from gateway.http_utils import SSEResponse, gateway_state, parse_json_object, read_body

MESSAGES_PATH = "/v1/messages"


def api_key(request: Request) -> str | None:
    """The gateway key: Anthropic's SDK sends `x-api-key`; `Authorization: Bearer` works too."""
    return request.headers.get("x-api-key") or bearer_token(request.headers.get("authorization"))


def messages_openapi() -> dict[str, Any]:
    schema = MessagesRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def build_anthropic_router() -> APIRouter:
    router = APIRouter(route_class=dialect_route(ANTHROPIC))

    @router.post(MESSAGES_PATH, openapi_extra=messages_openapi(), response_model=None)
    async def messages(request: Request) -> Response:
        state = gateway_state(request)
        try:
            client = await state.keys.check(api_key(request))
        except AuthenticationError as exc:
            if exc.code != "missing_api_key":
                raise
            raise AuthenticationError("missing API key: send 'x-api-key: <key>'", code=exc.code) from None
        state.service.limiter.admit(client)
        raw = parse_json_object(await read_body(request, state.settings.max_body_bytes,
                                                state.settings.body_timeout_s))
        parsed = parse_request(raw)
        req = build_chat_request(to_openai(parsed), request.headers, client=client, user=parsed.user_id,
                                 skip_tasks=state.settings.capture.skip_tasks)
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

    return router


def _headers(req: ChatRequest, info: RouteInfo) -> dict[str, str]:
    # `request-id` is the header Anthropic's SDK exposes as `_request_id`
    return {**route_headers(req, info), "request-id": req.request_id}
