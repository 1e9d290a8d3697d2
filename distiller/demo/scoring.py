"""The demo's scores on the student's own scorer, and what shadow scoring measured in the gateway.

A structural scorer (the JSON task's `fields`) scores a pair of answers from the two texts alone
(`report.agree`). The similarity scorer needs embeddings: every pair the report scores is measured up front
through the model server's `/v1/embeddings`, on the scale the distiller measured and registered with the
version (`StudentDetails.scorer`), so the held-out replay's parity is on the gate's scale.

Shadow scoring (`gateway.chat.shadow`): for a `cascade.shadow_rate` share of the answers the student served,
the gateway asks the teacher too, in the background, scores the pair on the version's scorer and captures the
teacher's answer as a `shadow` row noting the agreement. Live parity is their mean (`gateway.parity`); the
report reads it from the store and checks it against the `protege_shadow_*` counters of `/metrics`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import httpx

from distiller.demo.report import Answer, MetricsSnapshot, agree
from distiller.evaluate import bootstrap_ci
from distiller.pipeline import DistillOutcome
from gateway.chat.types import ROUTE_SHADOW
from gateway.parity import live_parity
from gateway.scoring import Comparison, Scorer, ScorerSpec, build_scorer
from gateway.scoring.similarity import DEFAULT_EMBEDDINGS_MODEL, HttpEmbedder
from gateway.store import Exchange, Store

Pair = tuple[str | None, str | None]  # (an answer, the teacher's reference answer)


class PairScores:
    """Agreement of an answer with the teacher's reference: measured up front (`measured`), or else JSON field
    by field (`report.agree`), which needs no model."""

    def __init__(self, measured: Mapping[tuple[str, str], float] | None = None) -> None:
        self.measured = measured

    def __call__(self, answer: str | None, reference: str | None) -> float:
        if self.measured is None:
            return agree(answer, reference)
        return self.measured[(answer or "", reference or "")]


def _message(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


async def measure_pairs(scorer: Scorer, pairs: Iterable[Pair]) -> PairScores:
    unique = list(dict.fromkeys((answer or "", reference or "") for answer, reference in pairs))
    scores = await scorer.score([Comparison([], _message(a), _message(r)) for a, r in unique])
    return PairScores({pair: score.value for pair, score in zip(unique, scores, strict=True)})


async def answer_scores(outcome: DistillOutcome, embeddings_api_base: str, pairs: Sequence[Pair]) -> PairScores:
    """The pairs scored on the version's scorer; a structural one (or none registered) scores them as it goes."""
    spec = ScorerSpec.from_json(outcome.student.details.scorer)
    if spec is None or spec.kind in ("exact", "fields", "tools"):
        return PairScores()
    async with httpx.AsyncClient(base_url=embeddings_api_base, timeout=300) as client:
        embedder = HttpEmbedder(client, spec.embeddings_model or DEFAULT_EMBEDDINGS_MODEL)
        return await measure_pairs(build_scorer(spec, embedder=embedder), pairs)


def _shadow_rows(rows: Iterable[Exchange], served: set[str]) -> list[Exchange]:
    return [r for r in rows if r.route == ROUTE_SHADOW and r.request_id.removesuffix("-shadow") in served]


async def wait_for_shadow(store: Store, task: str, replayed: Sequence[Answer], *, rate: float,
                          timeout_s: float = 900, quiet_s: float = 90) -> list[Exchange]:
    """The shadow rows of the replay's student answers. Shadow calls run in the background after each answer
    is served, so they are waited for: all of them (a rate of 1), or until none has come for `quiet_s`."""
    served = {a.request_id for a in replayed if a.route == "student" and a.request_id}
    expected = len(served) if rate >= 1 else None
    deadline = time.monotonic() + timeout_s
    found: list[Exchange] = []
    last_change = time.monotonic()
    while served:
        now = await store.list_exchanges(task=task)
        rows = _shadow_rows(now, served)
        if len(rows) != len(found):
            found, last_change = rows, time.monotonic()
        if len(found) == expected or time.monotonic() > deadline or time.monotonic() - last_change > quiet_s:
            break
        await asyncio.sleep(1)
    return found


def shadow_summary(shadow_rows: Sequence[Exchange], replayed: Sequence[Answer], version: int, rate: float,
                   metrics: MetricsSnapshot) -> dict[str, Any]:
    """Live parity from the captured shadow rows, beside the gateway's own counters of the same comparisons."""
    served = sum(1 for a in replayed if a.route == "student")
    parity = live_parity(shadow_rows, version)
    agreements = [r.extra.shadow.agreement for r in shadow_rows
                  if r.extra.shadow is not None and r.extra.shadow.version == version]
    ci = bootstrap_ci(agreements) if agreements else None
    counted = metrics.total("protege_shadow_comparisons_total", version=str(version))
    agreement_sum = metrics.total("protege_shadow_agreement_total", version=str(version))
    return {
        "rate": rate, "student_answers": served, "shadow_rows": len(shadow_rows),
        "comparisons": parity.comparisons,
        "live_parity": None if parity.mean is None else round(parity.mean, 4),
        "ci_low": None if ci is None else round(ci.ci_low, 4), "ci_high": None if ci is None else round(ci.ci_high, 4),
        "metrics_comparisons": int(counted),
        "metrics_live_parity": round(agreement_sum / counted, 4) if counted else None,
        "unscored": {k: int(v) for k, v in metrics.by_label("protege_shadow_unscored_total", "reason").items()},
        "cost_usd": sum(r.cost_usd or 0.0 for r in shadow_rows),
        "metrics_cost_usd": metrics.total("protege_cost_usd_total", route=ROUTE_SHADOW),
    }
