"""The one place that wires a chat request through: routing decision → student (with validators and
confidence) → teacher fallback (with retries) → capture → metrics. The HTTP layer only parses and
renders; the decisions themselves are the pure functions of `router.py`."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.breaker import CircuitBreaker
from gateway.capture import CaptureWriter, StreamAssembler, normalise_request, normalise_response
from gateway.config import LimitsConfig, RetryConfig, TeacherConfig
from gateway.errors import NotFoundError, ProtegeError, UpstreamError, UpstreamTimeoutError
from gateway.metrics import Metrics
from gateway.pricing import Price, counterfactual_prompt_tokens
from gateway.providers import ChatProvider
from gateway.providers.openai_compat import completion_as_chunks
from gateway.providers.retry import open_stream, with_retries
from gateway.ratelimit import ConcurrencyLimiter, RateLimiter, check_request_size
from gateway.router import Verdict, confidence, in_rollout, judge, student_messages, validate_output
from gateway.routing_table import RoutingTable
from gateway.scoring import agreement
from gateway.store import Exchange, ExchangeStatus, StudentVersion
from gateway.tasks import message_text, system_prompt, text_hash

log = logging.getLogger("protege.service")

ROUTE_TEACHER = "teacher"
ROUTE_STUDENT = "student"
ROUTE_FALLBACK = "fallback"
ROUTE_SHADOW = "shadow"


@dataclass(slots=True)
class ChatRequest:
    """One parsed client request. `body` is what the client sent (unknown fields included)."""

    request_id: str
    body: dict[str, Any]
    task: str
    task_source: str
    user: str | None
    capture: bool = True  # False: this request is never stored (X-Protege-Capture: off, or a skipped task)
    client: str | None = None  # who is billed the tokens for rate limits (None: the gateway's own calls)
    received_at: float = field(default_factory=time.perf_counter)
    created_at: float = field(default_factory=time.time)

    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def sticky_key(self) -> str:
        return self.user or self.request_id


def _no_breaker() -> CircuitBreaker:
    return CircuitBreaker("upstream", failure_threshold=0)


@dataclass(slots=True)
class Teacher:
    config: TeacherConfig
    provider: ChatProvider
    price: Price | None
    breaker: CircuitBreaker = field(default_factory=_no_breaker)


@dataclass(slots=True)
class Students:
    """The student server and how the cascade treats it."""

    provider: ChatProvider
    table: RoutingTable
    price: Price | None = None
    degraded_mode: bool = False
    shadow_rate: float = 0.0
    breaker: CircuitBreaker = field(default_factory=_no_breaker)


@dataclass(slots=True)
class RouteInfo:
    """How a request was served; rendered as `x-protege-*` response headers."""

    route: str = ROUTE_TEACHER
    student: StudentVersion | None = None
    confidence: float | None = None
    fallback_reason: str | None = None

    def headers(self) -> dict[str, str]:
        out = {"x-protege-route": self.route}
        if self.student is not None:
            out["x-protege-student"] = f"{self.student.model}@v{self.student.version}"
        if self.confidence is not None:
            out["x-protege-confidence"] = f"{self.confidence:.4f}"
        return out


@dataclass(slots=True)
class StudentAttempt:
    student: StudentVersion
    completion: dict[str, Any] | None
    confidence: float | None
    verdict: Verdict
    messages: list[dict[str, Any]] = field(default_factory=list)  # as sent (a distilled system prompt dropped)


def _usage(completion: dict[str, Any] | None) -> tuple[int | None, int | None]:
    usage = (completion or {}).get("usage") or {}
    return usage.get("prompt_tokens"), usage.get("completion_tokens")


def _priced(price: Price | None, completion: dict[str, Any] | None) -> float | None:
    """The cost of one upstream answer; None when the price or the usage is unknown (never a silent 0)."""
    prompt_tokens, completion_tokens = _usage(completion)
    if price is None or prompt_tokens is None or completion_tokens is None:
        return None
    details = ((completion or {}).get("usage") or {}).get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return price.cost(prompt_tokens, completion_tokens, cached if isinstance(cached, int) else 0)


def _messages_chars(messages: list[dict[str, Any]]) -> int:
    return sum(len(message_text(m.get("content"))) for m in messages)


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


def student_body(body: dict[str, Any], student: StudentVersion, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The request for the student: never streamed (it is judged whole), always with logprobs."""
    out = upstream_body({k: v for k, v in body.items() if k not in ("stream", "stream_options")}, student.model)
    out["messages"] = messages
    out["logprobs"] = True
    return out


