"""Two gateway apps sharing one PostgreSQL store, as replicas behind a load balancer do: a rollout set
through one replica's admin API reaches the other within the refresh interval, and both capture everything
into the shared store. Each replica is an app of its own in this process (`tests.inprocess`: its own store
connections, routing table, capture writer and metrics); llm-katan is the teacher; the embedded model server
with a tiny random Llama is the student (as in test_cascade.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import pytest

from gateway.router import rollout_bucket
from gateway.store import StudentVersion, open_store
from tests.inprocess import InProcessGateway, inprocess_gateway, poll, settings_for
from tests.pg import fresh_schema
from tests.servers import REPO, Server

ADMIN = "admin-secret-token"
TASK = "tickets"
REFRESH_S = 0.3


@pytest.fixture
def store_url() -> Iterator[str]:
    with fresh_schema() as url:
        yield url


@pytest.fixture
def student_server(tiny_student: Server) -> Server:
    return tiny_student  # the session's model server with the tiny Llama, served as "tiny"


def register_student(url: str) -> None:
    async def run() -> None:
        store = open_store(url)
        await store.open()
        now = time.time()
        await store.add_student(StudentVersion(task=TASK, version=1, status="active", model="tiny",
                                               created_at=now, updated_at=now, threshold=-1000.0))
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


def chat(gateway: InProcessGateway, user: str) -> tuple[str, str]:
    """(request id, route) of one chat completion."""
    response = gateway.client.post("/v1/chat/completions", headers={"X-Protege-Task": TASK},
                                   # a random tiny model never says EOS: a common stop string ends its greedy answer
                                   json={"model": "gpt-4o-mini", "user": user, "max_tokens": 40, "temperature": 0,
                                         "stop": ["e"],
                                         "messages": [{"role": "user", "content": f"Where is {user}'s parcel?"}]})
    assert response.status_code == 200, response.text
    return response.headers["x-request-id"], response.headers["x-protege-route"]


def set_rollout(gateway: InProcessGateway, percent: float) -> None:
    response = gateway.client.put(f"/admin/tasks/{TASK}/rollout", json={"percent": percent},
                                  headers={"authorization": f"Bearer {ADMIN}"})
    assert response.status_code == 200, response.text


def bucket(route: str) -> str:
    """The rollout bucket a route comes from: a busy student may time out and fall back to the teacher."""
    return "teacher" if route == "teacher" else "student"


def seconds_until_route(gateway: InProcessGateway, route: str, timeout: float = 10) -> float:
    started = time.monotonic()
    poll(lambda: bucket(chat(gateway, "probe")[1]) == route, timeout=timeout, interval=0.05,
         what=f"replica {id(gateway):x} to route {route!r}")
    return time.monotonic() - started


def routed_percent(gateway: InProcessGateway) -> float | None:
    """TASK's rollout in the replica's routing table (re-read from the store when older than refresh_s, as
    on a request)."""
    students = gateway.state.service.students
    assert students is not None
    route = gateway.run(students.table.route(TASK))
    return None if route is None else route.rollout_percent


class Replica:
    """One gateway app; `stop()` runs its shutdown (waits for background calls, flushes the capture queue)."""

    def __init__(self, gateway: InProcessGateway, stack: ExitStack) -> None:
        self.gateway = gateway
        self._stack = stack

    def stop(self) -> None:
        self._stack.close()


@pytest.fixture
def replicas(store_url: str, katan: Server, student_server: Server) -> Iterator[tuple[Replica, Replica]]:
    # store_url comes first: its schema is dropped only after both apps have stopped
    register_student(store_url)
    # no shadow calls: every request is captured exactly once, which is what the test counts
    settings = settings_for(None, store_url, config={"cascade": {"refresh_s": REFRESH_S, "shadow_rate": 0},
                                                     "retry": {"attempts": 0}},
                            teacher="openai/gpt-4o-mini", teacher_api_base=f"{katan.url}/v1", teacher_api_key="sk-t",
                            student_api_base=f"{student_server.url}/v1", admin_token=ADMIN)
    with ExitStack() as first, ExitStack() as second:
        yield (Replica(first.enter_context(inprocess_gateway(settings)), first),
               Replica(second.enter_context(inprocess_gateway(settings)), second))


def test_a_rollout_set_on_one_replica_reaches_the_other(replicas: tuple[Replica, Replica]) -> None:
    first, second = (r.gateway for r in replicas)
    assert chat(first, "u")[1] == chat(second, "u")[1] == "teacher"  # no rollout yet

    set_rollout(first, 100)
    assert seconds_until_route(second, "student") < REFRESH_S + 1.5  # the refresh interval, plus slack for CI
    assert bucket(chat(first, "u")[1]) == "student"
    listed = second.client.get("/admin/tasks", headers={"authorization": f"Bearer {ADMIN}"}).json()
    [task] = [t for t in listed["tasks"] if t["task"] == TASK]
    assert task["rollout_percent"] == 100  # its admin API reads the shared store too

    set_rollout(second, 0)  # and back, the other way round
    assert seconds_until_route(first, "teacher") < REFRESH_S + 1.5


def test_both_replicas_capture_everything(replicas: tuple[Replica, Replica], store_url: str) -> None:
    first, second = (r.gateway for r in replicas)
    set_rollout(first, 50)
    poll(lambda: routed_percent(first) == routed_percent(second) == 50, what="both replicas to have the 50 % rollout")
    users = [f"user-{i}" for i in range(40)]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: chat((first, second)[i % 2], users[i]), range(len(users))))
    routes = {request_id: route for request_id, route in answers}
    assert len(routes) == len(users) and {bucket(r) for r in routes.values()} == {"student", "teacher"}
    # the same user gets the same bucket on either replica: it depends on the user alone
    assert [bucket(chat(second, users[i])[1]) for i in range(0, 10, 2)] == [
        bucket(answers[i][1]) for i in range(0, 10, 2)]

    for replica in replicas:  # a graceful stop flushes each replica's capture queue
        replica.stop()
    captured = stored_exchanges(store_url)
    assert {k: v for k, v in captured.items() if k in routes} == routes
    assert len(captured) == len(users) + 5


def test_the_rollout_bucket_is_the_same_in_every_process() -> None:
    """Replicas are separate processes in production: a user's bucket must not depend on the process (e.g. on
    its string-hash seed). The replicas above share this process, so another process computes it here."""
    users = [f"user-{i}" for i in range(40)]
    code = ("import sys; from gateway.router import rollout_bucket; "
            f"print(*(repr(rollout_bucket({TASK!r}, u)) for u in {users!r}))")
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=REPO,
                             env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        assert [float(v) for v in out.split()] == [rollout_bucket(TASK, u) for u in users]
