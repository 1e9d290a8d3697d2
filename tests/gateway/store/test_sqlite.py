"""The store contract, on a real SQLite file."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from gateway.auth import new_key
from gateway.store import Exchange, StoreError, open_store
from gateway.store.schema import LATEST_VERSION
from gateway.store.sqlite import SQLiteStore


def exchange(i: int, task: str = "t", status: str = "ok") -> Exchange:
    return Exchange(request_id=f"req_{i}", created_at=1000.0 + i, task=task, task_source="header", route="teacher",
                    model="m", upstream_model="openai/m", status=status, http_status=200, stream=bool(i % 2),  # type: ignore[arg-type]
                    request={"messages": [{"role": "user", "content": f"q{i}"}]},
                    response={"choices": [{"index": 0, "message": {"role": "assistant", "content": f"a{i}"},
                                           "finish_reason": "stop"}]},
                    user="u", prompt_tokens=3, completion_tokens=4, latency_ms=1.5, cost_usd=None,
                    finish_reason="stop", extra={"k": [1]})


async def test_round_trip_and_queries(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'sub' / 'p.db'}")
    await store.open()
    try:
        assert await store.schema_version() == LATEST_VERSION
        await store.insert_exchanges([exchange(i, "a" if i < 3 else "b", "ok" if i != 1 else "failed")
                                      for i in range(5)])
        await store.insert_exchanges([exchange(0, "a")])  # a request id seen before is ignored
        assert await store.count_exchanges() == 5
        assert await store.count_exchanges(task="a", status="ok") == 2
        got = await store.list_exchanges(task="a")
        assert [e.request_id for e in got] == ["req_0", "req_1", "req_2"]
        assert got[1] == exchange(1, "a", "failed")
        tasks = await store.list_tasks()
        assert [(t.name, t.captured, t.good, t.first_seen, t.last_seen) for t in tasks] == [
            ("a", 3, 2, 1000.0, 1002.0), ("b", 2, 2, 1003.0, 1004.0)]
        assert len(await store.list_exchanges(limit=2)) == 2
        await store.check_writable()
    finally:
        await store.close()


async def test_data_survives_reopen_and_migrations_are_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    store = open_store(url)
    await store.open()
    await store.insert_exchanges([exchange(1)])
    await store.close()
    again = open_store(url)
    await again.open()
    assert await again.count_exchanges() == 1
    assert await again.schema_version() == LATEST_VERSION
    await again.close()
    with sqlite3.connect(tmp_path / "p.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (?)", (LATEST_VERSION + 1,))
    with pytest.raises(StoreError, match="newer"):
        await open_store(f"sqlite:///{path}").open()


async def test_locked_store_raises_store_error(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    store = SQLiteStore(f"sqlite:///{path}", busy_timeout_ms=50)
    await store.open()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreError):
            await store.insert_exchanges([exchange(1)])
        with pytest.raises(StoreError):
            await store.check_writable()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    await store.insert_exchanges([exchange(1)])  # recovers once the lock is gone
    assert await store.count_exchanges() == 1
    await store.close()


async def test_api_keys_are_stored_hashed_and_revocable(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'p.db'}")
    await store.open()
    key, record = new_key("ci")
    await store.add_api_key(record)
    [listed] = await store.list_api_keys()
    assert listed.key_hash == record.key_hash != key and not listed.revoked
    assert listed.created_at <= time.time()
    assert await store.revoke_api_key(record.key_id)
    assert not await store.revoke_api_key("key_missing")
    assert (await store.list_api_keys())[0].revoked
    await store.close()
    assert key.encode() not in (tmp_path / "p.db").read_bytes()


def test_unsupported_store_urls() -> None:
    with pytest.raises(StoreError):
        open_store("mysql://x")
