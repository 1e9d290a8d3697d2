"""OpenAI-compatible routes (`/v1/*`) and the health probes. Thin: parse, call the service, render."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Receive, Scope, Send

from gateway.admin_auth import require_admin
from gateway.auth import bearer_token
from gateway.errors import BadRequestError, ServiceUnavailableError
from gateway.http_utils import parse_json_object, read_body, validate
from gateway.protocol import CHAT_FIELDS, ChatCompletionRequest, ModelCard, ModelList, check_fields
from gateway.service import ChatRequest, ChatService, RouteInfo
from gateway.state import GatewayState
from gateway.store import StoreError
from gateway.tasks import resolve_task


class SSEResponse(StreamingResponse):
    """A streaming response that always closes its iterator, so a client that goes away mid-stream
    is recorded (as incomplete) at once rather than whenever the generator is collected."""

    media_type = "text/event-stream"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


def gateway_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.protege
    return state


def route_headers(req: ChatRequest, info: RouteInfo) -> dict[str, str]:
    return {"x-request-id": req.request_id, "x-protege-task": req.task, **info.headers()}


def chat_completions_openapi() -> dict[str, Any]:
    """The request body's JSON schema for the OpenAPI document, with pydantic's `$defs` inlined: a `$ref`
    in `openapi_extra` resolves against the whole document, where those definitions do not exist."""
    schema = ChatCompletionRequest.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline_refs(schema)}}}}


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with every `#/$defs/...` reference replaced by its definition (the models are not recursive)."""
    defs = schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def build_api_router() -> APIRouter:
    router = APIRouter()

    @router.post("/v1/chat/completions", openapi_extra=chat_completions_openapi(), response_model=None)
    async def chat_completions(request: Request) -> Response:
        state = gateway_state(request)
        client = await state.keys.check(_bearer(request))
        state.service.limiter.admit(client)
        body = parse_json_object(await read_body(request, state.settings.max_body_bytes,
                                                 state.settings.body_timeout_s))
        parsed = validate(ChatCompletionRequest, body)
        check_fields(body, CHAT_FIELDS, state.settings.forward_fields)
        task, source = resolve_task(request.headers.get("x-protege-task"), body)
        user = request.headers.get("x-protege-user") or parsed.user
        capture = (capture_wanted(request.headers.get("x-protege-capture"))
                   and task not in state.settings.capture.skip_tasks)
        req = ChatRequest(request_id="req_" + uuid.uuid4().hex, body=body, task=task, task_source=source,
                          user=user, capture=capture, client=client)
        service: ChatService = state.service
        if req.stream:
            chunks, info = await service.open_stream(req)
            return SSEResponse(chunks, headers={**route_headers(req, info), "cache-control": "no-cache"})
        result, info = await service.complete(req)
        return Response(orjson.dumps(result), media_type="application/json",
                        headers=route_headers(req, info))

    @router.get("/v1/models", response_model=ModelList)
    async def list_models(request: Request) -> ModelList:
        state = gateway_state(request)
        await state.keys.check(_bearer(request))
        created = int(state.started_at)
        cards = [ModelCard(id=t.config.served_name, created=created, owned_by=t.config.provider,
                           protege_role="teacher") for t in state.service.teachers.all]
        students = state.service.students
        if students is not None:
            await students.table.refresh()
            cards += [ModelCard(id=r.student.model, created=int(r.student.created_at), owned_by="protege",
                                protege_role="student", protege_task=task)
                      for task, r in sorted(students.table.active().items())]
        return ModelList(data=cards)

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz(request: Request) -> dict[str, Any]:
        state = gateway_state(request)
        if not state.service.teachers.all:
            raise ServiceUnavailableError("no teacher configured", code="not_ready")
        try:
            await state.store.check_writable()
        except StoreError as exc:
            raise ServiceUnavailableError(f"store not writable: {exc}", code="not_ready") from None
        capture_problem = state.capture.health()
        if capture_problem is not None:
            raise ServiceUnavailableError(capture_problem, code="not_ready")
        return {"status": "ready", "teachers": [t.config.served_name for t in state.service.teachers.all],
                "uptime_s": round(time.time() - state.started_at, 1)}

    @router.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        state = gateway_state(request)
        if state.settings.admin_port is None:  # on an admin port of its own, the socket is what is private
            token = state.settings.admin_token
            require_admin(None if token is None else token.get_secret_value(), request.headers.get("authorization"),
                          surface="/metrics")
        if state.service.students is not None:
            await state.service.students.table.refresh()  # registry and rollout gauges, also without traffic
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router


_CAPTURE_VALUES = {"on": True, "true": True, "1": True, "yes": True,
                   "off": False, "false": False, "0": False, "no": False}


def capture_wanted(header: str | None) -> bool:
    """X-Protege-Capture: off keeps a request out of the store (sensitive traffic)."""
    if header is None:
        return True
    wanted = _CAPTURE_VALUES.get(header.strip().lower())
    if wanted is None:
        raise BadRequestError(f"X-Protege-Capture must be 'on' or 'off', not {header[:40]!r}",
                              param="X-Protege-Capture", code="invalid_header")
    return wanted


def _bearer(request: Request) -> str | None:
    return bearer_token(request.headers.get("authorization"))
