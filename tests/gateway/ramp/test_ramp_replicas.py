"""A rollout that moves itself, on two gateway replicas sharing one PostgreSQL store (each an app of its own in
this process, `tests.inprocess`, with its own store connections, routing table, ramp controller and metrics).

The teacher and the student server are scripted OpenAI-compatible servers on real sockets: the student answers
by model name, so version 1 ("good") answers as the teacher does and version 2 ("bad") does not. Traffic goes
to both replicas alternately from users inside the first step's rollout bucket; the ramp's own shadow rate (1.0)
gives every student answer a comparison. Each move must be made once, whichever replica makes it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from gateway.router import rollout_bucket
from gateway.store import StudentVersion
from tests.gateway.test_replicas import ADMIN, TASK, Replica
from tests.inprocess import InProcessGateway, inprocess_gateway, poll, settings_for
from tests.openai_upstream import ScriptedUpstream
from tests.pg import fresh_schema
from tests.stores import read_store

TEACHER_ANSWER = "Your parcel left Oslo this morning."
USERS = [u for u in (f"user-{i}" for i in range(2000)) if rollout_bucket(TASK, u) < 0.05][:12]  # in every step


class StudentServer(ScriptedUpstream):
    """Answers by the model (version) asked for."""

    answers: dict[str, str]
    _lock: threading.Lock

    def _chat(self, data: dict[str, Any]) -> tuple[int, str, bytes, list[bytes] | None]:
        with self._lock:
            self.chat_content = self.answers[data["model"]]
            return super()._chat(data)


@pytest.fixture
def upstreams() -> Iterator[tuple[ScriptedUpstream, StudentServer]]:
    student = StudentServer()
    student.answers, student._lock = {"good": TEACHER_ANSWER, "bad": "We have no record of that order."}, \
        threading.Lock()
    with ScriptedUpstream(chat_content=TEACHER_ANSWER) as teacher, student:
        yield teacher, student


@pytest.fixture
def replicas(upstreams: tuple[ScriptedUpstream, StudentServer]) -> Iterator[tuple[Replica, Replica]]:
    teacher, student = upstreams
    with fresh_schema() as url:  # entered first: the schema is dropped after both apps have stopped
        async def register(store: Any) -> None:
            for version, model in ((1, "good"), (2, "bad")):
                await store.add_student(StudentVersion(task=TASK, version=version, status="candidate", model=model,
                                                       created_at=time.time(), updated_at=time.time(),
                                                       threshold=-1000.0))

        read_store(url, register)
        # no shadow calls but the ramp's: the gateway's own rate is 0
        settings = settings_for(None, url, config={"cascade": {"refresh_s": 0.2, "ramp_check_s": 0.2,
                                                               "shadow_rate": 0}, "retry": {"attempts": 0}},
                                teacher="openai/gpt-4o-mini", teacher_api_base=f"{teacher.url}/v1",
                                teacher_api_key="sk-t", student_api_base=f"{student.url}/v1", admin_token=ADMIN)
        with ExitStack() as first, ExitStack() as second:
            yield (Replica(first.enter_context(inprocess_gateway(settings)), first),
                   Replica(second.enter_context(inprocess_gateway(settings)), second))


def admin(gateway: InProcessGateway, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = gateway.client.request(method, f"/admin/tasks/{TASK}{path}", json=body,
                                      headers={"authorization": f"Bearer {ADMIN}"})
    assert response.status_code == 200, response.text
    return response.json()


def chat(gateway: InProcessGateway, user: str) -> dict[str, str]:
    response = gateway.client.post("/v1/chat/completions", headers={"X-Protege-Task": TASK}, json={
        "model": "gpt-4o-mini", "user": user, "messages": [{"role": "user", "content": "Where is my parcel?"}]})
    assert response.status_code == 200, response.text
    return dict(response.headers)


def drive_until(replicas: tuple[Replica, Replica], state: str, timeout: float = 60) -> dict[str, Any]:
    """Send traffic to both replicas in turn until the ramp reaches `state`; the ramp as the admin API shows it."""
    gateways = [r.gateway for r in replicas]
    sent = 0

    def reached() -> dict[str, Any] | None:
        nonlocal sent
        chat(gateways[sent % 2], USERS[sent % len(USERS)])
        sent += 1
        ramp: dict[str, Any] = admin(gateways[sent % 2], "GET", "/ramp")
        return ramp if ramp["state"] == state else None

    return poll(reached, timeout=timeout, interval=0.01, what=f"the ramp to be {state}")  # type: ignore[no-any-return]


def moves(replicas: tuple[Replica, Replica], move: str) -> float:
    """Moves counted across both replicas, as Prometheus would add them up."""
    return sum(r.gateway.metric("protege_rollout_ramp_moves_total", task=TASK, move=move) for r in replicas)


def test_a_healthy_student_ramps_to_100_and_a_bad_one_is_rolled_back(replicas: tuple[Replica, Replica]) -> None:
    first, second = (r.gateway for r in replicas)
    plan = {"steps": [5, 25, 100], "dwell_s": 0.5, "min_comparisons": 5, "shadow_rate": 1.0}
    started = admin(first, "POST", "/ramp", {**plan, "version": 1})
    assert (started["state"], started["percent"], started["previous_version"]) == ("running", 5, None)
    assert started["next"]["action"] == "hold"

    done = drive_until(replicas, "done")
    assert [(e["kind"], e["percent"]) for e in done["history"]] == [
        ("start", 5), ("advance", 25), ("advance", 100), ("finish", 100)]
    for event in done["history"][1:]:  # each move on evidence gathered at its step
        assert event["comparisons"] >= 5 and event["parity"] == 1.0 and event["fallback_rate"] == 0.0
    assert (moves(replicas, "advance"), moves(replicas, "finish")) == (2, 1)  # each move made once
    listed = second.client.get("/admin/tasks", headers={"authorization": f"Bearer {ADMIN}"}).json()
    [task] = [t for t in listed["tasks"] if t["task"] == TASK]
    assert task["rollout_percent"] == 100 and task["ramp"]["state"] == "done"
    outside = next(u for u in (f"other-{i}" for i in range(100)) if rollout_bucket(TASK, u) > 0.5)
    assert chat(second, outside)["x-protege-route"] == "student"  # the whole task is on version 1 now

    # version 2 answers unlike the teacher: its live parity breaks the floor at the first step
    second_ramp = admin(second, "POST", "/ramp", {**plan, "version": 2})
    assert (second_ramp["previous_version"], second_ramp["previous_percent"], second_ramp["percent"]) == (1, 100, 5)
    rolled_back = drive_until(replicas, "rolled_back")
    last = rolled_back["history"][-1]
    assert last["kind"] == "rollback" and last["percent"] == 100 and last["parity"] == 0.0
    assert "below the floor 0.85" in last["detail"]
    assert moves(replicas, "rollback") == 1

    async def statuses(store: Any) -> dict[int, str]:
        return {s.version: s.status for s in await store.list_students(task=TASK)}

    assert read_store(first.state.store.url, statuses) == {1: "active", 2: "retired"}
    served = poll(lambda: (h := chat(first, outside)).get("x-protege-student") == "good@v1" and h, timeout=5,
                  what="version 1 to serve again")
    assert served["x-protege-route"] == "student"
