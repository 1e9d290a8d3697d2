"""What only the PostgreSQL store does (types, locks, server errors); the shared contract is in test_contract.py."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from gateway.store import Store, StoreError, open_store, redacted_url
from gateway.store.postgres import PostgresStore
from tests.gateway.store.test_sqlite import exchange
from tests.pg import run_sql
from tests.servers import free_port


async def opened(url: str) -> Store:
    store = open_store(url)
    await store.open()
    return store


def test_open_store_picks_postgres_for_both_schemes() -> None:
    assert isinstance(open_store("postgresql://u@h/db"), PostgresStore)
    assert isinstance(open_store("postgres://u@h/db"), PostgresStore)


async def test_native_column_types_and_indexes(postgres_url: str) -> None:
    store = await opened(postgres_url)
    await store.close()
    schema = postgres_url.rsplit("search_path=", 1)[1]
    [types, indexes] = run_sql(
        postgres_url,
        "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
        f"WHERE table_schema = '{schema}'",
        f"SELECT indexname FROM pg_indexes WHERE schemaname = '{schema}'")
    types = dict(types)
    assert types["exchanges.request_json"] == "json"  # JSON keeps key order; JSONB would sort keys
    assert types["exchanges.extra_json"] == types["students.details_json"] == "jsonb"
    assert types["exchanges.stream"] == types["api_keys.revoked"] == types["students.prompt_distilled"] == "boolean"
    assert {r[0] for r in indexes} >= {"exchanges_task_created", "exchanges_status", "exchanges_created",
                                        "students_status"}


async def test_check_writable_fails_fast_while_a_table_lock_is_held(postgres_url: str) -> None:
    store = await opened(postgres_url)
    blocker = await opened(postgres_url)
    assert isinstance(blocker, PostgresStore)
    try:
        async with blocker.pool.acquire() as conn, conn.transaction():
            await conn.execute("LOCK TABLE exchanges IN ACCESS EXCLUSIVE MODE")  # as ALTER TABLE would
            started = time.monotonic()
            with pytest.raises(StoreError, match="not writable"):
                await store.check_writable()
            assert time.monotonic() - started < 2
        await store.check_writable()  # recovers once the lock is gone
        await store.insert_exchanges([exchange(1)])
    finally:
        await blocker.close()
        await store.close()


async def test_a_read_only_server_is_not_writable(postgres_url: str) -> None:
    store = await opened(postgres_url)
    await store.close()
    read_only = await opened(f"{postgres_url}&default_transaction_read_only=on")  # a standby, as far as we care
    try:
        assert await read_only.count_exchanges() == 0
        with pytest.raises(StoreError, match="not writable"):
            await read_only.check_writable()
        with pytest.raises(StoreError, match="cannot write 1 exchanges"):
            await read_only.insert_exchanges([exchange(1)])
    finally:
        await read_only.close()


async def test_a_connection_terminated_mid_query_becomes_a_store_error(postgres_url: str) -> None:
    store = await opened(postgres_url)
    blocker = await asyncpg.connect(postgres_url)
    try:
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE exchanges IN ACCESS EXCLUSIVE MODE")
            insert = asyncio.create_task(store.insert_exchanges([exchange(1)]))
            waiting: list[asyncpg.Record] = []
            for _ in range(500):  # until the insert waits for the lock, with its own connection
                waiting = await blocker.fetch("SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                                              blocker.get_server_pid())
                if waiting:
                    break
                await asyncio.sleep(0.01)
            assert len(waiting) == 1
            await blocker.execute("SELECT pg_terminate_backend($1)", waiting[0]["pid"])
            with pytest.raises(StoreError, match="cannot write 1 exchanges"):
                await insert
        await store.insert_exchanges([exchange(1)])  # the pool replaces the lost connection
        assert await store.count_exchanges() == 1
    finally:
        await blocker.close()
        await store.close()


async def test_unreachable_server_fails_to_open_without_leaking_the_password() -> None:
    store = PostgresStore(f"postgresql://u:s3cret@127.0.0.1:{free_port()}/db", timeout_s=2)
    with pytest.raises(StoreError, match="cannot open store") as err:
        await store.open()
    assert "s3cret" not in str(err.value) and "u:***@127.0.0.1" in str(err.value)
    with pytest.raises(StoreError, match="not open"):
        await store.list_tasks()


def test_redacted_urls() -> None:
    assert redacted_url("postgresql://u:p@h:5432/db?x=1") == "postgresql://u:***@h:5432/db?x=1"
    assert redacted_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert redacted_url("postgresql://h/db") == "postgresql://h/db"
