"""Confidence thresholds calibrated on data, never hand-tuned.

Input: the validation split replayed through the student — for each request the student's token
logprobs and its agreement with the teacher's captured answer (0–1), or that it failed (an error, no
logprobs, an answer the validators reject). A failed request is deferred at every threshold, as the cascade
would defer it, and scores 0 where the student keeps everything. For a threshold t, requests
whose confidence ≥ t are served by the student (parity = its agreement), the rest fall back to the
teacher (parity 1, the teacher agrees with itself). `calibrate` picks the confidence method that
separates agreeing from disagreeing answers best (largest area under the deferral curve) and the
lowest threshold — the largest student share — whose served parity reaches the target.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any

from gateway.router import CONFIDENCE_METHODS
from gateway.store import ConfidenceMethod


@dataclass(frozen=True, slots=True)
class Observation:
    """One validation request: the student's token logprobs and its agreement with the teacher."""

    logprobs: tuple[float, ...]
    agreement: float
    failed: bool = False  # the student erred, gave no logprobs or broke the validators: never served

    @property
    def usable(self) -> bool:
        return bool(self.logprobs) and not self.failed


@dataclass(frozen=True, slots=True)
class CurvePoint:
    threshold: float
    student_share: float  # share of traffic the student keeps
    parity: float  # mean agreement of the served answers with the teacher's
    cost_per_request: float  # relative to teacher-only = 1.0


@dataclass(frozen=True, slots=True)
class Calibration:
    method: ConfidenceMethod
    threshold: float | None  # None: no threshold reaches the target; serve nothing from the student
    point: CurvePoint
    target_parity: float
    area_under_deferral_curve: dict[str, float]
    apgr: float
    curve: list[CurvePoint]
    student_cost: float = 0.05  # the curve's cost of a student request, as a fraction of a teacher's
    student_cost_source: str = "assumed"  # measured (from prices and the student's tokens) or assumed

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "curve": [asdict(p) for p in self.curve], "point": asdict(self.point)}


def deferral_curve(scores: Sequence[float], agreements: Sequence[float], *,
                   student_cost: float = 0.05) -> list[CurvePoint]:
    """Every distinct threshold, from serving everything by the student to serving nothing.

    Cost is relative to the teacher: each routed request pays the student; fallbacks also pay the
    teacher. `student_cost` is the student's cost per request as a fraction of the teacher's."""
    n = len(scores)
    if n == 0:
        return []
    order = sorted(range(n), key=lambda i: scores[i], reverse=True)
    points = [CurvePoint(threshold=float("inf"), student_share=0.0, parity=1.0, cost_per_request=1.0)]
    served_agreement = 0.0
    for rank, i in enumerate(order, start=1):
        served_agreement += agreements[i]
        if rank < n and scores[order[rank]] == scores[i]:
            continue  # ties share one threshold
        share = rank / n
        parity = (served_agreement + (n - rank)) / n
        points.append(CurvePoint(threshold=scores[i], student_share=share, parity=parity,
                                 cost_per_request=student_cost + (1 - share)))
    return points


def area_under_curve(points: Sequence[CurvePoint]) -> float:
    """Area under parity vs student share (trapezoids). Higher: the score defers the right answers."""
    ordered = sorted(points, key=lambda p: p.student_share)
    return sum((b.student_share - a.student_share) * (a.parity + b.parity) / 2 for a, b in pairwise(ordered))


def apgr(points: Sequence[CurvePoint]) -> float:
    """RouteLLM's average performance gap recovered: mean over student shares of
    (parity − student-only parity) / (teacher parity − student-only parity)."""
    ordered = sorted(points, key=lambda p: p.student_share)
    weak = ordered[-1].parity
    gap = 1.0 - weak
    if gap <= 0:
        return 1.0
    return area_under_curve([CurvePoint(p.threshold, p.student_share, (p.parity - weak) / gap, p.cost_per_request)
                             for p in ordered])


def calibrate(observations: Sequence[Observation], *, target_parity: float = 0.95,
              student_cost: float = 0.05, student_cost_source: str = "assumed") -> Calibration:
    if not any(o.usable for o in observations):
        raise ValueError("no observations with logprobs to calibrate on")
    agreements = [o.agreement if o.usable else 0.0 for o in observations]
    curves: dict[str, list[CurvePoint]] = {}
    for name, fn in CONFIDENCE_METHODS.items():
        scores = [fn(o.logprobs) if o.usable else -math.inf for o in observations]
        curves[name] = deferral_curve(scores, agreements, student_cost=student_cost)
    areas = {name: round(area_under_curve(curve), 6) for name, curve in curves.items()}
    method = max(areas, key=lambda m: (areas[m], m == "mean_logprob"))
    curve = curves[method]
    reaching = [p for p in curve if p.parity >= target_parity]
    best = max(reaching, key=lambda p: p.student_share)
    threshold = None if best.student_share == 0 else best.threshold
    if threshold == -math.inf:  # keeping the failed ones too: live, the cascade defers them whatever the threshold
        threshold = min(p.threshold for p in curve if math.isfinite(p.threshold))
    return Calibration(method=method, threshold=threshold, point=best, target_parity=target_parity,  # type: ignore[arg-type]
                       area_under_deferral_curve=areas, apgr=apgr(curve), curve=curve, student_cost=student_cost,
                       student_cost_source=student_cost_source)
