"""Reference computations with plain transformers in the test process (no cache, no batching)."""

from __future__ import annotations

from typing import Any

import openai
import torch

from tests.model_server.conftest import TINY_NAME
from tests.servers import Server


def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def async_client(server: Server, timeout: float = 60) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=timeout)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]


@torch.inference_mode()
def greedy(model: Any, ids: list[int], max_tokens: int, eos: int | None = None) -> list[int]:
    """Greedy continuation (without the EOS token), one full forward pass per token."""
    out: list[int] = []
    seq = list(ids)
    for _ in range(max_tokens):
        logits = model(torch.tensor([seq])).logits[0, -1]
        token = int(torch.argmax(logits).item())
        if token == eos:  # the server reports no logprobs entry for the end-of-sequence token
            break
        out.append(token)
        seq.append(token)
    return out


@torch.inference_mode()
def logprobs_of(model: Any, ids: list[int], generated: list[int]) -> torch.Tensor:
    """log_softmax rows predicting each generated token: shape (len(generated), V)."""
    seq = torch.tensor([ids + generated])
    logits = model(seq).logits[0].float()
    return torch.log_softmax(logits[len(ids) - 1 : len(ids) - 1 + len(generated)], dim=-1)


def token_ids(choice: Any) -> list[int]:
    """Token ids from logprobs requested with `return_tokens_as_token_ids` (vLLM's extension)."""
    return [int(entry.token.removeprefix("token_id:")) for entry in choice.logprobs.content]


def chat_ids(server: Server, messages: list[dict[str, str]], max_tokens: int, **extra: Any) -> tuple[list[int], Any]:
    """Greedy completion from the server; returns (token ids, response)."""
    response = client(server).chat.completions.create(
        model=extra.pop("model", TINY_NAME), messages=messages, max_tokens=max_tokens, temperature=0,
        logprobs=True, extra_body={"return_tokens_as_token_ids": True, **extra.pop("extra_body", {})}, **extra,
    )
    return token_ids(response.choices[0]), response
