from __future__ import annotations

import json

from gateway.export import export_lines, training_example
from tests.gateway.store.test_sqlite import exchange


def test_openai_format_appends_the_answer_and_keeps_tools() -> None:
    ex = exchange(1)
    ex.request["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    ex.response = {"choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}]}
    example = training_example(ex)
    assert example == {"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}],
        "tools": ex.request["tools"]}


def test_failed_incomplete_and_empty_exchanges_are_not_training_data() -> None:
    assert training_example(exchange(1, status="failed")) is None
    assert training_example(exchange(2, status="incomplete")) is None
    empty = exchange(3)
    empty.response = {"choices": [{"message": {"role": "assistant", "content": ""}}]}
    assert training_example(empty) is None


def test_raw_format_keeps_every_row() -> None:
    lines = list(export_lines([exchange(1), exchange(2, status="failed")], "jsonl-raw"))
    assert [json.loads(line)["status"] for line in lines] == ["ok", "failed"]
    assert len(list(export_lines([exchange(1), exchange(2, status="failed")], "openai"))) == 1
