"""SQLite backend (aiosqlite, WAL): the default store for one gateway process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.errors import StoreError
from gateway.store.base import (
    ApiKeyRecord,
    DeleteProgress,
    Exchange,
    ExchangeGroup,
    ExchangeStatus,
    Store,
    StoredResponse,
    StudentStatus,
    StudentVersion,
    TaskSummary,
)
from gateway.store.exchange_sql import groups_query, newest_query, where_clause
from gateway.store.feedback_sql import FeedbackTable
from gateway.store.ramp_sql import RampTable
from gateway.store.rows import (
    EXCHANGE_COLUMNS,
    RESPONSE_COLUMNS,
    STUDENT_COLUMNS,
    exchange_select,
    exchange_to_row,
    group_of,
    response_to_row,
    row_to_exchange,
    row_to_response,
    row_to_student,
    student_to_row,
)
from gateway.store.schema import LATEST_VERSION, MIGRATIONS

_INSERT_EXCHANGE = (
    f"INSERT OR IGNORE INTO exchanges ({', '.join(EXCHANGE_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in EXCHANGE_COLUMNS)})"
)


def sqlite_path(url: str) -> Path:
    """`sqlite:///rel/path.db` → rel/path.db; `sqlite:////abs/path.db` → /abs/path.db."""
    return Path(url.removeprefix("sqlite:///"))


def private_file(path: Path) -> None:
    """Create the store's folder (0700) and file (0600) when they do not exist yet: captured prompts are
    nobody else's to read. SQLite gives its -wal and -shm files the database file's permissions."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


@contextlib.asynccontextmanager
async def _write_transaction(db: aiosqlite.Connection) -> AsyncIterator[None]:
    """BEGIN IMMEDIATE (the write lock now, not at the first write), COMMIT on success, ROLLBACK on failure."""
    await db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        # SQLite rolls back by itself on some errors (disk full, I/O): a second ROLLBACK would fail and hide why
        if db.in_transaction:
            await db.execute("ROLLBACK")
        raise
    await db.execute("COMMIT")


async def _read_version(db: aiosqlite.Connection) -> int:
    async with db.execute("SELECT MAX(version) FROM schema_version") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row and row[0] is not None else 0


