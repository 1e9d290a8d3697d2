"""The circuit breaker: its state machine on a fake clock, then a gateway (in this process) whose teacher is
down and comes back."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from pathlib import Path

import httpx2
import pytest

from gateway.breaker import CircuitBreaker
from gateway.errors import BadRequestError, CircuitOpenError, UpstreamError
from tests.inprocess import inprocess_gateway, poll, settings_for
from tests.servers import Server


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def ok() -> str:
    return "ok"


async def down() -> str:
    raise UpstreamError("connection refused")


async def refused() -> str:
    raise BadRequestError("the request's own fault")


async def test_opens_after_consecutive_failures_and_probes_back() -> None:
    clock = Clock()
    breaker = CircuitBreaker("teacher", failure_threshold=3, cooldown_s=10, clock=clock)
    for _ in range(2):
        with pytest.raises(UpstreamError):
            await breaker.call(down)
    assert await breaker.call(ok) == "ok"  # a success resets the count
    for _ in range(3):
        with pytest.raises(UpstreamError):
            await breaker.call(down)
    assert breaker.state == "open"
    with pytest.raises(CircuitOpenError) as err:
        await breaker.call(ok)  # fails fast: the call is not made
    assert err.value.status_code == 503 and err.value.headers() == {"retry-after": "10"}
    clock.now += 10
    assert breaker.state == "half_open"
    with pytest.raises(UpstreamError):
        await breaker.call(down)  # the probe fails: open for another cooldown
    assert breaker.state == "open"
    clock.now += 10
    assert await breaker.call(ok) == "ok"  # the probe succeeds: closed
    assert breaker.state == "closed"


async def test_one_probe_at_a_time_and_client_errors_do_not_count() -> None:
    clock = Clock()
    breaker = CircuitBreaker("student", failure_threshold=1, cooldown_s=5, clock=clock)
    for _ in range(3):
        with pytest.raises(BadRequestError):
            await breaker.call(refused)
    assert breaker.state == "closed"
    with pytest.raises(UpstreamError):
        await breaker.call(down)
    clock.now += 5
    entered, gate = asyncio.Event(), asyncio.Event()

    async def slow() -> str:
        entered.set()
        await gate.wait()
        return "probe"

    probe = asyncio.create_task(breaker.call(slow))
    await entered.wait()  # the probe is in flight
    with pytest.raises(CircuitOpenError):
        await breaker.call(ok)  # while the probe is in flight, others still fail fast
    gate.set()
    assert await probe == "probe" and breaker.state == "closed"


async def test_disabled_breaker_never_opens() -> None:
    breaker = CircuitBreaker("x", failure_threshold=0)
    for _ in range(20):
        with pytest.raises(UpstreamError):
            await breaker.call(down)
    assert breaker.state == "closed"


class Forwarder:
    """The teacher coming back at the address that refused connections: `sock` (bound, not yet listening)
    starts listening and relays each connection to a running upstream (the session's llm-katan)."""

    def __init__(self, sock: socket.socket, target: Server) -> None:
        self.target = target
        self.sock = sock
        sock.listen()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        with conn, socket.create_connection(("127.0.0.1", self.target.port)) as upstream:
            back = threading.Thread(target=self._pump, args=(upstream, conn), daemon=True)
            back.start()
            self._pump(conn, upstream)
            back.join(timeout=10)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def test_a_gateway_stops_calling_a_dead_teacher_and_recovers(katan: Server, tmp_path: Path) -> None:
    with socket.socket() as reserved:  # bound, not listening: connections are refused, the teacher is down
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
        settings = settings_for(None, tmp_path / "store.db", teacher="openai/gpt-4o-mini",
                                teacher_api_base=f"http://127.0.0.1:{port}/v1", teacher_api_key="sk-t",
                                config={"retry": {"attempts": 0},
                                        "circuit_breaker": {"failure_threshold": 2, "cooldown_s": 1}})
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
        with inprocess_gateway(settings) as gateway:

            def ask() -> httpx2.Response:
                return gateway.client.post("/v1/chat/completions", json=body)

            assert [ask().status_code for _ in range(2)] == [502, 502]
            started = time.monotonic()
            fast = ask()
            assert fast.status_code == 503 and time.monotonic() - started < 1
            assert fast.json()["error"]["code"] == "circuit_open" and int(fast.headers["retry-after"]) >= 1
            assert 'protege_circuit_opened_total{upstream="teacher:gpt-4o-mini"} 1.0' in gateway.metrics_text()
            back = Forwarder(reserved, katan)  # the teacher comes back
            try:
                [teacher] = gateway.state.service.teachers.all
                poll(lambda: teacher.breaker.state == "half_open", timeout=5, what="the cooldown to elapse")
                recovered = ask()
                assert recovered.status_code == 200, recovered.text
                assert teacher.breaker.state == "closed"
                assert ask().status_code == 200
            finally:
                back.close()
            statuses = [row.http_status for row in gateway.rows()]
        assert statuses == [502, 502, 503, 200, 200]  # failures are captured as failures
