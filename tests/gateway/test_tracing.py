"""OpenTelemetry traces of gateway requests, received by an OTLP/HTTP receiver written for the test (a real
socket; the exporter's protobuf decoded with opentelemetry-proto): one cascade request whose student answer is
rejected is one trace under the client's traceparent — the request span, the student attempt, the teacher call,
the capture hand-off — with GenAI and Protégé attributes, and both upstreams receive the trace context of the
span that called them. Retries are events, content is on spans only when asked, and tracing is off unless
configured."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from gateway.config import TracingConfig
from gateway.store import StudentVersion, open_store
from gateway.tracing import build_tracing
from tests.inprocess import InProcessGateway, inprocess_gateway, settings_for
from tests.openai_upstream import ScriptedUpstream

TASK = "tickets"
ADMIN = "admin-token-for-tracing-tests-0123456789"
SERVER, CLIENT, INTERNAL = 2, 3, 1  # OTLP span kinds
ERROR = 2  # OTLP status code


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


@dataclass
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]
    status: int
    events: list[tuple[str, dict[str, Any]]]
    service: str


@dataclass
class OtlpReceiver:
    """POST /v1/traces (OTLP/HTTP, protobuf), as a collector receives it; every span kept."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                receiver.content_types.append(self.headers.get("content-type", ""))
                request = ExportTraceServiceRequest()
                request.ParseFromString(data)
                receiver.add(request)
                body = b""  # an empty ExportTraceServiceResponse: everything accepted
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.spans.append(ReceivedSpan(
                        span.name, span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(), span.kind,
                        {a.key: _value(a.value) for a in span.attributes}, span.status.code,
                        [(e.name, {a.key: _value(a.value) for a in e.attributes}) for e in span.events],
                        str(resource.get("service.name"))))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    yield server
    server.close()


def register_student(store: Path) -> None:
    """An active student of TASK that must be confident (threshold −1 on the mean log-probability)."""
    async def run() -> None:
        db = open_store(f"sqlite:///{store}")
        await db.open()
        now = time.time()
        await db.add_student(StudentVersion(task=TASK, version=1, status="candidate", model="tiny-v1",
                                            created_at=now, updated_at=now, threshold=-1.0))
        await db.set_student_status(TASK, 1, "active")
        await db.close()

    asyncio.run(run())


@dataclass
class Traced:
    gateway: InProcessGateway
    teacher: ScriptedUpstream
    student: ScriptedUpstream
    receiver: OtlpReceiver

    def chat(self, *, traceparent: str | None = None, stream: bool = False) -> dict[str, str]:
        headers = {"X-Protege-Task": TASK, **({"traceparent": traceparent} if traceparent else {})}
        client = self.gateway.openai(api_key="x")
        params: dict[str, Any] = {"model": "gpt-4o-mini", "max_tokens": 20, "extra_headers": headers,
                                  "messages": [{"role": "user", "content": "Where is order 1234?"}]}
        if stream:
            with client.chat.completions.with_streaming_response.create(stream=True, **params) as response:
                list(response.iter_lines())
                return dict(response.headers)
        return dict(client.chat.completions.with_raw_response.create(**params).headers)

    def spans(self, count: int) -> list[ReceivedSpan]:
        """The spans received once `count` have arrived (the gateway's batch processor flushed)."""
        self.gateway.client.app.state.protege.service.tracing.flush()  # type: ignore[attr-defined]
        deadline = time.monotonic() + 10
        while len(self.receiver.spans) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.receiver.spans)


