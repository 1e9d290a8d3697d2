"""Two gateway processes sharing one PostgreSQL store, as replicas behind a load balancer do: a rollout
set through one replica's admin API reaches the other within the refresh interval, and both capture
everything into the shared store. llm-katan is the teacher; the embedded model server with a tiny random Llama
is the student (as in test_cascade.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from gateway.store import StudentVersion, open_store
from tests.pg import fresh_schema
from tests.servers import Server, start_model_server, stop

ADMIN = "admin-secret-token"
TASK = "tickets"
REFRESH_S = 0.3


@pytest.fixture
def store_url() -> Iterator[str]:
    with fresh_schema() as url:
        yield url


@pytest.fixture(scope="module")
def student_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_model_server(tmp_path_factory.mktemp("student"), "--model", str(tiny_model),
                                "--served-model-name", "tiny", "--threads", "1")
    yield server
    stop(server.proc)


def register_student(url: str) -> None:
    async def run() -> None:
        store = open_store(url)
        await store.open()
        now = time.time()
        await store.add_student(StudentVersion(task=TASK, version=1, status="active", model="tiny",
                                               created_at=now, updated_at=now))
        await store.close()

    asyncio.run(run())


def stored_exchanges(url: str) -> dict[str, str]:
    async def run() -> dict[str, str]:
        store = open_store(url)
        await store.open()
        try:
            return {e.request_id: e.route for e in await store.list_exchanges(task=TASK)}
        finally:
            await store.close()

    return asyncio.run(run())


def chat(gateway: Server, user: str) -> tuple[str, str]:
    """(request id, route) of one chat completion."""
    response = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=30, headers={"X-Protege-Task": TASK},
                          # a random tiny model never says EOS: a common stop string ends its greedy answer
                          json={"model": "gpt-4o-mini", "user": user, "max_tokens": 40, "temperature": 0,
                                "stop": ["e"], "messages": [{"role": "user", "content": f"Where is {user}'s parcel?"}]})
    assert response.status_code == 200, response.text
    return response.headers["x-request-id"], response.headers["x-protege-route"]


def set_rollout(gateway: Server, percent: float) -> None:
    response = httpx.put(f"{gateway.url}/admin/tasks/{TASK}/rollout", json={"percent": percent},
                         headers={"authorization": f"Bearer {ADMIN}"})
    assert response.status_code == 200, response.text


def bucket(route: str) -> str:
    """The rollout bucket a route comes from: a busy student may time out and fall back to the teacher."""
    return "teacher" if route == "teacher" else "student"


def seconds_until_route(gateway: Server, route: str, timeout: float = 10) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if bucket(chat(gateway, "probe")[1]) == route:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{gateway.url} still does not route {route!r} after {timeout} s")


@pytest.fixture
def replicas(store_url: str, katan: Server, student_server: Server, gateway_factory: Callable[..., Server],
             tmp_path: Path) -> tuple[Server, Server]:
    # store_url comes first: its schema is dropped only after gateway_factory has stopped the gateways
    register_student(store_url)
    config = tmp_path / "protege.yaml"
    # no shadow calls: every request is captured exactly once, which is what the test counts
    config.write_text(f"cascade:\n  refresh_s: {REFRESH_S}\n  shadow_rate: 0\nretry:\n  attempts: 0\n")
    flags = ["--config", str(config), "--store", store_url, "--teacher", "openai/gpt-4o-mini",
             "--teacher-api-base", f"{katan.url}/v1", "--teacher-api-key", "sk-t",
             "--student-api-base", f"{student_server.url}/v1", "--admin-token", ADMIN]
    return gateway_factory(*flags), gateway_factory(*flags)


def test_a_rollout_set_on_one_replica_reaches_the_other(replicas: tuple[Server, Server]) -> None:
    first, second = replicas
    assert chat(first, "u")[1] == chat(second, "u")[1] == "teacher"  # no rollout yet

    set_rollout(first, 100)
    assert seconds_until_route(second, "student") < REFRESH_S + 1.5  # the refresh interval, plus slack for CI
    assert bucket(chat(first, "u")[1]) == "student"
    listed = httpx.get(f"{second.url}/admin/tasks", headers={"authorization": f"Bearer {ADMIN}"}).json()
    [task] = [t for t in listed["tasks"] if t["task"] == TASK]
    assert task["rollout_percent"] == 100  # its admin API reads the shared store too

    set_rollout(second, 0)  # and back, the other way round
    assert seconds_until_route(first, "teacher") < REFRESH_S + 1.5


def test_both_replicas_capture_everything(replicas: tuple[Server, Server], store_url: str) -> None:
    first, second = replicas
    set_rollout(first, 50)
    time.sleep(REFRESH_S * 2)  # both replicas have the 50 % rollout
    users = [f"user-{i}" for i in range(40)]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: chat((first, second)[i % 2], users[i]), range(len(users))))
    routes = {request_id: route for request_id, route in answers}
    assert len(routes) == len(users) and {bucket(r) for r in routes.values()} == {"student", "teacher"}
    # the same user gets the same bucket on either replica: it depends on the user alone
    assert [bucket(chat(second, users[i])[1]) for i in range(0, 10, 2)] == [
        bucket(answers[i][1]) for i in range(0, 10, 2)]

    for gateway in replicas:  # a graceful stop flushes each replica's capture queue
        assert stop(gateway.proc) == 0
    captured = stored_exchanges(store_url)
    assert {k: v for k, v in captured.items() if k in routes} == routes
    assert len(captured) == len(users) + 5
