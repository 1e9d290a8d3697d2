"""`POST /v1/messages`, Anthropic's Messages API. Thin: parse, translate (`gateway.anthropic`), call the
same `ChatService` as the OpenAI route — so capture, cascade and rollout apply unchanged — and render."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from gateway.anthropic import (
    MESSAGES_PATH,
    MessagesRequest,
    StreamTranslator,
    anthropic_events,
    from_openai,
    message_id,
    parse_request,
    to_openai,
)
from gateway.api import SSEResponse, capture_wanted, gateway_state, route_headers
from gateway.auth import bearer_token
from gateway.errors import AuthenticationError
from gateway.http_utils import parse_json_object, read_body
from gateway.service import ChatRequest, ChatService, RouteInfo
from gateway.tasks import resolve_task


def api_key(request: Request) -> str | None:
    """The gateway key: Anthropic's SDK sends `x-api-key`; `Authorization: Bearer` works too."""
    return request.headers.get("x-api-key") or bearer_token(request.headers.get("authorization"))


def messages_openapi() -> dict[str, Any]:
    schema = MessagesRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def build_anthropic_router() -> APIRouter:
    router = APIRouter()

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
        body = to_openai(parsed)
        task, source = resolve_task(request.headers.get("x-protege-task"), body)
        user = request.headers.get("x-protege-user") or parsed.user_id
        capture = (capture_wanted(request.headers.get("x-protege-capture"))
                   and task not in state.settings.capture.skip_tasks)
        req = ChatRequest(request_id="req_" + uuid.uuid4().hex, body=body, task=task, task_source=source,
                          user=user, capture=capture, client=client)
        msg_id = message_id(req.request_id)
        service: ChatService = state.service
        if req.stream:
            frames, info = await service.open_stream(req)
            translator = StreamTranslator(msg_id, parsed.model, parsed.stop_sequences)
            return SSEResponse(anthropic_events(frames, translator),
                               headers={**_headers(req, info), "cache-control": "no-cache"})
        result, info = await service.complete(req)
        message = from_openai(result, msg_id=msg_id, model=parsed.model, stop_sequences=parsed.stop_sequences)
        return Response(orjson.dumps(message), media_type="application/json", headers=_headers(req, info))

    return router


def _headers(req: ChatRequest, info: RouteInfo) -> dict[str, str]:
    # `request-id` is the header Anthropic's SDK exposes as `_request_id`
    return {**route_headers(req, info), "request-id": req.request_id}
