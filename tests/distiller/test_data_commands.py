"""`protege forget`, `prune`, `migrate-store` and the scheduler's retention, run as the operator runs them against a
real SQLite file and a real PostgreSQL schema: in this process through `protege.cli.main` where the test checks
the command's output, exit code and store, and as real processes where it needs the process's stdin (a terminal
that answers the confirmation, /dev/null that cannot)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import pty
import subprocess
import time
from pathlib import Path
from typing import TypeVar

import pytest

from distiller.dataset import CuratedDataset, curate_task
from gateway.store import Exchange, Store, user_hash
from tests.cli import ok, run_cli
from tests.cli import run_process as protege
from tests.distiller.conftest import make_exchange
from tests.gateway.store.test_migrate import fill, snapshot
from tests.pg import fresh_schema
from tests.stores import read_store

DAY = 86400.0
ALICE = "alice@example.com"
T = TypeVar("T")


def on_a_terminal(*args: str, answer: str) -> subprocess.CompletedProcess[str]:
    """The command with a terminal as stdin, on which `answer` has already been typed."""
    controller, terminal = pty.openpty()
    try:
        os.write(controller, answer.encode())
        return protege(*args, stdin=terminal, check=False)
    finally:
        os.close(controller)
        os.close(terminal)


def answered_on_a_terminal(capsys: pytest.CaptureFixture[str], *args: str, answer: str) -> tuple[int, str, str]:
    """`on_a_terminal` in this process: sys.stdin is a terminal on which `answer` has already been typed."""
    controller, terminal = pty.openpty()
    try:
        os.write(controller, answer.encode())
        with open(terminal, closefd=False) as tty:
            assert tty.isatty()
            return run_cli(capsys, *args, stdin=tty)
    finally:
        os.close(controller)
        os.close(terminal)


def captured(i: int, user: str | None, *, age_days: float = 0.0, task: str = "t") -> Exchange:
    return dataclasses.replace(make_exchange(i, task=task), user=user, created_at=time.time() - age_days * DAY)


def insert(url: str, exchanges: list[Exchange]) -> None:
    async def work(store: Store) -> None:
        await store.insert_exchanges(exchanges)

    read_store(url, work)


def users_and_ids(url: str) -> list[tuple[str | None, str]]:
    async def work(store: Store) -> list[tuple[str | None, str]]:
        return [(e.user, e.request_id) for e in await store.list_exchanges()]

    return read_store(url, work)


def test_forget_deletes_only_that_user_and_keeps_them_out_of_later_datasets(store_url: str, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    users = [ALICE, "bob", None]
    insert(store_url, [captured(i, users[i % 3]) for i in range(12)])

    code, _, err = run_cli(capsys, "forget", "--store", store_url, "--user", ALICE)  # stdin: /dev/null
    assert code == 2 and "pass --yes" in err and "Traceback" not in err
    assert len(users_and_ids(store_url)) == 12

    code, out, err = run_cli(capsys, "forget", "--store", store_url, "--user", ALICE, "--yes", "--batch-size", "3")
    assert code == 0, err
    assert "deleted 4 exchanges of the user" in out and user_hash(ALICE)[:12] in out
    assert ALICE not in out + err  # the id is not echoed into logs
    assert sorted({u or "" for u, _ in users_and_ids(store_url)}) == ["", "bob"]
    if store_url.startswith("sqlite"):  # neither the deleted rows nor the record leave the id in the file
        assert not any(ALICE.encode() in f.read_bytes() for f in tmp_path.glob("store.db*"))

    # captured after the forget, e.g. in flight on another replica: kept out of datasets and exports
    insert(store_url, [captured(20, ALICE), captured(21, ALICE), captured(22, "bob")])

    async def curation(store: Store) -> CuratedDataset:
        assert await store.forgotten_user_hashes() == {user_hash(ALICE)}
        return await curate_task(store, "t")

    dataset = read_store(store_url, curation)
    assert dataset.report["input"] == 11 and dataset.report["dropped"]["forgotten_user"] == 2
    assert [rid for rid, reason in dataset.dropped if reason == "forgotten_user"] == ["req_00020", "req_00021"]
    exported = ok(capsys, "export", "--store", store_url, "--task", "t", "--format", "jsonl-raw", "--out", "-")
    assert len(exported.splitlines()) == 9 and ALICE not in exported

    # forgetting again deletes the late rows; the record stays as it was
    assert "deleted 2 exchanges" in ok(capsys, "forget", "--store", store_url, "--user", ALICE, "--yes")
    assert len(users_and_ids(store_url)) == 9


def test_prune_deletes_only_old_exchanges(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    ages = [1, 5, 20, 40, 100]
    insert(store_url, [captured(i, None, age_days=ages[i % 5], task="a" if i < 5 else "b") for i in range(10)])

    code, _, err = run_cli(capsys, "prune", "--store", store_url, "--older-than", "30d")  # stdin: /dev/null
    assert code == 2 and "pass --yes" in err
    code, _, err = run_cli(capsys, "prune", "--store", store_url, "--older-than", "soon", "--yes")
    assert code == 2 and "invalid duration" in err
    assert len(users_and_ids(store_url)) == 10

    out = ok(capsys, "prune", "--store", store_url, "--older-than", "30d", "--yes", "--batch-size", "1")
    assert out.startswith("deleted 4 exchanges older than 30d (captured before ")
    assert {rid for _, rid in users_and_ids(store_url)} == {f"req_{i:05d}" for i in (0, 1, 2, 5, 6, 7)}

    out = ok(capsys, "prune", "--store", store_url, "--older-than", "240h", "--task", "a", "--yes")
    assert out.startswith("deleted 1 exchanges of task a older than 240h")
    assert {rid for _, rid in users_and_ids(store_url)} == {f"req_{i:05d}" for i in (0, 1, 5, 6, 7)}


def test_deleting_asks_on_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    insert(url, [captured(i, ALICE, age_days=100) for i in range(3)])

    # a real process whose stdin is /dev/null (a script, a cron job): it refuses rather than ask or hang
    refused = protege("forget", "--store", url, "--user", ALICE, check=False)
    assert refused.returncode == 2 and "pass --yes" in refused.stderr and "Traceback" not in refused.stderr
    assert refused.stdout == "" and len(users_and_ids(url)) == 3

    code, out, _ = answered_on_a_terminal(capsys, "forget", "--store", url, "--user", ALICE, answer="n\n")
    assert code == 1 and f"Delete 3 exchanges of user {ALICE!r}" in out
    assert "nothing deleted" in out
    code, out, _ = answered_on_a_terminal(capsys, "prune", "--store", url, "--older-than", "90d",
                                          answer="\n")  # the default is no
    assert code == 1 and "Delete 3 exchanges older than 90d" in out
    assert len(users_and_ids(url)) == 3

    # a real process whose stdin is the terminal: the prompt, the answer, the deletion
    yes = on_a_terminal("prune", "--store", url, "--older-than", "90d", answer="y\n")
    assert "Delete 3 exchanges older than 90d" in yes.stdout
    assert yes.returncode == 0 and "deleted 3 exchanges" in yes.stdout
    assert users_and_ids(url) == []


def test_migrate_store_copies_sqlite_into_postgresql(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'store.db'}"
    asyncio.run(fill(sqlite_url))  # exchanges, keys (one revoked), students, rollouts, a forgotten user
    with fresh_schema() as postgres_url:
        out = ok(capsys, "migrate-store", "--from", sqlite_url, "--to", postgres_url, "--batch-size", "5", "--json")
        counts = json.loads(out)
        assert counts == {"from": sqlite_url, "to": postgres_url, "exchanges": 23, "exchanges_read": 23,
                          "exchanges_forgotten": 0, "api_keys": 2, "students": 3, "rollouts": 2,
                          "ramps": 1, "forgotten_users": 1, "feedback": 2, "responses": 7}
        assert asyncio.run(snapshot(postgres_url)) == asyncio.run(snapshot(sqlite_url))

        again = ok(capsys, "migrate-store", "--from", sqlite_url, "--to", postgres_url)
        assert f"copied {sqlite_url} → {postgres_url}" in again
        assert "exchanges:       0 added (23 read, 0 of forgotten users left out)" in again
        assert "rollouts:        2 set" in again

    code, _, err = run_cli(capsys, "migrate-store", "--from", sqlite_url, "--to", sqlite_url)
    assert code == 1 and "same store" in err
    from tests.servers import free_port

    code, out, err = run_cli(capsys, "migrate-store", "--from", sqlite_url, "--to",
                             f"postgresql://u:s3cret@127.0.0.1:{free_port()}/db")
    assert code == 1 and "cannot open store" in err
    assert "s3cret" not in out + err and "Traceback" not in err


def test_the_scheduler_applies_the_configured_retention(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    insert(url, [captured(i, None, age_days=40 if i < 2 else 1) for i in range(5)])
    config = tmp_path / "protege.yaml"
    config.write_text("capture:\n  retention_days: 30\n")

    out = ok(capsys, "scheduler", "--once", "--config", str(config), "--store", url)
    assert "retention: deleted 2 exchanges older than 30 days" in out and "no task is due" in out
    assert len(users_and_ids(url)) == 3
    assert "retention" not in ok(capsys, "scheduler", "--once", "--store", url)  # not configured: kept
    assert len(users_and_ids(url)) == 3
