"""The pre-generation predictor of a student version (`gateway.chat.predictor`): fitted on the validation split's
cascade outcomes, judged on the test split's, and turned on only where it measurably helps.

An outcome is whether the cascade would accept the student's answer at the calibrated threshold (it passes the
validators and its confidence reaches the threshold). A logistic regression over the request's features is
fitted to those outcomes; its cutoff is the highest that sends at most `max_lost` of the accepted validation
requests to the teacher. It is enabled when, on the test split, it skips at least `min_skipped` of the requests
the student would have failed — each a student call saved — while sending at most `max_lost` of the accepted
ones to the teacher, with at least `min_rejected` failed requests to tell. Skipping only ever hands a request to
the teacher, so served parity cannot fall; what a wrong skip costs is a teacher answer where the student's would
have done.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.chat.predictor import FEATURES, AcceptancePredictor, request_features, request_text, words

Outcome = tuple[list[dict[str, Any]], bool]  # a request's messages, and whether the cascade accepted the student
VOCABULARY_SIZE = 3000


@dataclass(frozen=True, slots=True)
class Rules:
    max_lost: float = 0.05
    min_skipped: float = 0.25
    min_rejected: int = 5


def vocabulary(requests: Sequence[Sequence[dict[str, Any]]], size: int = VOCABULARY_SIZE) -> frozenset[str]:
    """The words of the student's training requests, the most frequent `size`."""
    counts = Counter(w for messages in requests for w in words(request_text(messages)[0]))
    return frozenset(w for w, _ in counts.most_common(size))


def _fit_logistic(rows: list[list[float]], labels: list[bool], *, l2: float = 0.01,
                  steps: int = 800, rate: float = 0.5) -> tuple[list[float], float]:
    """Gradient descent on the mean log loss with an L2 penalty (the features are standardised)."""
    n, k = len(rows), len(rows[0])
    weights, bias = [0.0] * k, 0.0
    ys = [1.0 if y else 0.0 for y in labels]
    for _ in range(steps):
        grads, grad_bias = [l2 * w for w in weights], 0.0
        for x, y in zip(rows, ys, strict=True):
            z = bias + sum(w * v for w, v in zip(weights, x, strict=True))
            error = 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z)))) - y
            grad_bias += error / n
            for j in range(k):
                grads[j] += error * x[j] / n
        weights = [w - rate * g for w, g in zip(weights, grads, strict=True)]
        bias -= rate * grad_bias
    return weights, bias


def _standardise(raw: list[list[float]]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    columns = list(zip(*raw, strict=True))
    means = tuple(sum(c) / len(c) for c in columns)
    scales = tuple(max(1e-6, math.sqrt(sum((v - m) ** 2 for v in c) / len(c))) for c, m in zip(columns, means,
                                                                                               strict=True))
    return means, scales


def outcome_counts(predictor: AcceptancePredictor, outcomes: Sequence[Outcome], cutoff: float) -> dict[str, Any]:
    """What the cutoff does to these requests: the failed ones it skips, the accepted ones it sends away."""
    scored = [(predictor.probability(m), accepted) for m, accepted in outcomes]
    accepted = [p for p, ok in scored if ok]
    rejected = [p for p, ok in scored if not ok]
    return {"requests": len(scored), "accepted": len(accepted), "rejected": len(rejected),
            "skipped_rejected": sum(p < cutoff for p in rejected), "lost_accepted": sum(p < cutoff for p in accepted),
            "skipped_rejected_share": sum(p < cutoff for p in rejected) / len(rejected) if rejected else None,
            "lost_accepted_share": sum(p < cutoff for p in accepted) / len(accepted) if accepted else None}


def fit_predictor(train_requests: Sequence[Sequence[dict[str, Any]]], fit_on: Sequence[Outcome],
                  judge_on: Sequence[Outcome], rules: Rules = Rules()) -> tuple[AcceptancePredictor | None,
                                                                               dict[str, Any]]:
    """The predictor and its report; None (with the reason) when the outcomes cannot fit one."""
    labels = [accepted for _, accepted in fit_on]
    if len(fit_on) < 10 or all(labels) or not any(labels):
        reason = "too few validation requests" if len(fit_on) < 10 else "every validation outcome was the same"
        return None, {"enabled": False, "reason": f"not fitted: {reason}"}
    vocab = vocabulary(train_requests)
    raw = [request_features(m, vocab) for m, _ in fit_on]
    means, scales = _standardise(raw)
    weights, bias = _fit_logistic([[(v - m) / s for v, m, s in zip(x, means, scales, strict=True)] for x in raw],
                                  labels)
    model = AcceptancePredictor(vocab, means, scales, tuple(weights), bias, 0.0, False)
    accepted_scores = sorted(model.probability(m) for m, ok in fit_on if ok)
    # the highest cutoff that keeps all but `max_lost` of the accepted requests on the student
    cutoff = accepted_scores[math.floor(rules.max_lost * len(accepted_scores))]
    fitted = outcome_counts(model, fit_on, cutoff)
    judged = outcome_counts(model, judge_on, cutoff)
    better = (judged["rejected"] >= rules.min_rejected
              and (judged["skipped_rejected_share"] or 0.0) >= rules.min_skipped
              and (judged["lost_accepted_share"] or 0.0) <= rules.max_lost)
    reason = ("on: it skips {s} of {r} failed test requests and sends {lost} of {a} accepted ones to the teacher"
              if better else "off: on the test split it skips {s} of {r} failed requests and sends {lost} of {a} "
              "accepted ones to the teacher (on needs ≥ {ms:.0%} skipped, ≤ {ml:.0%} lost, ≥ {mr} failed)").format(
        s=judged["skipped_rejected"], r=judged["rejected"], lost=judged["lost_accepted"], a=judged["accepted"],
        ms=rules.min_skipped, ml=rules.max_lost, mr=rules.min_rejected)
    predictor = AcceptancePredictor(vocab, means, scales, tuple(weights), bias, cutoff, better)
    return predictor, {"enabled": better, "reason": reason, "cutoff": cutoff, "features": list(FEATURES),
                       "weights": [round(w, 4) for w in weights], "validation": fitted, "test": judged}
