"""The other `/v1` routes apps call — embeddings, legacy completions, moderations, audio, images, files, batches,
uploads — forwarded to the teacher: byte for byte to an OpenAI-compatible one (streams and multipart bodies
included), embeddings also through litellm for other providers. Gateway keys, rate limits, the concurrency cap,
timeouts and the teacher's circuit breaker apply; requests are counted and, where the response reports usage
and the model's price is known, priced. Nothing here is captured: it is not chat, so not training data.

An upstream's 4xx reaches the client as it was sent; a 5xx or refused credentials become the gateway's own
502 (an upstream's internals are its business, as on the chat route)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import orjson
from fastapi import APIRouter, Request, Response

from gateway.chat.types import Teacher
from gateway.errors import NotServedError
from gateway.http_errors import dialect_route
from gateway.http_utils import SSEResponse, bearer_client, gateway_state, parse_json_object, read_body
from gateway.metrics import Metrics
from gateway.openai.errors import OPENAI
from gateway.passthrough.forward import (
    api_of,
    can_forward,
    pick_teacher,
    request_headers,
    request_model,
    response_headers,
    upstream_path,
    usage_cost,
)
from gateway.protocol import check_fields
from gateway.providers.openai_compat import OpenAICompatibleProvider
from gateway.ratelimit import RateLimiter

# (path, methods); `{rest:path}` takes everything below (e.g. /v1/files/{id}/content)
ROUTES: tuple[tuple[str, list[str]], ...] = (
    ("/v1/embeddings", ["POST"]),
    ("/v1/completions", ["POST"]),
    ("/v1/moderations", ["POST"]),
    ("/v1/audio/{rest:path}", ["POST"]),
    ("/v1/images/{rest:path}", ["POST"]),
    ("/v1/files", ["GET", "POST"]),
    ("/v1/files/{rest:path}", ["GET", "POST", "DELETE"]),
    ("/v1/batches", ["GET", "POST"]),
    ("/v1/batches/{rest:path}", ["GET", "POST"]),
    ("/v1/uploads", ["POST"]),
    ("/v1/uploads/{rest:path}", ["POST"]),
)
USAGE_BODY_LIMIT = 1 << 20  # a JSON answer up to this size is read for its usage as it goes by


def build_passthrough_router() -> APIRouter:
    router = APIRouter(route_class=dialect_route(OPENAI))
    for path, methods in ROUTES:
        # not in /openapi.json: their bodies are the upstream's API, not one this gateway defines
        router.add_api_route(path, passthrough, methods=methods, include_in_schema=False, response_model=None)
    return router


async def passthrough(request: Request) -> Response:
    state = gateway_state(request)
    client = await bearer_client(request, state)
    api = api_of(request.url.path)
    upstream_path(request.url.path)  # refused before anything is spent on it
    if not state.settings.passthrough:
        raise NotServedError(f"/v1/{api} is not served: passthrough is switched off (passthrough: false)",
                             code="passthrough_off")
    service = state.service
    service.limiter.admit(client)
    body = await read_body(request, state.settings.max_body_bytes, state.settings.body_timeout_s)
    model = request_model(body, request.headers.get("content-type", ""))
    teacher = pick_teacher(service.teachers, model, api)
    tally = Tally(state.metrics, service.limiter, client, api, model)
    release = service.concurrency.acquire(client)
    if not can_forward(teacher):
        try:
            return await _embed(teacher, body, tally)
        except BaseException as exc:
            tally.done(getattr(exc, "status_code", 500), None)
            raise
        finally:
            release()
    try:
        upstream = await teacher.breaker.call(lambda: _send(teacher, request, body))
    except BaseException as exc:
        release()
        tally.done(getattr(exc, "status_code", 500), None)
        raise
    headers = {**response_headers(upstream.headers), "x-request-id": "req_" + uuid.uuid4().hex}
    return SSEResponse(Relay(upstream, tally, release), status_code=upstream.status_code, headers=headers,
                       media_type=upstream.headers.get("content-type"))


async def _send(teacher: Teacher, request: Request, body: bytes) -> httpx.Response:
    """The upstream's response, body unread; an error raised for a 5xx or refused credentials (so the breaker
    counts the failure and the client gets the gateway's 502)."""
    provider = teacher.provider
    assert isinstance(provider, OpenAICompatibleProvider)
    response = await provider.forward(request.method, upstream_path(request.url.path),
                                      params=list(request.query_params.multi_items()),
                                      headers=request_headers(request.headers), content=body)
    if response.status_code >= 500 or response.status_code in (401, 403):
        content = await response.aread()
        await response.aclose()
        raise provider.status_error(response, content)
    return response


async def _embed(teacher: Teacher, raw: bytes, tally: Tally) -> Response:
    """Embeddings through litellm: the JSON body as keyword arguments (never the provider-steering ones)."""
    body = parse_json_object(raw)
    check_fields(body, frozenset(body))  # any field may go to litellm but those that steer its client
    embed: Callable[[dict[str, Any]], Any] = teacher.provider.embed  # type: ignore[attr-defined]
    result: dict[str, Any] = await teacher.breaker.call(lambda: embed(body))
    tally.done(200, result)
    return Response(orjson.dumps(result), media_type="application/json")


class Relay:
    """The upstream's body as it comes; a JSON answer is kept (up to a size) to read its usage at the end.
    Closing it — which `SSEResponse` always does, even when the client went away before the first byte —
    closes the upstream response, gives the concurrency slot back and counts the request, once."""

    def __init__(self, upstream: httpx.Response, tally: Tally, release: Callable[[], None]) -> None:
        self._upstream, self._tally, self._release = upstream, tally, release
        self._chunks = upstream.aiter_raw()
        self._keep = upstream.headers.get("content-type", "").startswith("application/json")
        self._kept: list[bytes] = []
        self._size = 0
        self._closed = False

    def __aiter__(self) -> Relay:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await anext(self._chunks)
        except BaseException:  # the end (StopAsyncIteration), or the upstream failed mid-body
            await self.aclose()
            raise
        if self._keep:
            self._size += len(chunk)
            self._keep = self._size <= USAGE_BODY_LIMIT
            self._kept.append(chunk)
        return chunk

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._upstream.aclose()
        finally:
            self._release()
            payload = None
            if self._keep and self._kept:
                try:
                    payload = orjson.loads(b"".join(self._kept))
                except orjson.JSONDecodeError:
                    payload = None
            self._tally.done(self._upstream.status_code, payload)


class Tally:
    """A forwarded request's metrics and rate-limit tokens, once it is over."""

    def __init__(self, metrics: Metrics, limiter: RateLimiter, client: str, api: str, model: str | None) -> None:
        self.metrics, self.limiter, self.client, self.api, self.model = metrics, limiter, client, api, model
        self.started = time.perf_counter()

    def done(self, status: int, payload: Any) -> None:
        self.metrics.passthrough.labels(self.api, str(status)).inc()
        self.metrics.latency.labels("passthrough", "false").observe(time.perf_counter() - self.started)
        tokens, cost = usage_cost(payload, self.model)
        if tokens:
            self.limiter.spend_tokens(self.client, tokens)
        if cost is not None:  # (no unknown-price count: its model label would be whatever clients send)
            self.metrics.passthrough_cost.labels(self.api).inc(cost)
