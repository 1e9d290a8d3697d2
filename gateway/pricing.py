"""Prices per token: config overrides first, then litellm's bundled price map (read offline as JSON,
without importing litellm). An unknown price is None, never zero."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Price:
    input_per_token: float
    output_per_token: float
    cached_input_per_token: float | None = None  # prompt tokens served from the provider's cache
    # where the price comes from ("configured", "list price …", "compute: …"), recorded on each priced row
    source: str = field(default="configured", compare=False)

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        cached = min(cached_tokens, prompt_tokens) if self.cached_input_per_token is not None else 0
        return ((prompt_tokens - cached) * self.input_per_token + cached * (self.cached_input_per_token or 0.0)
                + completion_tokens * self.output_per_token)

    @classmethod
    def per_compute_hour(cls, usd_per_hour: float, tokens_per_s: float) -> Price:
        """A self-hosted model's price: its machine's (or GPU's) hourly cost spread over the tokens it serves
        per second (input and output alike)."""
        per_token = usd_per_hour / 3600.0 / tokens_per_s
        return cls(per_token, per_token, source="compute")


def counterfactual_prompt_tokens(sent_prompt_tokens: int, full_chars: int, sent_chars: int) -> int:
    """The teacher's prompt tokens for a request the student answered, estimated from the student's.

    A prompt-distilled student is sent the messages without the task's system prompt; the teacher
    would have read all of them. The student's count scales by the characters the teacher would have
    read (the two tokenizers differ, so this is an estimate either way, and an unbiased one when the
    prompt was not shortened: then it is the student's count itself)."""
    if sent_chars <= 0 or full_chars <= sent_chars:
        return sent_prompt_tokens
    return round(sent_prompt_tokens * full_chars / sent_chars)


@cache
def bundled_price_map() -> dict[str, Any]:
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(next(iter(spec.submodule_search_locations))) / "model_prices_and_context_window_backup.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def lookup_price(model: str) -> Price | None:
    """Price of a litellm model string (`openai/gpt-4o-mini`, `gpt-4o-mini`, …) from the bundled map."""
    prices = bundled_price_map()
    candidates = [model]
    if "/" in model:
        candidates.append(model.split("/", 1)[1])
    for key in candidates:
        entry = prices.get(key)
        if isinstance(entry, dict) and "input_cost_per_token" in entry and "output_cost_per_token" in entry:
            cached = entry.get("cache_read_input_token_cost")
            return Price(float(entry["input_cost_per_token"]), float(entry["output_cost_per_token"]),
                         float(cached) if isinstance(cached, int | float) else None,
                         source=f"list price ({key} in litellm's bundled price map)")
    return None


def resolve_price(model: str, input_per_token: float | None, output_per_token: float | None,
                  cached_input_per_token: float | None = None) -> Price | None:
    if input_per_token is not None and output_per_token is not None:
        return Price(input_per_token, output_per_token, cached_input_per_token, source="configured")
    return lookup_price(model)
