"""Scoring a student's answer against the teacher's, in [0, 1], behind one interface (`Scorer`).

Five kinds: `exact`, `fields` (JSON field by field), `tools` (tool calls) from the answers alone
(`structural`); `similarity` (sentence embeddings on the teacher's own scale) and `judge` (an LLM judge,
pairwise with the order swapped). `infer_kind` picks one from a task's traffic; `build_scorer` makes the one a
`ScorerSpec` names from what the process has.
"""

from __future__ import annotations

from gateway.scoring.base import (
    SCORER_CHOICES,
    SCORER_KINDS,
    Comparison,
    Score,
    Scorer,
    ScorerChoice,
    ScorerKind,
    ScorerSpec,
    SimilarityScale,
    answer_text,
)
from gateway.scoring.choose import infer_kind
from gateway.scoring.judge import JudgeScorer
from gateway.scoring.similarity import Embedder, SimilarityScorer
from gateway.scoring.structural import StructuralScorer, agreement, field_agreement, normalise_text


class ScorerUnavailableError(RuntimeError):
    """The spec names a scorer this process cannot build (no embeddings endpoint, no judge, no scale)."""


def build_scorer(spec: ScorerSpec | None, *, embedder: Embedder | None = None,
                 judge: JudgeScorer | None = None) -> Scorer:
    """The scorer of `spec`; a version registered before scorers existed (None) was judged structurally."""
    if spec is None or spec.kind in ("exact", "fields", "tools"):
        return StructuralScorer(spec.kind if spec else "fields")
    if spec.kind == "similarity":
        if spec.scale is None or not spec.scale.usable:
            raise ScorerUnavailableError("the similarity scorer has no usable scale")
        if embedder is None:
            raise ScorerUnavailableError("the similarity scorer needs an embeddings endpoint")
        return SimilarityScorer(embedder, spec.scale)
    if judge is None:
        raise ScorerUnavailableError(f"the judge {spec.judge!r} is not configured here")
    return judge


__all__ = ["SCORER_CHOICES", "SCORER_KINDS", "Comparison", "JudgeScorer", "Score", "Scorer", "ScorerChoice",
           "ScorerKind", "ScorerSpec", "ScorerUnavailableError", "SimilarityScale", "SimilarityScorer",
           "StructuralScorer", "agreement", "answer_text", "build_scorer", "field_agreement", "infer_kind",
           "normalise_text"]
