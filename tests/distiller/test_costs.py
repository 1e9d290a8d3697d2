"""A distill run's costs from measured time and tokens × configured or default prices."""

from __future__ import annotations

import pytest

from distiller.costs import relative_student_cost, run_costs
from gateway.config import ComputeConfig
from gateway.pricing import Price


def test_local_training_on_cpu_at_the_default_price() -> None:
    costs = run_costs(trainer="local", metrics={"device": "cpu", "duration_s": 360.0}, training_s=400.0,
                      evaluation_s=72.0, data_costs=[0.001, 0.002, None], compute=ComputeConfig())
    assert costs.training_usd == pytest.approx(0.1 * 360 / 3600)  # the trainer's own time wins over the wall clock
    assert costs.evaluation_usd == pytest.approx(0.1 * 72 / 3600)
    assert costs.data_usd == pytest.approx(0.003)
    assert costs.sources["training"] == "measured 360.0 s on cpu × cpu_hour_usd 0.1, assumed (default)"
    assert costs.sources["data"].endswith("2 of 3 examples' teacher answers (the others had no price)")


def test_a_gpu_at_a_configured_price_and_a_hosted_job_by_its_tokens() -> None:
    compute = ComputeConfig(gpu_hour_usd=4.0, hosted_training_usd_per_million_tokens=25.0)
    gpu = run_costs(trainer="local", metrics={"device": "cuda:0"}, training_s=900.0, evaluation_s=0.0,
                    data_costs=[], compute=compute)
    assert gpu.training_usd == pytest.approx(1.0) and "gpu_hour_usd 4, configured" in gpu.sources["training"]
    assert gpu.data_usd is None
    hosted = run_costs(trainer="openai", metrics={"trained_tokens": 200_000}, training_s=5000.0, evaluation_s=60.0,
                       data_costs=[0.01], compute=compute)
    assert hosted.training_usd == pytest.approx(5.0) and hosted.evaluation_usd is None
    assert hosted.sources["training"] == "billed 200000 trained tokens × 25 USD/M, configured"
    unknown = run_costs(trainer="openai", metrics={}, training_s=1.0, evaluation_s=1.0, data_costs=[],
                        compute=compute)
    assert unknown.training_usd is None and unknown.sources["training"] == "not reported by the provider"


def test_the_curves_student_cost_is_its_own_tokens_at_its_price_over_the_teachers_cost() -> None:
    # two validation answers of 100 + 20 and 60 + 20 tokens at 1e-7 per token: 1.2e-5 and 0.8e-5, mean 1e-5;
    # the teacher's answers to the same requests cost 4e-5 and 6e-5 (one unpriced row left out): mean 5e-5
    relative = relative_student_cost([(100, 20), (60, 20)], [4e-5, None, 6e-5], Price(1e-7, 1e-7), "1e-7 per token")
    assert relative.fraction == pytest.approx(0.2)
    assert relative.source == ("measured: the student's validation tokens at 1e-7 per token, over the teacher's "
                               "served cost of 2 of the same requests")


def test_without_either_price_the_curves_student_cost_is_an_assumption_that_says_so() -> None:
    unpriced = relative_student_cost([(100, 20)], [4e-5], None, "")
    assert unpriced.fraction == 0.05 and unpriced.source == "assumed 0.05 (the student has no price)"
    no_teacher = relative_student_cost([(100, 20)], [None], Price(1e-7, 1e-7), "x")
    assert no_teacher.source == "assumed 0.05 (the teacher's answers have no price)"
