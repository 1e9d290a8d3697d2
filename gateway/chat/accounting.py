"""What a served request costs and leaves behind: its cost and counterfactual, the client's token bill, the
metrics and the captured row — each built from one outcome value.

Cost is what was paid for the request: on a fallback, the teacher's answer and the student's rejected attempt.
The counterfactual is what the teacher alone would have been paid for it, so that savings = counterfactual −
cost over any set of requests (a shadow call is a cost with no counterfactual: the teacher-only world makes no
such call)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from opentelemetry.trace import SpanKind, Status, StatusCode

from gateway.capture import CaptureWriter, normalise_request, normalise_response
from gateway.chat.types import ROUTE_SHADOW, ROUTE_STUDENT, ChatRequest, RouteInfo, StudentAttempt, Students, Teacher
from gateway.metrics import Metrics
from gateway.pricing import Price, counterfactual_prompt_tokens
from gateway.ratelimit import RateLimiter
from gateway.store import NO_EXTRA, Exchange, ExchangeExtra, ExchangeStatus, StudentNote
from gateway.tasks import message_text, system_prompt, text_hash
from gateway.tracing import Tracing, annotate, end, usage_attributes


@dataclass(frozen=True, slots=True)
class TeacherOutcome:
    """A request the teacher answered (or failed): on the teacher route, after a fallback, or as a shadow."""

    req: ChatRequest
    teacher: Teacher
    info: RouteInfo
    status: ExchangeStatus
    http_status: int
    completion: dict[str, Any] | None
    upstream_s: float
    error: str | None = None
    stream: bool = False
    attempt: StudentAttempt | None = None  # the student's rejected attempt, billed with the teacher's answer
    capture: bool = True  # False: another row records this request (a degraded answer)
    extra: ExchangeExtra = NO_EXTRA


@dataclass(frozen=True, slots=True)
class StudentOutcome:
    """A student answer served to the client. `teacher` is None in degraded mode: the teacher-only world would
    have answered with an error, which costs nothing."""

    req: ChatRequest
    attempt: StudentAttempt
    info: RouteInfo
    teacher: Teacher | None
    stream: bool = False
    teacher_error: str | None = None


class Accounting:
    def __init__(self, capture: CaptureWriter, metrics: Metrics, limiter: RateLimiter,
                 students: Students | None, tracing: Tracing | None = None) -> None:
        self.capture = capture
        self.metrics = metrics
        self.limiter = limiter
        self.students = students  # its price is read per request: a compute price follows measured throughput
        self.tracing = tracing or Tracing()

    def teacher_served(self, o: TeacherOutcome) -> None:
        req, teacher = o.req, o.teacher
        extra = o.extra if teacher.price is None else dataclasses.replace(o.extra, price_source=teacher.price.source)
        teacher_cost = priced(teacher.price, o.completion)
        if teacher_cost is None and o.status == "ok":
            self.metrics.unknown_price.labels(teacher.config.served_name).inc()
        self._count_tokens(req, teacher.config.served_name, o.completion)
        self._bill_client(req, o.completion)
        student_cost: float | None = None
        if o.attempt is not None:
            attempt = o.attempt
            student_cost = self._student_cost(req, attempt)
            answer = (attempt.completion or {}).get("choices") or [{}]
            extra = dataclasses.replace(extra, student=StudentNote(
                version=attempt.student.version, model=attempt.student.model, confidence=attempt.confidence,
                reason=attempt.verdict.reason, detail=attempt.verdict.detail[:500], message=answer[0].get("message"),
                cost_usd=student_cost, completion_tokens=usage_of(attempt.completion)[1]))
        parts = [c for c in (teacher_cost, student_cost) if c is not None]
        cost = sum(parts) if parts else None
        counterfactual = 0.0 if o.info.route == ROUTE_SHADOW else teacher_cost
        self._observe(req, o.info.route, o.status, o.upstream_s, o.stream, cost, counterfactual)
        self._trace(req, o.info, o.status, o.completion, cost, counterfactual, extra.price_source, o.error)
        if o.capture and req.capture and self.capture.enabled:
            self._submit(req, exchange(req, o.info.route, teacher.config.model, o.status, o.http_status,
                                       o.completion, error=o.error, stream=o.stream, extra=extra, cost=cost))

    def student_served(self, o: StudentOutcome) -> None:
        req, attempt = o.req, o.attempt
        assert attempt.completion is not None
        cost = self._student_cost(req, attempt)
        self._bill_client(req, attempt.completion)
        counterfactual = 0.0 if o.teacher is None else teacher_estimate(req, o.teacher, attempt)
        self._observe(req, ROUTE_STUDENT, "ok", 0.0, o.stream, cost, counterfactual)
        price = self._price(attempt)
        self._trace(req, o.info, "ok", attempt.completion, cost, counterfactual, price.source if price else None,
                    None)
        if not req.capture or not self.capture.enabled:
            return
        extra = ExchangeExtra(student=StudentNote(version=attempt.student.version, confidence=attempt.confidence,
                                                  reason=o.info.fallback_reason),
                              counterfactual_cost_usd=counterfactual, teacher_error=o.teacher_error,
                              price_source=price.source if price else None)
        self._submit(req, exchange(req, ROUTE_STUDENT, attempt.student.model, "ok", 200, attempt.completion,
                                   stream=o.stream, extra=extra, cost=cost))

    def _submit(self, req: ChatRequest, row: Exchange) -> None:
        """Hand the row to the capture writer (its own span when traced: the hand-off, not the batched write)."""
        if req.span is None:
            self.capture.submit(row)
            return
        span = self.tracing.child(req.span, "protege.capture", {"protege.request_id": row.request_id},
                                  kind=SpanKind.INTERNAL)
        self.capture.submit(row)
        end(span)

    def _trace(self, req: ChatRequest, info: RouteInfo, status: ExchangeStatus, completion: dict[str, Any] | None,
               cost: float | None, counterfactual: float | None, price_source: str | None, error: str | None) -> None:
        """How the request was served, on its span."""
        span = req.span
        if span is None:
            return
        student = info.student
        annotate(span, {**usage_attributes(completion), "protege.route": info.route, "protege.status": status,
                        "protege.student.version": student.version if student else None,
                        "protege.student.model": student.model if student else None,
                        "protege.confidence": info.confidence, "protege.fallback_reason": info.fallback_reason,
                        "protege.cost_usd": cost, "protege.counterfactual_cost_usd": counterfactual,
                        "protege.price_source": price_source})
        self.tracing.content(span, "gen_ai.output.messages",
                             [c.get("message") for c in (completion or {}).get("choices") or []] or None)
        if status != "ok":
            span.set_status(Status(StatusCode.ERROR, (error or status)[:500]))

    def _student_cost(self, req: ChatRequest, attempt: StudentAttempt) -> float | None:
        """A student answer's cost (tokens counted under the student's model); None when not priced."""
        if attempt.completion is None:
            return None  # the student failed before answering: nothing to bill
        self._count_tokens(req, attempt.student.model, attempt.completion)
        cost = priced(self._price(attempt), attempt.completion)
        if cost is None:
            self.metrics.unknown_price.labels(attempt.student.model).inc()
        return cost

    def _price(self, attempt: StudentAttempt) -> Price | None:
        return self.students.price_for(attempt.student) if self.students else None

    def _bill_client(self, req: ChatRequest, completion: dict[str, Any] | None) -> None:
        """The client's token budget pays for the answer it got (not for rejected student attempts)."""
        if req.client is not None:
            prompt_tokens, completion_tokens = usage_of(completion)
            self.limiter.spend_tokens(req.client, (prompt_tokens or 0) + (completion_tokens or 0))

    def _count_tokens(self, req: ChatRequest, model: str, completion: dict[str, Any] | None) -> None:
        prompt_tokens, completion_tokens = usage_of(completion)
        task_label = self.metrics.task_label(req.task)
        if prompt_tokens is not None:
            self.metrics.tokens.labels(task_label, model, "input").inc(prompt_tokens)
        if completion_tokens is not None:
            self.metrics.tokens.labels(task_label, model, "output").inc(completion_tokens)

    def _observe(self, req: ChatRequest, route: str, status: ExchangeStatus, upstream_s: float, stream: bool,
                 cost: float | None, counterfactual: float | None) -> None:
        total_s = time.perf_counter() - req.received_at
        task_label = self.metrics.task_label(req.task)
        if cost is not None:
            self.metrics.cost.labels(task_label, route).inc(cost)
        if counterfactual is not None:
            self.metrics.counterfactual_cost.labels(task_label, route).inc(counterfactual)
        self.metrics.requests.labels(task_label, route, status).inc()
        self.metrics.latency.labels(route, str(stream).lower()).observe(total_s)
        if route != ROUTE_STUDENT:
            self.metrics.upstream_latency.labels(route).observe(upstream_s)
            if status == "ok":
                self.metrics.overhead.labels(route).observe(max(0.0, total_s - upstream_s))


