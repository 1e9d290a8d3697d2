"""`protege forget`, `prune`, `migrate-store` and the scheduler's retention, run as the operator runs them:
real processes against a real SQLite file and a real PostgreSQL schema."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import pty
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from distiller.dataset import CuratedDataset, curate_task
from gateway.store import Exchange, Store, open_store, user_hash
from tests.distiller.conftest import make_exchange
from tests.gateway.store.test_migrate import fill, snapshot
from tests.pg import fresh_schema

DAY = 86400.0
ALICE = "alice@example.com"
T = TypeVar("T")


def protege(*args: str, stdin: int | None = subprocess.DEVNULL, check: bool = True) -> subprocess.CompletedProcess[str]:
    # stdin is /dev/null unless a test says otherwise: the commands must not find pytest's terminal
    return subprocess.run([sys.executable, "-m", "distiller.cli", *args], capture_output=True, text=True,
                          stdin=stdin, check=check, timeout=120)


def on_a_terminal(*args: str, answer: str) -> subprocess.CompletedProcess[str]:
    """The command with a terminal as stdin, on which `answer` has already been typed."""
    controller, terminal = pty.openpty()
    try:
        os.write(controller, answer.encode())
        return protege(*args, stdin=terminal, check=False)
    finally:
        os.close(controller)
        os.close(terminal)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
    else:
        with fresh_schema() as url:
            yield url


def with_store(url: str, work: Callable[[Store], Awaitable[T]]) -> T:
    async def run() -> T:
        store = open_store(url)
        await store.open()
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())


def captured(i: int, user: str | None, *, age_days: float = 0.0, task: str = "t") -> Exchange:
    return dataclasses.replace(make_exchange(i, task=task), user=user, created_at=time.time() - age_days * DAY)


def insert(url: str, exchanges: list[Exchange]) -> None:
    async def work(store: Store) -> None:
        await store.insert_exchanges(exchanges)

    with_store(url, work)


def users_and_ids(url: str) -> list[tuple[str | None, str]]:
    async def work(store: Store) -> list[tuple[str | None, str]]:
        return [(e.user, e.request_id) for e in await store.list_exchanges()]

    return with_store(url, work)


def test_forget_deletes_only_that_user_and_keeps_them_out_of_later_datasets(store_url: str, tmp_path: Path) -> None:
    users = [ALICE, "bob", None]
    insert(store_url, [captured(i, users[i % 3]) for i in range(12)])

    refused = protege("forget", "--store", store_url, "--user", ALICE, check=False)
    assert refused.returncode == 2 and "pass --yes" in refused.stderr and "Traceback" not in refused.stderr
    assert len(users_and_ids(store_url)) == 12

    done = protege("forget", "--store", store_url, "--user", ALICE, "--yes", "--batch-size", "3")
    assert "deleted 4 exchanges of the user" in done.stdout and user_hash(ALICE)[:12] in done.stdout
    assert ALICE not in done.stdout + done.stderr  # the id is not echoed into logs
    assert sorted({u or "" for u, _ in users_and_ids(store_url)}) == ["", "bob"]
    if store_url.startswith("sqlite"):  # neither the deleted rows nor the record leave the id in the file
        assert not any(ALICE.encode() in f.read_bytes() for f in tmp_path.glob("store.db*"))

    # captured after the forget, e.g. in flight on another replica: kept out of datasets and exports
    insert(store_url, [captured(20, ALICE), captured(21, ALICE), captured(22, "bob")])

    async def curation(store: Store) -> CuratedDataset:
        assert await store.forgotten_user_hashes() == {user_hash(ALICE)}
        return await curate_task(store, "t")

    dataset = with_store(store_url, curation)
    assert dataset.report["input"] == 11 and dataset.report["dropped"]["forgotten_user"] == 2
    assert [rid for rid, reason in dataset.dropped if reason == "forgotten_user"] == ["req_00020", "req_00021"]
    exported = protege("export", "--store", store_url, "--task", "t", "--format", "jsonl-raw", "--out", "-")
    assert len(exported.stdout.splitlines()) == 9 and ALICE not in exported.stdout

    # forgetting again deletes the late rows; the record stays as it was
    assert "deleted 2 exchanges" in protege("forget", "--store", store_url, "--user", ALICE, "--yes").stdout
    assert len(users_and_ids(store_url)) == 9


def test_prune_deletes_only_old_exchanges(store_url: str) -> None:
    ages = [1, 5, 20, 40, 100]
    insert(store_url, [captured(i, None, age_days=ages[i % 5], task="a" if i < 5 else "b") for i in range(10)])

    refused = protege("prune", "--store", store_url, "--older-than", "30d", check=False)
    assert refused.returncode == 2 and "pass --yes" in refused.stderr
    bad = protege("prune", "--store", store_url, "--older-than", "soon", "--yes", check=False)
    assert bad.returncode == 2 and "invalid duration" in bad.stderr
    assert len(users_and_ids(store_url)) == 10

    out = protege("prune", "--store", store_url, "--older-than", "30d", "--yes", "--batch-size", "1").stdout
    assert out.startswith("deleted 4 exchanges older than 30d (captured before ")
    assert {rid for _, rid in users_and_ids(store_url)} == {f"req_{i:05d}" for i in (0, 1, 2, 5, 6, 7)}

    out = protege("prune", "--store", store_url, "--older-than", "240h", "--task", "a", "--yes").stdout
    assert out.startswith("deleted 1 exchanges of task a older than 240h")
    assert {rid for _, rid in users_and_ids(store_url)} == {f"req_{i:05d}" for i in (0, 1, 5, 6, 7)}


def test_deleting_asks_on_a_terminal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    insert(url, [captured(i, ALICE, age_days=100) for i in range(3)])

    no = on_a_terminal("forget", "--store", url, "--user", ALICE, answer="n\n")
    assert no.returncode == 1 and f"Delete 3 exchanges of user {ALICE!r}" in no.stdout
    assert "nothing deleted" in no.stdout
    no = on_a_terminal("prune", "--store", url, "--older-than", "90d", answer="\n")  # the default is no
    assert no.returncode == 1 and "Delete 3 exchanges older than 90d" in no.stdout
    assert len(users_and_ids(url)) == 3

    yes = on_a_terminal("prune", "--store", url, "--older-than", "90d", answer="y\n")
    assert yes.returncode == 0 and "deleted 3 exchanges" in yes.stdout
    assert users_and_ids(url) == []


def test_migrate_store_copies_sqlite_into_postgresql(tmp_path: Path) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'store.db'}"
    asyncio.run(fill(sqlite_url))  # exchanges, keys (one revoked), students, rollouts, a forgotten user
    with fresh_schema() as postgres_url:
        out = protege("migrate-store", "--from", sqlite_url, "--to", postgres_url, "--batch-size", "5", "--json")
        counts = json.loads(out.stdout)
        assert counts == {"from": sqlite_url, "to": postgres_url, "exchanges": 23, "exchanges_read": 23,
                          "exchanges_forgotten": 0, "api_keys": 2, "students": 3, "rollouts": 2,
                          "forgotten_users": 1}
        assert asyncio.run(snapshot(postgres_url)) == asyncio.run(snapshot(sqlite_url))

        again = protege("migrate-store", "--from", sqlite_url, "--to", postgres_url).stdout
        assert f"copied {sqlite_url} → {postgres_url}" in again
        assert "exchanges:       0 added (23 read, 0 of forgotten users left out)" in again
        assert "rollouts:        2 set" in again

    same = protege("migrate-store", "--from", sqlite_url, "--to", sqlite_url, check=False)
    assert same.returncode == 1 and "same store" in same.stderr
    from tests.servers import free_port

    down = protege("migrate-store", "--from", sqlite_url, "--to", f"postgresql://u:s3cret@127.0.0.1:{free_port()}/db",
                   check=False)
    assert down.returncode == 1 and "cannot open store" in down.stderr
    assert "s3cret" not in down.stderr and "Traceback" not in down.stderr


def test_the_scheduler_applies_the_configured_retention(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    insert(url, [captured(i, None, age_days=40 if i < 2 else 1) for i in range(5)])
    config = tmp_path / "protege.yaml"
    config.write_text("capture:\n  retention_days: 30\n")

    out = protege("scheduler", "--once", "--config", str(config), "--store", url).stdout
    assert "retention: deleted 2 exchanges older than 30 days" in out and "no task is due" in out
    assert len(users_and_ids(url)) == 3
    assert "retention" not in protege("scheduler", "--once", "--store", url).stdout  # not configured: kept
