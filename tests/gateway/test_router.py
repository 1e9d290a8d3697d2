"""Pure routing decisions."""

from __future__ import annotations

import json

import pytest

from gateway.router import (
    in_rollout,
    judge,
    mean_logprob,
    min_logprob,
    quantile_logprob,
    rollout_bucket,
    student_messages,
    token_logprobs,
    validate_output,
)
from gateway.store import StudentVersion
from gateway.tasks import text_hash


def completion(content: str | None, *, finish: str = "stop", tool_calls: list[dict[str, object]] | None = None,
               logprobs: list[float] | None = None) -> dict[str, object]:
    message: dict[str, object] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    choice: dict[str, object] = {"index": 0, "message": message, "finish_reason": finish}
    if logprobs is not None:
        choice["logprobs"] = {"content": [{"token": "x", "logprob": v} for v in logprobs]}
    return {"choices": [choice]}


def test_buckets_are_stable_uniform_and_monotone_in_percent() -> None:
    assert rollout_bucket("t", "alice") == rollout_bucket("t", "alice")
    assert rollout_bucket("t", "alice") != rollout_bucket("u", "alice")
    buckets = [rollout_bucket("t", f"user{i}") for i in range(10_000)]
    assert all(0 <= b < 1 for b in buckets)
    assert abs(sum(b < 0.25 for b in buckets) / 10_000 - 0.25) < 0.02
    users = [f"user{i}" for i in range(2000)]
    at_25 = {u for u in users if in_rollout("t", u, 25)}
    at_50 = {u for u in users if in_rollout("t", u, 50)}
    assert at_25 < at_50  # raising the percentage only adds users
    assert not any(in_rollout("t", u, 0) for u in users) and all(in_rollout("t", u, 100) for u in users)


def test_confidence_scores() -> None:
    values = [-0.1, -2.0, -0.3, -0.05, -0.6, -0.2, -0.01, -0.4, -0.15, -0.9]
    assert mean_logprob(values) == pytest.approx(-0.471)
    assert min_logprob(values) == -2.0
    assert quantile_logprob(values, 0.1) == -2.0 and quantile_logprob(values, 0.2) == -0.9
    assert token_logprobs(completion("x", logprobs=[-0.5, -1.0])) == [-0.5, -1.0]
    assert token_logprobs(completion("x")) == []


SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "ticket", "schema": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}}}]


@pytest.mark.parametrize(("request_body", "answer", "problem"), [
    ({}, completion("fine"), None),
    ({}, completion("cut", finish="length"), "truncated"),
    ({}, completion("  "), "empty"),
    ({"response_format": {"type": "json_object"}}, completion('{"a": 1}'), None),
    ({"response_format": {"type": "json_object"}}, completion("not json"), "not valid JSON"),
    ({"response_format": {"type": "json_object"}}, completion("[1]"), "not a JSON object"),
    ({"response_format": SCHEMA_FORMAT}, completion('{"city": "Oslo"}'), None),
    ({"response_format": SCHEMA_FORMAT}, completion('{"town": "Oslo"}'), "does not match the schema"),
    ({"tools": TOOLS}, completion(None, tool_calls=[{"function": {"name": "lookup", "arguments": '{"id": 3}'}}]),
     None),
    ({"tools": TOOLS}, completion(None, tool_calls=[{"function": {"name": "nope", "arguments": "{}"}}]),
     "does not exist"),
    ({"tools": TOOLS}, completion(None, tool_calls=[{"function": {"name": "lookup", "arguments": "{id"}}]),
     "not valid JSON"),
    ({"tools": TOOLS}, completion(None, tool_calls=[{"function": {"name": "lookup", "arguments": '{"id": "x"}'}}]),
     "does not match the schema"),
])
def test_validators(request_body: dict[str, object], answer: dict[str, object], problem: str | None) -> None:
    problems = validate_output(request_body, answer)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0]


def test_judge() -> None:
    assert judge(-0.2, -0.5, []).accept
    assert judge(None, None, []).accept  # no threshold: validators alone
    low = judge(-0.9, -0.5, [])
    assert not low.accept and low.reason == "low_confidence"
    assert judge(None, -0.5, []).reason == "low_confidence"
    assert judge(-0.1, -0.5, ["answer is not valid JSON"]).reason == "validator"


def student(distilled: bool, system: str = "You extract tickets.") -> StudentVersion:
    return StudentVersion(task="t", version=1, status="active", model="tiny", created_at=0, updated_at=0,
                          prompt_distilled=distilled, system_prompt_hash=text_hash(system) if distilled else None)


def test_prompt_distilled_students_drop_their_system_prompt_only() -> None:
    messages = [{"role": "system", "content": "You extract tickets."}, {"role": "user", "content": "u"}]
    assert student_messages(messages, student(False)) == messages
    assert student_messages(messages, student(True)) == [{"role": "user", "content": "u"}]
    other = [{"role": "system", "content": "Something else."}, {"role": "user", "content": "u"}]
    assert student_messages(other, student(True)) is None
    assert student_messages([{"role": "user", "content": "u"}], student(True)) is None
    assert json.dumps(messages)  # unchanged input
    assert messages[0]["role"] == "system"
