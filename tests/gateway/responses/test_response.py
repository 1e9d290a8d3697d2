"""A chat completion back into a Responses API `response`, pure."""

from __future__ import annotations

from typing import Any

from gateway.responses.response import assistant_message, from_chat
from gateway.responses.translate import parse_request


def completion(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {"id": "c", "model": "teacher-1", "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 6},
                      "completion_tokens_details": {"reasoning_tokens": 1}}}


def test_a_completion_becomes_a_response_and_its_assistant_turn() -> None:
    request = parse_request({"model": "m", "input": "x", "instructions": "sys", "metadata": {"a": "b"}})
    message = {"role": "assistant", "content": "Calling.", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    response = from_chat(completion(message), request, resp_id="resp_1", created_at=100.0)
    assert (response["id"], response["status"], response["model"], response["created_at"]) == (
        "resp_1", "completed", "teacher-1", 100)
    text, call = response["output"]
    assert text["type"] == "message" and text["content"][0] == {"type": "output_text", "text": "Calling.",
                                                                 "annotations": [], "logprobs": []}
    assert (call["type"], call["call_id"], call["name"], call["arguments"]) == ("function_call", "call_1", "f", "{}")
    assert response["usage"] == {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 6},
                                 "output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 1},
                                 "total_tokens": 14}
    assert response["instructions"] == "sys" and response["metadata"] == {"a": "b"} and response["store"] is True
    assert assistant_message(response["output"]) == {"role": "assistant", "content": "Calling.",
                                                     "tool_calls": message["tool_calls"]}


def test_truncated_and_refused_answers() -> None:
    request = parse_request({"model": "m", "input": "x"})
    cut = from_chat(completion({"role": "assistant", "content": "Half"}, "length"), request, resp_id="r")
    assert cut["status"] == "incomplete" and cut["incomplete_details"] == {"reason": "max_output_tokens"}
    refused = from_chat(completion({"role": "assistant", "content": None, "refusal": "No."}), request, resp_id="r")
    assert refused["output"][0]["content"] == [{"type": "refusal", "refusal": "No."}]
