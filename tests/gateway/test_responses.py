"""`POST /v1/responses` end to end: the official `openai` SDK (`client.responses`) against the gateway app in this
process (`tests.inprocess`), whose teacher is llm-katan over a real socket; conversation state on SQLite and, across
two gateway replicas, on PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from tests.gateway.test_cascade import ACCEPT_ANY, SYSTEM, TASK, admin, cascade_settings, register
from tests.gateway.test_upstream_faults import BrokenUpstream
from tests.inprocess import InProcessGateway, inprocess_gateway, settings_for
from tests.openai_upstream import ScriptedUpstream
from tests.pg import fresh_schema
from tests.servers import Server

KEY = "gk-responses"
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city", "strict": True,
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                          "additionalProperties": False}}


@pytest.fixture(scope="module")
def gateway(katan: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    """One gateway for the module (tests use their own task names), with a gateway key."""
    store = tmp_path_factory.mktemp("responses") / "store.db"
    with inprocess_gateway(settings_for(katan, store, gateway_keys=f"{KEY},gk-other")) as app:
        yield app


def sdk(gateway: InProcessGateway, key: str = KEY) -> openai.OpenAI:
    return gateway.openai(api_key=key)


def test_plain_response_with_instructions(gateway: InProcessGateway) -> None:
    raw = sdk(gateway).responses.with_raw_response.create(
        model="gpt-5-mini", instructions="You are terse.", input="ping", max_output_tokens=64,
        metadata={"task": "responses-plain", "app": "demo"}, safety_identifier="user-1")
    response = raw.parse()
    assert response.object == "response" and response.status == "completed" and response.error is None
    assert response.output_text.endswith("User: ping")
    assert "messages=2" in response.output_text  # the instructions went up as a system message
    [item] = response.output
    assert item.type == "message" and item.role == "assistant" and item.status == "completed"
    assert response.id == "resp_" + raw.headers["x-request-id"].removeprefix("req_")
    assert raw.headers["x-protege-route"] == "teacher" and raw.headers["x-protege-task"] == "responses-plain"
    assert response.usage is not None and response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.instructions == "You are terse." and response.metadata == {"task": "responses-plain", "app": "demo"}
    assert response.store is True and response.max_output_tokens == 64

    [row] = gateway.rows(task="responses-plain")
    assert row.request["messages"] == [{"role": "system", "content": "You are terse."},
                                       {"role": "user", "content": "ping"}]
    assert row.request["params"] == {"max_completion_tokens": 64} and row.user == "user-1"
    assert row.response is not None and row.response["choices"][0]["message"]["content"] == response.output_text


def test_the_task_fingerprint_is_the_chat_routes(gateway: InProcessGateway) -> None:
    via_responses = sdk(gateway).responses.with_raw_response.create(model="m", instructions="Be kind.", input="hi")
    via_chat = sdk(gateway).chat.completions.with_raw_response.create(model="m", messages=[
        {"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"}])
    assert via_responses.headers["x-protege-task"] == via_chat.headers["x-protege-task"]


def test_streamed_response_with_the_sdk_stream_helper(gateway: InProcessGateway) -> None:
    with sdk(gateway).responses.stream(model="m", input="stream me", extra_headers={"X-Protege-Task": "resp-stream"},
                                       ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"} and len(kinds) > 10
    assert final.status == "completed" and final.output_text.endswith("User: stream me")
    assert final.usage is not None and final.usage.output_tokens > 0

    [row] = gateway.rows(task="resp-stream")
    assert row.stream is True and row.status == "ok" and row.completion_tokens == final.usage.output_tokens
    # the streamed response was kept like any other
    assert sdk(gateway).responses.retrieve(final.id).output_text == final.output_text


def test_raw_stream_events_are_named_and_numbered(gateway: InProcessGateway) -> None:
    body = {"model": "m", "input": "hi", "stream": True}
    with gateway.client.stream("POST", "/v1/responses", json=body, headers={"authorization": f"Bearer {KEY}"},
                               ) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        frames = response.read().decode().strip().split("\n\n")
    events = []
    for frame in frames:
        name, data = frame.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == "event: " + event["type"]
        events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert len({e["response"]["id"] for e in events if "response" in e}) == 1
    assert "[DONE]" not in frames[-1] and events[-1]["type"] == "response.completed"


@pytest.mark.parametrize("stream", [False, True])
def test_function_call_then_its_output(gateway: InProcessGateway, stream: bool) -> None:
    client, task = sdk(gateway), f"resp-tools-{stream}"
    params: dict[str, Any] = {"model": "m", "tools": [WEATHER], "extra_headers": {"X-Protege-Task": task}}
    if stream:
        with client.responses.stream(input="Weather in Paris?", **params) as events:
            kinds = [e.type for e in events]
            first = events.get_final_response()
        assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    else:
        first = client.responses.create(input="Weather in Paris?", tool_choice="auto", **params)
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and set(json.loads(call.arguments)) == {"city"} and call.call_id

    # the SDK's own round trip: the previous output items as input, then the call's output
    follow_up = client.responses.create(input=[
        {"role": "user", "content": "Weather in Paris?"}, *[item.model_dump() for item in first.output],  # type: ignore[list-item]
        {"type": "function_call_output", "call_id": call.call_id, "output": "18C, sunny"}], **params)
    assert follow_up.status == "completed" and follow_up.output

    first_row, second_row = gateway.rows(task=task)
    assert first_row.request["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city", "parameters": WEATHER["parameters"],
        "strict": True}}]
    messages = second_row.request["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["id"] == call.call_id
    assert messages[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": call.arguments}
    assert messages[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "18C, sunny"}


class City(BaseModel):
    city: str


@pytest.fixture
def scripted() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream() as upstream:
        yield upstream


def test_json_schema_format_with_the_sdks_parse(scripted: ScriptedUpstream, tmp_path: Path) -> None:
    scripted.chat_content = '{"city": "Oslo"}'
    settings = settings_for(None, tmp_path / "s.db", teacher="openai/gpt-4o-mini",
                            teacher_api_base=f"{scripted.url}/v1", teacher_api_key="sk-x")
    with inprocess_gateway(settings) as gateway:
        response = gateway.openai().responses.parse(model="m", input="Extract the city: I live in Oslo.",
                                                    text_format=City, extra_headers={"X-Protege-Task": "json"})
        with gateway.openai().responses.stream(model="m", input="Again, streamed.", text_format=City) as stream:
            streamed = stream.get_final_response()
        [row, _] = gateway.rows()
    assert response.output_parsed == City(city="Oslo") and streamed.output_parsed == City(city="Oslo")
    assert response.text.format.type == "json_schema"  # type: ignore[union-attr]
    fmt = row.request["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "City"
    assert fmt["json_schema"]["schema"]["properties"] == {"city": {"title": "City", "type": "string"}}
    assert fmt["json_schema"]["strict"] is True


def test_previous_response_id_continues_the_conversation(gateway: InProcessGateway) -> None:
    client = sdk(gateway)
    first = client.responses.create(model="m", instructions="Answer in French.", input="Hello",
                                    extra_headers={"X-Protege-Task": "resp-chain"})
    second = client.responses.create(model="m", previous_response_id=first.id, input="And again",
                                     extra_headers={"X-Protege-Task": "resp-chain"})
    assert second.previous_response_id == first.id
    _one, two = gateway.rows(task="resp-chain")
    # the teacher saw the whole conversation; instructions are not inherited (as OpenAI documents)
    assert [m["role"] for m in two.request["messages"]] == ["user", "assistant", "user"]
    assert two.request["messages"][1]["content"] == first.output_text
    assert two.request["messages"][2] == {"role": "user", "content": "And again"}

    # retrieve, input items, delete
    assert client.responses.retrieve(first.id).output_text == first.output_text
    items = client.responses.input_items.list(second.id)
    [item] = items.data
    assert item.type == "message" and item.role == "user"  # type: ignore[union-attr]
    assert item.content[0].text == "And again"  # type: ignore[union-attr]
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.retrieve(first.id)
    assert caught.value.body["code"] == "response_not_found"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="m", previous_response_id=first.id, input="more")
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(first.id)


def test_another_keys_responses_are_unknown(gateway: InProcessGateway) -> None:
    mine = sdk(gateway).responses.create(model="m", input="secret")
    other = sdk(gateway, "gk-other")
    for call in (lambda: other.responses.retrieve(mine.id), lambda: other.responses.delete(mine.id),
                 lambda: other.responses.input_items.list(mine.id),
                 lambda: other.responses.create(model="m", input="x", previous_response_id=mine.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert sdk(gateway).responses.retrieve(mine.id).id == mine.id


def test_store_false_keeps_nothing_to_continue(gateway: InProcessGateway) -> None:
    response = sdk(gateway).responses.create(model="m", input="forget me", store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        sdk(gateway).responses.retrieve(response.id)


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "m"}, "input"),
    ({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"model": "m", "input": "x", "tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]},
     "tools[0].type"),
    ({"model": "m", "input": "x", "tools": [{"type": "function", "name": "f", "parameters": {"type": 3}}]},
     "tools[0].parameters"),
    ({"model": "m", "input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type"),
    ({"model": "m", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "input[0].content[0].type"),
    ({"model": "m", "input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
    ({"model": "m", "input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type"),
    ({"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "n", "schema": "s"}}},
     "text.format.schema"),
    ({"model": "m", "input": "x", "background": True}, "background"),
    ({"model": "m", "input": "x", "conversation": "conv_1"}, "conversation"),
    ({"model": "m", "input": "x", "include": ["everything"]}, "include[0]"),
    ({"model": "m", "input": "x", "temperature": 3}, "temperature"),
    ({"model": "m", "input": "x", "api_base": "http://evil"}, "api_base"),
    ({"model": "m", "input": "x", "frobnicate": 1}, "frobnicate"),
    ({"model": "m", "input": "x", "metadata": {"k": 1}}, "metadata.k"),
    ({"model": "m", "input": "x", "tool_choice": {"type": "file_search"}}, "tool_choice.type"),
])
def test_hostile_bodies_are_400s_naming_the_parameter(gateway: InProcessGateway, body: dict[str, Any],
                                                      param: str) -> None:
    response = gateway.client.post("/v1/responses", json=body, headers={"authorization": f"Bearer {KEY}"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error


def test_errors_before_the_first_byte_are_openai_http_errors(gateway: InProcessGateway) -> None:
    missing = gateway.client.post("/v1/responses", json={"model": "m", "input": "x"})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    deep: Any = "x"
    for _ in range(100):
        deep = [deep]
    nested = gateway.client.post("/v1/responses", json={"model": "m", "input": deep},
                                 headers={"authorization": f"Bearer {KEY}"})
    assert nested.status_code == 400 and nested.json()["error"]["code"] == "too_deep"
    unknown = gateway.client.get("/v1/responses/resp_nope/input_items", headers={"authorization": f"Bearer {KEY}"})
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found_error"


def test_an_upstream_failure_mid_stream_ends_with_response_failed(tmp_path: Path) -> None:
    upstream = BrokenUpstream("drop-mid-stream")
    try:
        settings = settings_for(None, tmp_path / "s.db", teacher="openai/gpt-4o-mini",
                                teacher_api_base=f"{upstream.url}/v1", teacher_api_key="sk-x")
        with inprocess_gateway(settings) as gateway, gateway.client.stream(
                "POST", "/v1/responses", json={"model": "m", "input": "hello", "stream": True}) as response:
            frames = response.read().decode().strip().split("\n\n")
            rows = gateway.rows()
    finally:
        upstream.close()
    events = [json.loads(f.split("\ndata: ")[1]) for f in frames]
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == "Hello"
    assert events[-1]["type"] == "response.failed" and "response.completed" not in [e["type"] for e in events]
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    assert failed["output"][0]["status"] == "incomplete" and failed["output"][0]["content"][0]["text"] == "Hello"
    [row] = rows
    assert row.status == "failed"


def test_previous_response_id_across_two_replicas_on_postgresql(katan: Server) -> None:
    with fresh_schema() as url:
        settings = settings_for(katan, url, gateway_keys=KEY)
        with inprocess_gateway(settings) as one, inprocess_gateway(settings) as two:
            first = sdk(one).responses.create(model="m", input="Hello from replica one")
            second = sdk(two).responses.create(model="m", previous_response_id=first.id, input="Hi from two")
            assert sdk(one).responses.retrieve(second.id).previous_response_id == first.id
            history = two.rows()[-1].request["messages"]
            assert next(m["content"] for m in history) == "Hello from replica one"
            sdk(two).responses.delete(first.id)
            with pytest.raises(openai.NotFoundError):
                sdk(one).responses.retrieve(first.id)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("threshold", [ACCEPT_ANY, -0.01])
def test_a_rolled_out_student_serves_responses_and_falls_back_when_unsure(
        katan: Server, scripted: ScriptedUpstream, tmp_path: Path, stream: bool, threshold: float) -> None:
    # the student server is scripted (a fixed answer, every token at log-probability -0.05): the Responses
    # route rides on the chat core's cascade, which tests/gateway/test_cascade.py drives with a real model
    scripted.chat_content = "Oslo"
    store = tmp_path / "store.db"
    register(store, threshold=threshold, distilled=True)  # trained without the system prompt (instructions)
    settings = cascade_settings(katan, scripted, store)  # type: ignore[arg-type]
    with inprocess_gateway(settings) as gateway:
        assert admin(gateway, "PUT", f"/tasks/{TASK}/rollout", {"percent": 100}).status_code == 200
        params: dict[str, Any] = {"model": "gpt-4o-mini", "instructions": SYSTEM, "input": "My order to Oslo is late.",
                                  "reasoning": {"effort": "low"}, "extra_headers": {"X-Protege-Task": TASK}}
        client = gateway.openai()
        if stream:
            with client.responses.with_streaming_response.create(stream=True, **params) as raw:
                headers = raw.headers
                events = [json.loads(line[6:]) for line in raw.iter_lines() if line.startswith("data: ")]
            assert events[-1]["type"] == "response.completed"
            text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
        else:
            raw = client.responses.with_raw_response.create(**params)
            headers, text = raw.headers, raw.parse().output_text
        rows = [r for r in gateway.rows() if r.route != "shadow"]
    student_request = json.loads(scripted.last("/v1/chat/completions").body)
    assert student_request.get("reasoning_effort") is None  # a teacher's hint, not the student's
    assert student_request["messages"] == [{"role": "user", "content": "My order to Oslo is late."}]
    if threshold == ACCEPT_ANY:
        assert headers["x-protege-route"] == "student" and headers["x-protege-student"] == "tiny@v1"
        assert text == "Oslo"
        assert [(r.route, r.stream) for r in rows] == [("student", stream)]
    else:  # -0.05 < -0.01: not sure enough, the teacher answers
        assert headers["x-protege-route"] == "fallback" and text.endswith("User: My order to Oslo is late.")
        assert [(r.route, r.stream) for r in rows] == [("fallback", stream)]
        assert rows[0].request["params"]["reasoning_effort"] == "low"


def test_a_store_that_cannot_keep_the_response_still_answers(katan: Server, tmp_path: Path) -> None:
    store = tmp_path / "s.db"
    with inprocess_gateway(settings_for(katan, store)) as gateway:
        with sqlite3.connect(store) as db:
            db.execute("DROP TABLE responses")  # broken behind the gateway's back
        response = gateway.openai().responses.create(model="m", input="still here?")
        assert response.output_text.endswith("User: still here?")  # paid for: the client gets it
        retrieve = gateway.client.get(f"/v1/responses/{response.id}")
        assert retrieve.status_code == 503 and retrieve.json()["error"]["type"] == "service_unavailable"
