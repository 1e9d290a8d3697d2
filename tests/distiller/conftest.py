"""Builders for captured exchanges, shaped as the gateway's capture writes them."""

from __future__ import annotations

from typing import Any

from gateway.store import Exchange, ExchangeStatus


def make_exchange(i: int, user: str | None = None, answer: str | None = None, *, system: str | None = None,
                  status: ExchangeStatus = "ok", finish_reason: str | None = "stop",
                  tool_calls: list[dict[str, Any]] | None = None, tools: list[dict[str, Any]] | None = None,
                  messages: list[dict[str, Any]] | None = None, task: str = "t") -> Exchange:
    """Exchange number `i`, created at 1000 + i. Without `answer` (and without `tool_calls`) the question and
    answer are distinct per `i`; with `tool_calls` and no `answer` the answer is tool calls only."""
    if messages is None:
        messages = [{"role": "user", "content": user if user is not None else f"question number {i}"}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
    if answer is None and tool_calls is None:
        answer = f"answer number {i}"
    message: dict[str, Any] = {"role": "assistant", "content": answer}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    request: dict[str, Any] = {"messages": messages}
    if tools is not None:
        request["tools"] = tools
    response = None if status == "failed" else {
        "id": f"chatcmpl-{i}", "model": "teacher",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
    return Exchange(request_id=f"req_{i:05d}", created_at=1000.0 + i, task=task, task_source="header",
                    route="teacher", model="m", upstream_model="openai/m", status=status,
                    http_status=200 if status != "failed" else 502, stream=False, request=request, response=response,
                    finish_reason=finish_reason if status != "failed" else None)
