"""The one place that wires a chat request through: teacher selection → upstream call (with
retries) → capture → metrics. The HTTP layer only parses and renders."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.capture import CaptureWriter, StreamAssembler, normalise_request, normalise_response
from gateway.config import RetryConfig, TeacherConfig
from gateway.errors import NotFoundError, ProtegeError
from gateway.metrics import Metrics
from gateway.pricing import Price
from gateway.providers import ChatProvider
from gateway.providers.retry import open_stream, with_retries
from gateway.store import Exchange, ExchangeStatus
from gateway.tasks import system_prompt, text_hash

log = logging.getLogger("protege.service")

ROUTE_TEACHER = "teacher"


@dataclass(slots=True)
class ChatRequest:
    """One parsed client request. `body` is what the client sent (unknown fields included)."""

    request_id: str
    body: dict[str, Any]
    task: str
    task_source: str
    user: str | None
    received_at: float = field(default_factory=time.perf_counter)
    created_at: float = field(default_factory=time.time)

    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))


@dataclass(slots=True)
class Teacher:
    config: TeacherConfig
    provider: ChatProvider
    price: Price | None


class TeacherSet:
    """Selects the teacher for a request's `model`; with one teacher, every model name maps to it."""

    def __init__(self, teachers: list[Teacher]) -> None:
        self.all = teachers
        self._by_name: dict[str, Teacher] = {}
        for teacher in teachers:
            for name in (teacher.config.served_name, teacher.config.model, *teacher.config.aliases):
                self._by_name.setdefault(name, teacher)

    def select(self, model: str) -> Teacher:
        if len(self.all) == 1:
            return self.all[0]
        teacher = self._by_name.get(model)
        if teacher is None:
            names = ", ".join(sorted(t.config.served_name for t in self.all))
            raise NotFoundError(f"model {model!r} is not served here; available: {names}",
                                param="model", code="model_not_found")
        return teacher

    async def aclose(self) -> None:
        for teacher in self.all:
            await teacher.provider.aclose()


def upstream_body(body: dict[str, Any], upstream_model: str) -> dict[str, Any]:
    """The request as the upstream should see it: its model name, without Protégé's metadata.task,
    and with usage requested on streams (the gateway needs it for cost; see `relay`)."""
    out = dict(body)
    out["model"] = upstream_model
    metadata = out.get("metadata")
    if isinstance(metadata, dict) and "task" in metadata:
        rest = {k: v for k, v in metadata.items() if k != "task"}
        if rest:
            out["metadata"] = rest
        else:
            del out["metadata"]
    if out.get("stream"):
        options = dict(out.get("stream_options") or {})
        options["include_usage"] = True
        out["stream_options"] = options
    return out


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


