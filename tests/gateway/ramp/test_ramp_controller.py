"""The ramp controller in one gateway (SQLite store, scripted teacher and student servers on sockets), each check
run by the test (`RampController.check_once`) rather than by the background loop, and the ramp's operations
through the admin API, the CLI and what a change made outside the ramp does to it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from gateway.ramp import RampMove
from gateway.store import Store, StudentVersion
from tests.cli import run_cli
from tests.gateway.ramp.test_ramp_replicas import TEACHER_ANSWER, USERS, StudentServer
from tests.inprocess import InProcessGateway, inprocess_gateway, settings_for
from tests.openai_upstream import ScriptedUpstream
from tests.stores import read_store

ADMIN = "admin-secret-token"
TASK = "tickets"
PLAN = {"steps": [5, 50, 100], "dwell_s": 60, "min_comparisons": 5, "shadow_rate": 1.0}
Make = Callable[..., tuple[InProcessGateway, Path]]


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Make]:
    with ExitStack() as stack:
        teacher = stack.enter_context(ScriptedUpstream(chat_content=TEACHER_ANSWER))
        student = StudentServer()
        student.answers, student._lock = {"good": TEACHER_ANSWER}, threading.Lock()
        stack.enter_context(student)

        def make(*, threshold: float = -1000.0, versions: int = 1) -> tuple[InProcessGateway, Path]:
            store = tmp_path / "store.db"

            async def register(opened: Store) -> None:
                for version in range(1, versions + 1):
                    await opened.add_student(StudentVersion(task=TASK, version=version, status="candidate",
                                                            model="good", created_at=time.time(),
                                                            updated_at=time.time(), threshold=threshold))

            read_store(store, register)
            # the background loop checks once an hour: every move here is a check the test makes
            settings = settings_for(None, store, config={"cascade": {"refresh_s": 0.05, "ramp_check_s": 3600,
                                                                     "shadow_rate": 0}, "retry": {"attempts": 0}},
                                    teacher="openai/gpt-4o-mini", teacher_api_base=f"{teacher.url}/v1",
                                    teacher_api_key="sk-t", student_api_base=f"{student.url}/v1", admin_token=ADMIN)
            return stack.enter_context(inprocess_gateway(settings)), store

        yield make


def admin(gateway: InProcessGateway, method: str, path: str = "/ramp", body: dict[str, Any] | None = None,
          status: int = 200) -> Any:
    response = gateway.client.request(method, f"/admin/tasks/{TASK}{path}", json=body,
                                      headers={"authorization": f"Bearer {ADMIN}"})
    assert response.status_code == status, response.text
    return response.json()


def traffic(gateway: InProcessGateway, requests: int) -> list[str]:
    routes = []
    for i in range(requests):
        response = gateway.client.post("/v1/chat/completions", headers={"X-Protege-Task": TASK}, json={
            "model": "gpt-4o-mini", "user": USERS[i % len(USERS)], "messages": [{"role": "user", "content": "Hi"}]})
        assert response.status_code == 200, response.text
        routes.append(response.headers["x-protege-route"])
    gateway.run(gateway.state.service.drain())  # the shadow calls
    gateway.flush()
    return routes


def check(gateway: InProcessGateway, after_s: float = 0.0) -> RampMove:
    assert gateway.state.ramps is not None
    [move] = gateway.run(gateway.state.ramps.check_once(now=time.time() + after_s))
    return move  # type: ignore[no-any-return]


def rollout(store: Path) -> float:
    return read_store(store, lambda opened: opened.rollouts()).get(TASK, 0.0)


def statuses(store: Path) -> dict[int, str]:
    async def read(opened: Store) -> dict[int, str]:
        return {s.version: s.status for s in await opened.list_students(task=TASK)}
    return read_store(store, read)


def test_every_student_answer_is_shadowed_while_the_ramp_asks_for_it(gateway: Make) -> None:
    app, _ = gateway()
    admin(app, "POST", body={**PLAN, "version": 1})
    assert traffic(app, 6) == ["student"] * 6  # every user sent is inside the 5 % bucket
    assert [r.route for r in app.rows()].count("shadow") == 6  # the gateway's own shadow_rate is 0
    admin(app, "DELETE")
    app.run(app.state.service.students.table.refresh(force=True))  # type: ignore[union-attr]
    traffic(app, 3)
    assert [r.route for r in app.rows()].count("shadow") == 6  # stopped: no more


def test_a_step_holds_waits_for_evidence_then_advances(gateway: Make) -> None:
    app, store = gateway()
    admin(app, "POST", body={**PLAN, "version": 1})
    assert check(app).action == "hold"
    assert check(app, after_s=61).action == "wait"  # dwelled, but no traffic yet
    described = admin(app, "GET")
    assert described["next"]["action"] == "hold" and described["evidence"]["comparisons"] == 0
    traffic(app, 6)
    move = check(app, after_s=61)
    assert (move.action, move.made) == ("advance", True) and rollout(store) == 50
    assert app.metric("protege_rollout_ramp_moves_total", task=TASK, move="advance") == 1
    # a move already made is not made again by a check that read the ramp before it moved
    assert check(app, after_s=61).action == "hold"


def test_a_rollout_left_behind_by_a_dead_replica_is_put_right(gateway: Make) -> None:
    app, store = gateway()
    admin(app, "POST", body={**PLAN, "version": 1})
    read_store(store, lambda opened: opened.set_rollout(TASK, 80))  # as if a move's rollout was never written
    assert check(app).action == "hold" and rollout(store) == 5


def test_falling_back_too_often_rolls_back_to_the_teacher_alone(gateway: Make) -> None:
    app, store = gateway(threshold=0.0)  # the student's answers (logprob -0.05 a token) are never sure enough
    admin(app, "POST", body={**PLAN, "version": 1})
    assert traffic(app, 8) == ["fallback"] * 8
    move = check(app)  # at once: a breach does not wait for the dwell
    assert (move.action, move.made) == ("rollback", True) and "fallback rate 1.000" in move.reason
    assert rollout(store) == 0 and statuses(store) == {1: "retired"}
    ramp = admin(app, "GET")
    assert ramp["state"] == "rolled_back" and ramp["history"][-1]["student_requests"] == 8
    assert "next" not in ramp and app.metric("protege_rollout_ramp_moves_total", move="rollback") == 1


def test_a_change_made_outside_the_ramp_stops_it(gateway: Make) -> None:
    app, store = gateway(versions=2)
    admin(app, "POST", body={**PLAN, "version": 1})
    admin(app, "PUT", "/rollout", {"percent": 30})
    ramp = admin(app, "GET")
    assert ramp["state"] == "stopped" and ramp["history"][-1]["detail"] == "rollout set to 30 % outside the ramp"
    assert rollout(store) == 30

    admin(app, "POST", body={**PLAN, "version": 1})
    read_store(store, lambda opened: opened.set_student_status(TASK, 2, "active"))  # another writer promotes v2
    move = check(app)
    assert (move.action, move.made) == ("stop", True) and "no longer active (now: 2)" in move.reason


def test_bad_ramps_are_refused_in_openai_s_shape(gateway: Make) -> None:
    app, _ = gateway(versions=2)
    assert admin(app, "GET", status=404)["error"]["message"] == "task 'tickets' has no rollout ramp"
    assert admin(app, "POST", body={**PLAN}, status=400)["error"]["param"] == "version"  # none active
    for steps, message in (([50, 25], "must rise"), ([0, 50], "above 0"), ([], "at least 1 item")):
        error = admin(app, "POST", body={**PLAN, "steps": steps, "version": 1}, status=400)["error"]
        assert message in error["message"] and error["type"] == "invalid_request_error"
    assert admin(app, "POST", body={**PLAN, "version": 9}, status=404)["error"]["param"] == "version"
    assert admin(app, "POST", body={**PLAN, "version": 1, "parity_floor": 2}, status=400)["error"]
    assert "no running rollout ramp" in admin(app, "DELETE", status=400)["error"]["message"]
    read_store(app.state.store.url, lambda opened: opened.set_student_threshold(TASK, 2, None))
    assert "no confidence threshold" in admin(app, "POST", body={**PLAN, "version": 2}, status=400)["error"]["message"]
    assert app.client.get(f"/admin/tasks/{TASK}/ramp").status_code == 401  # the admin token, as everywhere


def test_the_cli_starts_shows_and_stops_a_ramp(gateway: Make, capsys: pytest.CaptureFixture[str]) -> None:
    app, store = gateway()
    flags = ("--store", f"sqlite:///{store}", "--task", TASK)
    code, out, _ = run_cli(capsys, "rollout", *flags, "--ramp", "5,25,100", "--dwell", "30m", "--version", "1",
                           "--min-comparisons", "10")
    assert code == 0 and "ramp of version 1 running at 5%" in out and "dwell 30 m" in out, out
    assert "next: hold: dwelling at 5 %" in out
    code, out, _ = run_cli(capsys, "rollout", *flags, "--json")
    shown = json.loads(out)
    assert (shown["steps"], shown["dwell_s"], shown["min_comparisons"], shown["shadow_rate"]) == (
        [5, 25, 100], 1800, 10, 0.2)
    assert admin(app, "GET")["state"] == "running"  # the gateway reads the same store
    code, out, _ = run_cli(capsys, "rollout", *flags, "--stop-ramp")
    assert code == 0 and "stopped at 5%" in out and "stopped with protege rollout --stop-ramp" in out
    code, _, err = run_cli(capsys, "rollout", *flags, "--stop-ramp")
    assert code == 1 and "no running rollout ramp" in err
    code, _, err = run_cli(capsys, "rollout", *flags, "--ramp", "50,5")
    assert code == 2 and "steps must rise" in err
    code, _, err = run_cli(capsys, "rollout", *flags, "--ramp", "5,50", "--dwell", "soon")
    assert code == 2 and "invalid duration" in err
