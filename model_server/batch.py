"""The tensors of the running batch: a left-padded KV cache that rows can join and leave between steps.

Every row has a *pending* token: the last one sampled, not yet fed to the model. A decode step
feeds the pending tokens of all rows at once, each at its own position id, with a 2-D attention
mask that hides the left padding. New rows are prefilled in a batch of their own and then merged
in: the shorter of the two caches is padded on the left with masked zeros. Rows that finish are
dropped and leading columns that only hold padding are trimmed away.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import DynamicCache

from model_server.prefix_cache import Layers, Past

# forward(input_ids, attention_mask, position_ids, cache, adapter names) -> last-position logits (B, V)
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any, list[str]], torch.Tensor]


def _past_layer(layers: Layers | None, like: Layers, index: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One row's known keys and values of a layer, left-padded to `width` positions (all padding for a row
    without a past; `like` is another row's, for the shape)."""
    keys, values = (layers or like)[index]
    if layers is None:
        keys, values = keys[:, :0], values[:, :0]
    return _pad_left(keys, width - keys.shape[1], 1), _pad_left(values, width - values.shape[1], 1)


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    if width == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = width
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class BatchState:
    """Cache, mask, positions and pending tokens of the rows being decoded (engine thread only)."""

    def __init__(self, cache: Any, mask: torch.Tensor, positions: torch.Tensor, pending: torch.Tensor,
                 adapters: list[str]) -> None:
        self.cache = cache
        self.mask = mask  # (B, T) long: 1 for real tokens, 0 for left padding
        self.positions = positions  # (B,) position id of each pending token
        self.pending = pending  # (B,) the next token to feed
        self.adapters = adapters

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])

    @classmethod
    def prefill(cls, forward: Forward, prompts: list[list[int]], adapters: list[str], pad_id: int,
                pasts: list[Past | None] | None = None) -> tuple[BatchState, torch.Tensor]:
        """Run the prompts (left-padded) through the model; returns the state (pending tokens unset)
        and the logits for each row's first generated token.

        A row with a `Past` (`model_server.prefix_cache`) feeds only the tokens after it: the known keys and
        values go into the cache first, left-padded to the longest past, so a row's mask may hold padding
        between its past and the rest of its prompt; positions count real tokens only, as without a past."""
        known = [p.length if p is not None else 0 for p in (pasts or [None] * len(prompts))]
        rests = [prompt[k:] for prompt, k in zip(prompts, known, strict=True)]
        longest_past, width = max(known), max(len(r) for r in rests)
        ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rests], dtype=torch.long)
        rest_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rests], dtype=torch.long)
        past_mask = torch.tensor([[0] * (longest_past - k) + [1] * k for k in known], dtype=torch.long)
        position_ids = (torch.tensor(known)[:, None] + rest_mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        if longest_past:
            layers = [p.layers if p is not None else None for p in (pasts or [])]
            like = next(found for found in layers if found is not None)
            for index in range(len(like)):
                keys, values = zip(*(_past_layer(found, like, index, longest_past) for found in layers), strict=True)
                cache.update(torch.stack(keys), torch.stack(values), index)
        mask = torch.cat([past_mask, rest_mask], dim=1)
        logits = forward(ids, mask, position_ids, cache, adapters)
        positions = torch.tensor([len(p) for p in prompts], dtype=torch.long)
        pending = torch.zeros(len(prompts), dtype=torch.long)
        return cls(cache, mask, positions, pending, list(adapters)), logits

    def row_layers(self, row: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The keys and values of a row's real tokens, per layer, each (heads, tokens, dim): what the prefix
        cache keeps of a prompt just prefilled."""
        columns = torch.nonzero(self.mask[row]).flatten()
        return [(layer.keys[row][:, columns], layer.values[row][:, columns]) for layer in self.cache.layers]

    def step(self, forward: Forward) -> torch.Tensor:
        """Feed every row's pending token; returns the logits for the next token, (B, V)."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.size, 1))], dim=1)
        logits = forward(self.pending[:, None], self.mask, self.positions[:, None], self.cache, self.adapters)
        self.positions = self.positions + 1
        return logits

    def set_pending(self, tokens: list[int]) -> None:
        self.pending = torch.tensor(tokens, dtype=torch.long)

    def merge(self, other: BatchState) -> None:
        """Append the rows of `other` (a fresh prefill) after ours."""
        width = max(self.length, other.length)
        mine, theirs = width - self.length, width - other.length
        for layer, new_layer in zip(self.cache.layers, other.cache.layers, strict=True):
            layer.keys = torch.cat([_pad_left(layer.keys, mine, 2), _pad_left(new_layer.keys, theirs, 2)], dim=0)
            layer.values = torch.cat(
                [_pad_left(layer.values, mine, 2), _pad_left(new_layer.values, theirs, 2)], dim=0
            )
        self.mask = torch.cat([_pad_left(self.mask, mine, 1), _pad_left(other.mask, theirs, 1)], dim=0)
        self.positions = torch.cat([self.positions, other.positions])
        self.pending = torch.cat([self.pending, other.pending])
        self.adapters = self.adapters + other.adapters

    def keep(self, rows: list[int]) -> None:
        """Keep only these rows (in this order), then trim all-padding columns on the left."""
        if rows == list(range(self.size)):
            return
        index = torch.tensor(rows, dtype=torch.long)
        self.mask = self.mask[index]
        self.positions = self.positions[index]
        self.pending = self.pending[index]
        self.adapters = [self.adapters[i] for i in rows]
        used = torch.nonzero(self.mask.sum(dim=0) > 0)
        start = int(used[0].item()) if len(used) else 0
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, start:, :]
            layer.values = layer.values[index, :, start:, :]
        self.mask = self.mask[:, start:]
