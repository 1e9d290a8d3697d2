"""The Responses API ↔ chat translation, pure: what the chat core is sent, what the client gets back."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import BadRequestError
from gateway.responses.translate import input_items, input_messages, parse_request, to_chat


def chat(body: dict[str, Any], history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return to_chat(parse_request({"model": "m", **body}), history or [])[0]


def test_a_whole_agent_turn_becomes_one_assistant_message_before_its_tool_results() -> None:
    items = [
        {"role": "developer", "content": "Use tools."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in "},
                                                        {"type": "input_text", "text": "Paris?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_a", "name": "weather", "arguments": '{"c":1}'},
        {"type": "function_call", "id": "fc_2", "call_id": "call_b", "name": "time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_a", "output": "18C"},
        {"type": "function_call_output", "call_id": "call_b", "output": [{"type": "input_text", "text": "noon"}]},
        {"type": "function_call", "call_id": "call_c", "name": "weather", "arguments": "{}"},
    ]
    assert input_messages(items) == [
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": '{"c":1}'}},
            {"id": "call_b", "type": "function", "function": {"name": "time", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_a", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_b", "content": "noon"},
        # after the results, a new call starts a new assistant turn
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_c", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
    ]


def test_images_and_options_map_onto_chat_fields() -> None:
    body = chat({"input": [{"role": "user", "content": [
        {"type": "input_text", "text": "What is it?"},
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"}]}],
        "instructions": "Be brief.", "max_output_tokens": 32, "temperature": 0.2, "top_p": 0.9,
        "user": "u", "safety_identifier": "s", "parallel_tool_calls": False, "reasoning": {"effort": "low"},
        "text": {"format": {"type": "json_object"}, "verbosity": "low"}, "metadata": {"task": "t", "k": "v"},
        "stream": True, "top_logprobs": 2, "truncation": "auto", "include": ["reasoning.encrypted_content"]})
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is it?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA",
                                                                         "detail": "low"}}]}]
    assert {k: v for k, v in body.items() if k != "messages"} == {
        "model": "m", "max_completion_tokens": 32, "temperature": 0.2, "top_p": 0.9, "user": "u",
        "safety_identifier": "s", "logprobs": True, "top_logprobs": 2,
        "response_format": {"type": "json_object"}, "verbosity": "low", "reasoning_effort": "low",
        "metadata": {"task": "t"}, "stream": True, "stream_options": {"include_usage": True}}


def test_tools_and_tool_choice() -> None:
    tool = {"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}, "strict": True}
    body = chat({"input": "x", "tools": [tool], "tool_choice": {"type": "function", "name": "f"}})
    assert body["tools"] == [{"type": "function", "function": {"name": "f", "description": "d",
                                                               "parameters": {"type": "object"}, "strict": True}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert chat({"input": "x", "tools": [tool], "parallel_tool_calls": False})["parallel_tool_calls"] is False
    assert chat({"input": "x", "tools": [tool], "tool_choice": "required"})["tool_choice"] == "required"
    # chat refuses both without tools
    assert not {"tool_choice", "parallel_tool_calls"} & set(chat({"input": "x", "tool_choice": "auto",
                                                                  "parallel_tool_calls": True}))
    with pytest.raises(BadRequestError, match="needs tools"):
        chat({"input": "x", "tool_choice": "required"})


def test_history_comes_between_the_instructions_and_the_new_input() -> None:
    history = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"}]
    body = chat({"input": "three", "instructions": "sys", "previous_response_id": "resp_1"}, history)
    assert [m["content"] for m in body["messages"]] == ["sys", "one", "two", "three"]
    # a follow-up may send nothing new (e.g. only to continue), but a first request must
    assert chat({"previous_response_id": "resp_1"}, history)["messages"] == history
    with pytest.raises(BadRequestError) as caught:
        parse_request({"model": "m", "input": []})
    assert caught.value.param == "input"


@pytest.mark.parametrize(("body", "param"), [
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"input": [{"role": "assistant", "content": [{"type": "input_image", "image_url": "u"}]}]}, "input[0].content"),
    ({"input": [{"role": "user", "content": "x", "name": "n"}]}, "input[0].name"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {"a": 1}}]},
     "input[0].arguments"),
    ({"input": [{"type": "function_call_output", "call_id": "c",
                 "output": [{"type": "input_image", "image_url": "u"}]}]}, "input[0].output[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input[0].content[0].image_url"),
    ({"input": "x", "tools": [{"type": "function", "name": "f", "extra": 1}]}, "tools[0].extra"),
    ({"input": "x", "tools": ["f"]}, "tools[0]"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
    ({"input": "x", "text": {"verbosity": "loud"}}, "text.verbosity"),
    ({"input": "x", "text": {"colour": "red"}}, "text.colour"),
    ({"input": "x", "prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"input": "x", "metadata": {str(i): "v" for i in range(17)}}, "metadata"),
    ({"input": "x", "reasoning": {"effort": 3}}, "reasoning.effort"),
    ({"input": 7}, "input"),
])
def test_what_cannot_be_served_is_refused_by_name(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        chat(body)
    assert caught.value.param == param


def test_input_items_are_listed_with_ids_and_parts() -> None:
    [user] = input_items("hello")
    assert user["id"].startswith("msg_") and user["content"] == [{"type": "input_text", "text": "hello"}]
    assert user["role"] == "user" and user["status"] == "completed"
    output = input_items([{"type": "function_call_output", "call_id": "c", "output": "x", "id": "fco_mine"}])
    assert output == [{"type": "function_call_output", "call_id": "c", "output": "x", "id": "fco_mine"}]
