"""Feedback from the app on an answer it got: a rating, labels, a comment and optionally the answer it should
have been. Given with `POST /v1/feedback` (the key that sent the request), `POST /admin/feedback` (any request),
or the X-Protege-Feedback header on a later request, for apps that cannot make a second call; curation then
drops what was rated low and trains on corrections (`distiller.dataset`).

Feedback names its exchange by the request id the gateway returned (`x-request-id`). An id the store does not
hold, or one another key's request got, is a 404 (the two are not told apart); a malformed body a 400. The
header is never allowed to hold up or fail the request that carries it: it is recorded in the background, and
what cannot be recorded is counted (`protege_feedback_rejected`) and logged without its content.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StringConstraints,
    model_validator,
)

from gateway.capture import CaptureWriter
from gateway.config import TaskConfig
from gateway.errors import BadRequestError, NotFoundError, ProtegeError
from gateway.http_utils import parse_json_object, validate
from gateway.metrics import Metrics
from gateway.pii import redact, redact_messages
from gateway.store import Exchange, Feedback, FeedbackSource, Store

log = logging.getLogger("protege.feedback")

FEEDBACK_HEADER = "x-protege-feedback"
MAX_HEADER_BYTES = 16 * 1024
MAX_PENDING = 1000  # header feedback being recorded at once; beyond, it is dropped (counted)
CAPTURE_WAIT_S = 2.0  # how long feedback waits for its exchange to leave this process's capture queue

Label = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CorrectedFunction(_Body):
    name: str = Field(min_length=1, max_length=256)
    arguments: str = Field(max_length=100_000)


class CorrectedToolCall(_Body):
    id: str | None = Field(default=None, max_length=256)
    type: Literal["function"] = "function"
    function: CorrectedFunction


class Correction(_Body):
    """The assistant message the answer should have been."""

    role: Literal["assistant"] = "assistant"
    content: str | None = Field(default=None, max_length=1_000_000)
    tool_calls: list[CorrectedToolCall] | None = Field(default=None, min_length=1, max_length=128)

    @model_validator(mode="after")
    def _says_something(self) -> Correction:
        if not (self.content or "").strip() and not self.tool_calls:
            raise ValueError("a correction needs content or tool_calls")
        return self

    def message(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class FeedbackBody(_Body):
    """`POST /v1/feedback` and `/admin/feedback`, and the X-Protege-Feedback header's JSON."""

    request_id: str = Field(min_length=1, max_length=128, description="the x-request-id of the answer")
    rating: StrictBool | StrictInt | StrictFloat | None = Field(
        default=None, description="the app's rating, in its own scale (true/false, 0-1, 1-5 stars, …)")
    labels: list[Label] = Field(default_factory=list, max_length=32)
    comment: str | None = Field(default=None, max_length=4000)
    correction: Annotated[str, StringConstraints(min_length=1, max_length=1_000_000)] | Correction | None = Field(
        default=None, description="the answer it should have been: its text, or an assistant message")

    @model_validator(mode="after")
    def _rates_or_corrects(self) -> FeedbackBody:
        if self.rating is None and self.correction is None:
            raise ValueError("feedback needs a rating or a correction")
        if isinstance(self.correction, str) and not self.correction.strip():
            raise ValueError("a correction needs text")
        if isinstance(self.rating, float) and not math.isfinite(self.rating):
            raise ValueError("rating must be a finite number")
        return self

    def correction_message(self) -> dict[str, Any] | None:
        if isinstance(self.correction, str):
            return {"role": "assistant", "content": self.correction}
        return None if self.correction is None else self.correction.message()


def verdict(feedback: Feedback, config: TaskConfig) -> str:
    """How a feedback counts in metrics and reports: corrected, low (below the task's floor), ok or unrated."""
    if feedback.correction is not None:
        return "corrected"
    if feedback.rating is None:
        return "unrated"
    return "low" if config.min_rating is not None and feedback.rating < config.min_rating else "ok"


