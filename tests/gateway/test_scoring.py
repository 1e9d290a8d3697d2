from __future__ import annotations

import pytest

from gateway.scoring import agreement, field_agreement


def answer(content: str | None = None, tool: tuple[str, str] | None = None) -> dict[str, object]:
    message: dict[str, object] = {"role": "assistant", "content": content}
    if tool:
        message["tool_calls"] = [{"function": {"name": tool[0], "arguments": tool[1]}}]
    return {"choices": [{"message": message}]}


@pytest.mark.parametrize(("student", "teacher", "expected"), [
    (answer("Paris"), answer("  paris "), 1.0),
    (answer("Paris"), answer("Lyon"), 0.0),
    (answer('{"city": "Oslo", "urgent": true}'), answer('{"urgent": true, "city": "oslo"}'), 1.0),
    (answer('{"city": "Oslo", "urgent": false}'), answer('{"city": "Oslo", "urgent": true}'), 0.5),
    (answer('{"city": "Oslo", "extra": 1}'), answer('{"city": "Oslo"}'), 0.5),
    (answer("not json"), answer('{"city": "Oslo"}'), 0.0),
    (answer(tool=("lookup", '{"id": 1}')), answer(tool=("lookup", '{ "id":1 }')), 1.0),
    (answer(tool=("lookup", '{"id": 1}')), answer(tool=("lookup", '{"id": 2}')), 0.0),
    (answer("text"), answer(tool=("lookup", "{}")), 0.0),
])
def test_agreement(student: dict[str, object], teacher: dict[str, object], expected: float) -> None:
    assert agreement(student, teacher) == expected


def test_field_agreement_of_empty_objects() -> None:
    assert field_agreement({}, {}) == 1.0
