from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from distiller.pipeline import DistillOptions
from distiller.scheduler import RetrainPolicy, TaskState, apply_retention, due, run_once, task_state
from gateway.store import NO_EXTRA, Exchange, ExchangeExtra, ShadowNote, StudentVersion, open_store

NOW = 1_000_000.0
POLICY = RetrainPolicy(min_new_examples=100, max_age_s=86400, parity_floor=0.85, min_shadow_comparisons=20)


def student(version: int, created_at: float = NOW - 3600, status: str = "active") -> StudentVersion:
    return StudentVersion(task="t", version=version, status=status, model=f"t-v{version}",  # type: ignore[arg-type]
                          created_at=created_at, updated_at=created_at)


@pytest.mark.parametrize(("state", "reason"), [
    (TaskState("t", 50, None, None, None, 0), None),
    (TaskState("t", 150, None, None, None, 0), "no student yet"),
    (TaskState("t", 120, student(1), student(1), None, 0), "new examples since version 1"),
    (TaskState("t", 10, student(1), student(1), None, 0), None),
    (TaskState("t", 10, student(1, NOW - 2 * 86400), student(1, NOW - 2 * 86400), None, 0), "older than 1 days"),
    (TaskState("t", 10, student(1), student(1), 0.7, 25), "live parity 0.700 below the floor 0.85"),
    (TaskState("t", 10, student(1), student(1), 0.7, 5), None),  # too few comparisons to judge
    (TaskState("t", 10, student(2, status="rejected"), None, None, 0), None),
])
def test_due(state: TaskState, reason: str | None) -> None:
    got = due(state, POLICY, NOW)
    assert (got is None) if reason is None else (got is not None and reason in got)


def exchange(i: int, created_at: float, route: str = "teacher", extra: ExchangeExtra = NO_EXTRA) -> Exchange:
    return Exchange(request_id=f"r{i}", created_at=created_at, task="t", task_source="header", route=route, model="m",
                    upstream_model="m", status="ok", http_status=200, stream=False,
                    request={"messages": [{"role": "user", "content": f"q{i}"}]},
                    response={"choices": [{"index": 0, "message": {"role": "assistant", "content": "a"}}]},
                    extra=extra)


async def test_task_state_counts_new_teacher_data_and_live_parity(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    await store.open()
    active = student(1, created_at=500.0)
    await store.add_student(active)
    await store.insert_exchanges([exchange(i, 400.0 + i) for i in range(5)]  # before the version
                                 + [exchange(10 + i, 600.0 + i) for i in range(3)]
                                 + [exchange(20, 601.0, route="student")]
                                 + [exchange(30 + i, 602.0 + i, route="shadow",
                                             extra=ExchangeExtra(shadow=ShadowNote(1, a)))
                                    for i, a in enumerate((1.0, 0.5, 0.0))])
    state = await task_state(store, "t")
    assert state.new_good_examples == 6  # 3 teacher + 3 shadow answers; student answers are not training data
    assert state.active is not None and state.active.version == 1
    assert state.live_parity == pytest.approx(0.5) and state.shadow_comparisons == 3
    await store.close()


async def test_run_once_waits_for_more_data_and_leaves_the_task_alone(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    await store.open()
    await store.insert_exchanges([exchange(i, time.time()) for i in range(3)])
    results = await run_once(store, RetrainPolicy(min_new_examples=2), DistillOptions(runs_dir=tmp_path / "runs"))
    [result] = results  # 3 examples are too few to decide on: nothing is trained, it is not a failure
    assert (result.task, result.status, result.outcome) == ("t", "not_enough_data", None)
    assert "train: " in result.detail and "at least 30 needed" in result.detail
    assert await store.list_students(task="t") == []
    await store.close()


async def test_forgotten_users_do_not_count_and_retention_deletes_old_rows(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    await store.open()
    await store.insert_exchanges([dataclasses.replace(exchange(i, NOW - i * 86400), user=f"u{i % 2}")
                                  for i in range(6)])
    assert (await task_state(store, "t")).new_good_examples == 6
    await store.forget_user("u1")
    await store.insert_exchanges([dataclasses.replace(exchange(9, NOW), user="u1")])  # captured after the forget
    assert (await task_state(store, "t")).new_good_examples == 3
    assert await apply_retention(store, None, now=NOW) == 0
    assert await apply_retention(store, 3, now=NOW) == 1  # r4, 4 days old (r3 is exactly 3 days: kept)
    assert {e.request_id for e in await store.list_exchanges()} == {"r0", "r2", "r9"}
    await store.close()