class SQLiteStore(FeedbackTable, RampTable, Store):
    dialect = "sqlite"

    def __init__(self, url: str, *, busy_timeout_ms: int = 5000) -> None:
        self.url = url
        self.path = sqlite_path(url)
        self._busy_timeout_ms = busy_timeout_ms
        self._db: aiosqlite.Connection | None = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("store is not open")
        return self._db

    @contextlib.asynccontextmanager
    async def _connection(self, doing: str) -> AsyncIterator[aiosqlite.Connection]:
        """The connection for one operation. The one place where driver errors (locked, disk I/O, disk full,
        a changed schema…: every sqlite3.Error) become the StoreError that the gateway's callers expect."""
        db = self.db
        try:
            yield db
        except sqlite3.Error as exc:
            raise StoreError(f"cannot {doing}: {exc}") from exc

    async def _execute(self, doing: str, query: str, params: Sequence[Any]) -> int:
        async with self._connection(doing) as db:
            return int((await db.execute(query, params)).rowcount)

    async def _fetch(self, doing: str, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        async with self._connection(doing) as db, db.execute(query, params) as cur:
            return [tuple(r) for r in await cur.fetchall()]

    async def open(self) -> None:
        try:
            private_file(self.path)
            self._db = await aiosqlite.connect(self.path, isolation_level=None)
            await self._db.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            await self._journal_in_wal_mode()
            await self._db.execute("PRAGMA synchronous = NORMAL")
            # Deleted rows (forget, retention) are overwritten, not left readable in free pages. Debian's SQLite
            # does this by default; other builds do not.
            await self._db.execute("PRAGMA secure_delete = ON")
            await self._migrate()
        except (OSError, sqlite3.Error) as exc:
            await self.close()
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        except BaseException:
            await self.close()
            raise

    async def _journal_in_wal_mode(self) -> None:
        """Switch to WAL. The switch takes an exclusive lock that SQLite does not wait for through the busy
        handler, so connections opening a new file together (gateway workers starting at once) are refused
        "database is locked": try again until the busy timeout has passed."""
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        while True:
            try:
                await self.db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.01)

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    async def _migrate(self) -> None:
        db = self.db
        await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        current = await _read_version(db)
        if current > LATEST_VERSION:
            raise StoreError(f"store schema v{current} is newer than this Protégé (v{LATEST_VERSION})")
        for version in range(current + 1, LATEST_VERSION + 1):
            async with _write_transaction(db):
                if await _read_version(db) >= version:  # another process applied it while we waited
                    continue
                for statement in MIGRATIONS[version - 1]:
                    await db.execute(statement)
                await db.execute("DELETE FROM schema_version")
                await db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))

    async def schema_version(self) -> int:
        async with self._connection("read the schema version") as db:
            return await _read_version(db)

    async def check_writable(self) -> None:
        async with self._connection("check the store") as db:
            try:
                await db.execute("BEGIN IMMEDIATE")
                await db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                raise StoreError(f"store is not writable: {exc}") from exc

    async def insert_exchanges(self, exchanges: list[Exchange]) -> None:
        if not exchanges:
            return
        rows = [exchange_to_row(e) for e in exchanges]
        async with self._connection(f"write {len(exchanges)} exchanges") as db, _write_transaction(db):
            await db.executemany(_INSERT_EXCHANGE, rows)

    async def list_tasks(self) -> list[TaskSummary]:
        query = (
            "SELECT task, MIN(task_source), COUNT(*), SUM(CASE WHEN status = 'ok' THEN 1 ELSE 0 END), "
            "MIN(created_at), MAX(created_at) FROM exchanges GROUP BY task ORDER BY task"
        )
        async with self._connection("list tasks") as db, db.execute(query) as cur:
            rows = await cur.fetchall()
        return [TaskSummary(r[0], r[1], int(r[2]), int(r[3] or 0), float(r[4]), float(r[5])) for r in rows]

    def _where(self, task: str | None, status: ExchangeStatus | None, after: tuple[float, str] | None = None, *,
               user: str | None = None, created_before: float | None = None) -> tuple[str, list[Any]]:
        return where_clause("sqlite", task, status, after, user=user, created_before=created_before)

    async def list_exchanges(self, *, task: str | None = None, status: ExchangeStatus | None = None,
                             limit: int | None = None, after: tuple[float, str] | None = None,
                             bodies: bool = True) -> list[Exchange]:
        where, params = self._where(task, status, after)
        query = f"SELECT {exchange_select(bodies)} FROM exchanges{where} ORDER BY created_at, request_id"
        if limit is not None:
            query += " LIMIT ?"
            params.append(limit)
        async with self._connection("list exchanges") as db, db.execute(query, params) as cur:
            rows = await cur.fetchall()
        return [row_to_exchange(tuple(r)) for r in rows]

    async def newest_exchanges(self, *, task: str, limit: int, routes: Sequence[str] | None = None,
                               since: float | None = None,
                               request_ids: Sequence[str] | None = None) -> list[Exchange]:
        built = newest_query("sqlite", task=task, limit=limit, routes=routes, since=since, request_ids=request_ids)
        if built is None:
            return []
        query, params = built
        async with self._connection("list exchanges") as db, db.execute(query, params) as cur:
            rows = await cur.fetchall()
        return [row_to_exchange(tuple(r)) for r in rows]

    async def exchange_groups(self, *, task: str, since: float | None, bucket_s: float) -> list[ExchangeGroup]:
        query, params = groups_query("sqlite", task=task, since=since, bucket_s=bucket_s)
        async with self._connection("add up exchanges") as db, db.execute(query, params) as cur:
            rows = await cur.fetchall()
        return [group_of(tuple(r)) for r in rows]

    async def count_exchanges(self, *, task: str | None = None, status: ExchangeStatus | None = None,
                              user: str | None = None, created_before: float | None = None) -> int:
        where, params = self._where(task, status, user=user, created_before=created_before)
        async with (self._connection("count exchanges") as db,
                    db.execute(f"SELECT COUNT(*) FROM exchanges{where}", params) as cur):
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def _delete_exchanges(self, *, task: str | None, user: str | None, created_before: float | None,
                                batch_size: int, progress: DeleteProgress | None) -> int:
        where, params = self._where(task, None, user=user, created_before=created_before)
        return await self._delete_batches(f"{where} ORDER BY created_at", params, batch_size, progress)

    async def _delete_batches(self, selection: str, params: list[Any], batch_size: int,
                              progress: DeleteProgress | None) -> int:
        """Delete the exchanges `selection` (a WHERE clause, maybe ordered) picks, `batch_size` per transaction:
        the write lock is held for one batch at a time, so capture keeps writing in between."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        deleted = 0
        query = f"DELETE FROM exchanges WHERE request_id IN (SELECT request_id FROM exchanges{selection} LIMIT ?)"
        while True:
            async with self._connection("delete exchanges") as db, _write_transaction(db):
                cur = await db.execute(query, [*params, batch_size])
            deleted += cur.rowcount
            if progress is not None:
                progress(deleted)
            if cur.rowcount < batch_size:
                return deleted

    async def put_response(self, response: StoredResponse) -> None:
        placeholders = ", ".join("?" for _ in RESPONSE_COLUMNS)
        async with self._connection("store a response") as db:
            await db.execute(f"INSERT OR REPLACE INTO responses ({', '.join(RESPONSE_COLUMNS)}) "
                             f"VALUES ({placeholders})", response_to_row(response))

    async def get_response(self, response_id: str) -> StoredResponse | None:
        query = f"SELECT {', '.join(RESPONSE_COLUMNS)} FROM responses WHERE response_id = ?"
        async with self._connection("read a response") as db, db.execute(query, (response_id,)) as cur:
            row = await cur.fetchone()
        return None if row is None else row_to_response(tuple(row))

    async def list_responses(self, *, limit: int, after: tuple[float, str] | None = None) -> list[StoredResponse]:
        where, params = "", []
        if after is not None:
            where, params = " WHERE (created_at > ? OR (created_at = ? AND response_id > ?))", [after[0], *after]
        query = (f"SELECT {', '.join(RESPONSE_COLUMNS)} FROM responses{where} "
                 "ORDER BY created_at, response_id LIMIT ?")
        async with self._connection("list responses") as db, db.execute(query, [*params, limit]) as cur:
            rows = await cur.fetchall()
        return [row_to_response(tuple(r)) for r in rows]

    async def delete_response(self, response_id: str) -> bool:
        async with self._connection("delete a response") as db:
            cur = await db.execute("DELETE FROM responses WHERE response_id = ?", (response_id,))
        return cur.rowcount > 0

    async def _delete_responses(self, *, task: str | None, user: str | None, created_before: float | None) -> int:
        where, params = self._where(task, None, user=user, created_before=created_before)
        async with self._connection("delete responses") as db, _write_transaction(db):
            cur = await db.execute(f"DELETE FROM responses{where}", params)
        return int(cur.rowcount)

    async def forgotten_users(self) -> dict[str, float]:
        async with (self._connection("read forgotten users") as db,
                    db.execute("SELECT user_hash, forgotten_at FROM forgotten_users") as cur):
            rows = await cur.fetchall()
        return {r[0]: float(r[1]) for r in rows}

    async def add_forgotten_users(self, forgotten: Mapping[str, float]) -> None:
        async with self._connection("record forgotten users") as db:
            await db.executemany("INSERT OR IGNORE INTO forgotten_users (user_hash, forgotten_at) VALUES (?, ?)",
                                 list(forgotten.items()))

    async def add_console_session(self, session_hash: str, created_at: float, expires_at: float) -> None:
        async with self._connection("record a console session") as db:
            await db.execute("DELETE FROM console_sessions WHERE expires_at < ?", (created_at,))
            await db.execute("INSERT INTO console_sessions (session_hash, created_at, expires_at) VALUES (?, ?, ?)",
                             (session_hash, created_at, expires_at))

    async def console_session_expiry(self, session_hash: str) -> float | None:
        async with (self._connection("read console sessions") as db,
                    db.execute("SELECT expires_at FROM console_sessions WHERE session_hash = ?",
                               (session_hash,)) as cur):
            row = await cur.fetchone()
        return None if row is None else float(row[0])

    async def delete_console_session(self, session_hash: str) -> None:
        async with self._connection("delete a console session") as db:
            await db.execute("DELETE FROM console_sessions WHERE session_hash = ?", (session_hash,))

    async def add_api_key(self, record: ApiKeyRecord) -> None:
        async with self._connection("add a key") as db:
            try:
                await db.execute(
                    "INSERT INTO api_keys (key_id, name, key_hash, created_at, revoked) VALUES (?, ?, ?, ?, ?)",
                    (record.key_id, record.name, record.key_hash, record.created_at, int(record.revoked)),
                )
            except sqlite3.IntegrityError as exc:
                raise StoreError(f"key {record.key_id} already exists") from exc

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        query = "SELECT key_id, name, key_hash, created_at, revoked FROM api_keys ORDER BY created_at"
        async with self._connection("list keys") as db, db.execute(query) as cur:
            rows = await cur.fetchall()
        return [ApiKeyRecord(r[0], r[1], r[2], float(r[3]), bool(r[4])) for r in rows]

    async def revoke_api_key(self, key_id: str) -> bool:
        async with self._connection("revoke a key") as db:
            cur = await db.execute("UPDATE api_keys SET revoked = 1 WHERE key_id = ?", (key_id,))
        return cur.rowcount > 0

    async def add_student(self, student: StudentVersion) -> None:
        placeholders = ", ".join("?" for _ in STUDENT_COLUMNS)
        async with self._connection("add a student") as db:
            try:
                await db.execute(f"INSERT INTO students ({', '.join(STUDENT_COLUMNS)}) VALUES ({placeholders})",
                                 student_to_row(student))
            except sqlite3.IntegrityError as exc:
                raise StoreError(f"student {student.task} v{student.version} already exists") from exc

    async def list_students(self, *, task: str | None = None) -> list[StudentVersion]:
        where, params = ("WHERE task = ?", [task]) if task is not None else ("", [])
        query = f"SELECT {', '.join(STUDENT_COLUMNS)} FROM students {where} ORDER BY task, version"
        async with self._connection("list students") as db, db.execute(query, params) as cur:
            rows = await cur.fetchall()
        return [row_to_student(tuple(r)) for r in rows]

    async def set_student_status(self, task: str, version: int, status: StudentStatus) -> bool:
        now = time.time()
        async with self._connection("set a student's status") as db, _write_transaction(db):
            # Under the write lock: a version missing here is missing, and no other writer retires in between.
            async with db.execute("SELECT 1 FROM students WHERE task = ? AND version = ?", (task, version)) as cur:
                if await cur.fetchone() is None:
                    return False
            if status == "active":
                await db.execute("UPDATE students SET status = 'retired', updated_at = ? "
                                 "WHERE task = ? AND status = 'active' AND version != ?", (now, task, version))
            await db.execute("UPDATE students SET status = ?, updated_at = ? WHERE task = ? AND version = ?",
                             (status, now, task, version))
        return True

    async def set_student_threshold(self, task: str, version: int, threshold: float | None) -> bool:
        async with self._connection("set a student's threshold") as db:
            cur = await db.execute("UPDATE students SET threshold = ?, updated_at = ? WHERE task = ? AND version = ?",
                                   (threshold, time.time(), task, version))
        return cur.rowcount > 0

    async def set_rollout(self, task: str, percent: float) -> None:
        async with self._connection("set a rollout") as db:
            await db.execute(
                "INSERT INTO task_routing (task, rollout_percent, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (task) DO UPDATE SET rollout_percent = excluded.rollout_percent, "
                "updated_at = excluded.updated_at", (task, percent, time.time()))

    async def rollouts(self) -> dict[str, float]:
        async with (self._connection("read rollouts") as db,
                    db.execute("SELECT task, rollout_percent FROM task_routing") as cur):
            rows = await cur.fetchall()
        return {r[0]: float(r[1]) for r in rows}
