"""Copying a store into another: SQLite → PostgreSQL (adding replicas) and back, re-run safely."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.auth import new_key
from gateway.store import (
    Feedback,
    GateResult,
    RampEvent,
    RampPlan,
    RolloutRamp,
    Store,
    StoreError,
    StudentDetails,
    StudentStatus,
    StudentVersion,
    open_store,
    user_hash,
)
from gateway.store.migrate import migrate_store
from tests.gateway.store.test_contract import stored_response
from tests.gateway.store.test_sqlite import exchange


async def opened(url: str) -> Store:
    store = open_store(url)
    await store.open()
    return store


async def fill(url: str) -> None:
    store = await opened(url)
    # 23 exchanges, three of them sharing one timestamp across a page boundary (pages of 5)
    await store.insert_exchanges([exchange(i, "a" if i % 3 else "b") for i in range(20)])
    await store.insert_exchanges([dataclasses.replace(exchange(4), request_id=f"req_4{c}") for c in "xyz"])
    for name in ("ci", "old"):
        await store.add_api_key(new_key(name)[1])
    await store.revoke_api_key((await store.list_api_keys())[1].key_id)
    statuses: list[tuple[int, StudentStatus]] = [(1, "retired"), (2, "active"), (3, "candidate")]
    for version, status in statuses:
        await store.add_student(StudentVersion(task="a", version=version, status=status, model=f"a-v{version}",
                                               created_at=10.0 + version, updated_at=20.0, threshold=-0.3,
                                               details=StudentDetails(training_s=1.5, gate=GateResult(min_parity=0.9))))
    await store.set_rollout("a", 25)
    await store.set_rollout("b", 0)
    await store.put_ramp(RolloutRamp("r1", "a", 2, RampPlan((25.0, 100.0), 60.0), "running", 0, 30.0, 30.0, 30.0,
                                     previous_version=1, previous_percent=100.0,
                                     history=(RampEvent(30.0, "start", 25.0, "ramp of version 2"),)))
    await store.add_forgotten_users({"0" * 64: 5.0})
    for i in range(7):  # two pages of 5, two of them sharing a timestamp across the boundary
        await store.put_response(stored_response(f"resp_{i}", created_at=100.0 + min(i, 4), user=f"r{i}"))
    for i in (1, 2):
        await store.put_feedback(Feedback(f"req_{i}", "a", 200.0 + i, 1000.0 + i, "api", rating=float(i),
                                          labels=("x",), correction={"role": "assistant", "content": "c"}, user="u"))
    await store.close()


async def snapshot(url: str) -> tuple[object, ...]:
    store = await opened(url)
    try:
        return (await store.list_exchanges(), await store.list_api_keys(), await store.list_students(),
                await store.rollouts(), await store.list_tasks(), await store.forgotten_users(),
                await store.list_responses(limit=100), await store.list_feedback(), await store.list_ramps())
    finally:
        await store.close()


@pytest.mark.parametrize("direction", ["sqlite-to-postgresql", "postgresql-to-sqlite"])
async def test_copy_is_complete_and_idempotent(direction: str, postgres_url: str, tmp_path: Path) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'store.db'}"
    source, dest = (sqlite_url, postgres_url) if direction.startswith("sqlite") else (postgres_url, sqlite_url)
    await fill(source)
    calls: list[tuple[int, int]] = []

    counts = await migrate_store(source, dest, batch_size=5, progress=lambda done, total: calls.append((done, total)))

    assert counts == {"exchanges": 23, "exchanges_read": 23, "exchanges_forgotten": 0, "api_keys": 2, "students": 3,
                      "rollouts": 2, "ramps": 1, "forgotten_users": 1, "feedback": 2, "responses": 7}
    assert calls == [(5, 23), (10, 23), (15, 23), (20, 23), (23, 23)]
    assert await snapshot(dest) == await snapshot(source)

    again = await migrate_store(source, dest)
    assert again == {"exchanges": 0, "exchanges_read": 23, "exchanges_forgotten": 0, "api_keys": 0, "students": 0,
                     "rollouts": 2, "ramps": 0, "forgotten_users": 0, "feedback": 0, "responses": 0}
    assert await snapshot(dest) == await snapshot(source)

    # what changed in the source since is carried over by the next run
    store = await opened(source)
    await store.insert_exchanges([exchange(99, "c")])
    await store.revoke_api_key((await store.list_api_keys())[0].key_id)
    await store.set_rollout("a", 50)
    await store.close()
    assert (await migrate_store(source, dest))["exchanges"] == 1
    assert await snapshot(dest) == await snapshot(source)


async def test_exchanges_of_users_forgotten_in_either_store_are_not_copied(postgres_url: str, tmp_path: Path) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'store.db'}"
    await fill(sqlite_url)  # every exchange there is user "u"
    source = await opened(sqlite_url)
    await source.insert_exchanges([dataclasses.replace(exchange(50 + i), user=f"v{i}") for i in range(3)])
    await source.close()
    assert (await migrate_store(sqlite_url, postgres_url))["exchanges"] == 26

    # "v0" is forgotten on the destination (gateways moved there); a re-run must not bring the rows back ...
    dest = await opened(postgres_url)
    assert await dest.forget_user("v0") == 1
    await dest.close()
    # ... and "v1", forgotten on the source after a row of theirs was captured, is not copied either
    source = await opened(sqlite_url)
    await source.add_forgotten_users({user_hash("v1"): 7.0})
    await source.insert_exchanges([dataclasses.replace(exchange(60), user="v1"), exchange(61)])
    await source.close()
    counts = await migrate_store(sqlite_url, postgres_url)
    assert (counts["exchanges"], counts["exchanges_read"], counts["exchanges_forgotten"]) == (1, 28, 3)
    assert counts["forgotten_users"] == 1
    dest = await opened(postgres_url)
    # nor are the stored responses of a user forgotten there (forget deleted r0's)
    assert await dest.forget_user("r0") == 0 and await dest.get_response("resp_0") is None
    await dest.close()
    assert (await migrate_store(sqlite_url, postgres_url))["responses"] == 0
    dest = await opened(postgres_url)
    try:
        assert {e.user for e in await dest.list_exchanges()} == {"u", "v1", "v2"}  # v1's older row was copied
        assert await dest.count_exchanges(user="v1") == 1 and await dest.count_exchanges(user="v0") == 0
        assert await dest.forgotten_user_hashes() == {"0" * 64, user_hash("v0"), user_hash("v1"), user_hash("r0")}
        assert len(await dest.list_feedback()) == 2
        await dest.forget_user("u")  # u's feedback goes with u's exchanges, and a re-run does not bring it back
        assert await dest.list_feedback() == []
    finally:
        await dest.close()
    assert (await migrate_store(sqlite_url, postgres_url))["feedback"] == 0


async def test_refuses_the_same_store_and_bad_batches(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with pytest.raises(StoreError, match="same store"):
        await migrate_store(url, url)
    with pytest.raises(ValueError, match="batch_size"):
        await migrate_store(url, f"sqlite:///{tmp_path / 'other.db'}", batch_size=0)


async def test_an_unreachable_destination_is_a_store_error(tmp_path: Path) -> None:
    from tests.servers import free_port

    await fill(f"sqlite:///{tmp_path / 'store.db'}")
    with pytest.raises(StoreError, match="cannot open store"):
        await migrate_store(f"sqlite:///{tmp_path / 'store.db'}", f"postgresql://u@127.0.0.1:{free_port()}/db")
