"""Deciding before generating: a per-version logistic model of "will the cascade accept the student's answer to
this request?" from what the request shows before any token is generated. A request it scores below its
cutoff goes straight to the teacher, and the student is not asked at all.

Features, from the request's non-system text: its length, its shares of non-ASCII characters, digits and
capitals, the share of its words the student never saw in its training requests, and its number of turns — what
tells the traffic a student was trained on from the requests it falls back on (another language, garbled or
cut-off text, a different kind of question). The distiller fits it on the validation split's outcomes and
turns it on only when it measurably helps on the test split (`distiller.predictor`); the model travels in
the version's details, so every gateway uses the same one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

FEATURES = ("length", "non_ascii", "digits", "capitals", "unseen_words", "turns")
_WORD = re.compile(r"\w+")


def request_text(messages: Sequence[dict[str, Any]]) -> tuple[str, int]:
    """The request's non-system text and its number of turns."""
    parts = [m.get("content") for m in messages if m.get("role") not in ("system", "developer")]
    texts = [p if isinstance(p, str) else " ".join(str(c.get("text", "")) for c in p if isinstance(c, dict))
             for p in parts if isinstance(p, str | list)]
    return "\n".join(texts), len(parts)


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def request_features(messages: Sequence[dict[str, Any]], vocabulary: frozenset[str]) -> list[float]:
    text, turns = request_text(messages)
    size = max(1, len(text))
    letters = sum(c.isalpha() for c in text)
    seen = words(text)
    return [math.log1p(len(text)), sum(not c.isascii() for c in text) / size, sum(c.isdigit() for c in text) / size,
            sum(c.isupper() for c in text) / max(1, letters),
            sum(w not in vocabulary for w in seen) / len(seen) if seen else 1.0, float(turns)]


@dataclass(frozen=True, slots=True)
class AcceptancePredictor:
    vocabulary: frozenset[str]
    means: tuple[float, ...]
    scales: tuple[float, ...]
    weights: tuple[float, ...]
    bias: float
    cutoff: float  # a request scored below it skips the student
    enabled: bool  # measurably better on the test split (`distiller.predictor`)

    def probability(self, messages: Sequence[dict[str, Any]]) -> float:
        """The predicted chance that the cascade accepts the student's answer to this request."""
        x = request_features(messages, self.vocabulary)
        z = self.bias + sum(w * (v - m) / s for w, v, m, s in zip(self.weights, x, self.means, self.scales,
                                                                   strict=True))
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))

    def skips(self, messages: Sequence[dict[str, Any]]) -> bool:
        return self.enabled and self.probability(messages) < self.cutoff

    def to_json(self) -> dict[str, Any]:
        return {"features": list(FEATURES), "vocabulary": sorted(self.vocabulary), "means": list(self.means),
                "scales": list(self.scales), "weights": list(self.weights), "bias": self.bias, "cutoff": self.cutoff,
                "enabled": self.enabled}

    @classmethod
    def from_json(cls, data: object) -> AcceptancePredictor | None:
        """None for a record this gateway cannot use (other features, wrong types): the student is asked."""
        if not isinstance(data, dict) or data.get("features") != list(FEATURES):
            return None
        try:
            means, scales, weights = (tuple(float(v) for v in data[k]) for k in ("means", "scales", "weights"))
            if any(len(n) != len(FEATURES) for n in (means, scales, weights)) or any(s <= 0 for s in scales):
                return None
            return cls(frozenset(str(w) for w in data["vocabulary"]), means, scales, weights, float(data["bias"]),
                       float(data["cutoff"]), bool(data["enabled"]))
        except (KeyError, TypeError, ValueError):
            return None
