"""The feedback table, written once for both stores: its rows, its SQL (both dialects accept the same upsert;
only the placeholders differ, `?` or `$n`) and `FeedbackTable`, the `Store` methods that run it through a
backend's `_execute` and `_fetch`."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, cast

import orjson

from gateway.store.base import Exchange, Feedback, FeedbackSource
from gateway.store.exchange_sql import Dialect, Query
from gateway.store.rows import exchange_select, row_to_exchange

FEEDBACK_COLUMNS: tuple[str, ...] = (
    "request_id", "task", "created_at", "exchange_created_at", "source", "user_id", "rating", "labels_json",
    "comment", "correction_json",
)


def feedback_to_row(f: Feedback) -> tuple[Any, ...]:
    return (f.request_id, f.task, f.created_at, f.exchange_created_at, f.source, f.user, f.rating,
            orjson.dumps(list(f.labels)).decode() if f.labels else None, f.comment,
            orjson.dumps(f.correction).decode() if f.correction is not None else None)


def row_to_feedback(row: Sequence[Any]) -> Feedback:
    v = dict(zip(FEEDBACK_COLUMNS, row, strict=True))
    labels = orjson.loads(v["labels_json"]) if v["labels_json"] else []
    return Feedback(request_id=v["request_id"], task=v["task"], created_at=float(v["created_at"]),
                    exchange_created_at=float(v["exchange_created_at"]), source=cast(FeedbackSource, v["source"]),
                    user=v["user_id"], rating=None if v["rating"] is None else float(v["rating"]),
                    labels=tuple(str(label) for label in labels), comment=v["comment"],
                    correction=orjson.loads(v["correction_json"]) if v["correction_json"] else None)


def upsert(dialect: Dialect, feedback: Feedback) -> tuple[str, list[Any]]:
    """Newer feedback on a request replaces the older: an app that changes its mind is taken at its last word."""
    q = Query(dialect)
    values = ", ".join(q.param(v) for v in feedback_to_row(feedback))
    updates = ", ".join(f"{c} = excluded.{c}" for c in FEEDBACK_COLUMNS[1:])
    return (f"INSERT INTO feedback ({', '.join(FEEDBACK_COLUMNS)}) VALUES ({values}) "
            f"ON CONFLICT (request_id) DO UPDATE SET {updates}"), q.params


def select(dialect: Dialect, *, task: str | None, request_ids: Sequence[str] | None) -> tuple[str, list[Any]] | None:
    """Feedback of a task and/or on these requests, oldest first; None when an empty id list leaves nothing."""
    q = Query(dialect)
    clauses = []
    if task is not None:
        clauses.append(f"task = {q.param(task)}")
    if request_ids is not None:
        if not request_ids:
            return None
        clauses.append(q.one_of("request_id", request_ids))
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    return f"SELECT {', '.join(FEEDBACK_COLUMNS)} FROM feedback{where} ORDER BY created_at, request_id", q.params


def delete(dialect: Dialect, *, task: str | None, user: str | None,
           created_before: float | None) -> tuple[str, list[Any]]:
    """Feedback goes with its exchange: retention by the exchange's age, forget by its user."""
    q = Query(dialect)
    clauses = []
    if task is not None:
        clauses.append(f"task = {q.param(task)}")
    if user is not None:
        clauses.append(f"user_id = {q.param(user)}")
    if created_before is not None:
        clauses.append(f"exchange_created_at < {q.param(created_before)}")
    return "DELETE FROM feedback" + ((" WHERE " + " AND ".join(clauses)) if clauses else ""), q.params


class FeedbackTable(abc.ABC):
    """The feedback methods of `Store`, for a backend that can run one statement (`_execute`: rows affected)
    and one query (`_fetch`: rows as tuples), with driver errors raised as StoreError."""

    dialect: Dialect

    @abc.abstractmethod
    async def _execute(self, doing: str, query: str, params: Sequence[Any]) -> int: ...

    @abc.abstractmethod
    async def _fetch(self, doing: str, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]: ...

    async def get_exchange(self, request_id: str) -> Exchange | None:
        q = Query(self.dialect)
        rows = await self._fetch("read an exchange", f"SELECT {exchange_select()} FROM exchanges "
                                 f"WHERE request_id = {q.param(request_id)}", q.params)
        return row_to_exchange(rows[0]) if rows else None

    async def put_feedback(self, feedback: Feedback) -> None:
        await self._execute("record feedback", *upsert(self.dialect, feedback))

    async def list_feedback(self, *, task: str | None = None,
                            request_ids: Sequence[str] | None = None) -> list[Feedback]:
        built = select(self.dialect, task=task, request_ids=request_ids)
        return [] if built is None else [row_to_feedback(r) for r in await self._fetch("read feedback", *built)]

    async def _delete_feedback(self, *, task: str | None, user: str | None, created_before: float | None) -> int:
        return await self._execute("delete feedback", *delete(self.dialect, task=task, user=user,
                                                              created_before=created_before))
