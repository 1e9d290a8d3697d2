"""OpenAI's Responses API: `POST /v1/responses`, and `GET`/`DELETE /v1/responses/{id}` and its input items.

Thin: parse, translate (`gateway.responses.translate`), call the same `ChatService` as the chat route — so
capture, cascade, rollout and prompt distillation apply unchanged — render, and keep the response for
`previous_response_id` (`gateway.responses.conversation`). Errors are OpenAI's (the route's dialect)."""

from __future__ import annotations

from typing import Any, Literal

import orjson
from fastapi import APIRouter, Query, Request, Response

from gateway.chat.request import build_chat_request, route_headers
from gateway.chat.service import ChatService
from gateway.direct_routes import DirectRoute
from gateway.feedback import FEEDBACK_HEADER
from gateway.http_errors import dialect_route
from gateway.http_utils import SSEResponse, bearer_client, gateway_state, read_json_object
from gateway.openai.errors import OPENAI
from gateway.protocol import check_fields
from gateway.responses import conversation
from gateway.responses.response import from_chat, response_id
from gateway.responses.stream import ResponsesStreamTranslator, responses_events
from gateway.responses.translate import ResponsesRequest, input_items, parse_request, to_chat
from gateway.store import StoredResponse

RESPONSES_PATH = "/v1/responses"
RESPONSES_FIELDS = frozenset(ResponsesRequest.model_fields)


def responses_openapi() -> dict[str, Any]:
    schema = ResponsesRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _json(body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), media_type="application/json", headers=headers)


async def create_response(request: Request) -> Response:
    """`POST /v1/responses` (also served by `gateway.direct_routes`, past FastAPI's routing)."""
    state = gateway_state(request)
    client = await bearer_client(request, state)
    state.service.limiter.admit(client)
    raw = await read_json_object(request, state)
    check_fields(raw, RESPONSES_FIELDS)  # names a provider-steering field as such, before pydantic does
    parsed = parse_request(raw)
    before = (await conversation.history(state.store, parsed.previous_response_id, client)
              if parsed.previous_response_id else [])
    body, turn = to_chat(parsed, before)
    req = build_chat_request(body, request.headers, client=client, user=parsed.sticky_user,
                             skip_tasks=state.settings.capture.skip_tasks)
    state.feedback.submit_header(request.headers.get(FEEDBACK_HEADER), client=client)
    resp_id = response_id(req.request_id)

    def kept(response: dict[str, Any]) -> StoredResponse:
        return conversation.record(response, task=req.task, client=client, user=req.user,
                                   created_at=req.created_at, input_items=input_items(parsed.input),
                                   before=before, turn=turn)

    service: ChatService = state.service
    if req.stream:
        chunks, info = await service.open_stream(req)
        translator = ResponsesStreamTranslator(parsed, resp_id, created_at=req.created_at)

        async def keep(response: dict[str, Any]) -> None:
            await conversation.keep(state.store, kept(response))

        return SSEResponse(responses_events(chunks, translator, keep if parsed.stored else None),
                           headers={**route_headers(req, info), "cache-control": "no-cache"})
    result, info = await service.complete(req)
    response = from_chat(result, parsed, resp_id=resp_id, created_at=req.created_at)
    if parsed.stored:
        await conversation.keep(state.store, kept(response))
    return _json(response, route_headers(req, info))


def direct_routes() -> list[DirectRoute]:
    return [DirectRoute("POST", RESPONSES_PATH, create_response, OPENAI)]


def build_responses_router() -> APIRouter:
    router = APIRouter(route_class=dialect_route(OPENAI))

    router.add_api_route(RESPONSES_PATH, create_response, methods=["POST"], openapi_extra=responses_openapi(),
                         response_model=None)

    @router.get(RESPONSES_PATH + "/{response_id}", response_model=None)
    async def retrieve_response(request: Request, response_id: str) -> Response:
        state = gateway_state(request)
        client = await bearer_client(request, state)
        stored = await conversation.find(state.store, response_id, client)
        return _json(stored.response)

    @router.delete(RESPONSES_PATH + "/{response_id}", response_model=None)
    async def delete_response(request: Request, response_id: str) -> Response:
        state = gateway_state(request)
        client = await bearer_client(request, state)
        await conversation.find(state.store, response_id, client)
        if not await state.store.delete_response(response_id):
            raise conversation.not_found(response_id)  # deleted by another request in between
        return _json({"id": response_id, "object": "response.deleted", "deleted": True})

    @router.get(RESPONSES_PATH + "/{response_id}/input_items", response_model=None)
    async def list_input_items(request: Request, response_id: str,
                               limit: int = Query(default=20, ge=1, le=100),
                               order: Literal["asc", "desc"] = "desc", after: str | None = None) -> Response:
        state = gateway_state(request)
        client = await bearer_client(request, state)
        items = (await conversation.find(state.store, response_id, client)).input_items
        if order == "desc":
            items = items[::-1]
        if after is not None:
            ids = [item.get("id") for item in items]
            items = items[ids.index(after) + 1:] if after in ids else []
        page = items[:limit]
        return _json({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                      "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit})

    return router

