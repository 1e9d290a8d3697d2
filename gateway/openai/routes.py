"""OpenAI's chat completions and models routes (`/v1/*`), and the feedback apps give on answers (in OpenAI's
error shape). Thin: parse, call the chat core, render."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from gateway.chat.request import build_chat_request, route_headers
from gateway.chat.service import ChatService
from gateway.direct_routes import DirectRoute
from gateway.feedback import FEEDBACK_HEADER, FeedbackBody, feedback_json
from gateway.http_errors import dialect_route
from gateway.http_utils import SSEResponse, bearer_client, gateway_state, read_json_object, validate
from gateway.openai.errors import OPENAI
from gateway.openai.stream import openai_events
from gateway.protocol import CHAT_FIELDS, ChatCompletionRequest, ModelCard, ModelList, check_fields

CHAT_COMPLETIONS_PATH = "/v1/chat/completions"


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


async def chat_completions(request: Request) -> Response:
    """`POST /v1/chat/completions` (also served by `gateway.direct_routes`, past FastAPI's routing)."""
    state = gateway_state(request)
    client = await bearer_client(request, state)
    state.service.limiter.admit(client)
    body = await read_json_object(request, state)
    parsed = validate(ChatCompletionRequest, body)
    check_fields(body, CHAT_FIELDS, state.settings.forward_fields)
    req = build_chat_request(body, request.headers, client=client, user=parsed.user,
                             skip_tasks=state.settings.capture.skip_tasks)
    state.feedback.submit_header(request.headers.get(FEEDBACK_HEADER), client=client)
    service: ChatService = state.service
    if req.stream:
        chunks, info = await service.open_stream(req)
        return SSEResponse(openai_events(chunks), headers={**route_headers(req, info), "cache-control": "no-cache"})
    result, info = await service.complete(req)
    return Response(orjson.dumps(result), media_type="application/json", headers=route_headers(req, info))


def direct_routes() -> list[DirectRoute]:
    return [DirectRoute("POST", CHAT_COMPLETIONS_PATH, chat_completions, OPENAI)]


def build_openai_router() -> APIRouter:
    router = APIRouter(route_class=dialect_route(OPENAI))

    router.add_api_route(CHAT_COMPLETIONS_PATH, chat_completions, methods=["POST"],
                         openapi_extra=chat_completions_openapi(), response_model=None)

    @router.post("/v1/feedback", openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": inline_refs(FeedbackBody.model_json_schema())}}}})
    async def feedback(request: Request) -> dict[str, Any]:
        state = gateway_state(request)
        client = await bearer_client(request, state)
        state.service.limiter.admit(client)  # the key's request rate covers its feedback calls too
        recorded = await state.feedback.record(await read_json_object(request, state), client=client, source="api")
        return feedback_json(recorded)

    @router.get("/v1/models", response_model=ModelList)
    async def list_models(request: Request) -> ModelList:
        state = gateway_state(request)
        await bearer_client(request, state)
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

    return router

