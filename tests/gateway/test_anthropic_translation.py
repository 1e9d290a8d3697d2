"""`gateway.anthropic.translate`: Messages API ↔ OpenAI chat translation, pure (no server)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from gateway.anthropic.errors import error_type_from_openai
from gateway.anthropic.stream import StreamTranslator, anthropic_events
from gateway.anthropic.translate import from_openai, message_id, parse_request, to_openai
from gateway.errors import BadRequestError, UpstreamError
from gateway.providers.openai_compat import completion_as_chunks

WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
OPENAI_WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                                   "parameters": WEATHER["input_schema"]}}


def translate(**body: Any) -> dict[str, Any]:
    return to_openai(parse_request({"model": "claude-x", "max_tokens": 10, **body}))


# --- request ---------------------------------------------------------------------------------------

def test_a_plain_request_becomes_the_body_an_openai_client_would_send() -> None:
    body = translate(system="Be terse.", messages=[{"role": "user", "content": "hi"}], temperature=0.2, top_p=0.9,
                     top_k=5, stop_sequences=["\n\n"], metadata={"user_id": "u-7"})
    assert body == {"model": "claude-x", "max_tokens": 10, "temperature": 0.2, "top_p": 0.9, "stop": ["\n\n"],
                    "user": "u-7", "messages": [{"role": "system", "content": "Be terse."},
                                                {"role": "user", "content": "hi"}]}  # top_k: no OpenAI twin


def test_system_blocks_and_single_text_blocks_collapse_to_strings() -> None:
    body = translate(system=[{"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}}],
                     messages=[{"role": "user", "content": [{"type": "text", "text": "q"}]}])
    assert body["messages"] == [{"role": "system", "content": "A"}, {"role": "user", "content": "q"}]
    several = translate(system=[{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
                        messages=[{"role": "user", "content": "q"}])
    assert several["messages"][0] == {"role": "system", "content": [{"type": "text", "text": "A"},
                                                                     {"type": "text", "text": "B"}]}
    assert translate(system="", messages=[{"role": "user", "content": "q"}])["messages"] == [
        {"role": "user", "content": "q"}]


def test_images_become_image_url_parts() -> None:
    body = translate(messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}]}])
    assert body["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}]


def test_tool_use_and_tool_result_become_tool_calls_and_tool_messages() -> None:
    body = translate(tools=[WEATHER], tool_choice={"type": "auto"}, messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Lyon"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "20C"}],
             "is_error": False},
            {"type": "text", "text": "And tomorrow?"}]}])
    assert body["tools"] == [OPENAI_WEATHER] and body["tool_choice"] == "auto"
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Lyon"}'}},
        ]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "20C"},
        {"role": "user", "content": "And tomorrow?"}]


def test_an_assistant_turn_of_tool_calls_only_has_null_content() -> None:
    body = translate(tools=[WEATHER], messages=[
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]}])
    assert body["messages"][1]["content"] is None
    assert body["messages"][2] == {"role": "tool", "tool_call_id": "t", "content": ""}


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, {"tool_choice": "auto"}),
    ({"type": "any"}, {"tool_choice": "required"}),
    ({"type": "none"}, {"tool_choice": "none"}),
    ({"type": "tool", "name": "get_weather"},
     {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    ({"type": "auto", "disable_parallel_tool_use": True}, {"tool_choice": "auto", "parallel_tool_calls": False}),
])
def test_tool_choice(choice: dict[str, Any], expected: dict[str, Any]) -> None:
    body = translate(tools=[WEATHER], tool_choice=choice, messages=[{"role": "user", "content": "x"}])
    assert {k: body[k] for k in ("tool_choice", "parallel_tool_calls") if k in body} == expected


def test_tool_choice_auto_without_tools_is_left_out() -> None:
    assert "tool_choice" not in translate(tool_choice={"type": "auto"}, messages=[{"role": "user", "content": "x"}])


def test_system_messages_inside_the_conversation_are_kept() -> None:
    body = translate(messages=[{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                               {"role": "user", "content": "q"}])
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"}]


def test_a_json_schema_output_format_becomes_response_format() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    body = translate(output_config={"format": {"type": "json_schema", "schema": schema}, "effort": "low"},
                     messages=[{"role": "user", "content": "q"}])
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}


def test_hints_for_anthropics_own_service_are_accepted_and_dropped() -> None:
    body = translate(messages=[{"role": "user", "content": "q"}], cache_control={"type": "ephemeral"},
                     service_tier="auto", speed="fast", inference_geo="us", thinking={"type": "adaptive"},
                     diagnostics={"previous_message_id": None}, tools=[{**WEATHER, "strict": True,
                                                                        "cache_control": {"type": "ephemeral"}}])
    assert set(body) == {"model", "max_tokens", "messages", "tools"}
    assert body["tools"][0]["function"]["strict"] is True and "cache_control" not in body["tools"][0]["function"]


def test_stream_asks_for_usage_and_metadata_task_is_kept_for_the_gateway() -> None:
    body = translate(stream=True, metadata={"task": "tickets", "user_id": "u"},
                     messages=[{"role": "user", "content": "x"}])
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["metadata"] == {"task": "tickets"} and body["user"] == "u"


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ({"max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
    ({"max_tokens": 5}, "messages"),
    ({"max_tokens": 5, "messages": []}, "messages"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "temperature": 1.5}, "temperature"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "container": "c"}, "container"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
      "thinking": {"type": "enabled", "budget_tokens": 2048}}, "thinking"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
      "output_config": {"format": {"type": "json_schema", "schema": {"type": 5}}}}, "output_config.format.schema"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "metadata": {"user_id": 3}},
     "metadata.user_id"),
    ({"max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": []}]}, "messages.0.content"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
     "messages.0.content.0.type"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
     "messages.0.content.0.text"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}, "messages.0.content.0.source.type"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": [
            {"type": "image", "source": {"type": "url", "url": "u"}}]}]}]}, "messages.0.content.0.content.0"),
    ({"max_tokens": 5, "messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "name": "f", "input": {}}]}]}, "messages.0.content.0.id"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "system": 5}, "system"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tools": [
        {"type": "web_search_20250305", "name": "web_search"}]}, "tools.0.type"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tools": [
        {"name": "f", "input_schema": {"type": "nonsense"}}]}, "tools.0.input_schema"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "any"}},
     "tool_choice"),
    ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tools": [WEATHER],
      "tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
])
def test_bad_requests_name_the_offending_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        to_openai(parse_request({"model": "m", **body}))
    assert caught.value.param == param and caught.value.message.startswith(param + ": ")


# --- response ------------------------------------------------------------------------------------

def completion(message: dict[str, Any], finish: str = "stop", **choice: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-x",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish, **choice}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}}


def test_a_text_completion_becomes_a_message() -> None:
    assert from_openai(completion({"content": "Hello"}), msg_id="msg_1", model="claude-x") == {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "gpt-x",
        "content": [{"type": "text", "text": "Hello"}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 5}}


def test_tool_calls_become_tool_use_blocks() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    message = from_openai(completion({"content": None, "tool_calls": [call]}, "tool_calls"), msg_id="m", model="c")
    assert message["content"] == [{"type": "tool_use", "id": "call_1", "name": "get_weather",
                                   "input": {"city": "Oslo"}}]
    assert message["stop_reason"] == "tool_use"


def test_tool_arguments_that_are_not_an_object_are_an_upstream_error() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1"}}
    with pytest.raises(UpstreamError):
        from_openai(completion({"tool_calls": [call]}, "tool_calls"), msg_id="m", model="c")


@pytest.mark.parametrize(("finish", "extra", "expected"), [
    ("stop", {}, ("end_turn", None)),
    ("length", {}, ("max_tokens", None)),
    ("content_filter", {}, ("refusal", None)),
    ("stop", {"stop_reason": "END"}, ("stop_sequence", "END")),  # vLLM names the stop string it hit
    ("stop", {"stop_reason": 2}, ("end_turn", None)),  # …or the EOS token id
])
def test_stop_reasons(finish: str, extra: dict[str, Any], expected: tuple[str, str | None]) -> None:
    message = from_openai(completion({"content": "x"}, finish, **extra), msg_id="m", model="c",
                          stop_sequences=["END"])
    assert (message["stop_reason"], message["stop_sequence"]) == expected


def test_cached_prompt_tokens_are_reported_as_cache_reads() -> None:
    answer = completion({"content": "x"})
    answer["usage"]["prompt_tokens_details"] = {"cached_tokens": 8}
    assert from_openai(answer, msg_id="m", model="c")["usage"] == {
        "input_tokens": 4, "output_tokens": 5, "cache_read_input_tokens": 8}


def test_message_ids_follow_request_ids() -> None:
    assert message_id("req_abc123") == "msg_abc123"


# --- stream ----------------------------------------------------------------------------------------

def parse_events(raw: bytes) -> list[dict[str, Any]]:
    """Anthropic SSE frames → payloads, checking that each `event:` line names its payload's type."""
    events = []
    for frame in raw.decode().split("\n\n"):
        if not frame:
            continue
        name, data = frame.split("\n")
        payload = json.loads(data.removeprefix("data: "))
        assert name == f"event: {payload['type']}"
        events.append(payload)
    return events


