"""Rollout ramps in both stores: recorded and read back whole, replaced by a task's next ramp, moved by
compare-and-set (of two writers racing on separate connections exactly one wins), read leniently, copied by a
store migration; and the sums a ramp's evidence is made of."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from gateway.ramp import gather_evidence
from gateway.store import ExchangeExtra, RampEvent, RampPlan, RolloutRamp, Store, open_store
from gateway.store.migrate import migrate_store
from tests.gateway.store.test_contract import execute_raw, opened
from tests.gateway.store.test_sqlite import exchange

PLAN = RampPlan((5.0, 25.0, 100.0), 3600.0, parity_floor=0.8, max_fallback_rate=0.3, min_comparisons=10,
                shadow_rate=None)


def ramp(task: str = "t", **changes: object) -> RolloutRamp:
    base = RolloutRamp(ramp_id="r1", task=task, version=2, plan=PLAN, state="running", step=0, started_at=1000.0,
                       step_started_at=1000.0, updated_at=1000.0, previous_version=1, previous_percent=100.0,
                       history=(RampEvent(1000.0, "start", 5.0, "ramp of version 2 över 5, 25, 100 %"),))
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def advanced(r: RolloutRamp, at: float) -> RolloutRamp:
    return dataclasses.replace(r, step=r.step + 1, step_started_at=at, updated_at=at, history=(
        *r.history, RampEvent(at, "advance", r.plan.steps[r.step + 1], "healthy", 0.93, 40, 0.1, 200)))


async def test_a_ramp_round_trips_and_a_new_one_replaces_the_task_s_last(store: Store) -> None:
    assert await store.list_ramps() == []
    await store.put_ramp(ramp())
    await store.put_ramp(ramp("other", previous_version=None, previous_percent=0.0, history=()))
    assert await store.list_ramps(task="t") == [ramp()]
    assert [r.task for r in await store.list_ramps()] == ["other", "t"]
    assert (await store.list_ramps(task="t"))[0].percent == 5.0

    after = advanced(ramp(), 2000.0)
    assert await store.replace_ramp(ramp(), after)
    assert await store.list_ramps(task="t") == [after]
    assert after.percent == 25.0 and after.history[-1].parity == 0.93

    fresh = ramp(ramp_id="r2", version=3, started_at=3000.0, step_started_at=3000.0, updated_at=3000.0)
    await store.put_ramp(fresh)  # a task's next ramp replaces its last, whatever state it was in
    assert await store.list_ramps(task="t") == [fresh]


async def test_a_move_is_made_once_by_compare_and_set(store: Store) -> None:
    await store.put_ramp(ramp())
    stale = ramp()
    assert await store.replace_ramp(stale, advanced(stale, 2000.0))
    # a second writer that read the same ramp before the first moved it: refused, nothing written
    assert not await store.replace_ramp(stale, dataclasses.replace(stale, state="rolled_back"))
    assert not await store.replace_ramp(ramp(ramp_id="r0"), advanced(ramp(ramp_id="r0"), 2000.0))
    [now] = await store.list_ramps(task="t")
    assert (now.state, now.step) == ("running", 1)


async def test_of_two_writers_racing_on_their_own_connections_one_wins(store_url: str) -> None:
    first, second = await opened(store_url), await opened(store_url)
    try:
        for _ in range(5):
            await first.put_ramp(ramp())
            [current] = await first.list_ramps(task="t")
            won = await asyncio.gather(first.replace_ramp(current, advanced(current, 2000.0)),
                                       second.replace_ramp(current, dataclasses.replace(current, state="stopped",
                                                                                        updated_at=2000.0)))
            assert sorted(won) == [False, True]
            [after] = await second.list_ramps(task="t")
            assert (after.state, after.step) == (("running", 1) if won[0] else ("stopped", 0))
    finally:
        await first.close()
        await second.close()


async def test_a_hand_edited_plan_reads_leniently(store_url: str) -> None:
    store = await opened(store_url)
    try:
        await store.put_ramp(ramp())
        execute_raw(store_url, """UPDATE rollout_ramps SET plan_json = '{"steps": [5, "x", 50], "dwell_s": "1h"}',
                                  history_json = '[{"at": 1, "kind": "start"}, 7]'""")
        [read] = await store.list_ramps()
        assert read.plan == RampPlan((5.0, 50.0), 0.0, shadow_rate=None)
        assert read.history == ()
        execute_raw(store_url, """UPDATE rollout_ramps SET plan_json = '[]'""")
        [read] = await store.list_ramps()
        assert read.plan.steps == () and read.percent == 0.0  # a ramp the controller stops
    finally:
        await store.close()


async def test_the_evidence_of_a_step_comes_from_the_stores_sums(store: Store) -> None:
    def row(i: int, route: str, at: float, **extra: object) -> object:
        return dataclasses.replace(exchange(i), route=route, created_at=at, extra=ExchangeExtra.from_json(extra))

    await store.insert_exchanges([  # type: ignore[list-item]
        row(1, "shadow", 999.0, shadow={"version": 2, "agreement": 0.0}),  # before the step: not counted
        row(2, "shadow", 1000.0, shadow={"version": 2, "agreement": 1.0}),
        row(3, "shadow", 1001.0, shadow={"version": 2, "agreement": 0.5}),
        row(4, "shadow", 1002.0, shadow={"version": 1, "agreement": 0.0}),  # another version's
        row(5, "student", 1003.0), row(6, "student", 1004.0), row(7, "fallback", 1005.0),
        row(8, "teacher", 1006.0), row(9, "fallback", 998.0)])
    evidence = await gather_evidence(store, ramp())
    assert (evidence.comparisons, evidence.agreement_sum, evidence.agreement_sq_sum) == (2, 1.5, 1.25)
    assert (evidence.student_requests, evidence.fallbacks) == (3, 1)


async def test_a_store_copy_brings_the_newer_ramp(store_url: str, tmp_path: Path) -> None:
    source_url = f"sqlite:///{tmp_path}/source.db"
    source = open_store(source_url)
    await source.open()
    try:
        await source.put_ramp(advanced(ramp(), 2000.0))
        await source.put_ramp(ramp("other", updated_at=500.0))
    finally:
        await source.close()
    dest = await opened(store_url)
    try:
        await dest.put_ramp(ramp("other", ramp_id="newer", updated_at=900.0))  # newer on the destination: kept
    finally:
        await dest.close()
    assert (await migrate_store(source_url, store_url))["ramps"] == 1
    assert (await migrate_store(source_url, store_url))["ramps"] == 0  # a re-run adds nothing
    dest = await opened(store_url)
    try:
        assert [(r.task, r.ramp_id, r.step) for r in await dest.list_ramps()] == [("other", "newer", 0), ("t", "r1", 1)]
    finally:
        await dest.close()
