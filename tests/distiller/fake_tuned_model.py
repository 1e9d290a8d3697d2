"""How the fake fine-tuning services' trained models answer chat completions: the training answer of a request
they were trained on, else their training file's most common answer (with logprobs when asked) — the best a
model trained on that file could do, so the distiller can evaluate it through the service under its real name.
A base model that was not tuned answers every request with `BASE_ANSWER`."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

BASE_ANSWER = "I am not sure what you need."


def trained_answers(training_file: bytes) -> tuple[dict[str, str], str]:
    """(last user message → answer, the most common answer) of a chat fine-tuning JSONL file."""
    answers: dict[str, str] = {}
    counts: dict[str, int] = {}
    for line in training_file.decode().splitlines():
        messages = json.loads(line)["messages"]
        user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        answer = next(m["content"] for m in reversed(messages) if m["role"] == "assistant")
        answers[str(user)] = str(answer)
        counts[str(answer)] = counts.get(str(answer), 0) + 1
    return answers, max(counts, key=lambda a: counts[a])


def chat_completion(body: dict[str, Any], answers: dict[str, str], common: str) -> dict[str, Any]:
    messages = body.get("messages") or []
    user = next((m.get("content") for m in reversed(messages) if m.get("role") == "user"), "")
    content = answers.get(str(user), common)
    choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
    if body.get("logprobs"):
        choice["logprobs"] = {"content": [{"token": word, "logprob": -0.01, "bytes": list(word.encode()),
                                           "top_logprobs": []} for word in content.split(" ")]}
    tokens = len(content.split())
    return {"id": f"chatcmpl-{secrets.token_hex(8)}", "object": "chat.completion", "created": int(time.time()),
            "model": body["model"], "choices": [choice],
            "usage": {"prompt_tokens": 20, "completion_tokens": tokens, "total_tokens": 20 + tokens}}
