"""The structural scorers: exact match, JSON fields and tool calls, computed from the two answers alone."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

import orjson

from gateway.scoring.base import Comparison, Score, ScorerKind

_SPACE = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip().casefold()


def _message(completion: dict[str, Any] | None) -> dict[str, Any]:
    choices = (completion or {}).get("choices") or [{}]
    message: dict[str, Any] = choices[0].get("message") or {}
    return message


def _json_object(text: Any) -> dict[str, Any] | None:
    try:
        value = orjson.loads(text or "")
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def field_agreement(student: dict[str, Any], teacher: dict[str, Any]) -> float:
    """Share of the teacher's fields the student reproduced exactly (extra student fields count against)."""
    keys = set(student) | set(teacher)
    if not keys:
        return 1.0
    same = sum(1 for k in keys if k in student and k in teacher and _norm_value(student[k]) == _norm_value(teacher[k]))
    return same / len(keys)


def _norm_value(value: Any) -> Any:
    return normalise_text(value) if isinstance(value, str) else value


def _tool_calls(message: dict[str, Any]) -> list[tuple[str, Any]]:
    calls = []
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        arguments = _json_object(function.get("arguments"))
        calls.append((function.get("name") or "", arguments if arguments is not None else function.get("arguments")))
    return calls


def agreement(student_completion: dict[str, Any] | None, teacher_completion: dict[str, Any] | None) -> float:
    """Tool calls: same names and arguments (1 or 0). JSON objects: field-by-field agreement.
    Text: normalised exact match (1 or 0)."""
    student, teacher = _message(student_completion), _message(teacher_completion)
    if student.get("tool_calls") or teacher.get("tool_calls"):
        return 1.0 if _tool_calls(student) == _tool_calls(teacher) else 0.0
    student_json, teacher_json = _json_object(student.get("content")), _json_object(teacher.get("content"))
    if teacher_json is not None:
        return field_agreement(student_json, teacher_json) if student_json is not None else 0.0
    return 1.0 if normalise_text(student.get("content") or "") == normalise_text(teacher.get("content") or "") else 0.0


def exact_agreement(student_completion: dict[str, Any] | None, teacher_completion: dict[str, Any] | None) -> float:
    """1 when the two answers are the same text (normalised) or the same tool calls, else 0."""
    student, teacher = _message(student_completion), _message(teacher_completion)
    if student.get("tool_calls") or teacher.get("tool_calls"):
        return 1.0 if _tool_calls(student) == _tool_calls(teacher) else 0.0
    return 1.0 if normalise_text(student.get("content") or "") == normalise_text(teacher.get("content") or "") else 0.0


class StructuralScorer:
    """`exact`, `fields` or `tools`: no model involved, so it is the same in every process."""

    def __init__(self, kind: ScorerKind = "fields") -> None:
        if kind not in ("exact", "fields", "tools"):
            raise ValueError(f"not a structural scorer: {kind}")
        self._kind: ScorerKind = kind

    @property
    def kind(self) -> ScorerKind:
        return self._kind

    def score_one(self, student: dict[str, Any] | None, teacher: dict[str, Any] | None) -> float:
        measure = exact_agreement if self._kind == "exact" else agreement
        return measure({"choices": [{"message": student or {}}]}, {"choices": [{"message": teacher or {}}]})

    async def score(self, comparisons: Sequence[Comparison]) -> list[Score]:
        return [Score(self.score_one(c.student, c.teacher)) for c in comparisons]
