"""Which scorer a task gets from its traffic, and `build_scorer`'s refusals."""

from __future__ import annotations

import json

import pytest

from gateway.scoring import ScorerSpec, ScorerUnavailableError, StructuralScorer, build_scorer, infer_kind
from gateway.scoring.base import SimilarityScale


def text(content: str) -> dict[str, object]:
    return {"role": "assistant", "content": content}


def test_infer_kind_from_the_answers() -> None:
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"type": "function", "function": {"name": "refund", "arguments": "{}"}}]}
    assert infer_kind([call, call, text("ok")])[0] == "tools"
    assert infer_kind([text(json.dumps({"city": "Oslo"}))] * 3 + [text("sorry")])[0] == "fields"
    assert infer_kind([text("billing"), text("tech"), text("Billing"), text("yes it is")])[0] == "exact"
    reply = text("Hi Maria, sorry about the jug; a replacement ships within 2 days. Best regards")
    assert infer_kind([reply] * 5) == ("similarity", "auto: free text")
    assert infer_kind([reply] * 5, judge_configured=True)[0] == "judge"
    assert infer_kind([])[0] == "fields"
    canned = [text("Thank you, your ticket has been received and a person will answer it soon.")] * 12
    assert infer_kind(canned) == ("exact", "auto: 1 distinct answers in 12")


async def test_build_scorer_refuses_what_it_cannot_build() -> None:
    assert isinstance(build_scorer(None), StructuralScorer)  # a version registered before scorers existed
    exact = build_scorer(ScorerSpec("exact", "test"))
    assert [s.value for s in await exact.score([])] == []
    with pytest.raises(ScorerUnavailableError, match="scale"):
        build_scorer(ScorerSpec("similarity", "test"))
    with pytest.raises(ScorerUnavailableError, match="embeddings"):
        build_scorer(ScorerSpec("similarity", "test", scale=SimilarityScale(0.9, 0.3, 4, "t")))
    with pytest.raises(ScorerUnavailableError, match="judge"):
        build_scorer(ScorerSpec("judge", "test", judge="gpt-4o"))


def test_structural_kinds() -> None:
    exact, fields = StructuralScorer("exact"), StructuralScorer("fields")
    a, b = text('{"city": "Oslo", "product": "kettle"}'), text('{"city": "oslo", "product": "lamp"}')
    assert fields.score_one(a, b) == 0.5 and exact.score_one(a, b) == 0.0
    assert exact.score_one(text(" Billing "), text("billing")) == 1.0
    with pytest.raises(ValueError):
        StructuralScorer("judge")