def for_client(completion: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """The student's answer as the client asked for it (logprobs only if requested)."""
    if request.get("logprobs"):
        return completion
    choices = [{k: v for k, v in c.items() if k != "logprobs"} for c in completion.get("choices") or []]
    return {**completion, "choices": choices}


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


class ChatService:
    def __init__(self, teachers: TeacherSet, capture: CaptureWriter, metrics: Metrics, retry: RetryConfig,
                 students: Students | None = None, limiter: RateLimiter | None = None,
                 limits: LimitsConfig | None = None) -> None:
        self.teachers = teachers
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
        self._background: set[asyncio.Task[None]] = set()
        self._parity: dict[tuple[str, int], tuple[int, float]] = {}

    async def drain(self) -> None:
        """Wait for background shadow calls (graceful shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def live_parity(self) -> dict[tuple[str, int], tuple[int, float]]:
        """(task, version) → (comparisons, mean agreement) seen by this process."""
        return dict(self._parity)

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
            training_s = (s.details or {}).get("training_s")
            if isinstance(training_s, int | float):
                self.metrics.last_training.labels(self.metrics.task_label(task)).set(training_s)
        for task, percent in rollouts.items():
            self.metrics.rollout.labels(self.metrics.task_label(task)).set(percent)

    def _on_retry(self, exc: ProtegeError) -> None:
        self.metrics.retries.labels(ROUTE_TEACHER).inc()
        log.info("retrying teacher after %s", type(exc).__name__)

    # --- routing ---------------------------------------------------------------------------

    async def _student_plan(self, req: ChatRequest) -> tuple[StudentVersion, list[dict[str, Any]]] | None:
        """The active student and its messages when this request is routed to it."""
        if self.students is None or (req.body.get("n") or 1) != 1:
            return None
        route = await self.students.table.route(req.task)
        if route is None or not in_rollout(req.task, req.sticky_key, route.rollout_percent):
            return None
        messages = student_messages(req.body.get("messages") or [], route.student)
        return None if messages is None else (route.student, messages)

    async def _ask_student(self, req: ChatRequest, student: StudentVersion,
                           messages: list[dict[str, Any]]) -> StudentAttempt:
        assert self.students is not None
        started = time.perf_counter()
        try:
            body, provider = student_body(req.body, student, messages), self.students.provider
            completion = await self.students.breaker.call(lambda: provider.complete(body))
        except ProtegeError as exc:
            if exc.status_code == 404:
                self.students.table.forget_loaded(student)
            reason = "student_timeout" if isinstance(exc, UpstreamTimeoutError) else "student_error"
            log.info("student %s failed (%s): %s", student.model, reason, exc.message)
            return StudentAttempt(student, None, None, Verdict(False, reason, exc.message),  # type: ignore[arg-type]
                                  messages)
        self.metrics.upstream_latency.labels(ROUTE_STUDENT).observe(time.perf_counter() - started)
        score = confidence(completion, student.confidence_method)
        if score is not None:
            self.metrics.confidence.labels(self.metrics.task_label(req.task)).observe(score)
        verdict = judge(score, student.threshold, validate_output(req.body, completion))
        return StudentAttempt(student, completion, score, verdict, messages)

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
        if plan is None:
            return None, RouteInfo(), None
        attempt = await self._ask_student(req, *plan)
        if attempt.verdict.accept and attempt.completion is not None:
            info = RouteInfo(ROUTE_STUDENT, attempt.student, attempt.confidence)
            self._record_student(req, attempt, info, teacher, stream=stream)
            self._maybe_shadow(req, teacher, attempt)
            return attempt, info, for_client(attempt.completion, req.body)
        return attempt, self._fell_back(req, attempt), None

    def _admit(self, req: ChatRequest) -> Callable[[], None]:
        """The request-size caps, then a concurrency slot (the returned function gives it back)."""
        check_request_size(req.body, max_n=self.limits.max_n, max_output_tokens=self.limits.max_output_tokens)
        return self.concurrency.acquire(req.client)

    async def complete(self, req: ChatRequest) -> tuple[dict[str, Any], RouteInfo]:
        release = self._admit(req)
        try:
            return await self._complete(req)
        finally:
            release()

    async def _complete(self, req: ChatRequest) -> tuple[dict[str, Any], RouteInfo]:
        teacher = self.teachers.select(req.model)
        attempt, info, answer = await self._try_student(req, teacher)
        if answer is not None:
            return answer, info
        body = upstream_body(req.body, teacher.config.upstream_model)
        started = time.perf_counter()
        try:
            result = await teacher.breaker.call(
                lambda: with_retries(lambda: teacher.provider.complete(body), self.retry, self._on_retry))
        except ProtegeError as exc:
            degraded = await self._degraded_answer(req, exc, attempt)
            # a degraded answer has billed the student's attempt already (on the row that is captured)
            self._record(req, teacher, info, "failed", exc.status_code, None, time.perf_counter() - started,
                         error=exc.message, attempt=attempt if degraded is None else None, capture=degraded is None)
            if degraded is None:
                raise
            return degraded
        self._record(req, teacher, info, "ok", 200, result, time.perf_counter() - started, attempt=attempt)
        return result, info

    async def _degraded_answer(self, req: ChatRequest, exc: ProtegeError, attempt: StudentAttempt | None, *,
                               stream: bool = False) -> tuple[dict[str, Any], RouteInfo] | None:
        """With the teacher down (5xx, unreachable, timeout), serve the active student's answer; the
        one captured row is the student's, noting the teacher's error."""
        if self.students is None or not self.students.degraded_mode or not isinstance(exc, UpstreamError):
            return None
        if exc.status_code < 500:
            return None
        if attempt is None:
            route = await self.students.table.route(req.task)
            if route is None:
                return None
            messages = student_messages(req.body.get("messages") or [], route.student)
            if messages is None:
                return None
            attempt = await self._ask_student(req, route.student, messages)
        if attempt.completion is None:
            return None
        self.metrics.degraded.labels(self.metrics.task_label(req.task)).inc()
        info = RouteInfo(ROUTE_STUDENT, attempt.student, attempt.confidence, "teacher_down")
        self._record_student(req, attempt, info, None, stream=stream, teacher_error=exc.message)
        return for_client(attempt.completion, req.body), info

    # --- shadow scoring --------------------------------------------------------------------

    def _maybe_shadow(self, req: ChatRequest, teacher: Teacher, attempt: StudentAttempt) -> None:
        """Also ask the teacher, in the background, for a share of student-served requests."""
        assert self.students is not None
        if self.students.shadow_rate <= 0 or random.random() >= self.students.shadow_rate:
            return
        task = asyncio.get_running_loop().create_task(self._shadow(req, teacher, attempt))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _shadow(self, req: ChatRequest, teacher: Teacher, attempt: StudentAttempt) -> None:
        shadow_req = ChatRequest(request_id=req.request_id + "-shadow", body={**req.body, "stream": False},
                                 task=req.task, task_source=req.task_source, user=req.user, capture=req.capture)
        started = time.perf_counter()
        body = upstream_body(shadow_req.body, teacher.config.upstream_model)
        try:
            result = await teacher.breaker.call(lambda: teacher.provider.complete(body))
        except ProtegeError as exc:
            log.info("shadow call to the teacher failed: %s", exc.message)
            return
        score = agreement(attempt.completion, result)
        version = attempt.student.version
        labels = (self.metrics.task_label(req.task), str(version))
        self.metrics.shadow.labels(*labels).inc()
        self.metrics.shadow_agreement.labels(*labels).inc(score)
        count, mean = self._parity.get((req.task, version), (0, 0.0))
        count, mean = count + 1, mean + (score - mean) / (count + 1)
        self._parity[(req.task, version)] = (count, mean)
        self.metrics.live_parity.labels(*labels).set(mean)
        # the teacher's answer is training data like any other; the row notes the comparison
        info = RouteInfo(ROUTE_SHADOW, attempt.student, attempt.confidence)
        self._record(shadow_req, teacher, info, "ok", 200, result, time.perf_counter() - started,
                     extra={"shadow": {"version": version, "agreement": score}})

    # --- streaming ---------------------------------------------------------------------------

    async def open_stream(self, req: ChatRequest) -> tuple[AsyncIterator[bytes], RouteInfo]:
        """Decide the route and start the answer. Errors before the first byte raise (the client gets
        a proper HTTP error); afterwards the iterator relays SSE bytes and records the exchange. The
        request holds its concurrency slot until the stream ends."""
        release = self._admit(req)
        try:
            chunks, info = await self._open_stream(req)
        except BaseException:
            release()
            raise
        return _released_after(chunks, release), info

    async def _open_stream(self, req: ChatRequest) -> tuple[AsyncIterator[bytes], RouteInfo]:
        teacher = self.teachers.select(req.model)
        attempt, info, answer = await self._try_student(req, teacher, stream=True)
        if answer is not None:
            return self._replay(req, answer), info
        body = upstream_body(req.body, teacher.config.upstream_model)
        started = time.perf_counter()
        try:
            first, rest = await teacher.breaker.call(
                lambda: open_stream(lambda: teacher.provider.stream(body), self.retry, self._on_retry))
        except ProtegeError as exc:
            degraded = await self._degraded_answer(req, exc, attempt, stream=True)
            self._record(req, teacher, info, "failed", exc.status_code, None, time.perf_counter() - started,
                         error=exc.message, stream=True, attempt=attempt if degraded is None else None,
                         capture=degraded is None)
            if degraded is None:
                raise
            return self._replay(req, degraded[0]), degraded[1]
        self.metrics.ttft.labels(info.route).observe(time.perf_counter() - req.received_at)
        return self._relay(req, teacher, info, first, rest, started, attempt), info

    async def _replay(self, req: ChatRequest, completion: dict[str, Any]) -> AsyncIterator[bytes]:
        """A whole answer (the student's) as one well-formed SSE stream."""
        wants_usage = bool((req.body.get("stream_options") or {}).get("include_usage"))
        for chunk in completion_as_chunks(completion):
            if chunk.get("choices") or wants_usage:
                yield sse(chunk)
        yield SSE_DONE

    async def _relay(self, req: ChatRequest, teacher: Teacher, info: RouteInfo, first: dict[str, Any] | None,
                     rest: AsyncIterator[dict[str, Any]], started: float,
                     attempt: StudentAttempt | None) -> AsyncIterator[bytes]:
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
            self._record(req, teacher, info, status, http_status, assembler.completion(),
                         time.perf_counter() - started, error=error, stream=True, attempt=attempt)

    # --- recording ---------------------------------------------------------------------------
    #
    # Cost is what was paid for the request: on a fallback, the teacher's answer and the student's
    # rejected attempt. The counterfactual is what the teacher alone would have been paid for it, so
    # that savings = counterfactual − cost over any set of requests (a shadow call is a cost with no
    # counterfactual: the teacher-only world makes no such call).

    def _record(self, req: ChatRequest, teacher: Teacher, info: RouteInfo, status: ExchangeStatus,
                http_status: int, completion: dict[str, Any] | None, upstream_s: float, *,
                error: str | None = None, stream: bool = False, attempt: StudentAttempt | None = None,
                capture: bool = True, extra: dict[str, Any] | None = None) -> None:
        extra = dict(extra or {})
        teacher_cost = _priced(teacher.price, completion)
        if teacher_cost is None and status == "ok":
            self.metrics.unknown_price.labels(teacher.config.served_name).inc()
        self._count_tokens(req, teacher.config.served_name, completion)
        self._bill_client(req, completion)
        student_cost: float | None = None
        if attempt is not None:
            student_cost = self._student_cost(req, attempt)
            answer = (attempt.completion or {}).get("choices") or [{}]
            extra["student"] = {"version": attempt.student.version, "model": attempt.student.model,
                                "confidence": attempt.confidence, "reason": attempt.verdict.reason,
                                "detail": attempt.verdict.detail[:500], "message": answer[0].get("message"),
                                "cost_usd": student_cost}
        parts = [c for c in (teacher_cost, student_cost) if c is not None]
        cost = sum(parts) if parts else None
        counterfactual = 0.0 if info.route == ROUTE_SHADOW else teacher_cost
        self._observe(req, info.route, status, upstream_s, stream, cost, counterfactual)
        if not capture or not req.capture or not self.capture.enabled:
            return
        self.capture.submit(self._exchange(req, info.route, teacher.config.model, status, http_status, completion,
                                           error=error, stream=stream, extra=extra, cost=cost))

    def _student_cost(self, req: ChatRequest, attempt: StudentAttempt) -> float | None:
        """A student answer's cost (tokens counted under the student's model); None when not priced."""
        assert self.students is not None
        if attempt.completion is None:
            return None  # the student failed before answering: nothing to bill
        self._count_tokens(req, attempt.student.model, attempt.completion)
        cost = _priced(self.students.price, attempt.completion)
        if cost is None:
            self.metrics.unknown_price.labels(attempt.student.model).inc()
        return cost

    def _record_student(self, req: ChatRequest, attempt: StudentAttempt, info: RouteInfo, teacher: Teacher | None,
                        *, stream: bool = False, teacher_error: str | None = None) -> None:
        """A student answer served to the client. `teacher` is None in degraded mode: the teacher-only
        world would have answered with an error, which costs nothing."""
        assert self.students is not None and attempt.completion is not None
        cost = self._student_cost(req, attempt)
        self._bill_client(req, attempt.completion)
        counterfactual = 0.0 if teacher is None else self._teacher_estimate(req, teacher, attempt)
        self._observe(req, ROUTE_STUDENT, "ok", 0.0, stream, cost, counterfactual)
        if not req.capture or not self.capture.enabled:
            return
        extra: dict[str, Any] = {"student": {"version": attempt.student.version, "confidence": attempt.confidence,
                                             "reason": info.fallback_reason},
                                 "counterfactual_cost_usd": counterfactual}
        if teacher_error is not None:
            extra["teacher_error"] = teacher_error
        self.capture.submit(self._exchange(req, ROUTE_STUDENT, attempt.student.model, "ok", 200, attempt.completion,
                                           stream=stream, extra=extra, cost=cost))

    @staticmethod
    def _teacher_estimate(req: ChatRequest, teacher: Teacher, attempt: StudentAttempt) -> float | None:
        """What the teacher would have charged for the student's answer: its output tokens, and its
        prompt with any distilled system prompt put back."""
        prompt_tokens, completion_tokens = _usage(attempt.completion)
        if teacher.price is None or prompt_tokens is None or completion_tokens is None:
            return None
        full = counterfactual_prompt_tokens(prompt_tokens, _messages_chars(req.body.get("messages") or []),
                                            _messages_chars(attempt.messages))
        return teacher.price.cost(full, completion_tokens)

    def _bill_client(self, req: ChatRequest, completion: dict[str, Any] | None) -> None:
        """The client's token budget pays for the answer it got (not for rejected student attempts)."""
        if req.client is not None:
            prompt_tokens, completion_tokens = _usage(completion)
            self.limiter.spend_tokens(req.client, (prompt_tokens or 0) + (completion_tokens or 0))

    def _count_tokens(self, req: ChatRequest, model: str, completion: dict[str, Any] | None) -> None:
        prompt_tokens, completion_tokens = _usage(completion)
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

    def _exchange(self, req: ChatRequest, route: str, upstream_model: str, status: ExchangeStatus, http_status: int,
                  completion: dict[str, Any] | None, *, error: str | None = None, stream: bool = False,
                  extra: dict[str, Any] | None = None, cost: float | None = None) -> Exchange:
        response = normalise_response(completion) if completion else None
        prompt_tokens, completion_tokens = _usage(completion)
        choices = (response or {}).get("choices") or [{}]
        return Exchange(
            request_id=req.request_id, created_at=req.created_at, task=req.task, task_source=req.task_source,
            route=route, model=req.model, upstream_model=upstream_model, status=status, http_status=http_status,
            stream=stream, request=normalise_request(req.body), response=response, user=req.user,
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
            latency_ms=round((time.perf_counter() - req.received_at) * 1000, 3), cost_usd=cost,
            finish_reason=choices[0].get("finish_reason"), error=error, system_hash=_system_hash(req.body),
            extra=extra or {},
        )


async def _released_after(chunks: AsyncIterator[bytes], release: Callable[[], None]) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
        release()


def _system_hash(body: dict[str, Any]) -> str | None:
    system = system_prompt(body.get("messages") or [])
    return text_hash(system) if system else None
