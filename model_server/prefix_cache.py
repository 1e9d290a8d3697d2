"""Prefix reuse: the KV cache of prompt starts seen before, so a prompt that begins like an earlier one (every
request of a task carries the same long system prompt) is prefilled from where they part.

Prompts are cut into blocks of `block` tokens; a stored prompt is registered under each of its block
boundaries by a chain hash (the hash of the previous boundary's hash and this block's tokens), so a lookup finds
the longest stored start it shares at a block boundary, checks the tokens themselves, and slices that many
positions out of the stored keys and values. Entries are per adapter (a LoRA on the attention changes the
cache) and dropped when their adapter is unloaded; the least recently used go first once the stored tensors
pass `budget_bytes`. Engine thread only.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

Layers = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values, each (heads, tokens, dim)


@dataclass(frozen=True, slots=True)
class Past:
    """A prompt's start whose KV cache is known: `length` tokens of it."""

    length: int
    layers: Layers


@dataclass(slots=True)
class _Entry:
    adapter: str
    tokens: list[int]
    layers: Layers
    nbytes: int
    keys: list[int] = field(default_factory=list)  # its block boundaries' chain hashes


class PrefixCache:
    def __init__(self, budget_bytes: int, block: int = 16) -> None:
        self.budget_bytes, self.block = budget_bytes, block
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # by id, least recently used first
        self._index: dict[tuple[str, int], tuple[int, int]] = {}  # (adapter, chain hash) → (entry id, length)
        self._next_id = 0
        self.nbytes = 0
        self.counters = {"prefix_hits": 0, "prefix_tokens_reused": 0, "prefix_entries": 0}

    @property
    def enabled(self) -> bool:
        return self.budget_bytes > 0

    def _chain(self, tokens: list[int], blocks: int) -> list[int]:
        hashes, current = [], 0
        for b in range(blocks):
            current = hash((current, tuple(tokens[b * self.block:(b + 1) * self.block])))
            hashes.append(current)
        return hashes

    def lookup(self, adapter: str, prompt: list[int]) -> Past | None:
        """The longest stored start of `prompt`, leaving at least one token to prefill (its logits are needed)."""
        if not self.enabled:
            return None
        blocks = (len(prompt) - 1) // self.block
        for key in reversed(self._chain(prompt, blocks)):
            found = self._index.get((adapter, key))
            if found is None:
                continue
            entry_id, length = found
            entry = self._entries[entry_id]
            if entry.tokens[:length] != prompt[:length]:  # a hash collision: not the same tokens
                continue
            self._entries.move_to_end(entry_id)
            self.counters["prefix_hits"] += 1
            self.counters["prefix_tokens_reused"] += length
            return Past(length, [(k[:, :length], v[:, :length]) for k, v in entry.layers])
        return None

    def store(self, adapter: str, prompt: list[int], layers: Layers, known: int = 0) -> None:
        """Keep the prompt's KV (`layers`: all of its positions) up to its last whole block, unless a stored
        start already covers that much (`known`: the length its lookup reused)."""
        length = len(prompt) // self.block * self.block
        if not self.enabled or length == 0 or length <= known:
            return
        kept = [(k[:, :length].contiguous(), v[:, :length].contiguous()) for k, v in layers]
        nbytes = sum(k.nbytes + v.nbytes for k, v in kept)
        if nbytes > self.budget_bytes:
            return
        entry_id, self._next_id = self._next_id, self._next_id + 1
        entry = _Entry(adapter, list(prompt[:length]), kept, nbytes)
        for b, key in enumerate(self._chain(prompt, length // self.block), start=1):
            if (adapter, key) not in self._index:
                self._index[(adapter, key)] = (entry_id, b * self.block)
                entry.keys.append(key)
        self._entries[entry_id] = entry
        self.nbytes += nbytes
        self.counters["prefix_entries"] = len(self._entries)
        while self.nbytes > self.budget_bytes:
            self._drop(next(iter(self._entries)))

    def drop_adapter(self, adapter: str) -> None:
        for entry_id in [i for i, e in self._entries.items() if e.adapter == adapter]:
            self._drop(entry_id)

    def _drop(self, entry_id: int) -> None:
        entry = self._entries.pop(entry_id)
        self.nbytes -= entry.nbytes
        for key in entry.keys:
            if self._index.get((entry.adapter, key), (None, 0))[0] == entry_id:
                del self._index[(entry.adapter, key)]
        self.counters["prefix_entries"] = len(self._entries)
