"""The cascade benchmark's curve arithmetic: shares, parity and cost for every threshold."""

from __future__ import annotations

import math

import pytest

from bench.cascade import Point, Sample, area_and_apgr, curve, predicted


def sample(index: int, confidence: float | None, agreement: float, *, valid: bool = True) -> Sample:
    # the teacher costs 1.0 per request, the student 0.1
    return Sample(index, teacher_cost=1.0, student_cost=0.1, confidence=confidence, valid=valid, agreement=agreement)


SAMPLES = [sample(0, -0.1, 1.0), sample(1, -0.2, 1.0), sample(2, -0.5, 0.0), sample(3, -0.5, 1.0),
           sample(4, -0.05, 0.0, valid=False), sample(5, None, 0.0)]


def test_every_threshold_is_a_point_from_teacher_only_to_validators_only() -> None:
    points = curve(SAMPLES)
    assert points[0] == Point(math.inf, 0.0, 1.0, 1.0)  # teacher only: no student asked
    assert [p.threshold for p in points[1:]] == [-0.1, -0.2, -0.5]  # invalid and failed answers set no threshold
    # -0.2: tickets 0 and 1 served (both agree), the other four fall back (parity 1 each)
    assert points[2].student_share == pytest.approx(2 / 6) and points[2].parity == pytest.approx(1.0)
    # every ticket pays its student answer (0.6 in all); the four fallbacks also pay the teacher
    assert points[2].cost == pytest.approx((0.6 + 4.0) / 6.0)
    # -0.5: the tie serves both tickets 2 and 3; ticket 2 disagrees
    last = points[-1]
    assert last.student_share == pytest.approx(4 / 6) and last.parity == pytest.approx(5 / 6)
    assert last.cost == pytest.approx((0.6 + 2.0) / 6.0)


def test_the_calibrated_threshold_maps_to_the_points_it_serves() -> None:
    points = curve(SAMPLES)
    assert predicted(points, -0.15).threshold == -0.1  # serves exactly the tickets with confidence ≥ -0.15
    assert predicted(points, -0.01).student_share == 0.0  # above every score: nothing served
    assert predicted(points, None) == points[-1]  # no threshold: validators only


def test_apgr_is_one_when_the_curve_keeps_full_parity_and_zero_when_it_falls_straight() -> None:
    perfect = curve([sample(i, -0.1 * i, 1.0 if i < 3 else 0.0) for i in range(6)])
    assert area_and_apgr(perfect) > 0.7  # the disagreeing answers are the least confident: deferred first
    inverted = curve([sample(i, -0.1 * i, 0.0 if i < 3 else 1.0) for i in range(6)])
    assert area_and_apgr(inverted) < area_and_apgr(perfect)
    assert curve([]) == []


def test_a_cascade_pass_reports_what_rejections_cost() -> None:
    import dataclasses

    from bench.cascade import variant
    from distiller.demo.report import Answer
    from gateway.store import Exchange, ExchangeExtra, StudentNote

    def row(request_id: str, cost: float, tokens: int | None = None, served: int | None = None) -> Exchange:
        note = (StudentNote(version=1, reason="low_confidence", completion_tokens=tokens, cost_usd=tokens * 0.01)
                if tokens else None)
        return Exchange(request_id=request_id, created_at=0.0, task="t", task_source="header", route="teacher",
                        model="m", upstream_model="m", status="ok", http_status=200, stream=False, request={},
                        cost_usd=cost, prompt_tokens=served, completion_tokens=0 if served else None,
                        extra=dataclasses.replace(ExchangeExtra(), student=note))

    reference = [Answer(i, f"ref{i}", "teacher", 1.0, '{"a": 1}') for i in range(4)]
    answers = [Answer(0, "s0", "student", 0.2, '{"a": 1}'), Answer(1, "s1", "student", 0.2, '{"a": 2}'),
               Answer(2, "f2", "fallback", 1.5, '{"a": 1}'), Answer(3, "f3", "fallback", 2.5, '{"a": 1}')]
    rows = {**{f"ref{i}": row(f"ref{i}", 1.0) for i in range(4)}, "s0": row("s0", 0.1, served=10),
            "s1": row("s1", 0.1, served=10),
            "f2": row("f2", 1.02, tokens=2), "f3": row("f3", 1.04, tokens=4)}
    result = variant(answers, reference, rows)
    assert result["routes"] == {"student": 2, "fallback": 2, "teacher": 0} and result["student_share"] == 0.5
    assert result["served_parity"] == pytest.approx(0.75)  # the student's second answer disagrees
    assert result["cost"] == pytest.approx((0.1 + 0.1 + 1.02 + 1.04) / 4.0)
    assert result["fallback_latency_s"] == {"p50": 2.5, "p99": 2.5, "n": 2}
    assert result["student_tokens_per_rejected_request"] == 3.0
    assert result["student_cost_per_rejected_request_usd"] == pytest.approx(0.03)
    assert result["student_price_per_token_usd"] == pytest.approx(0.2 / 20)  # what the served answers paid
