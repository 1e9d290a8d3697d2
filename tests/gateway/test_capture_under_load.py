"""50 concurrent requests (half streaming) → 50 captured exchanges and 50 exported lines: with the gateway
in this process, and with a real gateway process that gets SIGTERM while they are in flight."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx2
import openai
import psutil

from protege.cli import main as protege
from tests.conftest import teacher_flags
from tests.inprocess import BASE_URL, inprocess_gateway, settings_for
from tests.servers import Server
from tests.stores import count_captured

TASK = "load-task"


async def one_request(client: openai.AsyncOpenAI, i: int) -> bool:
    messages = [{"role": "system", "content": "Extract the city."}, {"role": "user", "content": f"ticket {i}"}]
    try:
        if i % 2:
            stream = await client.chat.completions.create(model="m", messages=messages, stream=True,  # type: ignore[arg-type]
                                                          extra_headers={"X-Protege-Task": TASK})
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        else:
            reply = await client.chat.completions.create(model="m", messages=messages,  # type: ignore[arg-type]
                                                         extra_headers={"X-Protege-Task": TASK})
            text = reply.choices[0].message.content or ""
    except (openai.APIConnectionError, openai.APIStatusError):
        return False
    assert text.endswith(f"User: ticket {i}")
    return True


async def fire(client: openai.AsyncOpenAI, count: int, on_started: Callable[[], None] | None = None) -> list[bool]:
    async with client:
        await client.models.list()  # warm the client up so the burst below is sent at once
        tasks = [asyncio.create_task(one_request(client, i)) for i in range(count)]
        if on_started:
            await asyncio.to_thread(on_started)
        return list(await asyncio.gather(*tasks))


def export(store: Path, out: Path) -> list[dict[str, object]]:
    assert protege(["export", "--store", f"sqlite:///{store}", "--task", TASK, "--out", str(out)]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def ok_rows(store: Path) -> int:
    return count_captured(store, status="ok")


def all_rows(store: Path) -> int:
    return count_captured(store)


def upstream_connections(gateway: Server, upstream: Server) -> int:
    """The gateway process's open connections to the upstream: one per request waiting on it."""
    proc = psutil.Process(gateway.proc.pid)
    return sum(1 for p in (proc, *proc.children(recursive=True)) for c in p.net_connections(kind="tcp")
               if c.status == psutil.CONN_ESTABLISHED and c.raddr and c.raddr.port == upstream.port)


def test_fifty_concurrent_requests_are_all_captured(katan: Server, tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    with inprocess_gateway(settings_for(katan, store)) as gateway:
        # 50 at once on the app's own loop: an async client on an ASGI transport (the test client
        # would send them one at a time)
        transport = httpx2.ASGITransport(app=gateway.client.app)
        client = openai.AsyncOpenAI(base_url=f"{BASE_URL}/v1", api_key="sk-client", max_retries=0, timeout=30,
                                    http_client=httpx2.AsyncClient(transport=transport, base_url=BASE_URL))
        results = gateway.run(fire(client, 50))
        assert all(results)
    # the gateway has stopped: its graceful stop flushed the capture queue
    assert ok_rows(store) == 50
    lines = export(store, tmp_path / "out.jsonl")
    assert len(lines) == 50
    users = sorted(str(line["messages"][1]["content"]) for line in lines)  # type: ignore[index]
    assert users == sorted(f"ticket {i}" for i in range(50))
    assert all(line["messages"][-1]["role"] == "assistant" for line in lines)  # type: ignore[index]


def test_sigterm_during_load_loses_no_answered_request(katan_factory: Callable[..., Server],
                                                       gateway_factory: Callable[..., Server],
                                                       tmp_path: Path) -> None:
    slow = katan_factory("--latency-ms", "3000", "--max-concurrent", "100")
    store = tmp_path / "store.db"
    gateway = gateway_factory(*teacher_flags(slow, store))

    def terminate_once_in_flight() -> None:
        # SIGTERM once the 50 are in flight at the upstream (it holds each 3 s); on a busy machine, at
        # the latest 2 s after the burst, while the first are still held there
        deadline = time.monotonic() + 2
        while upstream_connections(gateway, slow) < 50 and time.monotonic() < deadline:
            time.sleep(0.02)
        gateway.proc.send_signal(signal.SIGTERM)

    started = time.monotonic()
    client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="sk-client", max_retries=0, timeout=30)
    results = asyncio.run(fire(client, 50, on_started=terminate_once_in_flight))
    assert gateway.proc.wait(timeout=30) == 0
    answered = sum(results)
    # requests already accepted are finished during the graceful stop; on a loaded machine a few of
    # the burst may reach the socket after it closed and are refused (and never answered)
    assert answered >= 40
    assert time.monotonic() - started < 20
    assert ok_rows(store) == answered == all_rows(store)
    assert len(export(store, tmp_path / "out.jsonl")) == answered
