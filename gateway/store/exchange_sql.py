"""The SQL of the exchange listings both stores run — the filters of a listing, the newest exchanges of a
window, and a window's exchanges added up by what a cost report distinguishes — written once for both dialects:
their placeholders
(`?` or `$n`), lists (`IN (?, …)` or `= ANY($n)`) and JSON readers (SQLite's json_type/json_extract on TEXT,
PostgreSQL's jsonb_typeof/-> on JSONB). A JSON value of the wrong type reads as NULL, as the typed records read
it (`gateway.store.records`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.store.rows import exchange_select

Dialect = Literal["sqlite", "postgres"]


@dataclass(slots=True)
class Query:
    """One statement's parameters in the making: `param` adds one and returns its placeholder."""

    dialect: Dialect
    params: list[Any] = field(default_factory=list)

    def param(self, value: Any) -> str:
        self.params.append(value)
        return "?" if self.dialect == "sqlite" else f"${len(self.params)}"

    def one_of(self, column: str, values: Sequence[str]) -> str:
        if self.dialect == "sqlite":
            return f"{column} IN ({', '.join(self.param(v) for v in values)})"
        return f"{column} = ANY({self.param(list(values))}::text[])"

    def number(self, *path: str) -> str:
        """The JSON number at `path` of the row's notes, else NULL."""
        if self.dialect == "sqlite":
            at = "$." + ".".join(path)
            return (f"(CASE WHEN json_type(extra_json, '{at}') IN ('integer', 'real') "
                    f"THEN json_extract(extra_json, '{at}') END)")
        at = "->".join(f"'{p}'" for p in path)
        return f"(CASE WHEN jsonb_typeof(extra_json->{at}) = 'number' THEN (extra_json->{at})::float8 END)"

    def integer(self, *path: str) -> str:
        """The JSON integer at `path` of the row's notes, else NULL (true and 1.5 are not versions)."""
        if self.dialect == "sqlite":
            at = "$." + ".".join(path)
            return f"(CASE WHEN json_type(extra_json, '{at}') = 'integer' THEN json_extract(extra_json, '{at}') END)"
        value = "(extra_json->" + "->".join(f"'{p}'" for p in path) + ")"
        return (f"(CASE WHEN jsonb_typeof({value}) = 'number' AND {value}::float8 = trunc({value}::float8) "
                f"THEN {value}::float8::bigint END)")

    def text(self, key: str) -> str:
        """The JSON string at top-level `key` of the row's notes, else NULL."""
        if self.dialect == "sqlite":
            return (f"(CASE WHEN json_type(extra_json, '$.{key}') = 'text' "
                    f"THEN json_extract(extra_json, '$.{key}') END)")
        return f"(CASE WHEN jsonb_typeof(extra_json->'{key}') = 'string' THEN extra_json->>'{key}' END)"


def where_clause(dialect: Dialect, task: str | None, status: str | None, after: tuple[float, str] | None = None, *,
                 user: str | None = None, created_before: float | None = None) -> tuple[str, list[Any]]:
    """` WHERE …` (or "") and its parameters for a listing's filters; `after` is a keyset page's last
    (created_at, request_id)."""
    q = Query(dialect)
    clauses = []
    for column, value in (("task", task), ("status", status), ("user_id", user)):
        if value is not None:
            clauses.append(f"{column} = {q.param(value)}")
    if created_before is not None:
        clauses.append(f"created_at < {q.param(created_before)}")
    if after is not None:
        clauses.append(f"(created_at > {q.param(after[0])} OR (created_at = {q.param(after[0])} "
                       f"AND request_id > {q.param(after[1])}))")
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", q.params


def newest_query(dialect: Dialect, *, task: str, limit: int, routes: Sequence[str] | None, since: float | None,
                 request_ids: Sequence[str] | None) -> tuple[str, list[Any]] | None:
    """`Store.newest_exchanges`' query and parameters; None when an empty list leaves nothing to find."""
    q = Query(dialect)
    clauses = [f"task = {q.param(task)}"]
    for column, values in (("route", routes), ("request_id", request_ids)):
        if values is not None:
            if not values:
                return None
            clauses.append(q.one_of(column, values))
    if since is not None:
        clauses.append(f"created_at >= {q.param(since)}")
    query = (f"SELECT {exchange_select()} FROM exchanges WHERE {' AND '.join(clauses)} "
             f"ORDER BY created_at DESC, request_id DESC LIMIT {q.param(limit)}")
    return query, q.params


def groups_query(dialect: Dialect, *, task: str, since: float | None, bucket_s: float) -> tuple[str, list[Any]]:
    """`Store.exchange_groups`' query and parameters; its rows are read by `gateway.store.rows.group_of`."""
    q = Query(dialect)
    bucket = (f"CAST(created_at / {q.param(bucket_s)} AS INTEGER)" if dialect == "sqlite"
              else f"floor(created_at / {q.param(bucket_s)})::bigint")
    agreement_number = q.number("shadow", "agreement")
    version = f"(CASE WHEN {agreement_number} IS NOT NULL THEN {q.integer('shadow', 'version')} END)"
    agreement = f"(CASE WHEN {version} IS NOT NULL THEN {agreement_number} END)"
    counterfactual = q.number("counterfactual_cost_usd")
    where = f"task = {q.param(task)} AND created_at >= {q.param(since if since is not None else float('-inf'))}"
    query = (f"SELECT route, status, {bucket} AS b, {q.text('price_source')} AS src, {version} AS sv, "
             f"cost_usd IS NOT NULL AS priced, {counterfactual} IS NOT NULL AS has_cf, COUNT(*), MIN(created_at), "
             f"COALESCE(SUM(cost_usd), 0), COALESCE(SUM({q.number('student', 'cost_usd')}), 0), "
             f"COALESCE(SUM({counterfactual}), 0), COUNT({agreement}), COALESCE(SUM({agreement}), 0), "
             f"COALESCE(SUM({agreement} * {agreement}), 0) "
             f"FROM exchanges WHERE {where} "
             "GROUP BY route, status, b, src, sv, priced, has_cf ORDER BY b, route, status")
    return query, q.params
