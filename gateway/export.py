"""Captured exchanges → fine-tuning files. `openai`: chat fine-tuning JSONL; `jsonl-raw`: every column."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import orjson

from gateway.store import Exchange

ExportFormat = Literal["openai", "jsonl-raw"]
EXPORT_FORMATS: tuple[str, ...] = ("openai", "jsonl-raw")


def training_example(exchange: Exchange) -> dict[str, Any] | None:
    """`{"messages": [...], "tools": [...]}` for a good exchange; None when it has no usable answer."""
    choices = (exchange.response or {}).get("choices") or []
    # the student's own answers are not teacher data
    if exchange.status != "ok" or exchange.route == "student" or not choices:
        return None
    answer = dict(choices[0].get("message") or {})
    if not answer.get("content") and not answer.get("tool_calls"):
        return None
    answer["role"] = "assistant"
    if answer.get("content") is None:
        answer.pop("content", None)
    example: dict[str, Any] = {"messages": [*exchange.request.get("messages", []), answer]}
    if exchange.request.get("tools"):
        example["tools"] = exchange.request["tools"]
    return example


def export_lines(exchanges: Iterable[Exchange], fmt: ExportFormat) -> Iterator[bytes]:
    for exchange in exchanges:
        if fmt == "jsonl-raw":
            yield orjson.dumps(dataclasses.asdict(exchange)) + b"\n"
            continue
        example = training_example(exchange)
        if example is not None:
            yield orjson.dumps(example) + b"\n"
