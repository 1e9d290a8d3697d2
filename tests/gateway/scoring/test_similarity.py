"""The similarity scorer: the scale's arithmetic, and embeddings from a real model server (all-MiniLM-L6-v2
behind `/v1/embeddings`) through `HttpEmbedder` — a scale measured from teacher answer pairs, and the shipped
labelled check set scored on it, kind by kind."""

from __future__ import annotations

import httpx
import pytest

from distiller.scorer_check import check_scorer, load_check_set
from gateway.errors import UpstreamError
from gateway.scoring import Comparison, ScorerSpec, SimilarityScale, build_scorer
from gateway.scoring.similarity import HttpEmbedder, SimilarityScorer, fit_scale
from tests.servers import Server


def test_the_scale_maps_the_teacher_to_one_and_other_requests_to_zero() -> None:
    scale = SimilarityScale(same=0.9, other=0.4, pairs=10, source="test")
    assert scale.agreement(0.9) == 1.0 and scale.agreement(0.95) == 1.0
    assert scale.agreement(0.4) == 0.0 and scale.agreement(0.1) == 0.0
    assert scale.agreement(0.65) == pytest.approx(0.5)
    flat = SimilarityScale(same=0.5, other=0.495, pairs=10, source="test")
    assert not flat.usable and flat.agreement(0.9) == 0.0  # nothing to measure: no agreement is claimed
    spec = ScorerSpec("similarity", "auto: free text", scale=scale, embeddings_model="all-MiniLM-L6-v2")
    assert ScorerSpec.from_json(spec.to_json()) == spec
    assert ScorerSpec.from_json({"kind": "nonsense"}) is None and ScorerSpec.from_json(None) is None


async def test_scale_and_check_set_on_real_embeddings(tiny_student: Server) -> None:
    items = load_check_set()
    good = [i for i in items if i.kind == "paraphrase"]
    teachers = list(dict.fromkeys(i.teacher for i in items))
    async with httpx.AsyncClient(base_url=f"{tiny_student.url}/v1", timeout=60) as client:
        embedder = HttpEmbedder(client)
        # a paraphrase stands in for the teacher's second answer to the same request
        scale = await fit_scale(embedder, [(i.teacher, i.candidate) for i in good], teachers, source="paraphrases")
        assert 0.85 < scale.same < 1.0 and 0.2 < scale.other < 0.5 and scale.usable
        scorer = build_scorer(ScorerSpec("similarity", "test", scale=scale), embedder=embedder)
        assert isinstance(scorer, SimilarityScorer)
        empty, paraphrase = await scorer.score([
            Comparison([], {"role": "assistant", "content": "  "}, {"role": "assistant", "content": teachers[0]}),
            Comparison([], {"role": "assistant", "content": good[0].candidate},
                       {"role": "assistant", "content": good[0].teacher})])
        assert empty.value == 0.0 and empty.details == {"cosine": None}
        assert paraphrase.value > 0.9 and paraphrase.details is not None and paraphrase.details["cosine"] > 0.85
        report = await check_scorer(scorer, items)
    kinds = report["by_kind"]
    assert report["items"] == 56 and set(kinds) == {"paraphrase", "different_good", "wrong_facts", "truncated",
                                                    "off_task", "empty", "majority"}
    # what embeddings can tell: the right reply from another request's, an empty one, mostly the generic one
    for kind in ("paraphrase", "off_task", "empty"):
        assert kinds[kind]["accuracy"] == 1.0, (kind, kinds[kind])
    assert kinds["majority"]["accuracy"] >= 0.75 and kinds["majority"]["mean_score"] < 0.3
    # and what they cannot: fluent text with one wrong fact is as close as a good answer (the judge's job)
    assert kinds["wrong_facts"]["mean_score"] > 0.5
    assert 0.6 < report["accuracy"] < 1.0 and report["swap_consistency"] is None


async def test_an_embeddings_endpoint_that_fails_is_an_upstream_error(tiny_student: Server) -> None:
    async with httpx.AsyncClient(base_url=f"{tiny_student.url}/v1", timeout=60) as client:
        with pytest.raises(UpstreamError, match="404"):
            await HttpEmbedder(client, model="no-such-model").embed(["x"])
    async with httpx.AsyncClient(base_url="http://127.0.0.1:9/v1", timeout=5) as client:
        with pytest.raises(UpstreamError, match="unreachable"):
            await HttpEmbedder(client).embed(["x"])
