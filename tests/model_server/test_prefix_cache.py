"""Prefix reuse in the model server: the cache's bookkeeping, the prefill from a known start against a full
prefill on the tiny Llama (rows with and without a past, of different lengths, in one batch), and two real
servers — one with the cache, one without — giving the same answers to prompts that share a long system
prompt, the first one reusing the shared start."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from model_server.adapters import BASE, AdapterManager
from model_server.batch import BatchState
from model_server.prefix_cache import PrefixCache
from tests.model_server.conftest import TINY_NAME
from tests.servers import Server, start_model_server, stop


def layers(tokens: int, value: float = 1.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(torch.full((2, tokens, 4), value), torch.full((2, tokens, 4), -value)) for _ in range(3)]


def test_the_longest_stored_start_is_found_at_a_block_boundary() -> None:
    cache = PrefixCache(budget_bytes=10**6, block=4)
    first = list(range(100, 111))  # 11 tokens: 8 of them (two blocks) are kept
    cache.store(BASE, first, layers(11))
    assert cache.counters["prefix_entries"] == 1
    found = cache.lookup(BASE, [*first[:6], 999, 998, 997])  # shares 6 tokens: one whole block
    assert found is not None and found.length == 4 and found.layers[0][0].shape == (2, 4, 4)
    assert cache.lookup(BASE, [*first[:8], 5]).length == 8  # type: ignore[union-attr]
    assert cache.lookup(BASE, first[:8]).length == 4  # type: ignore[union-attr]  # one token left to prefill
    assert cache.lookup("tuned", first) is None  # another adapter's cache is another cache
    assert cache.lookup(BASE, [1, 2, 3, 4, 5]) is None
    assert cache.counters["prefix_hits"] == 3 and cache.counters["prefix_tokens_reused"] == 16
    cache.store(BASE, first, layers(11), known=8)  # nothing new beyond what was reused
    assert cache.counters["prefix_entries"] == 1
    cache.drop_adapter(BASE)
    assert cache.lookup(BASE, first) is None and cache.nbytes == 0


def test_the_least_recently_used_go_first_past_the_budget() -> None:
    one = sum(k.nbytes + v.nbytes for k, v in layers(4))
    cache = PrefixCache(budget_bytes=2 * one, block=4)
    a, b, c = ([t] * 5 for t in (1, 2, 3))
    cache.store(BASE, a, layers(5))
    cache.store(BASE, b, layers(5))
    assert cache.lookup(BASE, a) is not None  # a is now the most recent
    cache.store(BASE, c, layers(5))
    assert cache.lookup(BASE, b) is None and cache.lookup(BASE, a) is not None and cache.lookup(BASE, c) is not None
    assert cache.nbytes == 2 * one
    assert PrefixCache(budget_bytes=0).lookup(BASE, a) is None  # off


def test_a_prefill_from_known_starts_equals_the_full_one(tiny_loaded: Any) -> None:
    forward = AdapterManager(tiny_loaded.model).forward
    torch.manual_seed(0)
    shared = torch.randint(5, 1000, (40,)).tolist()
    prompts = [*(shared + torch.randint(5, 1000, (n,)).tolist() for n in (3, 11)),
               torch.randint(5, 1000, (9,)).tolist()]
    cache = PrefixCache(budget_bytes=10**8, block=16)
    with torch.inference_mode():
        full, full_logits = BatchState.prefill(forward, prompts, [BASE] * 3, 0)
        cache.store(BASE, prompts[0], full.row_layers(0))
        pasts = [cache.lookup(BASE, p) for p in prompts]
        assert [p.length if p else 0 for p in pasts] == [32, 32, 0]
        reused, logits = BatchState.prefill(forward, prompts, [BASE] * 3, 0, pasts)
        assert torch.allclose(logits, full_logits, atol=1e-4)
        assert torch.equal(reused.positions, full.positions)
        for _ in range(3):  # and the decode steps after it
            for state, out in ((full, full_logits), (reused, logits)):
                state.set_pending(out.argmax(-1).tolist())
            full_logits, logits = full.step(forward), reused.step(forward)
            assert torch.allclose(logits, full_logits, atol=1e-4)
    for row in range(3):  # a row's real tokens, whatever padding its mask holds
        assert next(k.shape[1] for k, _ in reused.row_layers(row)) == len(prompts[row]) + 3


@pytest.fixture(scope="module")
def uncached_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Server]:
    server = start_model_server(tmp_path_factory.mktemp("uncached"), "--model", str(tiny_model_dir),
                                "--served-model-name", TINY_NAME, "--prefix-cache-mb", "0")
    yield server
    stop(server.proc)


SYSTEM = " ".join(f"Rule {i}: answer politely and cite order numbers exactly as written." for i in range(12))


async def answers(server: Server) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=f"{server.url}/v1", timeout=120) as client:
        async def one(question: str) -> dict[str, Any]:
            response = await client.post("/chat/completions", json={
                "model": TINY_NAME, "max_tokens": 12, "temperature": 0, "logprobs": True,
                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]})
            assert response.status_code == 200, response.text
            return dict(response.json()["choices"][0])

        first = await one("Where is order 1?")  # alone: it fills the cache
        return [first, *await asyncio.gather(*(one(f"Where is order {i}?") for i in range(2, 6)))]


def engine(server: Server) -> dict[str, int]:
    stats: dict[str, int] = httpx.get(f"{server.url}/readyz", timeout=5).json()["engine"]
    return stats


def test_a_server_reuses_a_shared_system_prompt_and_answers_the_same(tiny_server: Server,
                                                                      uncached_server: Server) -> None:
    before = engine(tiny_server)
    cached, plain = asyncio.run(answers(tiny_server)), asyncio.run(answers(uncached_server))
    assert [c["message"]["content"] for c in cached] == [p["message"]["content"] for p in plain]
    for c, p in zip(cached, plain, strict=True):
        got = [t["logprob"] for t in c["logprobs"]["content"]]
        want = [t["logprob"] for t in p["logprobs"]["content"]]
        assert got == pytest.approx(want, abs=1e-3)
    after = engine(tiny_server)
    assert after["prefix_hits"] - before["prefix_hits"] >= 4  # every request after the first
    reused = after["prefix_tokens_reused"] - before["prefix_tokens_reused"]
    assert reused >= 4 * (len(SYSTEM.split()) // 2)  # most of the system prompt, each time
    assert engine(uncached_server)["prefix_hits"] == 0