def feedback_json(feedback: Feedback) -> dict[str, Any]:
    """What the feedback routes answer: the feedback as recorded."""
    return {"object": "feedback", "request_id": feedback.request_id, "task": feedback.task,
            "rating": feedback.rating, "labels": list(feedback.labels), "comment": feedback.comment,
            "correction": feedback.correction, "source": feedback.source, "created_at": feedback.created_at}


class FeedbackDesk:
    """Records feedback: validates it, finds its exchange, checks who may give it, stores it and counts it."""

    def __init__(self, store: Store, capture: CaptureWriter, metrics: Metrics,
                 task_config: Callable[[str], TaskConfig] = lambda _: TaskConfig(), *,
                 redact_pii: bool = False) -> None:
        self._store = store
        self._redact_pii = redact_pii  # capture.redact_pii: feedback text is stored as captured text is
        self._capture = capture
        self._metrics = metrics
        self._task_config = task_config  # `Settings.task`: a task's floor decides whether a rating is low
        self._pending: set[asyncio.Task[None]] = set()

    async def record(self, payload: dict[str, Any], *, client: str | None, source: FeedbackSource) -> Feedback:
        """Store `payload` as feedback from `client` (None: the admin, who may rate any exchange). Raises a
        BadRequestError for a malformed payload and a NotFoundError for an exchange this client cannot see."""
        try:
            body = validate(FeedbackBody, payload)
            exchange = await self._exchange(body.request_id)
            # a row with no recorded key (captured before keys were recorded) takes feedback from the admin only
            if exchange is None or (client is not None and exchange.extra.client != client):
                raise NotFoundError(f"no captured request {body.request_id!r}: feedback names a request by the "
                                    "x-request-id its answer came with, and requests sent with capture off "
                                    "are not kept", param="request_id", code="unknown_request")
            rating = None if body.rating is None else float(body.rating)
            comment, correction = body.comment, body.correction_message()
            if self._redact_pii:
                comment = None if comment is None else redact(comment)
                correction = None if correction is None else redact_messages([correction])[0]
            feedback = Feedback(request_id=exchange.request_id, task=exchange.task, created_at=time.time(),
                                exchange_created_at=exchange.created_at, source=source, rating=rating,
                                labels=tuple(dict.fromkeys(body.labels)), comment=comment,
                                correction=correction, user=exchange.user)
            await self._store.put_feedback(feedback)
        except ProtegeError as exc:
            reason = {400: "invalid", 404: "unknown_request"}.get(exc.status_code, "store_error")
            self._metrics.feedback_rejected.labels(source, reason).inc()
            raise
        self._metrics.feedback.labels(self._metrics.task_label(feedback.task), source,
                                      verdict(feedback, self._task_config(feedback.task))).inc()
        return feedback

    async def _exchange(self, request_id: str) -> Exchange | None:
        exchange = await self._store.get_exchange(request_id)
        if exchange is None and self._capture.unsettled > 0:
            # just answered by this process, and still queued: the app asked sooner than the writer's batch
            await self._capture.wait_idle(CAPTURE_WAIT_S)
            exchange = await self._store.get_exchange(request_id)
        return exchange

    def submit_header(self, header: str | None, *, client: str | None) -> None:
        """Record an X-Protege-Feedback header in the background; never raises and never waits."""
        if header is None:
            return
        if len(header) > MAX_HEADER_BYTES or len(self._pending) >= MAX_PENDING:
            reason = "too_large" if len(header) > MAX_HEADER_BYTES else "overloaded"
            self._metrics.feedback_rejected.labels("header", reason).inc()
            return
        task = asyncio.get_running_loop().create_task(self._from_header(header, client))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _from_header(self, header: str, client: str | None) -> None:
        try:
            try:
                payload = parse_json_object(header.encode("latin-1", "replace"))
            except BadRequestError:
                self._metrics.feedback_rejected.labels("header", "invalid").inc()
                raise
            await self.record(payload, client=client, source="header")
        except ProtegeError as exc:  # counted by record or above; the request that carried it went on
            log.info("X-Protege-Feedback not recorded (%s %s)", exc.status_code, exc.code or type(exc).__name__)
        except Exception:
            log.exception("X-Protege-Feedback not recorded")

    async def drain(self) -> None:
        """Wait for header feedback still being recorded (graceful shutdown)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
