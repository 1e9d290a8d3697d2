"""What only the SQLite store does (WAL, file locks, the file itself); the shared contract is in test_contract.py."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from gateway.auth import new_key
from gateway.store import Exchange, ExchangeExtra, StoreError, StudentNote, open_store
from gateway.store.schema import LATEST_VERSION
from gateway.store.sqlite import SQLiteStore


def exchange(i: int, task: str = "t", status: str = "ok") -> Exchange:
    return Exchange(request_id=f"req_{i}", created_at=1000.0 + i, task=task, task_source="header", route="teacher",
                    model="m", upstream_model="openai/m", status=status, http_status=200, stream=bool(i % 2),  # type: ignore[arg-type]
                    request={"messages": [{"role": "user", "content": f"q{i}"}]},
                    response={"choices": [{"index": 0, "message": {"role": "assistant", "content": f"a{i}"},
                                           "finish_reason": "stop"}]},
                    user="u", prompt_tokens=3, completion_tokens=4, latency_ms=1.5, cost_usd=None,
                    finish_reason="stop",
                    extra=ExchangeExtra(teacher_error="e", student=StudentNote(version=1, message={"k": [1]})))


async def test_the_file_is_created_in_wal_mode(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'sub' / 'p.db'}")
    await store.open()
    await store.close()
    with sqlite3.connect(tmp_path / "sub" / "p.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == LATEST_VERSION


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


async def test_every_write_under_a_held_lock_raises_store_error(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    store = SQLiteStore(f"sqlite:///{path}", busy_timeout_ms=50)
    await store.open()
    await store.insert_exchanges([exchange(1)])
    writes: dict[str, Callable[[], Awaitable[object]]] = {
        "delete_exchanges_before": lambda: store.delete_exchanges_before(2000.0),
        "add_forgotten_users": lambda: store.add_forgotten_users({"h": 1.0}),
        "add_console_session": lambda: store.add_console_session("s", 1.0, 2.0),
        "delete_console_session": lambda: store.delete_console_session("s"),
        "add_api_key": lambda: store.add_api_key(new_key("ci")[1]),
        "revoke_api_key": lambda: store.revoke_api_key("key_x"),
        "set_student_status": lambda: store.set_student_status("t", 1, "active"),
        "set_student_threshold": lambda: store.set_student_threshold("t", 1, 0.5),
        "set_rollout": lambda: store.set_rollout("t", 5),
    }
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        for name, write in writes.items():
            with pytest.raises(StoreError, match="database is locked"):
                await write()
            assert await store.count_exchanges() == 1, name  # reads go on (WAL)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    await store.set_rollout("t", 5)  # recovers once the lock is gone
    assert await store.rollouts() == {"t": 5.0}
    await store.close()


async def test_keys_are_not_written_in_clear(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'p.db'}")
    await store.open()
    key, record = new_key("ci")
    await store.add_api_key(record)
    await store.close()
    assert key.encode() not in (tmp_path / "p.db").read_bytes()


def test_unsupported_store_urls() -> None:
    with pytest.raises(StoreError):
        open_store("mysql://x")
