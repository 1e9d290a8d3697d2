"""Per-sequence sampling (greedy, temperature, top-p, seeded) and logprobs of the sampled tokens.

Logprobs are those of the model's own distribution: `log_softmax` of the raw logits, before any
temperature or top-p is applied (what OpenAI and vLLM report).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class LogprobEntry:
    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


class Sampler:
    """The random state of one sequence: a private generator, so a seed reproduces the same text."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.generator: torch.Generator | None = None
        if not params.greedy:
            seed = params.seed if params.seed is not None else secrets.randbits(63)
            self.generator = torch.Generator().manual_seed(seed % (2**63))

    def sample(self, logits: torch.Tensor) -> int:
        """One token from a 1-D logits row (fp32)."""
        params = self.params
        if self.generator is None:
            return int(torch.argmax(logits).item())
        probs = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            cumulative = torch.cumsum(sorted_probs, dim=-1)
            # drop a token when the tokens before it already reach top_p (the first one always stays)
            sorted_probs[(cumulative - sorted_probs) >= params.top_p] = 0.0
            choice = torch.multinomial(sorted_probs, 1, generator=self.generator)
            return int(order[choice].item())
        return int(torch.multinomial(probs, 1, generator=self.generator).item())


def sample_batch(logits: torch.Tensor, samplers: list[Sampler]) -> tuple[list[int], list[LogprobEntry | None]]:
    """Sample one token per row of `logits` (B, V); logprob entries for the rows that asked for them."""
    logits = logits.float()
    tokens: list[int] = [0] * len(samplers)
    greedy_rows = [i for i, s in enumerate(samplers) if s.generator is None]
    if greedy_rows:
        best = torch.argmax(logits[greedy_rows], dim=-1).tolist()
        for i, tok in zip(greedy_rows, best, strict=True):
            tokens[i] = int(tok)
    for i, sampler in enumerate(samplers):
        if sampler.generator is not None:
            tokens[i] = sampler.sample(logits[i])
    entries: list[LogprobEntry | None] = [None] * len(samplers)
    wanted = [i for i, s in enumerate(samplers) if s.params.logprobs]
    if wanted:
        logprobs = torch.log_softmax(logits[wanted], dim=-1)
        for row, i in enumerate(wanted):
            k = samplers[i].params.top_logprobs
            top: list[tuple[int, float]] = []
            if k > 0:
                values, indices = torch.topk(logprobs[row], k)
                top = list(zip(indices.tolist(), values.tolist(), strict=True))
            entries[i] = LogprobEntry(tokens[i], float(logprobs[row, tokens[i]].item()), top)
    return tokens, entries
