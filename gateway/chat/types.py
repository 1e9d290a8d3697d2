"""The chat core's value types: the request every dialect builds, the upstreams it may go to, and how it was
served."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.breaker import CircuitBreaker
from gateway.config import TeacherConfig
from gateway.errors import NotFoundError
from gateway.pricing import Price
from gateway.providers import ChatProvider
from gateway.router import Verdict
from gateway.routing_table import RoutingTable
from gateway.store import StudentVersion

if TYPE_CHECKING:
    from opentelemetry.trace import Span

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
    trace_context: dict[str, str] = field(default_factory=dict)  # the client's traceparent/tracestate headers
    span: Span | None = None  # this request's span, when the gateway traces

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
    price: Price | None = None  # the configured per-token price, or the compute price the pricer keeps current
    price_configured: bool = False
    degraded_mode: bool = False
    shadow_rate: float = 0.0
    early_stop: bool = False  # `gateway.chat.early_stop`
    predictor: bool = False  # use a version's pre-generation predictor where the distiller enabled it
    breaker: CircuitBreaker = field(default_factory=_no_breaker)

    def price_for(self, student: StudentVersion) -> Price | None:
        """What `student` costs per token: a configured price first, else the price the distiller recorded for a
        hosted version (its provider's list price), else the compute price of the student server."""
        serving = student.details.serving_price
        if self.price_configured or serving is None:
            return self.price
        return Price(serving.input_per_token, serving.output_per_token, source=serving.source)


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
    stopped: bool = False  # stopped early (`gateway.chat.early_stop`): `completion` is the start of an answer


class TeacherSet:
    """Selects the teacher for a request's `model`; with one teacher, every model name maps to it."""

    def __init__(self, teachers: list[Teacher]) -> None:
        self.all = teachers
        self._by_name: dict[str, Teacher] = {}
        for teacher in teachers:
            for name in (teacher.config.served_name, teacher.config.model, *teacher.config.aliases):
                self._by_name.setdefault(name, teacher)

    def named(self, model: str) -> Teacher | None:
        """The teacher with this served name, model or alias."""
        return self._by_name.get(model)

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
