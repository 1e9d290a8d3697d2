from __future__ import annotations

import random

import pytest

from distiller.calibrate import Observation, apgr, area_under_curve, calibrate, deferral_curve


def test_deferral_curve_endpoints_and_parity() -> None:
    curve = deferral_curve([-0.1, -0.5, -2.0, -3.0], [1, 1, 0, 1], student_cost=0.1)
    assert curve[0].student_share == 0 and curve[0].parity == 1 and curve[0].cost_per_request == 1
    assert [(p.threshold, p.student_share, p.parity) for p in curve[1:]] == [
        (-0.1, 0.25, 1.0), (-0.5, 0.5, 1.0), (-2.0, 0.75, 0.75), (-3.0, 1.0, 0.75)]
    assert curve[-1].cost_per_request == pytest.approx(0.1)


def test_ties_share_one_threshold() -> None:
    curve = deferral_curve([-1.0, -1.0, -2.0], [1, 0, 1])
    assert [p.student_share for p in curve] == [0, pytest.approx(2 / 3), 1.0]


def test_calibration_picks_the_largest_share_reaching_the_target() -> None:
    # confident answers agree, unsure ones mostly do not
    observations = ([Observation((-0.05, -0.1), 1.0) for _ in range(80)]
                    + [Observation((-2.0, -3.0), 0.0) for _ in range(15)]
                    + [Observation((-2.5, -2.5), 1.0) for _ in range(5)])
    result = calibrate(observations, target_parity=0.95)
    # the 5 unsure-but-right answers (min -2.5) rank above the wrong ones (min -3.0): 85% stays served
    assert result.method in ("min_logprob", "quantile_logprob")
    assert result.point.student_share == pytest.approx(0.85)
    assert result.point.parity == 1.0
    assert result.threshold == -2.5
    assert result.point.cost_per_request == pytest.approx(0.05 + 0.15)
    assert set(result.area_under_deferral_curve) == {"mean_logprob", "min_logprob", "quantile_logprob"}
    assert 0.9 < result.apgr <= 1.0


def test_uninformative_scores_give_little_area_and_no_student_when_target_is_out_of_reach() -> None:
    rng = random.Random(0)
    observations = [Observation((rng.uniform(-3, 0),), float(rng.random() < 0.5)) for _ in range(400)]
    result = calibrate(observations, target_parity=0.99)
    assert result.point.student_share < 0.05
    assert abs(apgr(result.curve) - 0.5) < 0.1  # random routing recovers about half the gap


def test_method_choice_follows_the_data() -> None:
    # one very unsure token marks the wrong answers: min/quantile see it, the mean hides it
    good = [Observation((-0.2,) * 19 + (-0.5,), 1.0) for _ in range(50)]  # mean -0.215, min -0.5
    bad = [Observation((-0.001,) * 19 + (-3.0,), 0.0) for _ in range(50)]  # mean -0.151, min -3.0
    result = calibrate(good + bad)
    assert result.method in ("min_logprob", "quantile_logprob")
    assert result.area_under_deferral_curve[result.method] > result.area_under_deferral_curve["mean_logprob"]


def test_area_of_perfect_router() -> None:
    curve = deferral_curve([0, -1], [1, 0])
    assert area_under_curve(curve) == pytest.approx(0.5 * 1 + 0.5 * 0.75)


def test_needs_logprobs() -> None:
    with pytest.raises(ValueError):
        calibrate([Observation((), 1.0)])


def test_failed_answers_count_as_deferred_not_dropped() -> None:
    # 10 requests: 6 confident and right, 4 the student failed on (error, no logprobs, broken validators)
    good = [Observation((-0.1,), 1.0) for _ in range(6)]
    failed = ([Observation((), 0.0)] * 2 + [Observation((-0.01,), 1.0, failed=True)] * 2)
    result = calibrate(good + failed, target_parity=0.95)
    # the student keeps the 6 it answered (share 0.6 of all 10, not 1.0 of the 6), the 4 go to the teacher
    assert result.point.student_share == pytest.approx(0.6) and result.point.parity == 1.0
    assert result.threshold == -0.1
    # keeping everything scores the failures as misses: student-only parity 0.6, not 1.0
    assert min(result.curve, key=lambda p: p.threshold).parity == pytest.approx(0.6)
    # a target only the failures would spoil is still met, with a finite threshold
    assert calibrate(good + failed, target_parity=0.5).threshold == -0.1
