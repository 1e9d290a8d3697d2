"""Shadow scoring: for a share of the requests a student served, the teacher is asked too, in the background;
their agreement on the version's own scorer (`gateway.chat.live_scoring`) is this process's live parity per
task and version (`gateway.parity`), and the teacher's answer is captured as training data like any other."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from gateway.chat.accounting import Accounting, TeacherOutcome
from gateway.chat.bodies import upstream_body
from gateway.chat.live_scoring import LiveScorers
from gateway.chat.types import ROUTE_SHADOW, ChatRequest, RouteInfo, StudentAttempt, Teacher
from gateway.errors import ProtegeError
from gateway.metrics import Metrics
from gateway.parity import LiveParity
from gateway.scoring import Comparison, Scorer, ScorerUnavailableError, StructuralScorer
from gateway.store import ExchangeExtra, ShadowNote
from gateway.tracing import Tracing, annotate, current, end, request_attributes

log = logging.getLogger("protege.service")


class ShadowScorer:
    def __init__(self, rate: float, metrics: Metrics, accounting: Accounting, tracing: Tracing | None = None,
                 scorers: LiveScorers | None = None, rate_for: Callable[[str], float | None] | None = None) -> None:
        self.rate = rate
        self.rate_for = rate_for  # a task's own rate while a rollout ramp gathers evidence (the higher one counts)
        self.scorers = scorers
        self.tracing = tracing or Tracing()
        self.metrics = metrics
        self.accounting = accounting
        self._background: set[asyncio.Task[None]] = set()
        self._parity: dict[tuple[str, int], LiveParity] = {}

    def maybe(self, req: ChatRequest, teacher: Teacher, attempt: StudentAttempt) -> None:
        """Also ask the teacher, in the background, for a `rate` share of student-served requests."""
        ramp_rate = self.rate_for(req.task) if self.rate_for is not None else None
        rate = self.rate if ramp_rate is None else max(self.rate, ramp_rate)
        if rate <= 0 or random.random() >= rate:
            return
        task = asyncio.get_running_loop().create_task(self._shadow(req, teacher, attempt))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for the calls in flight (graceful shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def live_parity(self) -> dict[tuple[str, int], LiveParity]:
        """(task, version) → the comparisons this process made."""
        return {key: LiveParity(p.comparisons, p.total_agreement) for key, p in self._parity.items()}

    async def _shadow(self, req: ChatRequest, teacher: Teacher, attempt: StudentAttempt) -> None:
        shadow_req = ChatRequest(request_id=req.request_id + "-shadow", body={**req.body, "stream": False},
                                 task=req.task, task_source=req.task_source, user=req.user, capture=req.capture)
        started = time.perf_counter()
        body = upstream_body(shadow_req.body, teacher.config.upstream_model)
        # a child of the request it shadows (which may have ended by now); its outcome is accounted on it
        if req.span is not None:
            shadow_req.span = self.tracing.child(req.span, f"chat {teacher.config.upstream_model}", {
                **request_attributes(body), "protege.shadow": True,
                "protege.student.version": attempt.student.version, "protege.teacher": teacher.config.served_name})
        try:
            with current(shadow_req.span):
                result = await teacher.breaker.call(lambda: teacher.provider.complete(body))
        except ProtegeError as exc:
            log.info("shadow call to the teacher failed: %s", exc.message)
            end(shadow_req.span, error=exc.message)
            return
        try:
            score = await self._score(req, attempt, result)
            self._compare(req, shadow_req, teacher, attempt, result, started, score)
        finally:
            end(shadow_req.span)

    async def _score(self, req: ChatRequest, attempt: StudentAttempt, result: dict[str, Any]) -> float | None:
        """The comparison on the version's scorer; None when this gateway cannot score it (counted, logged)."""
        try:
            scorer: Scorer = self.scorers.for_student(attempt.student) if self.scorers else StructuralScorer()
            messages = req.body.get("messages")
            comparison = Comparison(messages if isinstance(messages, list) else [], _message(attempt.completion),
                                    _message(result))
            return (await scorer.score([comparison]))[0].value
        except ScorerUnavailableError:
            reason = "unavailable"
        except ProtegeError as exc:  # the embeddings endpoint or the judge failed
            log.info("shadow scoring failed: %s", exc.message)
            reason = "scorer_failed"
        self.metrics.shadow_unscored.labels(self.metrics.task_label(req.task), reason).inc()
        return None

    def _compare(self, req: ChatRequest, shadow_req: ChatRequest, teacher: Teacher, attempt: StudentAttempt,
                 result: dict[str, Any], started: float, score: float | None) -> None:
        info = RouteInfo(ROUTE_SHADOW, attempt.student, attempt.confidence)
        if score is None:  # still training data; the row notes no comparison
            self.accounting.teacher_served(TeacherOutcome(shadow_req, teacher, info, "ok", 200, result,
                                                          time.perf_counter() - started))
            return
        annotate(shadow_req.span, {"protege.agreement": score})
        version = attempt.student.version
        labels = (self.metrics.task_label(req.task), str(version))
        self.metrics.shadow.labels(*labels).inc()
        self.metrics.shadow_agreement.labels(*labels).inc(score)
        parity = self._parity.setdefault((req.task, version), LiveParity())
        parity.add(score)
        self.metrics.live_parity.labels(*labels).set(parity.mean or 0.0)
        # the teacher's answer is training data like any other; the row notes the comparison
        self.accounting.teacher_served(TeacherOutcome(shadow_req, teacher, info, "ok", 200, result,
                                                      time.perf_counter() - started,
                                                      extra=ExchangeExtra(shadow=ShadowNote(version, score))))


def _message(completion: dict[str, Any] | None) -> dict[str, Any] | None:
    choices = (completion or {}).get("choices") or [{}]
    message = choices[0].get("message")
    return message if isinstance(message, dict) else None
