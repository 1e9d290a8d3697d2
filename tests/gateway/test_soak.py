"""A bounded soak: a minute of mixed traffic (streaming and not, some client errors) through a real
gateway process; its memory stays flat, it leaks no file descriptors or connections, and every
answered request is captured. Figures go to stdout (`pytest -s`) for the notes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import teacher_flags
from tests.servers import Server
from tests.stores import count_captured

SECONDS = float(os.environ.get("PROTEGE_SOAK_SECONDS", "45"))
WORKERS = 6


def footprint(pid: int) -> tuple[float, int, int]:
    """RSS in MiB, open file descriptors, open inet connections."""
    proc = psutil.Process(pid)
    return proc.memory_info().rss / 2**20, proc.num_fds(), len(proc.net_connections(kind="inet"))


async def traffic(url: str, until: float) -> tuple[int, int]:
    """Clients sending back to back until `until`; every 10th request is a bad one (a 400)."""
    answered = refused = 0

    async def client(n: int) -> None:
        nonlocal answered, refused
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            i = 0
            while time.monotonic() < until:
                i += 1
                body: dict[str, object] = {"model": "m", "messages": [{"role": "user", "content": f"{n}-{i}"}]}
                if i % 10 == 0:
                    body = {"model": "m", "messages": "not a list"}
                if i % 2:
                    async with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
                        async for _ in r.aiter_lines():
                            pass
                        status = r.status_code
                else:
                    status = (await http.post("/v1/chat/completions", json=body)).status_code
                if status == 200:
                    answered += 1
                elif status == 400:
                    refused += 1
                else:
                    raise AssertionError(f"unexpected status {status}")

    await asyncio.gather(*(client(n) for n in range(WORKERS)))
    return answered, refused


@pytest.mark.slow
@pytest.mark.timeout(SECONDS * 3 + 120)
def test_soak_memory_and_descriptors_stay_flat(katan: Server, gateway_factory: Callable[..., Server],
                                               tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    gateway = gateway_factory(*teacher_flags(katan, store))
    warm_answered, _ = asyncio.run(traffic(gateway.url, time.monotonic() + 5))  # warm-up: pools, caches
    time.sleep(1)
    rss_start, fds_start, conns_start = footprint(gateway.proc.pid)
    answered, refused = asyncio.run(traffic(gateway.url, time.monotonic() + SECONDS))
    time.sleep(2)  # idle keep-alive connections of the finished clients close
    rss_end, fds_end, conns_end = footprint(gateway.proc.pid)
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.proc.wait(timeout=30) == 0
    stored = count_captured(store, status="ok")
    total = warm_answered + answered
    print(f"\nsoak {SECONDS:.0f} s: {answered} answered + {refused} refused "
          f"({(answered + refused) / SECONDS:.0f} req/s); RSS {rss_start:.1f} → {rss_end:.1f} MiB; "
          f"fds {fds_start} → {fds_end}; connections {conns_start} → {conns_end}; "
          f"captured {stored} of {total}, lost {total - stored}")
    assert answered > SECONDS * 5 and refused > 0
    assert stored == total  # nothing lost
    assert rss_end - rss_start < 30, "memory grows under steady load"
    assert fds_end <= fds_start + 3 and conns_end <= conns_start + 3, "descriptors or connections leak"