@pytest.fixture
def traced(receiver: OtlpReceiver, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Traced]:
    param = dict(getattr(request, "param", {}))
    logprob, shadow_rate = param.pop("student_logprob", -5.0), param.pop("shadow_rate", 0.0)
    tracing = {"endpoint": f"{receiver.url}/v1/traces", **param}
    # by default a student never confident enough: every request falls back
    with ScriptedUpstream() as teacher, ScriptedUpstream(logprob=logprob) as student:
        register_student(tmp_path / "store.db")
        settings = settings_for(teacher, tmp_path / "store.db", admin_token=ADMIN,
                                student_api_base=f"{student.url}/v1",
                                config={"tracing": tracing, "cascade": {"refresh_s": 0.2, "input_cost_per_token": 1e-8,
                                                                        "output_cost_per_token": 2e-8,
                                                                        "shadow_rate": shadow_rate},
                                        "retry": {"attempts": 1, "backoff_s": 0}})
        with inprocess_gateway(settings) as gateway:
            rollout = gateway.client.put(f"/admin/tasks/{TASK}/rollout", json={"percent": 100},
                                         headers={"authorization": f"Bearer {ADMIN}"})
            assert rollout.status_code == 200
            yield Traced(gateway, teacher, student, receiver)


def test_a_rejected_student_then_the_teacher_is_one_trace_under_the_clients(traced: Traced) -> None:
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    headers = traced.chat(traceparent=f"00-{trace_id}-{client_span}-01")
    assert headers["x-protege-route"] == "fallback"
    spans = traced.spans(4)
    assert {s.trace_id for s in spans} == {trace_id} and len(spans) == 4
    assert {s.service for s in spans} == {"protege-gateway"}
    assert traced.receiver.content_types == ["application/x-protobuf"]

    root = next(s for s in spans if s.kind == SERVER)
    assert root.name == "chat gpt-4o-mini" and root.parent_id == client_span  # under the client's span
    assert root.attributes["gen_ai.operation.name"] == "chat"
    assert root.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert root.attributes["gen_ai.request.max_tokens"] == 20
    assert root.attributes["protege.task"] == TASK and root.attributes["protege.route"] == "fallback"
    assert root.attributes["protege.fallback_reason"] == "low_confidence"
    assert root.attributes["protege.student.version"] == 1 and root.attributes["protege.student.model"] == "tiny-v1"
    assert root.attributes["protege.confidence"] == pytest.approx(-5.0)
    assert root.attributes["gen_ai.usage.input_tokens"] == 7 and root.attributes["gen_ai.usage.output_tokens"] == 5
    assert root.attributes["gen_ai.response.finish_reasons"] == ["stop"]
    # the fallback pays the teacher and the student's attempt; the teacher alone would have paid its own
    assert root.attributes["protege.cost_usd"] > root.attributes["protege.counterfactual_cost_usd"] > 0
    assert root.attributes["protege.price_source"].startswith("list price (gpt-4o-mini")
    assert "gen_ai.input.messages" not in root.attributes  # content only when configured

    children = {s.name: s for s in spans if s.parent_id == root.span_id}
    assert set(children) == {"chat tiny-v1", "chat gpt-4o-mini", "protege.capture"}
    student, teacher, capture = children["chat tiny-v1"], children["chat gpt-4o-mini"], children["protege.capture"]
    assert student.kind == CLIENT and teacher.kind == CLIENT and capture.kind == INTERNAL
    assert student.attributes["gen_ai.provider.name"] == "protege.student"
    assert student.attributes["protege.accepted"] is False
    assert student.attributes["protege.fallback_reason"] == "low_confidence"
    assert student.attributes["protege.threshold"] == -1.0
    assert student.attributes["gen_ai.response.model"] == "tiny-v1"
    assert teacher.attributes["gen_ai.provider.name"] == "openai" and teacher.attributes["gen_ai.system"] == "openai"
    assert teacher.attributes["gen_ai.usage.output_tokens"] == 5 and teacher.events == []
    assert capture.attributes["protege.request_id"] == headers["x-request-id"]
    # each upstream got the trace context of the span that called it
    assert traced.student.last("/v1/chat").headers["traceparent"] == f"00-{trace_id}-{student.span_id}-01"
    assert traced.teacher.last("/v1/chat").headers["traceparent"] == f"00-{trace_id}-{teacher.span_id}-01"


