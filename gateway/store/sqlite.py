"""SQLite backend (aiosqlite, WAL): the default store for one gateway process."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.errors import StoreError
from gateway.store.base import (
    ApiKeyRecord,
    DeleteProgress,
    Exchange,
    ExchangeStatus,
    Store,
    StudentStatus,
    StudentVersion,
    TaskSummary,
)
from gateway.store.rows import (
    EXCHANGE_COLUMNS,
    STUDENT_COLUMNS,
    exchange_to_row,
    row_to_exchange,
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


class SQLiteStore(Store):
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

    async def open(self) -> None:
        try:
            private_file(self.path)
            self._db = await aiosqlite.connect(self.path, isolation_level=None)
            await self._db.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            await self._db.execute("PRAGMA journal_mode = WAL")
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

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    async def _migrate(self) -> None:
        await self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        current = await self.schema_version()
        if current > LATEST_VERSION:
            raise StoreError(f"store schema v{current} is newer than this Protégé (v{LATEST_VERSION})")
        for version in range(current + 1, LATEST_VERSION + 1):
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                if await self.schema_version() >= version:  # another process applied it while we waited
                    await self.db.execute("COMMIT")
                    continue
                for statement in MIGRATIONS[version - 1]:
                    await self.db.execute(statement)
                await self.db.execute("DELETE FROM schema_version")
                await self.db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise

    async def schema_version(self) -> int:
        async with self.db.execute("SELECT MAX(version) FROM schema_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    async def check_writable(self) -> None:
        try:
            await self.db.execute("BEGIN IMMEDIATE")
            await self.db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise StoreError(f"store is not writable: {exc}") from exc

    async def insert_exchanges(self, exchanges: list[Exchange]) -> None:
        if not exchanges:
            return
        try:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                await self.db.executemany(_INSERT_EXCHANGE, [exchange_to_row(e) for e in exchanges])
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write {len(exchanges)} exchanges: {exc}") from exc

    async def list_tasks(self) -> list[TaskSummary]:
        query = (
            "SELECT task, MIN(task_source), COUNT(*), SUM(CASE WHEN status = 'ok' THEN 1 ELSE 0 END), "
            "MIN(created_at), MAX(created_at) FROM exchanges GROUP BY task ORDER BY task"
        )
        async with self.db.execute(query) as cur:
            rows = await cur.fetchall()
        return [TaskSummary(r[0], r[1], int(r[2]), int(r[3] or 0), float(r[4]), float(r[5])) for r in rows]

    def _where(self, task: str | None, status: ExchangeStatus | None, after: tuple[float, str] | None = None, *,
               user: str | None = None, created_before: float | None = None) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if task is not None:
            clauses.append("task = ?")
            params.append(task)
        if status is not None:
            clauses.append("status = ?")
            params.append(status)
        if user is not None:
            clauses.append("user_id = ?")
            params.append(user)
        if created_before is not None:
            clauses.append("created_at < ?")
            params.append(created_before)
        if after is not None:
            clauses.append("(created_at > ? OR (created_at = ? AND request_id > ?))")
            params.extend((after[0], after[0], after[1]))
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    async def list_exchanges(self, *, task: str | None = None, status: ExchangeStatus | None = None,
                             limit: int | None = None, after: tuple[float, str] | None = None) -> list[Exchange]:
        where, params = self._where(task, status, after)
        query = f"SELECT {', '.join(EXCHANGE_COLUMNS)} FROM exchanges{where} ORDER BY created_at, request_id"
        if limit is not None:
            query += " LIMIT ?"
            params.append(limit)
        async with self.db.execute(query, params) as cur:
            rows = await cur.fetchall()
        return [row_to_exchange(tuple(r)) for r in rows]

    async def count_exchanges(self, *, task: str | None = None, status: ExchangeStatus | None = None,
                              user: str | None = None, created_before: float | None = None) -> int:
        where, params = self._where(task, status, user=user, created_before=created_before)
        async with self.db.execute(f"SELECT COUNT(*) FROM exchanges{where}", params) as cur:
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
        while True:
            try:
                await self.db.execute("BEGIN IMMEDIATE")
                try:
                    cur = await self.db.execute(
                        f"DELETE FROM exchanges WHERE request_id IN (SELECT request_id FROM exchanges{selection} "
                        "LIMIT ?)", [*params, batch_size])
                    await self.db.execute("COMMIT")
                except BaseException:
                    await self.db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"cannot delete exchanges: {exc}") from exc
            deleted += cur.rowcount
            if progress is not None:
                progress(deleted)
            if cur.rowcount < batch_size:
                return deleted

    async def forgotten_users(self) -> dict[str, float]:
        async with self.db.execute("SELECT user_hash, forgotten_at FROM forgotten_users") as cur:
            rows = await cur.fetchall()
        return {r[0]: float(r[1]) for r in rows}

    async def add_forgotten_users(self, forgotten: Mapping[str, float]) -> None:
        try:
            await self.db.executemany("INSERT OR IGNORE INTO forgotten_users (user_hash, forgotten_at) VALUES (?, ?)",
                                      list(forgotten.items()))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record forgotten users: {exc}") from exc

    async def add_console_session(self, session_hash: str, created_at: float, expires_at: float) -> None:
        try:
            await self.db.execute("DELETE FROM console_sessions WHERE expires_at < ?", (created_at,))
            await self.db.execute("INSERT INTO console_sessions (session_hash, created_at, expires_at) "
                                  "VALUES (?, ?, ?)",
                                  (session_hash, created_at, expires_at))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot record a console session: {exc}") from exc

    async def console_session_expiry(self, session_hash: str) -> float | None:
        try:
            async with self.db.execute("SELECT expires_at FROM console_sessions WHERE session_hash = ?",
                                       (session_hash,)) as cur:
                row = await cur.fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read console sessions: {exc}") from exc
        return None if row is None else float(row[0])

    async def delete_console_session(self, session_hash: str) -> None:
        try:
            await self.db.execute("DELETE FROM console_sessions WHERE session_hash = ?", (session_hash,))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot delete a console session: {exc}") from exc

    async def add_api_key(self, record: ApiKeyRecord) -> None:
        try:
            await self.db.execute(
                "INSERT INTO api_keys (key_id, name, key_hash, created_at, revoked) VALUES (?, ?, ?, ?, ?)",
                (record.key_id, record.name, record.key_hash, record.created_at, int(record.revoked)),
            )
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"key {record.key_id} already exists") from exc

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        query = "SELECT key_id, name, key_hash, created_at, revoked FROM api_keys ORDER BY created_at"
        async with self.db.execute(query) as cur:
            rows = await cur.fetchall()
        return [ApiKeyRecord(r[0], r[1], r[2], float(r[3]), bool(r[4])) for r in rows]

    async def revoke_api_key(self, key_id: str) -> bool:
        cur = await self.db.execute("UPDATE api_keys SET revoked = 1 WHERE key_id = ?", (key_id,))
        return cur.rowcount > 0

    async def add_student(self, student: StudentVersion) -> None:
        placeholders = ", ".join("?" for _ in STUDENT_COLUMNS)
        try:
            await self.db.execute(f"INSERT INTO students ({', '.join(STUDENT_COLUMNS)}) VALUES ({placeholders})",
                                  student_to_row(student))
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"student {student.task} v{student.version} already exists") from exc

    async def list_students(self, *, task: str | None = None) -> list[StudentVersion]:
        where, params = ("WHERE task = ?", [task]) if task is not None else ("", [])
        query = f"SELECT {', '.join(STUDENT_COLUMNS)} FROM students {where} ORDER BY task, version"
        async with self.db.execute(query, params) as cur:
            rows = await cur.fetchall()
        return [row_to_student(tuple(r)) for r in rows]

    async def set_student_status(self, task: str, version: int, status: StudentStatus) -> bool:
        now = time.time()
        await self.db.execute("BEGIN IMMEDIATE")
        try:
            if status == "active":
                await self.db.execute("UPDATE students SET status = 'retired', updated_at = ? "
                                      "WHERE task = ? AND status = 'active' AND version != ?", (now, task, version))
            cur = await self.db.execute("UPDATE students SET status = ?, updated_at = ? WHERE task = ? AND version = ?",
                                        (status, now, task, version))
            found = cur.rowcount > 0
            await self.db.execute("COMMIT" if found else "ROLLBACK")
        except BaseException:
            await self.db.execute("ROLLBACK")
            raise
        return found

    async def set_student_threshold(self, task: str, version: int, threshold: float | None) -> bool:
        cur = await self.db.execute("UPDATE students SET threshold = ?, updated_at = ? WHERE task = ? AND version = ?",
                                    (threshold, time.time(), task, version))
        return cur.rowcount > 0

    async def set_rollout(self, task: str, percent: float) -> None:
        await self.db.execute(
            "INSERT INTO task_routing (task, rollout_percent, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (task) DO UPDATE SET rollout_percent = excluded.rollout_percent, "
            "updated_at = excluded.updated_at", (task, percent, time.time()))

    async def rollouts(self) -> dict[str, float]:
        async with self.db.execute("SELECT task, rollout_percent FROM task_routing") as cur:
            rows = await cur.fetchall()
        return {r[0]: float(r[1]) for r in rows}
