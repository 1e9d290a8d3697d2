"""Prices: litellm's bundled map (offline), config overrides, cached prompt tokens, GPU-hour prices for
self-hosted students, and the counterfactual prompt of a prompt-distilled student."""

from __future__ import annotations

import pytest

from gateway.pricing import Price, counterfactual_prompt_tokens, lookup_price, resolve_price


def test_bundled_map_with_provider_prefix_and_cached_tokens() -> None:
    price = lookup_price("openai/gpt-4o-mini")
    assert price == lookup_price("gpt-4o-mini")
    assert price is not None
    assert (price.input_per_token, price.output_per_token) == (0.15e-6, 0.60e-6)
    assert price.cached_input_per_token == pytest.approx(0.075e-6)


def test_unknown_model_has_no_price_never_zero() -> None:
    assert lookup_price("openai/my-finetune-nobody-knows") is None
    assert resolve_price("openai/my-finetune-nobody-knows", None, None) is None
    assert resolve_price("openai/my-finetune-nobody-knows", 1e-6, None) is None  # both are needed


def test_config_overrides_the_map() -> None:
    assert resolve_price("openai/gpt-4o-mini", 1e-6, 2e-6) == Price(1e-6, 2e-6)
    assert resolve_price("x", 1e-6, 2e-6, 0.5e-6) == Price(1e-6, 2e-6, 0.5e-6)


def test_cached_prompt_tokens_cost_less_when_priced() -> None:
    price = Price(1e-6, 4e-6, cached_input_per_token=0.25e-6)
    assert price.cost(1000, 100, cached_tokens=800) == pytest.approx(200e-6 + 800 * 0.25e-6 + 400e-6)
    assert price.cost(1000, 100, cached_tokens=5000) == pytest.approx(1000 * 0.25e-6 + 400e-6)  # capped
    assert Price(1e-6, 4e-6).cost(1000, 100, cached_tokens=800) == pytest.approx(1000e-6 + 400e-6)


def test_compute_hour_price_at_measured_throughput() -> None:
    price = Price.per_compute_hour(usd_per_hour=2.0, tokens_per_s=1000)  # $2/h at 1000 tok/s
    assert price.input_per_token == price.output_per_token == pytest.approx(2.0 / 3.6e6)
    assert price.cost(3_600_000, 0) == pytest.approx(2.0)  # an hour of tokens costs the hour


def test_counterfactual_prompt_puts_the_distilled_system_prompt_back() -> None:
    assert counterfactual_prompt_tokens(50, full_chars=1000, sent_chars=100) == 500
    assert counterfactual_prompt_tokens(50, full_chars=100, sent_chars=100) == 50  # nothing was dropped
    assert counterfactual_prompt_tokens(50, full_chars=100, sent_chars=0) == 50


def test_a_self_hosted_student_is_priced_by_compute_unless_a_token_price_is_configured() -> None:
    from gateway.app import student_pricing
    from gateway.config import load_settings

    settings = load_settings(None, overrides={"student_api_base": "http://127.0.0.1:9/v1",
                                              "cascade": {"hardware": "gpu", "tokens_per_s": 500},
                                              "compute": {"gpu_hour_usd": 1.8}})
    pricing = student_pricing(settings)
    assert pricing is not None and pricing.price(None)[0] == Price.per_compute_hour(1.8, 500)
    priced = load_settings(None, overrides={"student_api_base": "http://127.0.0.1:9/v1",
                                            "cascade": {"input_cost_per_token": 1e-8, "output_cost_per_token": 2e-8}})
    assert student_pricing(priced) is None
