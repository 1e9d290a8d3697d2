"""Which scorer fits a task, read from its teacher answers: tool calls → `tools`, JSON objects → `fields`,
short labels or a few fixed replies → `exact`, free text → `judge` when one is configured, else `similarity`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from gateway.scoring.base import ScorerKind
from gateway.scoring.structural import normalise_text

LABEL_WORDS = 4  # an answer of at most this many words is a label (a class, a yes/no, a number)


def _is_json_object(text: object) -> bool:
    if not isinstance(text, str):
        return False
    try:
        return isinstance(orjson.loads(text), dict)
    except orjson.JSONDecodeError:
        return False


def infer_kind(answers: Sequence[dict[str, Any]], *, judge_configured: bool = False) -> tuple[ScorerKind, str]:
    """The kind for a task whose teacher answered `answers` (assistant messages), and why. A kind is chosen when
    at least half the answers are of it; answers are labels when nine in ten are short."""
    n = len(answers)
    if n == 0:
        return "fields", "auto: no answers to read (the structural scorer)"
    if sum(1 for a in answers if a.get("tool_calls")) * 2 >= n:
        return "tools", "auto: tool calls"
    if sum(1 for a in answers if _is_json_object(a.get("content"))) * 2 >= n:
        return "fields", "auto: JSON objects"
    short = sum(1 for a in answers if len(str(a.get("content") or "").split()) <= LABEL_WORDS)
    if short * 10 >= n * 9:
        return "exact", f"auto: short labels (≤ {LABEL_WORDS} words)"
    distinct = len({normalise_text(str(a.get("content") or "")) for a in answers})
    if n >= 10 and distinct * 10 <= n:  # a few fixed replies, however long: a label task
        return "exact", f"auto: {distinct} distinct answers in {n}"
    if judge_configured:
        return "judge", "auto: free text, a judge is configured"
    return "similarity", "auto: free text"
