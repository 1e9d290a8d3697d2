"""PostgreSQL backend (asyncpg pool): one store shared by several gateway replicas and the distiller.

Same semantics as the SQLite store, with these choices:
- text columns that are sorted or grouped on use the "C" collation, so order matches SQLite's byte order
  whatever the database's locale;
- `request_json`/`response_json` are JSON, not JSONB: JSONB reorders object keys, and a tool's parameter
  order is part of the prompt a student is trained on; metadata (`extra_json`, `details_json`) is JSONB;
- PostgreSQL refuses NUL characters in TEXT and JSONB, so those are replaced by U+FFFD rather than
  losing a whole capture batch (the JSON payload columns keep them, escaped);
- every asyncpg or connection error becomes a StoreError, which the gateway's background loops expect."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import asyncpg

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
    redacted_url,
)
from gateway.store.exchange_sql import groups_query, newest_query, where_clause
from gateway.store.feedback_sql import FeedbackTable
from gateway.store.postgres_schema import LATEST_VERSION, MIGRATION_LOCK, MIGRATIONS
from gateway.store.ramp_sql import RampTable
from gateway.store.records import ExchangeExtra
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

# Errors that mean "the store could not be read or written" (server down, refused, timed out, SQL error, and
# asyncpg's own: a protocol error, an outdated type cache).
_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError)

_EXCHANGE_TYPES = {
    "request_id": "text", "created_at": "float8", "task": "text", "task_source": "text", "route": "text",
    "model": "text", "upstream_model": "text", "user_id": "text", "status": "text", "http_status": "int4",
    "stream": "bool", "request_json": "json", "response_json": "json", "prompt_tokens": "int4",
    "completion_tokens": "int4", "latency_ms": "float8", "cost_usd": "float8", "finish_reason": "text",
    "error": "text", "system_hash": "text", "extra_json": "jsonb",
}
# One statement per batch: a column array per field, unnested into rows (one round trip, one plan).
_INSERT_EXCHANGES = (
    f"INSERT INTO exchanges ({', '.join(EXCHANGE_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"${i}::{_EXCHANGE_TYPES[c]}[]" for i, c in enumerate(EXCHANGE_COLUMNS, 1))
    + ") ON CONFLICT (request_id) DO NOTHING"
)
_STREAM = EXCHANGE_COLUMNS.index("stream")
_EXTRA = EXCHANGE_COLUMNS.index("extra_json")
_PROMPT_DISTILLED = STUDENT_COLUMNS.index("prompt_distilled")
# TEXT columns cannot hold NUL, nor can JSONB (extra_json); the JSON payload columns keep "\u0000" escapes
_NUL_FREE = [i for i, c in enumerate(EXCHANGE_COLUMNS) if _EXCHANGE_TYPES[c] == "text"]
_TEXT_FIELDS = ("request_id", "task", "task_source", "route", "model", "upstream_model", "status", "user",
                "finish_reason", "error", "system_hash")


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


def _exchange_row(ex: Exchange) -> list[Any]:
    row = list(exchange_to_row(ex))
    if any(row[i] and "\x00" in row[i] for i in _NUL_FREE) or (row[_EXTRA] and "\\u0000" in row[_EXTRA]):
        ex = dataclasses.replace(ex, extra=ExchangeExtra.from_json(_without_nul(ex.extra.to_json())),
                                 **{f: _without_nul(getattr(ex, f)) for f in _TEXT_FIELDS})
        row = list(exchange_to_row(ex))
    row[_STREAM] = bool(row[_STREAM])
    return row


def _affected(status: str) -> int:
    """The row count of a command tag such as 'UPDATE 1' or 'DELETE 12'."""
    return int(status.rsplit(" ", 1)[-1])


class PostgresStore(FeedbackTable, RampTable, Store):
    dialect = "postgres"

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10, timeout_s: float = 10.0) -> None:
        self.url = url
        self._min_size = min_size
        self._max_size = max_size
        self._timeout_s = timeout_s  # connecting and waiting for a pooled connection; queries are not limited
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("store is not open")
        return self._pool

    @contextlib.asynccontextmanager
    async def _connection(self, doing: str) -> AsyncIterator[asyncpg.Connection]:
        try:
            async with self.pool.acquire(timeout=self._timeout_s) as conn:
                yield conn
        except _ERRORS as exc:
            raise StoreError(f"cannot {doing}: {exc}") from exc

    async def _execute(self, doing: str, query: str, params: Sequence[Any]) -> int:
        async with self._connection(doing) as conn:
            return _affected(await conn.execute(query, *(_without_nul(p) for p in params)))

    async def _fetch(self, doing: str, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        async with self._connection(doing) as conn:
            return [tuple(r) for r in await conn.fetch(query, *(_without_nul(p) for p in params))]

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(self.url, min_size=self._min_size, max_size=self._max_size,
                                                   timeout=self._timeout_s)
            await self._migrate()
        except (*_ERRORS, ValueError) as exc:  # ValueError: a malformed URL
            await self.close()
            raise StoreError(f"cannot open store {redacted_url(self.url)}: {exc}") from exc
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), self._timeout_s)
            except TimeoutError:  # a connection stuck in a query must not hang shutdown
                pool.terminate()

    async def _migrate(self) -> None:
        async with self.pool.acquire(timeout=self._timeout_s) as conn:
            # Up to date already: no lock and no DDL, so a read-only server (a standby) opens too.
            if (await conn.fetchval("SELECT to_regclass('schema_version')") is not None
                    and await conn.fetchval("SELECT MAX(version) FROM schema_version") == LATEST_VERSION):
                return
        async with self.pool.acquire(timeout=self._timeout_s) as conn, conn.transaction():
            # Replicas starting together: the first migrates, the others wait here and then find nothing to do.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            if current > LATEST_VERSION:
                raise StoreError(f"store schema v{current} is newer than this Protégé (v{LATEST_VERSION})")
            for version in range(current + 1, LATEST_VERSION + 1):
                for statement in MIGRATIONS[version - 1]:
                    await conn.execute(statement)
            if current < LATEST_VERSION:
                await conn.execute("DELETE FROM schema_version")
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", LATEST_VERSION)

    async def schema_version(self) -> int:
        async with self._connection("read the schema version") as conn:
            return int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))

    async def check_writable(self) -> None:
        async with self._connection("check the store") as conn, conn.transaction():
            if await conn.fetchval("SELECT current_setting('transaction_read_only')") == "on":
                raise StoreError("store is not writable: the server is read-only (a standby?)")
            try:  # the lock an INSERT takes; NOWAIT fails now if a DDL or VACUUM FULL holds the table
                await conn.execute("LOCK TABLE exchanges IN ROW EXCLUSIVE MODE NOWAIT")
            except asyncpg.LockNotAvailableError as exc:
                raise StoreError(f"store is not writable: {exc}") from exc

    async def insert_exchanges(self, exchanges: list[Exchange]) -> None:
        if not exchanges:
            return
        columns = list(zip(*(_exchange_row(e) for e in exchanges), strict=True))
        async with self._connection(f"write {len(exchanges)} exchanges") as conn:
            await conn.execute(_INSERT_EXCHANGES, *columns)

    async def list_tasks(self) -> list[TaskSummary]:
        query = (
            "SELECT task, MIN(task_source), COUNT(*), COUNT(*) FILTER (WHERE status = 'ok'), "
            "MIN(created_at), MAX(created_at) FROM exchanges GROUP BY task ORDER BY task"
        )
        async with self._connection("list tasks") as conn:
            rows = await conn.fetch(query)
        return [TaskSummary(r[0], r[1], int(r[2]), int(r[3]), float(r[4]), float(r[5])) for r in rows]

    @staticmethod
    def _where(task: str | None, status: ExchangeStatus | None, after: tuple[float, str] | None = None, *,
               user: str | None = None, created_before: float | None = None) -> tuple[str, list[Any]]:
        # a user id is compared as insert_exchanges stored it (NUL replaced)
        return where_clause("postgres", task, status, after, user=None if user is None else _without_nul(user),
                            created_before=created_before)

    async def list_exchanges(self, *, task: str | None = None, status: ExchangeStatus | None = None,
                             limit: int | None = None, after: tuple[float, str] | None = None,
                             bodies: bool = True) -> list[Exchange]:
        where, params = self._where(task, status, after)
        query = f"SELECT {exchange_select(bodies)} FROM exchanges{where} ORDER BY created_at, request_id"
        if limit is not None:
            params.append(limit)
            query += f" LIMIT ${len(params)}"
        async with self._connection("list exchanges") as conn:
            rows = await conn.fetch(query, *params)
        return [row_to_exchange(tuple(r)) for r in rows]

    async def newest_exchanges(self, *, task: str, limit: int, routes: Sequence[str] | None = None,
                               since: float | None = None,
                               request_ids: Sequence[str] | None = None) -> list[Exchange]:
        built = newest_query("postgres", task=task, limit=limit, routes=routes, since=since, request_ids=request_ids)
        if built is None:
            return []
        query, params = built
        async with self._connection("list exchanges") as conn:
            rows = await conn.fetch(query, *params)
        return [row_to_exchange(tuple(r)) for r in rows]

    async def exchange_groups(self, *, task: str, since: float | None, bucket_s: float) -> list[ExchangeGroup]:
        query, params = groups_query("postgres", task=task, since=since, bucket_s=bucket_s)
        async with self._connection("add up exchanges") as conn:
            rows = await conn.fetch(query, *params)
        return [group_of(tuple(r)) for r in rows]

    async def count_exchanges(self, *, task: str | None = None, status: ExchangeStatus | None = None,
                              user: str | None = None, created_before: float | None = None) -> int:
        where, params = self._where(task, status, user=user, created_before=created_before)
        async with self._connection("count exchanges") as conn:
            return int(await conn.fetchval(f"SELECT COUNT(*) FROM exchanges{where}", *params))

    async def _delete_exchanges(self, *, task: str | None, user: str | None, created_before: float | None,
                                batch_size: int, progress: DeleteProgress | None) -> int:
        where, params = self._where(task, None, user=user, created_before=created_before)
        return await self._delete_batches(f"{where} ORDER BY created_at", params, batch_size, progress)

    async def _delete_batches(self, selection: str, params: list[Any], batch_size: int,
                              progress: DeleteProgress | None) -> int:
        """Delete the exchanges `selection` (a WHERE clause, maybe ordered) picks, `batch_size` at a time."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        deleted = 0
        query = (f"DELETE FROM exchanges WHERE request_id IN (SELECT request_id FROM exchanges{selection} "
                 f"LIMIT ${len(params) + 1})")
        async with self._connection("delete exchanges") as conn:
            while True:  # each DELETE commits on its own: short transactions, short row locks
                count = _affected(await conn.execute(query, *params, batch_size))
                deleted += count
                if progress is not None:
                    progress(deleted)
                if count < batch_size:
                    return deleted

    async def put_response(self, response: StoredResponse) -> None:
        response = dataclasses.replace(response, task=_without_nul(response.task),
                                       client=_without_nul(response.client), user=_without_nul(response.user))
        columns = ", ".join(RESPONSE_COLUMNS)
        placeholders = ", ".join(f"${i}" for i in range(1, len(RESPONSE_COLUMNS) + 1))
        updates = ", ".join(f"{c} = excluded.{c}" for c in RESPONSE_COLUMNS[1:])
        async with self._connection("store a response") as conn:
            await conn.execute(f"INSERT INTO responses ({columns}) VALUES ({placeholders}) "
                               f"ON CONFLICT (response_id) DO UPDATE SET {updates}", *response_to_row(response))

    async def get_response(self, response_id: str) -> StoredResponse | None:
        async with self._connection("read a response") as conn:
            row = await conn.fetchrow(f"SELECT {', '.join(RESPONSE_COLUMNS)} FROM responses WHERE response_id = $1",
                                      _without_nul(response_id))
        return None if row is None else row_to_response(tuple(row))

    async def list_responses(self, *, limit: int, after: tuple[float, str] | None = None) -> list[StoredResponse]:
        where, params = "", []
        if after is not None:
            where, params = " WHERE (created_at > $1 OR (created_at = $1 AND response_id > $2))", list(after)
        query = (f"SELECT {', '.join(RESPONSE_COLUMNS)} FROM responses{where} "
                 f"ORDER BY created_at, response_id LIMIT ${len(params) + 1}")
        async with self._connection("list responses") as conn:
            rows = await conn.fetch(query, *params, limit)
        return [row_to_response(tuple(r)) for r in rows]

    async def delete_response(self, response_id: str) -> bool:
        return await self._execute("delete a response", "DELETE FROM responses WHERE response_id = $1",
                                   [response_id]) > 0

    async def _delete_responses(self, *, task: str | None, user: str | None, created_before: float | None) -> int:
        where, params = self._where(task, None, user=user, created_before=created_before)
        return await self._execute("delete responses", f"DELETE FROM responses{where}", params)

    async def forgotten_users(self) -> dict[str, float]:
        rows = await self._fetch("read forgotten users", "SELECT user_hash, forgotten_at FROM forgotten_users", [])
        return {r[0]: float(r[1]) for r in rows}

    async def add_forgotten_users(self, forgotten: Mapping[str, float]) -> None:
        if not forgotten:
            return
        async with self._connection("record forgotten users") as conn:
            await conn.execute("INSERT INTO forgotten_users (user_hash, forgotten_at) "
                               "SELECT * FROM unnest($1::text[], $2::float8[]) ON CONFLICT (user_hash) DO NOTHING",
                               list(forgotten), list(forgotten.values()))

    async def add_console_session(self, session_hash: str, created_at: float, expires_at: float) -> None:
        async with self._connection("record a console session") as conn:
            await conn.execute("DELETE FROM console_sessions WHERE expires_at < $1", created_at)
            await conn.execute("INSERT INTO console_sessions (session_hash, created_at, expires_at) "
                               "VALUES ($1, $2, $3)", session_hash, created_at, expires_at)

    async def console_session_expiry(self, session_hash: str) -> float | None:
        async with self._connection("read console sessions") as conn:
            value = await conn.fetchval("SELECT expires_at FROM console_sessions WHERE session_hash = $1", session_hash)
        return None if value is None else float(value)

    async def delete_console_session(self, session_hash: str) -> None:
        await self._execute("delete a console session", "DELETE FROM console_sessions WHERE session_hash = $1",
                            [session_hash])

    async def add_api_key(self, record: ApiKeyRecord) -> None:
        async with self._connection("add a key") as conn:
            try:
                await conn.execute(
                    "INSERT INTO api_keys (key_id, name, key_hash, created_at, revoked) VALUES ($1, $2, $3, $4, $5)",
                    record.key_id, record.name, record.key_hash, record.created_at, record.revoked)
            except asyncpg.UniqueViolationError as exc:
                raise StoreError(f"key {record.key_id} already exists") from exc

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        async with self._connection("list keys") as conn:
            rows = await conn.fetch("SELECT key_id, name, key_hash, created_at, revoked FROM api_keys "
                                    "ORDER BY created_at")
        return [ApiKeyRecord(r[0], r[1], r[2], float(r[3]), bool(r[4])) for r in rows]

    async def revoke_api_key(self, key_id: str) -> bool:
        return await self._execute("revoke a key", "UPDATE api_keys SET revoked = TRUE WHERE key_id = $1", [key_id]) > 0

    async def add_student(self, student: StudentVersion) -> None:
        row = list(student_to_row(student))
        row[_PROMPT_DISTILLED] = bool(row[_PROMPT_DISTILLED])
        placeholders = ", ".join(f"${i}" for i in range(1, len(STUDENT_COLUMNS) + 1))
        async with self._connection("add a student") as conn:
            try:
                await conn.execute(f"INSERT INTO students ({', '.join(STUDENT_COLUMNS)}) VALUES ({placeholders})",
                                   *row)
            except asyncpg.UniqueViolationError as exc:
                raise StoreError(f"student {student.task} v{student.version} already exists") from exc

    async def list_students(self, *, task: str | None = None) -> list[StudentVersion]:
        where, params = ("WHERE task = $1", [task]) if task is not None else ("", [])
        rows = await self._fetch("list students", f"SELECT {', '.join(STUDENT_COLUMNS)} FROM students {where} "
                                 "ORDER BY task, version", params)
        return [row_to_student(r) for r in rows]

    async def set_student_status(self, task: str, version: int, status: StudentStatus) -> bool:
        now = time.time()
        async with self._connection("set a student's status") as conn, conn.transaction():
            # Lock the task's rows first: two processes promoting different versions at once must not
            # both see the other's version as not yet active and leave two active students.
            versions = {r[0] for r in await conn.fetch("SELECT version FROM students WHERE task = $1 FOR UPDATE",
                                                       task)}
            if version not in versions:
                return False
            if status == "active":
                await conn.execute("UPDATE students SET status = 'retired', updated_at = $1 "
                                   "WHERE task = $2 AND status = 'active' AND version != $3", now, task, version)
            await conn.execute("UPDATE students SET status = $1, updated_at = $2 WHERE task = $3 AND version = $4",
                               status, now, task, version)
        return True

    async def set_student_threshold(self, task: str, version: int, threshold: float | None) -> bool:
        async with self._connection("set a student's threshold") as conn:
            return _affected(await conn.execute(
                "UPDATE students SET threshold = $1, updated_at = $2 WHERE task = $3 AND version = $4",
                threshold, time.time(), task, version)) > 0

    async def set_rollout(self, task: str, percent: float) -> None:
        async with self._connection("set a rollout") as conn:
            await conn.execute(
                "INSERT INTO task_routing (task, rollout_percent, updated_at) VALUES ($1, $2, $3) "
                "ON CONFLICT (task) DO UPDATE SET rollout_percent = EXCLUDED.rollout_percent, "
                "updated_at = EXCLUDED.updated_at", task, percent, time.time())

    async def rollouts(self) -> dict[str, float]:
        rows = await self._fetch("read rollouts", "SELECT task, rollout_percent FROM task_routing", [])
        return {r[0]: float(r[1]) for r in rows}

