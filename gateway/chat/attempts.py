"""A student's attempt at a request: whether to ask at all (the version's pre-generation predictor,
`chat.predictor`), asking it — streamed and stopped as soon as the answer cannot be accepted (`chat.early_stop`),
or whole — and judging the answer (`gateway.router.judge`), with the attempt's span and metrics."""

from __future__ import annotations

import logging
import time
from typing import Any

from gateway.chat.bodies import streamed, student_body
from gateway.chat.early_stop import EarlyStop, Stop, stream_until_stopped
from gateway.chat.predictor import AcceptancePredictor
from gateway.chat.types import ROUTE_STUDENT, ChatRequest, StudentAttempt, Students
from gateway.errors import ProtegeError, UpstreamTimeoutError
from gateway.metrics import Metrics
from gateway.router import Verdict, confidence, judge, token_logprobs, validate_output
from gateway.store import StudentVersion
from gateway.tracing import Tracing, annotate, current, end, request_attributes, usage_attributes

log = logging.getLogger("protege.service")
STUDENT_SYSTEM = "protege.student"  # gen_ai.provider.name of a student attempt: the task's own trained model


class StudentAttempts:
    def __init__(self, students: Students, metrics: Metrics, tracing: Tracing) -> None:
        self.students, self.metrics, self.tracing = students, metrics, tracing
        self._predictors: dict[tuple[str, int], AcceptancePredictor | None] = {}  # parsed once per version

    def predicted_to_fail(self, req: ChatRequest, student: StudentVersion) -> bool:
        """The version's predictor sends the request straight to the teacher."""
        if not self.students.predictor:
            return False
        key = (student.task, student.version)
        if key not in self._predictors:
            self._predictors[key] = AcceptancePredictor.from_json(student.details.predictor)
        predictor = self._predictors[key]
        if predictor is None or not predictor.skips(req.body.get("messages") or []):
            return False
        self.metrics.predicted_skips.labels(self.metrics.task_label(req.task)).inc()
        return True

    async def ask(self, req: ChatRequest, student: StudentVersion, messages: list[dict[str, Any]], *,
                  early_stop: bool = True) -> StudentAttempt:
        started = time.perf_counter()
        body, provider = student_body(req.body, student, messages), self.students.provider
        span = None if req.span is None else self.tracing.child(req.span, f"chat {student.model}", {
            **request_attributes(body), "gen_ai.provider.name": STUDENT_SYSTEM, "gen_ai.system": STUDENT_SYSTEM,
            "protege.student.version": student.version})
        stop: Stop | None = None
        try:
            with current(span):
                if early_stop and self.students.early_stop:
                    completion, stop = await self.students.breaker.call(lambda: stream_until_stopped(
                        provider.stream(streamed(body)), EarlyStop(req.body, student.threshold,
                                                                   student.confidence_method)))
                else:
                    completion = await self.students.breaker.call(lambda: provider.complete(body))
        except ProtegeError as exc:
            if exc.status_code == 404:
                self.students.table.forget_loaded(student)
            reason = "student_timeout" if isinstance(exc, UpstreamTimeoutError) else "student_error"
            log.info("student %s failed (%s): %s", student.model, reason, exc.message)
            if span is not None:
                annotate(span, {"protege.accepted": False, "protege.fallback_reason": reason})
                end(span, error=exc.message)
            return StudentAttempt(student, None, None, Verdict(False, reason, exc.message),  # type: ignore[arg-type]
                                  messages)
        self.metrics.upstream_latency.labels(ROUTE_STUDENT).observe(time.perf_counter() - started)
        score = confidence(completion, student.confidence_method)
        task = self.metrics.task_label(req.task)
        if stop is not None:  # a partial answer: its confidence so far is not the answer's
            self.metrics.early_stops.labels(task, stop.reason).inc()
            self.metrics.early_stop_tokens.labels(task).inc(len(token_logprobs(completion)))
            verdict = Verdict(False, stop.reason, stop.detail)  # type: ignore[arg-type]
        else:
            if score is not None:
                self.metrics.confidence.labels(task).observe(score)
            verdict = judge(score, student.threshold, validate_output(req.body, completion))
        if span is not None:
            annotate(span, {**usage_attributes(completion), "protege.confidence": score,
                            "protege.threshold": student.threshold, "protege.accepted": verdict.accept,
                            "protege.fallback_reason": verdict.reason,
                            "protege.fallback_detail": verdict.detail[:200]})
            self.tracing.content(span, "gen_ai.output.messages", [c.get("message") for c in completion["choices"]])
            end(span)
        return StudentAttempt(student, completion, score, verdict, messages, stopped=stop is not None)
