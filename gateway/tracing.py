"""OpenTelemetry traces of gateway requests, following the GenAI semantic conventions.

One SERVER span per chat request (`chat <model>`), parented on the client's W3C `traceparent` when it sends
one, with CLIENT children for the student attempt and the teacher call (a `retry` event per retry) and an
INTERNAL one for the capture hand-off; a shadow call is a child of the request it shadows. `gen_ai.*`
attributes carry the operation, provider, request and response models, token usage and finish reasons;
Protégé's own decisions go under `protege.*` (task, route, student version, confidence, fallback reason,
cost, counterfactual cost, price source). Message content goes on the spans only with `capture_content`.
OpenAI-compatible upstreams receive the trace context (`traceparent`) of the span that calls them.

Off unless configured (`tracing.enabled`, or the standard `OTEL_EXPORTER_OTLP_*ENDPOINT` variables); off,
no span is made and a request pays one `None` check per step. The SDK and its OTLP/HTTP exporter are
imported only when tracing is on. Each process has its own provider (no global one is set): workers of one
gateway export separately, as OpenTelemetry expects.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span

    from gateway.config import TracingConfig

log = logging.getLogger("protege.tracing")

PROPAGATOR = TraceContextTextMapPropagator()
TRACE_HEADERS = ("traceparent", "tracestate")
DEFAULT_SERVICE = "protege-gateway"
Attributes = Mapping[str, Any]


def trace_headers() -> dict[str, str] | None:
    """The W3C trace context of the current span, for an upstream request (None when nothing is traced)."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier)
    return carrier or None


def incoming_context(headers: Mapping[str, str]) -> dict[str, str]:
    """The client's trace context headers, kept with the request until its span starts."""
    return {name: headers[name] for name in TRACE_HEADERS if name in headers}


class Tracing:
    """This process's tracer, or nothing: `Tracing()` makes no spans at all."""

    def __init__(self, provider: TracerProvider | None = None, *, capture_content: bool = False) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("protege.gateway") if provider is not None else None
        self.capture_content = capture_content

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def request_span(self, model: str, carrier: Mapping[str, str], attributes: Attributes) -> Span | None:
        """The SERVER span of one chat request, child of the client's span when `carrier` names one."""
        if self._tracer is None:
            return None
        parent = PROPAGATOR.extract(carrier) if carrier else None
        return self._tracer.start_span(f"chat {model}", context=parent, kind=SpanKind.SERVER,
                                       attributes=_clean(attributes))

    def child(self, parent: Span | None, name: str, attributes: Attributes, *,
              kind: SpanKind = SpanKind.CLIENT) -> Span | None:
        """A span under `parent` (none when the request is not traced)."""
        if self._tracer is None or parent is None:
            return None
        return self._tracer.start_span(name, context=trace.set_span_in_context(parent), kind=kind,
                                       attributes=_clean(attributes))

    def content(self, span: Span | None, name: str, value: object) -> None:
        """Message content on a span, only where configured (it is what the prompts and answers say)."""
        if span is not None and self.capture_content and value is not None:
            span.set_attribute(name, json.dumps(value, ensure_ascii=False, default=str))

    def flush(self, timeout_ms: int = 5000) -> bool:
        return self._provider.force_flush(timeout_ms) if self._provider is not None else True

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()


def annotate(span: Span | None, attributes: Attributes) -> None:
    if span is not None:
        span.set_attributes(_clean(attributes))


def end(span: Span | None, *, error: str | None = None) -> None:
    """End a span; with `error`, as failed (the message is the gateway's own, already free of secrets)."""
    if span is None:
        return
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, error[:500]))
    span.end()


@contextlib.contextmanager
def current(span: Span | None) -> Iterator[None]:
    """Make `span` the current one for the block: upstream calls inside carry its trace context."""
    if span is None:
        yield
        return
    with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
        yield


def event(name: str, attributes: Attributes) -> None:
    """An event on the current span (a retry of the teacher call)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(name, _clean(attributes))


def usage_attributes(completion: Mapping[str, Any] | None) -> dict[str, Any]:
    """gen_ai.response.* and gen_ai.usage.* of an OpenAI chat completion."""
    if not completion:
        return {}
    usage = completion.get("usage") or {}
    reasons = [str(c.get("finish_reason")) for c in completion.get("choices") or [] if c.get("finish_reason")]
    return {"gen_ai.response.id": completion.get("id"), "gen_ai.response.model": completion.get("model"),
            "gen_ai.usage.input_tokens": usage.get("prompt_tokens"),
            "gen_ai.usage.output_tokens": usage.get("completion_tokens"),
            "gen_ai.response.finish_reasons": reasons or None}


def request_attributes(body: Mapping[str, Any]) -> dict[str, Any]:
    """gen_ai.request.* of an OpenAI chat request body."""
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    return {"gen_ai.operation.name": "chat", "gen_ai.request.model": body.get("model"),
            "gen_ai.request.max_tokens": max_tokens, "gen_ai.request.temperature": body.get("temperature"),
            "gen_ai.request.top_p": body.get("top_p")}


def _clean(attributes: Attributes) -> dict[str, Any]:
    """OpenTelemetry takes str, bool, int, float or sequences of one of them; None means "not known"."""
    out: dict[str, Any] = {}
    for key, value in attributes.items():
        if value is None or (isinstance(value, Sequence) and not isinstance(value, str) and not value):
            continue
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


def build_tracing(config: TracingConfig, environ: Mapping[str, str]) -> Tracing:
    """Tracing as configured: `config` first, then the standard OpenTelemetry environment variables."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true" and config.enabled is not True:
        return Tracing()
    endpoint_in_env = any(environ.get(name) for name in ("OTEL_EXPORTER_OTLP_ENDPOINT",
                                                        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    enabled = config.enabled if config.enabled is not None else bool(endpoint_in_env or config.endpoint)
    if not enabled:
        return Tracing()
    # the SDK only when tracing is on: a gateway without it starts without these imports
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    service = config.service_name or environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter = OTLPSpanExporter(endpoint=config.endpoint) if config.endpoint else OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info("tracing on: service %s, OTLP/HTTP to %s", service, _where(config.endpoint, environ))
    return Tracing(provider, capture_content=config.capture_content)


def _where(endpoint: str | None, environ: Mapping[str, str]) -> str:
    return (endpoint or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or (environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318").rstrip("/") + "/v1/traces"))
