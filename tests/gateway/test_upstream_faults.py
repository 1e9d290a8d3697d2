"""Upstream faults: what the client gets, what is captured, what the metrics show. The gateway runs in
this process (`tests.inprocess`); its upstreams are real servers on sockets. llm-katan injects the
HTTP-level faults; a small raw-socket server (`BrokenUpstream`, in this process) does what katan
cannot: drop the connection mid-stream, answer invalid JSON, hang."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest

from gateway.store import StudentVersion
from tests.inprocess import InProcessGateway, inprocess_gateway, settings_for
from tests.servers import Server

CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
ADMIN = "admin-secret-token"
TASK = "tickets"


class BrokenUpstream:
    """An OpenAI-shaped server that misbehaves on purpose: `mode` is 'drop-mid-stream' (two chunks, then
    the connection closes), 'invalid-json' (200 with a body that is not JSON) or 'hang' (reads the
    request, never answers)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            head, _, body = request.partition(b"\r\n\r\n")
            length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), b"0"))
            while len(body) < length:
                body += conn.recv(65536)
            if self.mode == "hang":
                self._stop.wait(30)
            elif self.mode == "invalid-json":
                payload = b"<html>this is not json</html>"
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                             + str(len(payload)).encode() + b"\r\n\r\n" + payload)
            elif self.mode == "drop-mid-stream":
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                             b"transfer-encoding: chunked\r\n\r\n")
                for word in ("Hel", "lo"):
                    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m",
                             "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
                    data = f"data: {json.dumps(chunk)}\n\n".encode()
                    conn.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    time.sleep(0.05)
                conn.shutdown(socket.SHUT_RDWR)  # gone, without the last chunk or [DONE]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def broken() -> Iterator[Callable[[str], BrokenUpstream]]:
    made: list[BrokenUpstream] = []

    def make(mode: str) -> BrokenUpstream:
        made.append(BrokenUpstream(mode))
        return made[-1]

    yield make
    for upstream in made:
        upstream.close()


def ask(gateway: InProcessGateway, body: dict[str, Any] = CHAT,
        headers: dict[str, str] | None = None) -> httpx2.Response:
    return gateway.client.post("/v1/chat/completions", json=body, headers=headers)


def test_teacher_500s_are_retried_then_a_clean_502(katan_factory: Callable[..., Server], tmp_path: Path) -> None:
    failing = katan_factory("--error-rate", "1.0")
    settings = settings_for(failing, tmp_path / "store.db", config={"retry": {"attempts": 2, "backoff_s": 0.05}})
    with inprocess_gateway(settings) as gateway:
        response = ask(gateway)
        assert response.status_code == 502 and response.json()["error"]["type"] == "upstream_error"
        assert gateway.metric("protege_upstream_retries_total", route="teacher") == 2
        [row] = gateway.rows()
    assert row.status == "failed" and row.http_status == 502 and row.error


def test_429_without_retry_after_backs_off_and_then_passes_on(katan_factory: Callable[..., Server],
                                                              tmp_path: Path) -> None:
    limited = katan_factory("--rate-limit-after", "1")
    auth = {"authorization": "Bearer sk-any"}
    probe = httpx.post(f"{limited.url}/v1/chat/completions", json=CHAT, headers=auth, timeout=30)
    assert probe.status_code == 200  # uses up the allowance
    refused = httpx.post(f"{limited.url}/v1/chat/completions", json=CHAT, headers=auth)
    assert refused.status_code == 429 and "retry-after" not in refused.headers
    settings = settings_for(limited, tmp_path / "store.db", config={"retry": {"attempts": 1, "backoff_s": 0.05}})
    with inprocess_gateway(settings) as gateway:
        response = ask(gateway)
        assert response.status_code == 429 and response.json()["error"]["type"] == "rate_limit_error"
        assert gateway.metric("protege_upstream_retries_total", route="teacher") == 1
        assert [r.http_status for r in gateway.rows()] == [429]


def test_503_at_the_in_flight_limit_is_retried_to_success(katan_factory: Callable[..., Server],
                                                          tmp_path: Path) -> None:
    busy = katan_factory("--max-inflight", "1", "--latency-ms", "300")
    settings = settings_for(busy, tmp_path / "store.db", config={"retry": {"attempts": 6, "backoff_s": 0.2}})
    with inprocess_gateway(settings) as gateway:
        # three at once: the test client is thread-safe, each request runs as its own task on the app's loop
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda _: ask(gateway), range(3)))
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert gateway.metric("protege_upstream_retries_total", route="teacher") >= 1
        assert [r.status for r in gateway.rows()] == ["ok"] * 3


