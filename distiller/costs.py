"""What a distill run cost, each figure with how it was made. Pure.

- data: the sum of the captured rows' `cost_usd` behind the dataset's examples — measured, as the gateway
  priced them when it served them (so it is not an extra cost of the run: the traffic was paid for anyway);
- training: a local job's measured time on its device (`duration_s`, else the wall clock) × the compute
  price of that device; a hosted job's billed trained tokens × the hosted training price;
- evaluation: the measured wall clock of the evaluation and calibration passes × the same compute price
  (a hosted student's evaluation tokens are not priced: its provider bills them, and no price is known here).

Compute prices are configured (`compute.*`) or the documented defaults, and the sources say which.

A hosted student's serving price (`hosted_list_price`) is its provider's list price in litellm's bundled
map: OpenAI's for the fine-tuned snapshot (`ft:<base>`); Together's and Fireworks' for the base model, since
both bill a serverless LoRA at its base model's price (by name, else by the size tier its parameter count in
the name falls in).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from gateway.config import ComputeConfig
from gateway.pricing import Price, lookup_price

# litellm's names for a hosted model, and its per-size price tiers (upper bound in billions of parameters)
_PROVIDER_PREFIX = {"openai": "ft:", "together": "together_ai/", "fireworks": "fireworks_ai/"}
_SIZE_TIERS: dict[str, list[tuple[float, str]]] = {
    "together": [(4, "together-ai-up-to-4b"), (8, "together-ai-4.1b-8b"), (21, "together-ai-8.1b-21b"),
                 (41, "together-ai-21.1b-41b"), (80, "together-ai-41.1b-80b"), (110, "together-ai-81.1b-110b")],
    "fireworks": [(4, "fireworks-ai-up-to-4b"), (16, "fireworks-ai-4.1b-to-16b"),
                  (math.inf, "fireworks-ai-above-16b")],
}
_BILLIONS = re.compile(r"(?<![\d.])(\d+(?:[.p]\d+)?)b(?![a-z])", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class RunCosts:
    data_usd: float | None
    training_usd: float | None
    evaluation_usd: float | None
    sources: dict[str, Any]


def device_price(device: str, compute: ComputeConfig) -> tuple[float, str]:
    """(USD per hour, its source) of the device a job ran on."""
    if device.startswith(("cuda", "gpu", "mps")):
        return compute.gpu_hour_usd, f"gpu_hour_usd {compute.gpu_hour_usd:g}, {compute.source('gpu_hour_usd')}"
    return compute.cpu_hour_usd, f"cpu_hour_usd {compute.cpu_hour_usd:g}, {compute.source('cpu_hour_usd')}"


def run_costs(*, trainer: str, metrics: dict[str, Any], training_s: float, evaluation_s: float,
              data_costs: list[float | None], compute: ComputeConfig) -> RunCosts:
    priced = [c for c in data_costs if c is not None]
    data = sum(priced) if priced else None
    sources: dict[str, Any] = {
        "data": f"measured: the served cost of {len(priced)} of {len(data_costs)} examples' teacher answers"
                + ("" if len(priced) == len(data_costs) else " (the others had no price)")}
    if trainer == "local":
        device = str(metrics.get("device") or "cpu")
        per_hour, source = device_price(device, compute)
        seconds = float(metrics.get("duration_s") or training_s)
        training: float | None = seconds / 3600 * per_hour
        sources["training"] = f"measured {seconds:.1f} s on {device} × {source}"
        evaluation: float | None = evaluation_s / 3600 * per_hour
        sources["evaluation"] = f"measured {evaluation_s:.1f} s × {source}"
    else:
        tokens = metrics.get("trained_tokens")
        price = compute.hosted_training_usd_per_million_tokens
        training = None if not isinstance(tokens, int) else tokens / 1e6 * price
        sources["training"] = (f"billed {tokens} trained tokens × {price:g} USD/M, "
                               f"{compute.source('hosted_training_usd_per_million_tokens')}"
                               if training is not None else "not reported by the provider")
        evaluation = None
        sources["evaluation"] = "not priced: the provider bills the evaluation's tokens"
    return RunCosts(data, training, evaluation, sources)


@dataclass(frozen=True, slots=True)
class RelativeCost:
    """A student request's cost as a fraction of a teacher's, for the deferral curve's cost column."""

    fraction: float
    source: str


ASSUMED_STUDENT_COST = 0.05  # used only when either side has no price, and labelled so


def relative_student_cost(student_tokens: list[tuple[int, int]], teacher_costs: list[float | None],
                          student_price: Price | None, price_source: str) -> RelativeCost:
    """Measured where it can be: the student's own (prompt, completion) tokens on the validation split at its
    price, over the teacher's served cost of the same requests (the captured rows' `cost_usd`)."""
    known = [c for c in teacher_costs if c is not None]
    if student_price is None or not student_tokens or not known or sum(known) <= 0:
        missing = "the student has no price" if student_price is None else "the teacher's answers have no price"
        return RelativeCost(ASSUMED_STUDENT_COST, f"assumed {ASSUMED_STUDENT_COST:g} ({missing})")
    student_each = sum(student_price.cost(p, c) for p, c in student_tokens) / len(student_tokens)
    teacher_each = sum(known) / len(known)
    return RelativeCost(student_each / teacher_each,
                        f"measured: the student's validation tokens at {price_source}, over the teacher's served "
                        f"cost of {len(known)} of the same requests")


def hosted_list_price(trainer: str, base_model: str) -> Price | None:
    """What a student fine-tuned by hosted `trainer` from `base_model` costs per token at its provider, from
    litellm's bundled price map; None when the map does not say (then configure the price)."""
    prefix = _PROVIDER_PREFIX.get(trainer)
    if prefix is None:
        return None
    price = lookup_price(prefix + base_model)
    if price is not None or trainer == "openai":
        return price
    size = _billions(base_model)
    tier = next((key for bound, key in _SIZE_TIERS.get(trainer, []) if size is not None and size <= bound), None)
    tiered = lookup_price(tier) if tier else None
    if tiered is None:
        return None
    return dataclasses.replace(tiered, source=f"{tiered.source}: the size tier of {base_model}, whose serverless "
                                               "LoRA is billed at the base model's price")


def _billions(model: str) -> float | None:
    """The parameter count a model's name gives, in billions (`llama-v3p1-8b-instruct` → 8.0)."""
    match = _BILLIONS.search(model.rsplit("/", 1)[-1])
    return float(match.group(1).replace("p", ".")) if match else None
