"""Exchange, student and stored response ↔ table row, shared by the backends (JSON columns are text in both)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import orjson

from gateway.store.base import Exchange, ExchangeGroup, ExchangeStatus, StoredResponse, StudentVersion
from gateway.store.records import ExchangeExtra, StudentDetails

EXCHANGE_COLUMNS: tuple[str, ...] = (
    "request_id", "created_at", "task", "task_source", "route", "model", "upstream_model", "user_id",
    "status", "http_status", "stream", "request_json", "response_json", "prompt_tokens",
    "completion_tokens", "latency_ms", "cost_usd", "finish_reason", "error", "system_hash", "extra_json",
)


# what a listing without bodies reads in place of the request and response: the database never sends them
_NO_BODIES = {"request_json": "'{}' AS request_json", "response_json": "NULL AS response_json"}


def exchange_select(bodies: bool = True) -> str:
    """The select list of an exchange row; without `bodies`, every column but the request and response."""
    return ", ".join(c if bodies else _NO_BODIES.get(c, c) for c in EXCHANGE_COLUMNS)


def _dumps(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def exchange_to_row(ex: Exchange) -> tuple[Any, ...]:
    return (
        ex.request_id, ex.created_at, ex.task, ex.task_source, ex.route, ex.model, ex.upstream_model,
        ex.user, ex.status, ex.http_status, int(ex.stream), _dumps(ex.request), _dumps(ex.response),
        ex.prompt_tokens, ex.completion_tokens, ex.latency_ms, ex.cost_usd, ex.finish_reason, ex.error,
        ex.system_hash, _dumps(ex.extra.to_json() or None),
    )


def row_to_exchange(row: Mapping[str, Any] | Sequence[Any]) -> Exchange:
    values = dict(zip(EXCHANGE_COLUMNS, row, strict=True)) if not isinstance(row, Mapping) else row
    return Exchange(
        request_id=values["request_id"],
        created_at=float(values["created_at"]),
        task=values["task"],
        task_source=values["task_source"],
        route=values["route"],
        model=values["model"],
        upstream_model=values["upstream_model"],
        user=values["user_id"],
        status=cast(ExchangeStatus, values["status"]),
        http_status=int(values["http_status"]),
        stream=bool(values["stream"]),
        request=orjson.loads(values["request_json"]),
        response=orjson.loads(values["response_json"]) if values["response_json"] else None,
        prompt_tokens=values["prompt_tokens"],
        completion_tokens=values["completion_tokens"],
        latency_ms=values["latency_ms"],
        cost_usd=values["cost_usd"],
        finish_reason=values["finish_reason"],
        error=values["error"],
        system_hash=values["system_hash"],
        extra=ExchangeExtra.from_json(orjson.loads(values["extra_json"]) if values["extra_json"] else None),
    )


STUDENT_COLUMNS: tuple[str, ...] = (
    "task", "version", "status", "model", "base_model", "trainer", "artifact", "dataset_hash",
    "system_prompt_hash", "prompt_distilled", "threshold", "confidence_method", "details_json", "created_at",
    "updated_at",
)


def student_to_row(s: StudentVersion) -> tuple[Any, ...]:
    return (s.task, s.version, s.status, s.model, s.base_model, s.trainer, s.artifact, s.dataset_hash,
            s.system_prompt_hash, int(s.prompt_distilled), s.threshold, s.confidence_method,
            _dumps(s.details.to_json() or None), s.created_at, s.updated_at)


def row_to_student(row: Sequence[Any]) -> StudentVersion:
    v = dict(zip(STUDENT_COLUMNS, row, strict=True))
    return StudentVersion(
        task=v["task"], version=int(v["version"]), status=v["status"], model=v["model"],
        created_at=float(v["created_at"]), updated_at=float(v["updated_at"]), base_model=v["base_model"],
        trainer=v["trainer"], artifact=v["artifact"], dataset_hash=v["dataset_hash"],
        system_prompt_hash=v["system_prompt_hash"], prompt_distilled=bool(v["prompt_distilled"]),
        threshold=None if v["threshold"] is None else float(v["threshold"]),
        confidence_method=v["confidence_method"],
        details=StudentDetails.from_json(orjson.loads(v["details_json"]) if v["details_json"] else None),
    )


RESPONSE_COLUMNS: tuple[str, ...] = (
    "response_id", "created_at", "task", "client", "user_id", "response_json", "input_items_json", "history_json",
)


def response_to_row(r: StoredResponse) -> tuple[Any, ...]:
    return (r.response_id, r.created_at, r.task, r.client, r.user, orjson.dumps(r.response).decode(),
            orjson.dumps(r.input_items).decode(), orjson.dumps(r.history).decode())


def row_to_response(row: Sequence[Any]) -> StoredResponse:
    values = dict(zip(RESPONSE_COLUMNS, row, strict=True))
    return StoredResponse(response_id=values["response_id"], created_at=float(values["created_at"]),
                          task=values["task"], client=values["client"], user=values["user_id"],
                          response=orjson.loads(values["response_json"]),
                          input_items=orjson.loads(values["input_items_json"]),
                          history=orjson.loads(values["history_json"]))


def group_of(r: Sequence[Any]) -> ExchangeGroup:
    """An `ExchangeGroup` from its query row (route, status, bucket, source, version, priced, has_cf, rows,
    first_at, cost, student cost, counterfactual, agreements, agreement sum, sum of squared agreements)."""
    return ExchangeGroup(str(r[0]), str(r[1]), int(r[2]), r[3], None if r[4] is None else int(r[4]), bool(r[5]),
                         bool(r[6]), int(r[7]), float(r[8]), float(r[9]), float(r[10]), float(r[11]), int(r[12]),
                         float(r[13]), float(r[14]))