def test_slow_first_token_past_the_timeout_is_a_504_before_any_byte(katan_factory: Callable[..., Server],
                                                                    tmp_path: Path) -> None:
    slow = katan_factory("--ttft-ms", "4000")
    settings = settings_for(slow, tmp_path / "store.db", config={"timeout_s": 1, "retry": {"attempts": 0}})
    with inprocess_gateway(settings) as gateway:
        started = time.monotonic()
        response = ask(gateway, {**CHAT, "stream": True})
        assert time.monotonic() - started < 3.5  # never a hang past the configured timeout
        # a 504 status, not a 200 stream that fails later: nothing was sent before the first token
        assert response.status_code == 504 and response.json()["error"]["type"] == "timeout"


def test_slow_first_token_within_the_timeout_streams_and_is_measured(katan_factory: Callable[..., Server],
                                                                     tmp_path: Path) -> None:
    slow = katan_factory("--ttft-ms", "600")
    with inprocess_gateway(settings_for(slow, tmp_path / "store.db")) as gateway:
        stream = gateway.openai().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        ttft_sum = gateway.metric("protege_time_to_first_token_seconds_sum", route="teacher")
    assert ttft_sum >= 0.6


def test_a_connection_dropped_mid_stream_ends_with_an_error_event(broken: Callable[[str], BrokenUpstream],
                                                                  tmp_path: Path) -> None:
    upstream = broken("drop-mid-stream")
    settings = settings_for(None, tmp_path / "store.db", teacher="openai/gpt-4o-mini",
                            teacher_api_base=f"{upstream.url}/v1", teacher_api_key="sk-x")
    with inprocess_gateway(settings) as gateway:
        with gateway.client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
            assert response.status_code == 200
            events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        [row] = gateway.rows()
    assert events[-1] == "[DONE]"  # the stream is well formed…
    assert "error" in json.loads(events[-2])  # …and says it failed: never a silent truncation
    assert "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                   for e in events[:-2] if json.loads(e).get("choices")) == "Hello"
    assert row.status == "failed" and row.stream is True
    assert row.response is not None
    assert row.response["choices"][0]["message"]["content"] == "Hello"  # what arrived


def test_invalid_json_from_the_teacher_is_a_clean_502(broken: Callable[[str], BrokenUpstream],
                                                      tmp_path: Path) -> None:
    upstream = broken("invalid-json")
    settings = settings_for(None, tmp_path / "store.db", config={"retry": {"attempts": 0}},
                            teacher="openai/gpt-4o-mini", teacher_api_base=f"{upstream.url}/v1",
                            teacher_api_key="sk-x")
    with inprocess_gateway(settings) as gateway:
        response = ask(gateway)
        assert response.status_code == 502 and response.json()["error"]["type"] == "upstream_error"
        assert [r.status for r in gateway.rows()] == ["failed"]


def register_student(gateway: InProcessGateway) -> None:
    """An active student for TASK (a hosted model id: nothing to load on the student server)."""
    store = gateway.state.store
    now = time.time()

    async def run() -> None:
        await store.add_student(StudentVersion(task=TASK, version=1, status="candidate", model="tiny",
                                               created_at=now, updated_at=now, threshold=-1000.0))
        await store.set_student_status(TASK, 1, "active")

    gateway.run(run())


def test_a_hanging_student_times_out_into_a_fallback(broken: Callable[[str], BrokenUpstream], katan: Server,
                                                     tmp_path: Path) -> None:
    hanging = broken("hang")
    settings = settings_for(katan, tmp_path / "store.db", config={"cascade": {"timeout_s": 1, "refresh_s": 0.2}},
                            student_api_base=f"{hanging.url}/v1", admin_token=ADMIN)
    with inprocess_gateway(settings) as gateway:
        register_student(gateway)
        # setting the rollout re-reads the routing table at once
        assert gateway.client.put(f"/admin/tasks/{TASK}/rollout", json={"percent": 100},
                                  headers={"authorization": f"Bearer {ADMIN}"}).status_code == 200
        started = time.monotonic()
        response = ask(gateway, headers={"X-Protege-Task": TASK})
        assert response.status_code == 200 and response.headers["x-protege-route"] == "fallback"
        assert time.monotonic() - started < 5
        assert gateway.metric("protege_fallbacks_total", reason="student_timeout") == 1
        [row] = gateway.rows()
    assert row.route == "fallback" and row.extra.student is not None and row.extra.student.reason == "student_timeout"
