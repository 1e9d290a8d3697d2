"""A chat completion as a Responses API `response` object, and its output as the assistant turn a follow-up's
history holds. Pure; the request side is `gateway.responses.translate`."""

from __future__ import annotations

import time
import uuid
from typing import Any

from gateway.responses.translate import ResponsesRequest


def response_id(request_id: str) -> str:
    """The response id for a gateway request id (`req_<hex>` → `resp_<hex>`): one key in logs."""
    return "resp_" + request_id.removeprefix("req_")


def item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def usage(chat_usage: dict[str, Any] | None) -> dict[str, Any]:
    chat_usage = chat_usage or {}
    prompt, completion = int(chat_usage.get("prompt_tokens") or 0), int(chat_usage.get("completion_tokens") or 0)
    cached = int((chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    reasoning = int((chat_usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + completion}


def incomplete_reason(finish_reason: Any) -> str | None:
    return {"length": "max_output_tokens", "content_filter": "content_filter"}.get(str(finish_reason))


def message_item(text: str, *, item: str, status: str = "completed", refusal: bool = False) -> dict[str, Any]:
    part = ({"type": "refusal", "refusal": text} if refusal
            else {"type": "output_text", "text": text, "annotations": [], "logprobs": []})
    return {"type": "message", "id": item, "status": status, "role": "assistant", "content": [part]}


def function_call_item(call: dict[str, Any], *, item: str, status: str = "completed") -> dict[str, Any]:
    function = call.get("function") or {}
    return {"type": "function_call", "id": item, "call_id": call.get("id") or item_id("call"),
            "name": function.get("name") or "", "arguments": function.get("arguments") or "", "status": status}


def output_items(completion: dict[str, Any]) -> list[dict[str, Any]]:
    """The output items of a chat completion's first choice: its text (or refusal), then its tool calls."""
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    items: list[dict[str, Any]] = []
    if isinstance(message.get("refusal"), str) and message["refusal"]:
        items.append(message_item(message["refusal"], item=item_id("msg"), refusal=True))
    elif isinstance(message.get("content"), str) and message["content"]:
        items.append(message_item(message["content"], item=item_id("msg")))
    items += [function_call_item(call, item=item_id("fc")) for call in message.get("tool_calls") or []]
    return items


def response_object(request: ResponsesRequest, *, resp_id: str, created_at: float, model: str,
                    output: list[dict[str, Any]], status: str, chat_usage: dict[str, Any] | None,
                    incomplete: str | None = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
    """A `response` object, echoing the request's settings as OpenAI does."""
    text: dict[str, Any] = {"format": (request.text or {}).get("format") or {"type": "text"}}
    if (request.text or {}).get("verbosity") is not None:
        text["verbosity"] = request.text["verbosity"]  # type: ignore[index]
    reasoning = request.reasoning or {}
    return {
        "id": resp_id, "object": "response", "created_at": int(created_at), "status": status,
        "background": False, "error": error,
        "incomplete_details": None if incomplete is None else {"reason": incomplete},
        "instructions": request.instructions, "max_output_tokens": request.max_output_tokens,
        "max_tool_calls": request.max_tool_calls, "model": model, "output": output,
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "previous_response_id": request.previous_response_id,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "safety_identifier": request.safety_identifier, "service_tier": request.service_tier or "default",
        "store": request.stored, "temperature": request.temperature, "text": text,
        "tool_choice": request.tool_choice if request.tool_choice is not None else "auto",
        "tools": request.tools or [], "top_logprobs": request.top_logprobs or 0, "top_p": request.top_p,
        "truncation": request.truncation or "disabled",
        "usage": None if chat_usage is None and status == "in_progress" else usage(chat_usage),
        "user": request.user, "metadata": request.metadata or {},
    }


def from_chat(completion: dict[str, Any], request: ResponsesRequest, *, resp_id: str,
              created_at: float | None = None) -> dict[str, Any]:
    """A chat.completion as a completed (or incomplete) `response`."""
    choice = (completion.get("choices") or [{}])[0]
    incomplete = incomplete_reason(choice.get("finish_reason"))
    return response_object(request, resp_id=resp_id, created_at=created_at or time.time(),
                           model=str(completion.get("model") or request.model), output=output_items(completion),
                           status="incomplete" if incomplete else "completed", chat_usage=completion.get("usage"),
                           incomplete=incomplete)


def assistant_message(output: list[dict[str, Any]]) -> dict[str, Any]:
    """A response's output as the chat assistant message a follow-up's history holds."""
    text = "".join(part.get("text") or part.get("refusal") or "" for item in output if item["type"] == "message"
                   for part in item["content"])
    calls = [{"id": item["call_id"], "type": "function", "function": {"name": item["name"],
                                                                       "arguments": item["arguments"]}}
             for item in output if item["type"] == "function_call"]
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message
