"""The rollout_ramps table, written once for both stores: its rows, its SQL (the same statements in both
dialects but for the placeholders) and `RampTable`, the `Store` methods that run it through a backend's
`_execute` and `_fetch`. A ramp moves by compare-and-set, so replicas sharing a store make each move once."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, cast

import orjson

from gateway.store.base import RampState, RolloutRamp
from gateway.store.exchange_sql import Dialect, Query
from gateway.store.records import RampEvent, RampPlan

RAMP_COLUMNS: tuple[str, ...] = (
    "task", "ramp_id", "version", "state", "step", "started_at", "step_started_at", "updated_at", "previous_version",
    "previous_percent", "plan_json", "history_json",
)
# what a move changes; the rest is fixed when the ramp starts
MOVED_COLUMNS: tuple[str, ...] = ("state", "step", "step_started_at", "updated_at", "history_json")


def ramp_to_row(r: RolloutRamp) -> tuple[Any, ...]:
    return (r.task, r.ramp_id, r.version, r.state, r.step, r.started_at, r.step_started_at, r.updated_at,
            r.previous_version, r.previous_percent, orjson.dumps(r.plan.to_json()).decode(),
            orjson.dumps([e.to_json() for e in r.history]).decode())


def row_to_ramp(row: Sequence[Any]) -> RolloutRamp:
    v = dict(zip(RAMP_COLUMNS, row, strict=True))
    history = orjson.loads(v["history_json"]) if v["history_json"] else []
    events = (RampEvent.from_json(e) for e in (history if isinstance(history, list) else []))
    return RolloutRamp(ramp_id=v["ramp_id"], task=v["task"], version=int(v["version"]),
                       plan=RampPlan.from_json(orjson.loads(v["plan_json"]) if v["plan_json"] else None),
                       state=cast(RampState, v["state"]), step=int(v["step"]), started_at=float(v["started_at"]),
                       step_started_at=float(v["step_started_at"]), updated_at=float(v["updated_at"]),
                       previous_version=None if v["previous_version"] is None else int(v["previous_version"]),
                       previous_percent=float(v["previous_percent"]), history=tuple(e for e in events if e))


def upsert(dialect: Dialect, ramp: RolloutRamp) -> tuple[str, list[Any]]:
    q = Query(dialect)
    values = ", ".join(q.param(v) for v in ramp_to_row(ramp))
    updates = ", ".join(f"{c} = excluded.{c}" for c in RAMP_COLUMNS[1:])
    return (f"INSERT INTO rollout_ramps ({', '.join(RAMP_COLUMNS)}) VALUES ({values}) "
            f"ON CONFLICT (task) DO UPDATE SET {updates}"), q.params


def compare_and_set(dialect: Dialect, old: RolloutRamp, new: RolloutRamp) -> tuple[str, list[Any]]:
    q = Query(dialect)
    row = dict(zip(RAMP_COLUMNS, ramp_to_row(new), strict=True))
    updates = ", ".join(f"{c} = {q.param(row[c])}" for c in MOVED_COLUMNS)
    where = (f"task = {q.param(old.task)} AND ramp_id = {q.param(old.ramp_id)} AND state = {q.param(old.state)} "
             f"AND step = {q.param(old.step)}")
    return f"UPDATE rollout_ramps SET {updates} WHERE {where}", q.params


class RampTable(abc.ABC):
    """The ramp methods of `Store`, for a backend that can run one statement (`_execute`: rows affected) and one
    query (`_fetch`: rows as tuples), with driver errors raised as StoreError."""

    dialect: Dialect

    @abc.abstractmethod
    async def _execute(self, doing: str, query: str, params: Sequence[Any]) -> int: ...

    @abc.abstractmethod
    async def _fetch(self, doing: str, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]: ...

    async def put_ramp(self, ramp: RolloutRamp) -> None:
        await self._execute("record a rollout ramp", *upsert(self.dialect, ramp))

    async def list_ramps(self, *, task: str | None = None) -> list[RolloutRamp]:
        q = Query(self.dialect)
        where = f" WHERE task = {q.param(task)}" if task is not None else ""
        rows = await self._fetch("read rollout ramps",
                                 f"SELECT {', '.join(RAMP_COLUMNS)} FROM rollout_ramps{where} ORDER BY task", q.params)
        return [row_to_ramp(r) for r in rows]

    async def replace_ramp(self, old: RolloutRamp, new: RolloutRamp) -> bool:
        if (old.task, old.ramp_id) != (new.task, new.ramp_id):
            raise ValueError("a ramp moves within itself: same task and ramp id")
        return await self._execute("move a rollout ramp", *compare_and_set(self.dialect, old, new)) == 1
