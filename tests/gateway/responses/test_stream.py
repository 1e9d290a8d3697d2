"""Chat chunks → Responses stream events, pure."""

from __future__ import annotations

from typing import Any

from gateway.responses.stream import ResponsesStreamTranslator
from gateway.responses.translate import parse_request


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choices = [] if delta is None and finish is None else [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    return {"id": "c", "model": "teacher-1", "choices": choices, **extra}


def run(chunks: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], ResponsesStreamTranslator]:
    translator = ResponsesStreamTranslator(parse_request({"model": "m", "input": "x"}), "resp_1", created_at=1.0)
    events = [e for c in chunks for e in translator.feed(c)] + translator.end()
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events, translator


def test_text_then_a_tool_call_each_open_and_close_their_item() -> None:
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a"'}}
    events, translator = run([
        chunk({"role": "assistant", "content": "Hi"}), chunk({"content": " there"}),
        chunk({"tool_calls": [call]}), chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
        chunk(finish="tool_calls"), chunk(usage={"prompt_tokens": 3, "completion_tokens": 2})])
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["usage"] is None
    message_id = events[2]["item"]["id"]
    assert {e["item_id"] for e in events[3:8]} == {message_id} and events[6]["text"] == "Hi there"
    assert events[9]["item"]["call_id"] == "call_1" and events[9]["item"]["arguments"] == ""
    assert events[12]["arguments"] == '{"a": 1}' and events[12]["output_index"] == 1
    final = events[-1]["response"]
    assert final is translator.response and final["status"] == "completed"
    assert [item["status"] for item in final["output"]] == ["completed", "completed"]
    assert final["usage"]["input_tokens"] == 3 and final["usage"]["total_tokens"] == 5
    assert final["model"] == "teacher-1"


def test_the_token_limit_ends_with_response_incomplete() -> None:
    events, translator = run([chunk({"content": "Half"}), chunk(finish="length")])
    assert events[-1]["type"] == "response.incomplete"
    assert translator.response is not None and translator.response["incomplete_details"] == {
        "reason": "max_output_tokens"}


def test_an_error_mid_stream_fails_the_response_and_nothing_follows() -> None:
    translator = ResponsesStreamTranslator(parse_request({"model": "m", "input": "x"}), "resp_1")
    events = translator.feed(chunk({"content": "Hel"})) + translator.feed(
        {"error": {"message": "teacher stream ended before [DONE]", "type": "upstream_error"}})
    assert events[-1]["type"] == "response.failed"
    failed = events[-1]["response"]
    assert failed["error"] == {"code": "server_error", "message": "teacher stream ended before [DONE]"}
    assert failed["output"][0]["status"] == "incomplete"
    assert translator.feed(chunk({"content": "lo"})) == [] and translator.end() == []
    assert translator.response is None  # nothing to keep


def test_an_empty_stream_still_opens_and_completes() -> None:
    events, _ = run([])
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "response.completed"]