class ChatService:
    def __init__(self, teachers: TeacherSet, capture: CaptureWriter, metrics: Metrics,
                 retry: RetryConfig) -> None:
        self.teachers = teachers
        self.capture = capture
        self.metrics = metrics
        self.retry = retry

    def _on_retry(self, exc: ProtegeError) -> None:
        self.metrics.retries.labels(ROUTE_TEACHER).inc()
        log.info("retrying teacher after %s", type(exc).__name__)

    async def complete(self, req: ChatRequest) -> dict[str, Any]:
        teacher = self.teachers.select(req.model)
        body = upstream_body(req.body, teacher.config.upstream_model)
        started = time.perf_counter()
        try:
            result = await with_retries(lambda: teacher.provider.complete(body), self.retry, self._on_retry)
        except ProtegeError as exc:
            self._record(req, teacher, "failed", exc.status_code, None, time.perf_counter() - started,
                         error=exc.message)
            raise
        self._record(req, teacher, "ok", 200, result, time.perf_counter() - started)
        return result

    async def open_stream(self, req: ChatRequest) -> AsyncIterator[bytes]:
        """Start the teacher's stream. Errors before the first chunk raise (the client gets a proper
        HTTP error); afterwards the returned iterator relays SSE bytes and records the exchange."""
        teacher = self.teachers.select(req.model)
        body = upstream_body(req.body, teacher.config.upstream_model)
        started = time.perf_counter()
        try:
            first, rest = await open_stream(lambda: teacher.provider.stream(body), self.retry, self._on_retry)
        except ProtegeError as exc:
            self._record(req, teacher, "failed", exc.status_code, None, time.perf_counter() - started,
                         error=exc.message, stream=True)
            raise
        self.metrics.ttft.labels(ROUTE_TEACHER).observe(time.perf_counter() - req.received_at)
        return self._relay(req, teacher, first, rest, started)

    async def _relay(self, req: ChatRequest, teacher: Teacher, first: dict[str, Any] | None,
                     rest: AsyncIterator[dict[str, Any]], started: float) -> AsyncIterator[bytes]:
        assembler = StreamAssembler()
        client_wants_usage = bool((req.body.get("stream_options") or {}).get("include_usage"))
        status: ExchangeStatus = "incomplete"
        error: str | None = "client disconnected"
        http_status = 499
        try:
            chunk = first
            while chunk is not None:
                assembler.add(chunk)
                # the usage-only chunk was requested by the gateway, not necessarily by the client
                if client_wants_usage or chunk.get("choices") or not chunk.get("usage"):
                    yield sse(chunk)
                chunk = await anext(rest, None)
            status, error, http_status = "ok", None, 200
            yield SSE_DONE
        except ProtegeError as exc:
            status, error, http_status = "failed", exc.message, exc.status_code
            yield sse(exc.to_body())
            yield SSE_DONE
        finally:
            aclose = getattr(rest, "aclose", None)
            if aclose is not None:
                await aclose()
            self._record(req, teacher, status, http_status, assembler.completion(),
                         time.perf_counter() - started, error=error, stream=True)

    def _record(self, req: ChatRequest, teacher: Teacher, status: ExchangeStatus, http_status: int,
                completion: dict[str, Any] | None, upstream_s: float, *, error: str | None = None,
                stream: bool = False) -> None:
        total_s = time.perf_counter() - req.received_at
        task_label = self.metrics.task_label(req.task)
        usage = (completion or {}).get("usage") or {}
        prompt_tokens = usage.get("prompt_tokens")
        completion_tokens = usage.get("completion_tokens")
        cost = None
        if teacher.price is not None and prompt_tokens is not None and completion_tokens is not None:
            cost = teacher.price.cost(prompt_tokens, completion_tokens)
            self.metrics.cost.labels(task_label, ROUTE_TEACHER).inc(cost)
        elif status == "ok":
            self.metrics.unknown_price.labels(teacher.config.served_name).inc()
        if prompt_tokens is not None:
            self.metrics.tokens.labels(task_label, teacher.config.served_name, "input").inc(prompt_tokens)
        if completion_tokens is not None:
            self.metrics.tokens.labels(task_label, teacher.config.served_name, "output").inc(completion_tokens)
        self.metrics.requests.labels(task_label, ROUTE_TEACHER, status).inc()
        self.metrics.latency.labels(ROUTE_TEACHER, str(stream).lower()).observe(total_s)
        self.metrics.upstream_latency.labels(ROUTE_TEACHER).observe(upstream_s)
        if status == "ok":
            self.metrics.overhead.labels(ROUTE_TEACHER).observe(max(0.0, total_s - upstream_s))
        response = normalise_response(completion) if completion else None
        choices = (response or {}).get("choices") or [{}]
        self.capture.submit(Exchange(
            request_id=req.request_id, created_at=req.created_at, task=req.task, task_source=req.task_source,
            route=ROUTE_TEACHER, model=req.model, upstream_model=teacher.config.model, status=status,
            http_status=http_status, stream=stream, request=normalise_request(req.body), response=response,
            user=req.user, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
            latency_ms=round(total_s * 1000, 3), cost_usd=cost, finish_reason=choices[0].get("finish_reason"),
            error=error, system_hash=_system_hash(req.body),
        ))


def _system_hash(body: dict[str, Any]) -> str | None:
    system = system_prompt(body.get("messages") or [])
    return text_hash(system) if system else None
