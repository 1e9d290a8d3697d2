"""The circuit breaker: its state machine on a fake clock, then a real gateway whose teacher is down and
comes back."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from gateway.breaker import CircuitBreaker
from gateway.errors import BadRequestError, CircuitOpenError, UpstreamError
from tests.servers import Server, free_port


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
    gate = asyncio.Event()

    async def slow() -> str:
        await gate.wait()
        return "probe"

    probe = asyncio.create_task(breaker.call(slow))
    await asyncio.sleep(0)
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


def test_a_gateway_stops_calling_a_dead_teacher_and_recovers(gateway_factory: Callable[..., Server],
                                                             katan_factory: Callable[..., Server],
                                                             tmp_path: Path) -> None:
    port = free_port()  # nothing listens here yet: the teacher is down
    store = tmp_path / "store.db"
    config = tmp_path / "protege.yaml"
    config.write_text("retry:\n  attempts: 0\ncircuit_breaker:\n  failure_threshold: 2\n  cooldown_s: 2\n")
    gateway = gateway_factory("--config", str(config), "--store", f"sqlite:///{store}",
                              "--teacher", "openai/gpt-4o-mini", "--teacher-api-base", f"http://127.0.0.1:{port}/v1",
                              "--teacher-api-key", "sk-t")
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}

    def ask() -> httpx.Response:
        return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=30)

    assert [ask().status_code for _ in range(2)] == [502, 502]
    started = time.monotonic()
    fast = ask()
    assert fast.status_code == 503 and time.monotonic() - started < 1
    assert fast.json()["error"]["code"] == "circuit_open" and int(fast.headers["retry-after"]) >= 1
    assert 'protege_circuit_opened_total{upstream="teacher:gpt-4o-mini"} 1.0' in httpx.get(
        f"{gateway.url}/metrics").text
    katan_factory(port=port)  # the teacher comes back
    time.sleep(2.1)
    recovered = ask()
    assert recovered.status_code == 200, recovered.text
    assert ask().status_code == 200
    time.sleep(0.4)  # capture flush
    with sqlite3.connect(store) as db:
        statuses = [r[0] for r in db.execute("SELECT http_status FROM exchanges ORDER BY created_at")]
    assert statuses == [502, 502, 503, 200, 200]  # failures are captured as failures