def accumulate(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The message a client builds from the events (what the SDK's stream helper does)."""
    message: dict[str, Any] = {}
    partial: dict[int, str] = {}
    for e in events:
        if e["type"] == "message_start":
            message = {**e["message"], "content": []}
        elif e["type"] == "content_block_start":
            assert e["index"] == len(message["content"])
            message["content"].append(dict(e["content_block"]))
        elif e["type"] == "content_block_delta":
            block = message["content"][e["index"]]
            if e["delta"]["type"] == "text_delta":
                block["text"] += e["delta"]["text"]
            else:
                partial[e["index"]] = partial.get(e["index"], "") + e["delta"]["partial_json"]
        elif e["type"] == "content_block_stop" and e["index"] in partial:
            message["content"][e["index"]]["input"] = json.loads(partial[e["index"]])
        elif e["type"] == "message_delta":
            message.update(e["delta"])
            message["usage"] = {**message["usage"], **e["usage"]}
    return message


def translate_stream(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events for the chat core's chunks, as `anthropic_events` yields them."""
    translator = StreamTranslator("msg_1", "claude-x", ["END"])
    out = [event for c in chunks for event in translator.feed(c)]
    return parse_events(b"".join(out + translator.end()))


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-x",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


USAGE = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-x", "choices": [],
         "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}


def test_a_text_stream_becomes_anthropics_event_sequence() -> None:
    events = translate_stream([chunk({"role": "assistant"}), chunk({"content": "Hel"}), chunk({"content": "lo"}),
                               chunk({}, "stop"), USAGE])
    assert [e["type"] for e in events] == ["message_start", "content_block_start", "content_block_delta",
                                           "content_block_delta", "content_block_stop", "message_delta",
                                           "message_stop"]
    assert events[0]["message"]["id"] == "msg_1" and events[0]["message"]["model"] == "gpt-x"
    assert events[5] == {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                         "usage": {"input_tokens": 7, "output_tokens": 3}}
    assert accumulate(events)["content"] == [{"type": "text", "text": "Hello"}]


def test_text_then_streamed_tool_calls_become_consecutive_blocks() -> None:
    events = translate_stream([
        chunk({"content": "Checking."}),
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city"'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ': "Oslo"}'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                               "function": {"name": "get_time", "arguments": "{}"}}]}),
        chunk({}, "tool_calls"), USAGE])
    starts = [e for e in events if e["type"] == "content_block_start"]
    stops = [e["index"] for e in events if e["type"] == "content_block_stop"]
    assert [s["index"] for s in starts] == [0, 1, 2] and stops == [0, 1, 2]
    message = accumulate(events)
    assert message["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "Oslo"}},
        {"type": "tool_use", "id": "call_b", "name": "get_time", "input": {}}]
    assert message["stop_reason"] == "tool_use"


@pytest.mark.parametrize("answer", [
    completion({"content": "Hello there"}),
    completion({"content": "cut"}, "length"),
    completion({"content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        "tool_calls"),
])
def test_a_replayed_completion_streams_to_the_same_message(answer: dict[str, Any]) -> None:
    # the student's answer reaches a streaming client replayed as chunks (ChatService._replay)
    message = accumulate(translate_stream(completion_as_chunks(answer)))
    assert message == from_openai(answer, msg_id="msg_1", model="claude-x")


def test_an_error_mid_stream_becomes_an_error_event() -> None:
    error = {"error": {"message": "teacher stream failed", "type": "upstream_error", "param": None, "code": None}}
    events = translate_stream([chunk({"content": "Hel"}), error, chunk({"content": "lo"})])  # nothing after it
    assert [e["type"] for e in events] == ["message_start", "content_block_start", "content_block_delta", "error"]
    assert events[-1] == {"type": "error", "error": {"type": "api_error", "message": "teacher stream failed"}}


def test_a_stream_that_ends_without_a_finish_reason_still_closes_the_message() -> None:
    events = translate_stream([chunk({"content": "Hel"})])
    assert [e["type"] for e in events][-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert events[-2]["delta"]["stop_reason"] == "end_turn"


def test_closing_the_anthropic_stream_closes_the_service_stream() -> None:
    closed = []

    async def frames() -> AsyncIterator[dict[str, Any]]:
        try:
            yield chunk({"content": "a"})
            yield chunk({"content": "b"})
        finally:
            closed.append(True)

    async def run() -> list[bytes]:
        events = anthropic_events(frames(), StreamTranslator("m", "c"))
        first = [await anext(events)]
        await events.aclose()  # type: ignore[attr-defined]
        return first

    first = asyncio.run(run())
    assert orjson.loads(first[0].split(b"data: ")[1])["type"] == "message_start" and closed == [True]


# --- errors ----------------------------------------------------------------------------------------

def test_openai_error_types_map_to_anthropic_ones() -> None:
    assert error_type_from_openai("rate_limit_error") == "rate_limit_error"
    assert error_type_from_openai("service_unavailable") == "overloaded_error"
    assert error_type_from_openai("timeout") == "api_error"
    assert error_type_from_openai("something_new") == "api_error"


def test_an_assistant_turn_that_was_all_thinking_is_an_empty_text() -> None:
    body = translate(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": [
        {"type": "redacted_thinking", "data": "…"}]}, {"role": "user", "content": "and?"}])
    assert body["messages"][1] == {"role": "assistant", "content": ""}
