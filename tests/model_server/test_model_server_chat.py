"""Chat completions against a real model-server process serving the tiny random Llama."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
import torch

from tests.model_server.conftest import TINY_NAME
from tests.model_server.reference import async_client, chat_ids, client, greedy, logprobs_of, prompt_ids, user
from tests.servers import Server

PROMPTS = [
    "Hello there!",
    "Write a poem about the sea.",
    "What is 2 + 2?",
    "Translate 'good morning' into French, please, and explain the grammar.",
    "hi",
    "List three colours.",
    "Tell me a long story about a dragon who learned to cook soup in a small village.",
    "Why is the sky blue?",
]


def test_non_streaming_completion_and_usage(tiny_server: Server, tiny_loaded: Any) -> None:
    messages = user("Hello there!")
    response = client(tiny_server).chat.completions.create(
        model=TINY_NAME, messages=messages, max_tokens=12, temperature=0,
    )
    choice = response.choices[0]
    assert response.object == "chat.completion"
    assert response.model == TINY_NAME
    assert choice.message.role == "assistant"
    assert choice.finish_reason in {"length", "stop"}
    assert response.usage is not None
    assert response.usage.prompt_tokens == len(prompt_ids(tiny_loaded.tokenizer, messages))
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    if choice.finish_reason == "length":
        assert response.usage.completion_tokens == 12
    # the same text as a plain transformers greedy loop
    ids = prompt_ids(tiny_loaded.tokenizer, messages)
    expected = greedy(tiny_loaded.model, ids, 12, eos=tiny_loaded.tokenizer.eos_token_id)
    assert choice.message.content == tiny_loaded.tokenizer.decode(expected, skip_special_tokens=True)


def test_max_completion_tokens_and_unknown_fields(tiny_server: Server) -> None:
    body = {"model": TINY_NAME, "messages": user("hi"), "max_completion_tokens": 3, "temperature": 0,
            "ignore_eos": True, "frobnicate": {"x": 1}, "response_format": {"type": "text"},
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}
    r = httpx.post(f"{tiny_server.url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["usage"]["completion_tokens"] == 3
    assert data["choices"][0]["finish_reason"] == "length"


def test_streaming_matches_non_streaming(tiny_server: Server) -> None:
    messages = user("Write a poem about the sea.")
    api = client(tiny_server)
    plain = api.chat.completions.create(model=TINY_NAME, messages=messages, max_tokens=40,
                                        temperature=0)
    chunks = list(api.chat.completions.create(
        model=TINY_NAME, messages=messages, max_tokens=40, temperature=0, stream=True,
        stream_options={"include_usage": True},
    ))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and plain.usage is not None
    assert last.usage.model_dump() == plain.usage.model_dump()


def test_continuous_usage_counts_the_tokens_so_far_on_every_chunk(tiny_server: Server) -> None:
    chunks = list(client(tiny_server).chat.completions.create(
        model=TINY_NAME, messages=user("Count to ten."), max_tokens=6, temperature=0, stream=True, logprobs=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},  # type: ignore[typeddict-unknown-key]
    ))
    assert all(c.usage is not None for c in chunks)  # vLLM's field: the gateway bills a stopped answer by it
    prompt = chunks[0].usage.prompt_tokens  # type: ignore[union-attr]
    seen = 0
    for c in chunks:
        if c.choices and c.choices[0].logprobs and c.choices[0].logprobs.content:
            seen += len(c.choices[0].logprobs.content)
        assert (c.usage.prompt_tokens, c.usage.completion_tokens) == (prompt, seen)  # type: ignore[union-attr]
    assert seen == 6


def test_streaming_wire_format(tiny_server: Server) -> None:
    body = {"model": TINY_NAME, "messages": user("hi"), "max_tokens": 5, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{tiny_server.url}/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    first = orjson.loads(events[0][6:])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "usage" not in first  # only with stream_options.include_usage


def test_logprobs_match_a_direct_forward_pass(tiny_server: Server, tiny_loaded: Any) -> None:
    messages = user("Why is the sky blue?")
    ids, response = chat_ids(tiny_server, messages, 10, top_logprobs=5)
    prompt = prompt_ids(tiny_loaded.tokenizer, messages)
    assert ids == greedy(tiny_loaded.model, prompt, 10, eos=tiny_loaded.tokenizer.eos_token_id)
    reference = logprobs_of(tiny_loaded.model, prompt, ids)
    content = response.choices[0].logprobs.content
    for row, (entry, token) in enumerate(zip(content, ids, strict=True)):
        assert abs(entry.logprob - reference[row, token].item()) < 1e-4
        top_values, top_ids = torch.topk(reference[row], 5)
        assert [int(t.token.removeprefix("token_id:")) for t in entry.top_logprobs] == top_ids.tolist()
        for got, want in zip(entry.top_logprobs, top_values.tolist(), strict=True):
            assert abs(got.logprob - want) < 1e-4


def test_logprob_tokens_and_bytes_spell_the_text(tiny_server: Server) -> None:
    api = client(tiny_server)
    kwargs: dict[str, Any] = {"model": TINY_NAME, "messages": user("Hello there!"), "max_tokens": 16,
                              "temperature": 0, "logprobs": True, "top_logprobs": 2}
    response = api.chat.completions.create(**kwargs)
    content = response.choices[0].logprobs.content
    assert bytes(b for entry in content for b in entry.bytes).decode() == response.choices[0].message.content
    assert all(len(entry.top_logprobs) == 2 for entry in content)
    streamed = [e for c in api.chat.completions.create(**kwargs, stream=True)
                if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.bytes) for e in streamed] == [(e.token, e.bytes) for e in content]
    # the second request reuses the first one's prompt start (prefix cache): the same numbers up to float noise
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content], abs=1e-4)


async def test_concurrent_requests_are_batched_and_match_one_at_a_time(tiny_server: Server) -> None:
    lengths = [24, 7, 31, 16, 40, 12, 28, 20]
    sequential = [chat_ids(tiny_server, user(p), n)[0] for p, n in zip(PROMPTS, lengths, strict=True)]
    before = httpx.get(f"{tiny_server.url}/readyz").json()["engine"]
    async with async_client(tiny_server) as api:
        responses = await asyncio.gather(*(
            api.chat.completions.create(model=TINY_NAME, messages=user(p), max_tokens=n,
                                        temperature=0, logprobs=True,
                                        extra_body={"return_tokens_as_token_ids": True})
            for p, n in zip(PROMPTS, lengths, strict=True)
        ))
    batched = [[int(e.token.removeprefix("token_id:")) for e in r.choices[0].logprobs.content] for r in responses]
    assert batched == sequential
    after = httpx.get(f"{tiny_server.url}/readyz").json()["engine"]
    assert after["peak_batch"] >= 4, (before, after)
    assert after["running"] == 0


def test_stop_strings(tiny_server: Server) -> None:
    api = client(tiny_server)
    kwargs: dict[str, Any] = {"model": TINY_NAME, "messages": user("List three colours."), "max_tokens": 30,
                              "temperature": 0}
    full = api.chat.completions.create(**kwargs).choices[0].message.content
    assert full and len(full) > 20
    stop = full[12:16]
    expected = full[: full.index(stop)]
    cut = api.chat.completions.create(**kwargs, stop=[stop, "never-appears-xyz"])
    assert cut.choices[0].message.content == expected
    assert cut.choices[0].finish_reason == "stop"
    streamed = list(api.chat.completions.create(**kwargs, stop=stop, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected
    assert [c.choices[0].finish_reason for c in streamed if c.choices][-1] == "stop"


async def test_seed_reproduces_sampling(tiny_server: Server) -> None:
    kwargs: dict[str, Any] = {"model": TINY_NAME, "messages": user("Tell me something."), "max_tokens": 20,
                              "temperature": 1.0, "top_p": 0.95}
    async with async_client(tiny_server) as api:
        first = await api.chat.completions.create(**kwargs, seed=1234)
        # same seed again, this time sharing the batch with other requests
        second, _, other = await asyncio.gather(
            api.chat.completions.create(**kwargs, seed=1234),
            api.chat.completions.create(**{**kwargs, "messages": user("Why is the sky blue?")}, seed=7),
            api.chat.completions.create(**kwargs, seed=99),
        )
    assert first.choices[0].message.content == second.choices[0].message.content
    assert other.choices[0].message.content != first.choices[0].message.content


def test_n_choices(tiny_server: Server) -> None:
    response = client(tiny_server).chat.completions.create(
        model=TINY_NAME, messages=user("hi"), max_tokens=8, temperature=1.0, seed=3, n=3,
        extra_body={"ignore_eos": True},
    )
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert len({c.message.content for c in response.choices}) > 1
    assert all(c.finish_reason == "length" for c in response.choices)
    assert response.usage is not None
    assert response.usage.completion_tokens == 24


def test_n_choices_streamed(tiny_server: Server) -> None:
    kwargs: dict[str, Any] = {"model": TINY_NAME, "messages": user("hi"), "max_tokens": 6, "temperature": 0.0,
                              "n": 2, "extra_body": {"ignore_eos": True}}
    api = client(tiny_server)
    plain = api.chat.completions.create(**kwargs)
    texts = ["", ""]
    finishes: list[str | None] = [None, None]
    for c in api.chat.completions.create(**kwargs, stream=True):
        for choice in c.choices:
            texts[choice.index] += choice.delta.content or ""
            finishes[choice.index] = choice.finish_reason or finishes[choice.index]
    assert texts == [c.message.content for c in plain.choices]
    assert texts[0] == texts[1]  # greedy
    assert finishes == ["length", "length"]


def test_throughput_counts_the_tokens_it_served_over_its_busy_time(tiny_server: Server) -> None:
    before = httpx.get(f"{tiny_server.url}/throughput").json()
    response = client(tiny_server).chat.completions.create(model=TINY_NAME, messages=user("Count to five."),
                                                           max_tokens=12, temperature=0)
    after = httpx.get(f"{tiny_server.url}/throughput").json()
    assert response.usage is not None
    assert after["device"] == "cpu"
    assert after["prompt_tokens"] - before["prompt_tokens"] == response.usage.prompt_tokens
    assert after["generated_tokens"] - before["generated_tokens"] == response.usage.completion_tokens
    assert after["busy_s"] > before["busy_s"]
    served = after["prompt_tokens"] + after["generated_tokens"]
    assert after["tokens_per_s"] == pytest.approx(served / after["busy_s"], rel=0.01)
