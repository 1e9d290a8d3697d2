"""The cascade: routing decision → student (with validators and confidence) → teacher fallback (with retries and
its breaker), degraded mode when the teacher is down, shadow scoring (`shadow`), and what each outcome costs and
leaves behind (`accounting`). The dialects only parse and render; the decisions themselves are the pure
functions of `gateway.router`."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from gateway.capture import CaptureWriter, StreamAssembler
from gateway.chat.accounting import Accounting, StudentOutcome, TeacherOutcome
from gateway.chat.attempts import StudentAttempts
from gateway.chat.bodies import for_client, upstream_body
from gateway.chat.live_scoring import LiveScorers
from gateway.chat.shadow import ShadowScorer
from gateway.chat.types import (
    ROUTE_FALLBACK,
    ROUTE_STUDENT,
    ROUTE_TEACHER,
    ChatRequest,
    RouteInfo,
    StudentAttempt,
    Students,
    Teacher,
    TeacherSet,
)
from gateway.config import LimitsConfig, RetryConfig
from gateway.errors import ProtegeError, UpstreamError
from gateway.metrics import Metrics
from gateway.parity import LiveParity
from gateway.providers.openai_compat import completion_as_chunks
from gateway.providers.retry import open_stream, with_retries
from gateway.ratelimit import ConcurrencyLimiter, RateLimiter, check_request_size
from gateway.router import (
    in_rollout,
    student_messages,
)
from gateway.store import ExchangeStatus, StudentVersion
from gateway.tracing import Tracing, annotate, current, end, event, request_attributes, usage_attributes

if TYPE_CHECKING:
    from opentelemetry.trace import Span

log = logging.getLogger("protege.service")


class ChatService:
    def __init__(self, teachers: TeacherSet, capture: CaptureWriter, metrics: Metrics, retry: RetryConfig,
                 students: Students | None = None, limiter: RateLimiter | None = None,
                 limits: LimitsConfig | None = None, tracing: Tracing | None = None,
                 scorers: LiveScorers | None = None) -> None:
        self.teachers = teachers
        self.tracing = tracing or Tracing()
        self.limits = limits or LimitsConfig()
        self.concurrency = ConcurrencyLimiter(self.limits.max_concurrent, self.limits.max_concurrent_per_key)
        self.limiter = limiter or RateLimiter(None, None)
        self.limiter.on_limited = lambda kind: metrics.rate_limited.labels(kind).inc()
        breakers = [t.breaker for t in teachers.all] + ([students.breaker] if students is not None else [])
        for breaker in breakers:
            breaker.on_open = lambda name: metrics.circuit_opened.labels(name).inc()
        if students is not None:
            students.table.on_refresh = self._registry_read
        self.capture = capture
        self.metrics = metrics
        self.retry = retry
        self.students = students
        self.accounting = Accounting(capture, metrics, self.limiter, students, self.tracing)
        self.attempts = StudentAttempts(students, metrics, self.tracing) if students is not None else None
        self.shadow = ShadowScorer(students.shadow_rate if students else 0.0, metrics, self.accounting, self.tracing,
                                   scorers, students.table.shadow_rate if students else None)

    async def drain(self) -> None:
        """Wait for background shadow calls (graceful shutdown)."""
        await self.shadow.drain()

    def live_parity(self) -> dict[tuple[str, int], LiveParity]:
        """(task, version) → the shadow comparisons this process made."""
        return self.shadow.live_parity()

    def _registry_read(self, students: list[StudentVersion], rollouts: dict[str, float]) -> None:
        """Registry metrics from the routing table's periodic read of the store: versions by status (a
        rejected one is a training run that failed its gate), the newest version's training time, and
        every task's rollout (also for tasks without traffic)."""
        counts: dict[tuple[str, str], int] = {}
        newest: dict[str, StudentVersion] = {}
        self.metrics.pin_tasks([*(s.task for s in students), *rollouts])
        for s in students:
            task = self.metrics.task_label(s.task)
            counts[(task, s.status)] = counts.get((task, s.status), 0) + 1
            if s.task not in newest or s.version > newest[s.task].version:
                newest[s.task] = s
        for task in {t for t, _ in counts}:
            for status in ("candidate", "active", "retired", "rejected"):
                self.metrics.student_versions.labels(task, status).set(counts.get((task, status), 0))
        for task, s in newest.items():
            if s.details.training_s is not None:
                self.metrics.last_training.labels(self.metrics.task_label(task)).set(s.details.training_s)
        for task, percent in rollouts.items():
            self.metrics.rollout.labels(self.metrics.task_label(task)).set(percent)
        for s in students:
            if s.status == "active":
                self.metrics.no_threshold.labels(self.metrics.task_label(s.task)).set(int(s.threshold is None))

    def _on_retry(self, exc: ProtegeError) -> None:
        self.metrics.retries.labels(ROUTE_TEACHER).inc()
        event("retry", {"error.type": type(exc).__name__, "protege.error": exc.message[:200]})
        log.info("retrying teacher after %s", type(exc).__name__)

    # --- tracing ---------------------------------------------------------------------------

    # off, no span and no attribute dict is made: the hot path pays a `None` check per step

    def _start_span(self, req: ChatRequest) -> None:
        if not self.tracing.enabled:
            return
        req.span = self.tracing.request_span(req.model, req.trace_context, {
            **request_attributes(req.body), "protege.task": req.task, "protege.request_id": req.request_id,
            "protege.stream": req.stream})
        self.tracing.content(req.span, "gen_ai.input.messages", req.body.get("messages"))

    def _teacher_span(self, req: ChatRequest, teacher: Teacher, body: dict[str, Any]) -> Span | None:
        if req.span is None:
            return None
        provider = teacher.config.model.split("/", 1)[0] if "/" in teacher.config.model else "openai"
        return self.tracing.child(req.span, f"chat {teacher.config.upstream_model}", {
            **request_attributes(body), "gen_ai.provider.name": provider, "gen_ai.system": provider,
            "protege.teacher": teacher.config.served_name})

    # --- routing ---------------------------------------------------------------------------

    async def _student_plan(self, req: ChatRequest, *, rollout: bool = True,
                            ) -> tuple[StudentVersion, list[dict[str, Any]]] | None:
        """The task's active student and its messages, when it can take the request — and, with `rollout`, when
        the request is in its rollout share (degraded mode asks the student whatever the share)."""
        if self.students is None or self.attempts is None:
            return None
        route = await self.students.table.route(req.task)
        if route is None:
            return None
        # routed traffic needs a threshold: a version calibration found none for serves nothing (degraded mode,
        # when the teacher is down, still may)
        if rollout and (route.student.threshold is None or (req.body.get("n") or 1) != 1
                        or not in_rollout(req.task, req.sticky_key, route.rollout_percent)):
            return None
        messages = student_messages(req.body.get("messages") or [], route.student)
        if messages is None or (rollout and self.attempts.predicted_to_fail(req, route.student)):
            return None
        return route.student, messages

    def _fell_back(self, req: ChatRequest, attempt: StudentAttempt) -> RouteInfo:
        reason = attempt.verdict.reason or "student_error"
        self.metrics.fallbacks.labels(self.metrics.task_label(req.task), reason).inc()
        return RouteInfo(ROUTE_FALLBACK, attempt.student, attempt.confidence, reason)

    # --- non-streaming -----------------------------------------------------------------------

    async def _try_student(self, req: ChatRequest, teacher: Teacher, *, stream: bool = False,
                           ) -> tuple[StudentAttempt | None, RouteInfo, dict[str, Any] | None]:
        """Ask the student when the request is routed to it: the attempt, the route so far, and the
        answer for the client when the student's is accepted."""
        plan = await self._student_plan(req)
        if plan is None or self.attempts is None:
            return None, RouteInfo(), None
        attempt = await self.attempts.ask(req, *plan)
        if attempt.verdict.accept and attempt.completion is not None:
            info = RouteInfo(ROUTE_STUDENT, attempt.student, attempt.confidence)
            self.accounting.student_served(StudentOutcome(req, attempt, info, teacher, stream=stream))
            self.shadow.maybe(req, teacher, attempt)
            return attempt, info, for_client(attempt.completion, req.body)
        return attempt, self._fell_back(req, attempt), None

    def _admit(self, req: ChatRequest) -> Callable[[], None]:
        """The request-size caps, then a concurrency slot (the returned function gives it back)."""
        check_request_size(req.body, max_n=self.limits.max_n, max_output_tokens=self.limits.max_output_tokens)
        return self.concurrency.acquire(req.client)

    async def complete(self, req: ChatRequest) -> tuple[dict[str, Any], RouteInfo]:
        self._start_span(req)
        error: str | None = None
        try:
            release = self._admit(req)
            try:
                with current(req.span):  # the shadow call, started inside, is its child
                    return await self._complete(req)
            finally:
                release()
        except ProtegeError as exc:
            error = exc.message
            raise
        except BaseException as exc:
            error = type(exc).__name__
            raise
        finally:
            end(req.span, error=error)

    async def _complete(self, req: ChatRequest) -> tuple[dict[str, Any], RouteInfo]:
        teacher = self.teachers.select(req.model)
        attempt, info, answer = await self._try_student(req, teacher)
        if answer is not None:
            return answer, info
        body = upstream_body(req.body, teacher.config.upstream_model)
        started = time.perf_counter()
        span = self._teacher_span(req, teacher, body)
        try:
            with current(span):
                result = await teacher.breaker.call(
                    lambda: with_retries(lambda: teacher.provider.complete(body), self.retry, self._on_retry))
        except ProtegeError as exc:
            end(span, error=exc.message)
            degraded = await self._degraded_answer(req, exc, attempt)
            # a degraded answer has billed the student's attempt already (on the row that is captured)
            self.accounting.teacher_served(TeacherOutcome(
                req, teacher, info, "failed", exc.status_code, None, time.perf_counter() - started, error=exc.message,
                attempt=attempt if degraded is None else None, capture=degraded is None))
            if degraded is None:
                raise
            return degraded
        if span is not None:
            annotate(span, usage_attributes(result))
            end(span)
        self.accounting.teacher_served(TeacherOutcome(req, teacher, info, "ok", 200, result,
                                                      time.perf_counter() - started, attempt=attempt))
        return result, info

    async def _degraded_answer(self, req: ChatRequest, exc: ProtegeError, attempt: StudentAttempt | None, *,
                               stream: bool = False) -> tuple[dict[str, Any], RouteInfo] | None:
        """With the teacher down (5xx, unreachable, timeout), serve the active student's answer; the
        one captured row is the student's, noting the teacher's error."""
        if self.students is None or not self.students.degraded_mode or not isinstance(exc, UpstreamError):
            return None
        if exc.status_code < 500:
            return None
        if attempt is None or attempt.stopped:  # a stopped answer is unfinished: the whole one is wanted now
            plan = await self._student_plan(req, rollout=False)
            if plan is None or self.attempts is None:
                return None
            attempt = await self.attempts.ask(req, *plan, early_stop=False)
        if attempt.completion is None:
            return None
        self.metrics.degraded.labels(self.metrics.task_label(req.task)).inc()
        info = RouteInfo(ROUTE_STUDENT, attempt.student, attempt.confidence, "teacher_down")
        self.accounting.student_served(StudentOutcome(req, attempt, info, None, stream=stream,
                                                     teacher_error=exc.message))
        return for_client(attempt.completion, req.body), info

    # --- streaming ---------------------------------------------------------------------------

    async def open_stream(self, req: ChatRequest) -> tuple[AsyncIterator[dict[str, Any]], RouteInfo]:
        """Decide the route and start the answer. Errors before the first chunk raise (the client gets a proper
        HTTP error); afterwards the iterator yields OpenAI chunk dicts — an `{"error": ...}` dict when the teacher
        fails mid-stream — and records the exchange; each dialect frames them. The request holds its concurrency
        slot until the stream ends."""
        self._start_span(req)
        try:
            release = self._admit(req)
        except ProtegeError as exc:
            end(req.span, error=exc.message)
            raise
        try:
            with current(req.span):
                chunks, info = await self._open_stream(req)
        except BaseException as exc:
            release()
            end(req.span, error=exc.message if isinstance(exc, ProtegeError) else type(exc).__name__)
            raise
        return _released_after(chunks, release, req.span), info

    async def _open_stream(self, req: ChatRequest) -> tuple[AsyncIterator[dict[str, Any]], RouteInfo]:
        teacher = self.teachers.select(req.model)
        attempt, info, answer = await self._try_student(req, teacher, stream=True)
        if answer is not None:
            return self._replay(req, answer), info
        body = upstream_body(req.body, teacher.config.upstream_model)
        started = time.perf_counter()
        span = self._teacher_span(req, teacher, body)
        try:
            with current(span):
                first, rest = await teacher.breaker.call(
                    lambda: open_stream(lambda: teacher.provider.stream(body), self.retry, self._on_retry))
        except ProtegeError as exc:
            end(span, error=exc.message)
            degraded = await self._degraded_answer(req, exc, attempt, stream=True)
            self.accounting.teacher_served(TeacherOutcome(
                req, teacher, info, "failed", exc.status_code, None, time.perf_counter() - started, error=exc.message,
                stream=True, attempt=attempt if degraded is None else None, capture=degraded is None))
            if degraded is None:
                raise
            return self._replay(req, degraded[0]), degraded[1]
        self.metrics.ttft.labels(info.route).observe(time.perf_counter() - req.received_at)
        return self._relay(req, teacher, info, first, rest, started, attempt, span), info

    async def _replay(self, req: ChatRequest, completion: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """A whole answer (the student's) as a stream of chunks."""
        wants_usage = bool((req.body.get("stream_options") or {}).get("include_usage"))
        for chunk in completion_as_chunks(completion):
            if chunk.get("choices") or wants_usage:
                yield chunk

    async def _relay(self, req: ChatRequest, teacher: Teacher, info: RouteInfo, first: dict[str, Any] | None,
                     rest: AsyncIterator[dict[str, Any]], started: float, attempt: StudentAttempt | None,
                     span: Span | None) -> AsyncIterator[dict[str, Any]]:
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
                    yield chunk
                chunk = await anext(rest, None)
            status, error, http_status = "ok", None, 200
        except ProtegeError as exc:
            status, error, http_status = "failed", exc.message, exc.status_code
            yield exc.to_body()
        finally:
            aclose = getattr(rest, "aclose", None)
            if aclose is not None:
                await aclose()
            completion = assembler.completion()
            if span is not None:
                annotate(span, usage_attributes(completion))
                end(span, error=error)
            self.accounting.teacher_served(TeacherOutcome(req, teacher, info, status, http_status, completion,
                                                          time.perf_counter() - started, error=error, stream=True,
                                                          attempt=attempt))


async def _released_after(chunks: AsyncIterator[dict[str, Any]], release: Callable[[], None],
                          span: Span | None) -> AsyncIterator[dict[str, Any]]:
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
        release()
        end(span)  # its outcome (and a failure's status) was set when the exchange was accounted
