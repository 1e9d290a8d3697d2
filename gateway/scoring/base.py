"""The scorer interface: how close a student's answer is to the teacher's for one request, in [0, 1].

1 means "as good as the teacher's answer", 0 "no better than an answer to another request". Every place a
task's quality is measured (evaluation and the gate, baselines, calibration, shadow live parity, the
scheduler's floor, reports, console, demo) uses the one scorer the task's student version was registered
with (`ScorerSpec`, kept in its details), so the figures are on one scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

ScorerKind = Literal["exact", "fields", "tools", "similarity", "judge"]
ScorerChoice = Literal["auto", "exact", "fields", "tools", "similarity", "judge"]
SCORER_KINDS: tuple[str, ...] = get_args(ScorerKind)
SCORER_CHOICES: tuple[str, ...] = get_args(ScorerChoice)


@dataclass(frozen=True, slots=True)
class Comparison:
    """One request with the two answers to compare (assistant messages; None: no answer)."""

    request: Sequence[dict[str, Any]]  # the messages as the teacher got them (what a judge reads)
    student: dict[str, Any] | None
    teacher: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class Score:
    value: float  # in [0, 1]
    rationale: str | None = None  # why, where the scorer can say (the judge's words)
    details: dict[str, Any] | None = None  # the raw measure behind the value (a cosine, the judge's verdicts)


class Scorer(Protocol):
    @property
    def kind(self) -> ScorerKind: ...

    async def score(self, comparisons: Sequence[Comparison]) -> list[Score]: ...


@dataclass(frozen=True, slots=True)
class SimilarityScale:
    """Turns a cosine between two answers into agreement: `same` (1) is how close two of the teacher's own answers
    to one request are, `other` (0) how close its answers to two different requests of the task are. A student
    as close to the teacher as the teacher is to itself has parity 1; a raw cosine says nothing on its own (two
    unrelated support replies already score ~0.5)."""

    same: float  # median cosine of two teacher answers to the same request
    other: float  # median cosine of teacher answers to different requests
    pairs: int  # teacher answer pairs `same` was measured on
    source: str  # how the pairs were made

    MIN_SPREAD = 0.02  # below this the teacher is as close to other requests as to itself: nothing to measure

    @property
    def usable(self) -> bool:
        return self.same - self.other >= self.MIN_SPREAD

    def agreement(self, cosine: float) -> float:
        if not self.usable:
            return 0.0
        return min(1.0, max(0.0, (cosine - self.other) / (self.same - self.other)))

    def to_json(self) -> dict[str, Any]:
        return {"same": round(self.same, 6), "other": round(self.other, 6), "pairs": self.pairs,
                "source": self.source}

    @classmethod
    def from_json(cls, data: object) -> SimilarityScale | None:
        if not isinstance(data, dict):
            return None
        try:
            return cls(float(data["same"]), float(data["other"]), int(data.get("pairs", 0)),
                       str(data.get("source", "")))
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class ScorerSpec:
    """Which scorer a student version was judged with, and what it needs to score again on the same scale."""

    kind: ScorerKind
    chosen_by: str  # "auto: …", "tasks.<task>.scorer", "--scorer"
    scale: SimilarityScale | None = None  # similarity
    embeddings_model: str | None = None  # similarity
    judge: str | None = None  # judge: the configured teacher (served name) asked as judge
    judge_prompt_sha256: str | None = None  # judge: the prompt file's hash

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "chosen_by": self.chosen_by}
        if self.scale is not None:
            data["scale"] = self.scale.to_json()
        for key in ("embeddings_model", "judge", "judge_prompt_sha256"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        return data

    @classmethod
    def from_json(cls, data: object) -> ScorerSpec | None:
        if not isinstance(data, dict) or data.get("kind") not in SCORER_KINDS:
            return None
        text = {k: str(data[k]) if data.get(k) is not None else None
                for k in ("embeddings_model", "judge", "judge_prompt_sha256")}
        return cls(kind=data["kind"], chosen_by=str(data.get("chosen_by", "")),
                   scale=SimilarityScale.from_json(data.get("scale")), **text)


def answer_text(message: dict[str, Any] | None) -> str:
    """What an assistant message says, as one text: its content, else its tool calls."""
    if not message:
        return ""
    content = message.get("content")
    if isinstance(content, str) and content:
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    calls = message.get("tool_calls") or []
    return "\n".join(f"{(c.get('function') or {}).get('name')}({(c.get('function') or {}).get('arguments')})"
                     for c in calls if isinstance(c, dict))
