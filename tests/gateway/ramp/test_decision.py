"""What a ramp does next: pure decisions over evidence, and the intervals they rest on."""

from __future__ import annotations

import dataclasses
import random
import statistics

import pytest

from gateway.ramp import Evidence, decide, parse_steps
from gateway.store import RampPlan, RolloutRamp

PLAN = RampPlan((5.0, 25.0, 100.0), dwell_s=600.0, parity_floor=0.85, max_fallback_rate=0.3, min_comparisons=20)


def ramp(step: int = 0, **plan: object) -> RolloutRamp:
    return RolloutRamp(ramp_id="r", task="t", version=2, plan=dataclasses.replace(PLAN, **plan),  # type: ignore[arg-type]
                       state="running", step=step, started_at=0.0, step_started_at=1000.0, updated_at=1000.0)


def evidence(agreements: list[float], routed: int = 0, fallbacks: int = 0) -> Evidence:
    return Evidence(len(agreements), sum(agreements), sum(a * a for a in agreements), routed, fallbacks)


HEALTHY = evidence([1.0] * 30 + [0.9] * 10, routed=200, fallbacks=20)
AFTER_DWELL = 1000.0 + 600.0


def test_parity_interval_is_the_normal_one_over_the_comparisons_spread() -> None:
    values = [random.Random(i).random() for i in range(50)]
    low, high = evidence(values).parity_interval()  # type: ignore[misc]
    mean, half = statistics.fmean(values), 1.959964 * statistics.stdev(values) / 50 ** 0.5
    assert (low, high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert evidence([1.0] * 5).parity_interval() == (1.0, 1.0)
    assert evidence([0.7]).parity_interval() is None  # one comparison has no spread to speak of


def test_fallback_interval_is_wilsons() -> None:
    low, high = Evidence(student_requests=100, fallbacks=20).fallback_interval()  # type: ignore[misc]
    assert (round(low, 4), round(high, 4)) == (0.1334, 0.2888)
    assert Evidence().fallback_interval() is None
    assert Evidence(student_requests=10, fallbacks=0).fallback_interval()[0] == 0.0  # type: ignore[index]


def test_a_step_holds_for_its_dwell_then_advances_on_healthy_evidence() -> None:
    early = decide(ramp(), HEALTHY, 1000.0 + 599)
    assert early.action == "hold" and "dwelling at 5 %" in early.reason
    assert decide(ramp(), HEALTHY, AFTER_DWELL).action == "advance"
    assert "5 % → 25 %" in decide(ramp(), HEALTHY, AFTER_DWELL).reason
    last = decide(ramp(step=2), HEALTHY, AFTER_DWELL)
    assert last.action == "finish" and "at 100 %" in last.reason


def test_short_or_unclear_evidence_waits() -> None:
    few = decide(ramp(), evidence([1.0] * 19, routed=200), AFTER_DWELL)
    assert few.action == "wait" and "19 of 20 shadow comparisons" in few.reason
    no_traffic = decide(ramp(), evidence([1.0] * 25, routed=5), AFTER_DWELL)
    assert no_traffic.action == "wait" and "5 of 20 student requests" in no_traffic.reason
    # mean above the floor, but the interval reaches below it: more comparisons decide
    straddling = decide(ramp(), evidence([1.0] * 17 + [0.0] * 3, routed=200), AFTER_DWELL)
    assert straddling.action == "wait" and "not yet clear of the floor 0.85" in straddling.reason
    # the fallback rate's interval reaches above its ceiling
    assert decide(ramp(), evidence([1.0] * 30, routed=40, fallbacks=10), AFTER_DWELL).action == "wait"


def test_a_breached_floor_rolls_back_at_once_dwell_or_not() -> None:
    bad = decide(ramp(), evidence([0.0] * 15 + [1.0] * 5, routed=200), 1001.0)
    assert bad.action == "rollback" and "below the floor 0.85" in bad.reason and "over 20 comparisons" in bad.reason
    falling_back = decide(ramp(), evidence([1.0] * 5, routed=50, fallbacks=40), 1001.0)
    assert falling_back.action == "rollback" and "fallback rate 0.800" in falling_back.reason
    # as bad, but too few comparisons to tell: it waits instead (the dwell first)
    assert decide(ramp(), evidence([0.0] * 10, routed=15), AFTER_DWELL).action == "wait"


def test_steps_parse_and_must_rise() -> None:
    assert parse_steps("5, 25,50,100") == (5.0, 25.0, 50.0, 100.0)
    for text, message in (("", "at least one step"), ("5,5", "must rise"), ("50,25", "must rise"),
                          ("0,50", "above 0"), ("5,150", "at most 100"), ("5,x", "list of percentages")):
        with pytest.raises(ValueError, match=message):
            parse_steps(text)