def usage_of(completion: dict[str, Any] | None) -> tuple[int | None, int | None]:
    usage = (completion or {}).get("usage") or {}
    return usage.get("prompt_tokens"), usage.get("completion_tokens")


def priced(price: Price | None, completion: dict[str, Any] | None) -> float | None:
    """The cost of one upstream answer; None when the price or the usage is unknown (never a silent 0)."""
    prompt_tokens, completion_tokens = usage_of(completion)
    if price is None or prompt_tokens is None or completion_tokens is None:
        return None
    details = ((completion or {}).get("usage") or {}).get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return price.cost(prompt_tokens, completion_tokens, cached if isinstance(cached, int) else 0)


def teacher_estimate(req: ChatRequest, teacher: Teacher, attempt: StudentAttempt) -> float | None:
    """What the teacher would have charged for the student's answer: its output tokens, and its prompt with
    any distilled system prompt put back."""
    prompt_tokens, completion_tokens = usage_of(attempt.completion)
    if teacher.price is None or prompt_tokens is None or completion_tokens is None:
        return None
    full = counterfactual_prompt_tokens(prompt_tokens, _messages_chars(req.body.get("messages") or []),
                                        _messages_chars(attempt.messages))
    return teacher.price.cost(full, completion_tokens)


def _messages_chars(messages: list[dict[str, Any]]) -> int:
    return sum(len(message_text(m.get("content"))) for m in messages)


def exchange(req: ChatRequest, route: str, upstream_model: str, status: ExchangeStatus, http_status: int,
             completion: dict[str, Any] | None, *, error: str | None = None, stream: bool = False,
             extra: ExchangeExtra = NO_EXTRA, cost: float | None = None) -> Exchange:
    """The captured row."""
    response = normalise_response(completion) if completion else None
    prompt_tokens, completion_tokens = usage_of(completion)
    choices = (response or {}).get("choices") or [{}]
    system = system_prompt(req.body.get("messages") or [])
    return Exchange(
        request_id=req.request_id, created_at=req.created_at, task=req.task, task_source=req.task_source,
        route=route, model=req.model, upstream_model=upstream_model, status=status, http_status=http_status,
        stream=stream, request=normalise_request(req.body), response=response, user=req.user,
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
        latency_ms=round((time.perf_counter() - req.received_at) * 1000, 3), cost_usd=cost,
        finish_reason=choices[0].get("finish_reason"), error=error,
        system_hash=text_hash(system) if system else None,
        extra=dataclasses.replace(extra, client=req.client) if req.client is not None else extra,
    )