@pytest.mark.parametrize("traced", [{"capture_content": True, "service_name": "edge-gw"}], indirect=True)
def test_retries_are_events_and_content_is_on_the_spans_when_asked(traced: Traced) -> None:
    traced.teacher.fail_next = True  # a 500 first: the gateway retries once
    headers = traced.chat(stream=True)
    assert headers["x-protege-route"] == "fallback"
    spans = traced.spans(4)
    root = next(s for s in spans if s.kind == SERVER)
    assert root.service == "edge-gw" and root.parent_id == ""  # no traceparent from the client: a new trace
    assert root.attributes["protege.stream"] is True and root.status != ERROR
    assert "Where is order 1234?" in root.attributes["gen_ai.input.messages"]
    assert "Where is order 1234?" in root.attributes["gen_ai.output.messages"]  # the scripted teacher echoes
    teacher = next(s for s in spans if s.name == "chat gpt-4o-mini" and s.kind == CLIENT)
    assert [name for name, _ in teacher.events] == ["retry"]
    assert teacher.events[0][1]["error.type"] == "UpstreamError"  # the teacher's 500
    assert teacher.attributes["gen_ai.usage.input_tokens"] == 7  # from the stream's usage chunk


@pytest.mark.parametrize("traced", [{"student_logprob": -0.01, "shadow_rate": 1.0}], indirect=True)
def test_a_student_answer_and_its_shadow_call_are_one_trace(traced: Traced) -> None:
    headers = traced.chat()
    assert headers["x-protege-route"] == "student"
    spans = traced.spans(5)  # request, student attempt, its capture; the shadow call and its capture
    root = next(s for s in spans if s.kind == SERVER)
    assert root.attributes["protege.route"] == "student" and root.attributes["protege.confidence"] > -1
    assert root.attributes["protege.cost_usd"] < root.attributes["protege.counterfactual_cost_usd"]
    assert root.attributes["protege.price_source"] == "configured"
    [student] = [s for s in spans if s.name == "chat tiny-v1"]
    assert student.parent_id == root.span_id and student.attributes["protege.accepted"] is True
    [shadow] = [s for s in spans if s.attributes.get("protege.shadow")]
    # the background teacher call is a child of the request it shadows, with the agreement it found
    assert shadow.parent_id == root.span_id and shadow.kind == CLIENT and shadow.name == "chat gpt-4o-mini"
    assert shadow.attributes["protege.agreement"] == 1.0  # the scripted teacher echoes, as the student does
    assert shadow.attributes["protege.route"] == "shadow" and shadow.attributes["protege.student.version"] == 1
    assert {s.parent_id for s in spans if s.name == "protege.capture"} == {root.span_id, shadow.span_id}
    assert traced.teacher.last("/v1/chat").headers["traceparent"].split("-")[2] == shadow.span_id


def test_a_refused_request_is_a_failed_span(traced: Traced) -> None:
    client = traced.gateway.openai(api_key="x")
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], n=9,
                                       extra_headers={"X-Protege-Task": TASK})  # more choices than limits.max_n
    [span] = traced.spans(1)
    assert span.kind == SERVER and span.status == ERROR and span.attributes["protege.task"] == TASK
    assert traced.teacher.received == [] and traced.student.received == []


def test_tracing_is_off_unless_configured_and_follows_the_standard_variables() -> None:
    assert not build_tracing(TracingConfig(), {}).enabled
    assert build_tracing(TracingConfig(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}).enabled
    assert build_tracing(TracingConfig(), {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9/t"}).enabled
    assert not build_tracing(TracingConfig(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
                                               "OTEL_SDK_DISABLED": "true"}).enabled
    assert not build_tracing(TracingConfig(enabled=False), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:9"}).enabled
    assert build_tracing(TracingConfig(endpoint="http://127.0.0.1:9/v1/traces"), {}).enabled
