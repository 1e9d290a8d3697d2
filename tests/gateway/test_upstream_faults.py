"""Upstream faults, each against real processes: what the client gets, what is captured, what the
metrics show. llm-katan injects the HTTP-level faults; a small raw-socket server (`BrokenUpstream`,
in this process) does what katan cannot: drop the connection mid-stream, answer invalid JSON, hang."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import teacher_flags
from tests.servers import Server, captured_rows, metric

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}






def config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "protege.yaml"
    path.write_text(text)
    return str(path)


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


def test_teacher_500s_are_retried_then_a_clean_502(katan_factory: Callable[..., Server],
                                                    gateway_factory: Callable[..., Server], tmp_path: Path) -> None:
    failing = katan_factory("--error-rate", "1.0")
    store = tmp_path / "store.db"
    gateway = gateway_factory("--config", config(tmp_path, "retry:\n  attempts: 2\n  backoff_s: 0.05\n"),
                              *teacher_flags(failing, store))
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=30)
    assert response.status_code == 502 and response.json()["error"]["type"] == "upstream_error"
    assert metric(gateway, "protege_upstream_retries_total", route="teacher") == 2
    [row] = captured_rows(store)
    assert row["status"] == "failed" and row["http_status"] == 502 and row["error"]


def test_429_without_retry_after_backs_off_and_then_passes_on(katan_factory: Callable[..., Server],
                                                              gateway_factory: Callable[..., Server],
                                                              tmp_path: Path) -> None:
    limited = katan_factory("--rate-limit-after", "1")
    auth = {"authorization": "Bearer sk-any"}
    probe = httpx.post(f"{limited.url}/v1/chat/completions", json=CHAT, headers=auth, timeout=30)
    assert probe.status_code == 200  # uses up the allowance
    refused = httpx.post(f"{limited.url}/v1/chat/completions", json=CHAT, headers=auth)
    assert refused.status_code == 429 and "retry-after" not in refused.headers
    store = tmp_path / "store.db"
    gateway = gateway_factory("--config", config(tmp_path, "retry:\n  attempts: 1\n  backoff_s: 0.05\n"),
                              *teacher_flags(limited, store))
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=30)
    assert response.status_code == 429 and response.json()["error"]["type"] == "rate_limit_error"
    assert metric(gateway, "protege_upstream_retries_total", route="teacher") == 1
    assert [r["http_status"] for r in captured_rows(store)] == [429]


def test_503_at_the_in_flight_limit_is_retried_to_success(katan_factory: Callable[..., Server],
                                                          gateway_factory: Callable[..., Server],
                                                          tmp_path: Path) -> None:
    busy = katan_factory("--max-inflight", "1", "--latency-ms", "300")
    store = tmp_path / "store.db"
    gateway = gateway_factory("--config", config(tmp_path, "retry:\n  attempts: 6\n  backoff_s: 0.2\n"),
                              *teacher_flags(busy, store))

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=60) as client:
            answers = await asyncio.gather(*(client.post(f"{gateway.url}/v1/chat/completions", json=CHAT)
                                             for _ in range(3)))
        return [a.status_code for a in answers]

    assert asyncio.run(burst()) == [200, 200, 200]
    assert metric(gateway, "protege_upstream_retries_total", route="teacher") >= 1
    assert [r["status"] for r in captured_rows(store)] == ["ok"] * 3


def test_slow_first_token_past_the_timeout_is_a_504_before_any_byte(
        katan_factory: Callable[..., Server], gateway_factory: Callable[..., Server], tmp_path: Path) -> None:
    slow = katan_factory("--ttft-ms", "4000")
    gateway = gateway_factory("--config", config(tmp_path, "timeout_s: 1\nretry:\n  attempts: 0\n"),
                              *teacher_flags(slow, tmp_path / "store.db"))
    started = time.monotonic()
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json={**CHAT, "stream": True}, timeout=30)
    assert time.monotonic() - started < 3.5  # never a hang past the configured timeout
    assert response.status_code == 504 and response.json()["error"]["type"] == "timeout"


def test_slow_first_token_within_the_timeout_streams_and_is_measured(
        katan_factory: Callable[..., Server], gateway_factory: Callable[..., Server], tmp_path: Path) -> None:
    slow = katan_factory("--ttft-ms", "600")
    gateway = gateway_factory(*teacher_flags(slow, tmp_path / "store.db"))
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    ttft_sum = metric(gateway, "protege_time_to_first_token_seconds_sum", route="teacher")
    assert ttft_sum >= 0.6


def test_a_connection_dropped_mid_stream_ends_with_an_error_event(
        broken: Callable[[str], BrokenUpstream], gateway_factory: Callable[..., Server], tmp_path: Path) -> None:
    upstream = broken("drop-mid-stream")
    store = tmp_path / "store.db"
    gateway = gateway_factory("--store", f"sqlite:///{store}", "--teacher", "openai/gpt-4o-mini",
                              "--teacher-api-base", f"{upstream.url}/v1", "--teacher-api-key", "sk-x")
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json={**CHAT, "stream": True},
                      timeout=30) as response:
        assert response.status_code == 200
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"  # the stream is well formed…
    assert "error" in json.loads(events[-2])  # …and says it failed: never a silent truncation
    assert "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                   for e in events[:-2] if json.loads(e).get("choices")) == "Hello"
    [row] = captured_rows(store)
    assert row["status"] == "failed" and row["stream"] == 1
    assert json.loads(row["response_json"])["choices"][0]["message"]["content"] == "Hello"  # what arrived


def test_invalid_json_from_the_teacher_is_a_clean_502(broken: Callable[[str], BrokenUpstream],
                                                      gateway_factory: Callable[..., Server],
                                                      tmp_path: Path) -> None:
    upstream = broken("invalid-json")
    store = tmp_path / "store.db"
    gateway = gateway_factory("--config", config(tmp_path, "retry:\n  attempts: 0\n"), "--store",
                              f"sqlite:///{store}", "--teacher", "openai/gpt-4o-mini", "--teacher-api-base",
                              f"{upstream.url}/v1", "--teacher-api-key", "sk-x")
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=30)
    assert response.status_code == 502 and response.json()["error"]["type"] == "upstream_error"
    assert [r["status"] for r in captured_rows(store)] == ["failed"]


def test_a_hanging_student_times_out_into_a_fallback(broken: Callable[[str], BrokenUpstream], katan: Server,
                                                     gateway_factory: Callable[..., Server], tmp_path: Path) -> None:
    from tests.gateway.test_cascade import ADMIN, TASK, register

    hanging = broken("hang")
    store = tmp_path / "store.db"
    register(store)
    gateway = gateway_factory("--config", config(tmp_path, "cascade:\n  timeout_s: 1\n  refresh_s: 0.2\n"),
                              *teacher_flags(katan, store), "--student-api-base", f"{hanging.url}/v1",
                              "--admin-token", ADMIN)
    assert httpx.put(f"{gateway.url}/admin/tasks/{TASK}/rollout", json={"percent": 100},
                     headers={"authorization": f"Bearer {ADMIN}"}).status_code == 200
    started = time.monotonic()
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, headers={"X-Protege-Task": TASK},
                          timeout=30)
    assert response.status_code == 200 and response.headers["x-protege-route"] == "fallback"
    assert time.monotonic() - started < 5
    assert metric(gateway, "protege_fallbacks_total", reason="student_timeout") == 1
    [row] = captured_rows(store)
    assert row["route"] == "fallback" and json.loads(row["extra_json"])["student"]["reason"] == "student_timeout"
