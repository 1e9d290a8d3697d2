"""A distill run's costs from measured time and tokens × configured or default prices."""

from __future__ import annotations

import pytest

from distiller.costs import run_costs
from gateway.config import ComputeConfig


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
