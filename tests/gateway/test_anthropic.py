"""`POST /v1/messages` end to end: the official `anthropic` SDK against the gateway app in this process
(`tests.inprocess`) whose teacher is llm-katan (OpenAI API, or its Anthropic API through litellm), and a
real student (the embedded model server)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import redirect_stderr
from io import StringIO
from pathlib import Path
from typing import Any

import anthropic
import pytest

from gateway.store import Exchange
from gateway.tasks import fingerprint
from tests.gateway.test_cascade import SYSTEM, TASK, admin, cascade_settings, register
from tests.gateway.test_providers import without_time
from tests.gateway.test_upstream_faults import BrokenUpstream
from tests.inprocess import InProcessGateway, inprocess_gateway, settings_for
from tests.servers import Server

WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
KEY = "gk-anthropic"
MODEL = "claude-sonnet-5"  # any name: one teacher serves them all (and the SDK warns on deprecated ones)


@pytest.fixture(scope="module")
def gateway_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("anthropic") / "store.db"


@pytest.fixture(scope="module")
def gateway(katan: Server, gateway_store: Path) -> Iterator[InProcessGateway]:
    """One gateway for the module (tests use their own task names), with a gateway key."""
    with inprocess_gateway(settings_for(katan, gateway_store, gateway_keys=KEY)) as app:
        yield app


def client_for(gateway: InProcessGateway, api_key: str = KEY) -> anthropic.Anthropic:
    # the anthropic SDK adds /v1/messages itself: the base URL is the gateway's root
    return anthropic.Anthropic(base_url=gateway.url, api_key=api_key, http_client=gateway.client, max_retries=0)


def rows_for(gateway: InProcessGateway, task: str) -> list[Exchange]:
    """The task's captured exchanges, oldest first, once the capture writer has written all it was given."""
    return gateway.rows(task=task)


def export(store: Path, task: str, out: Path, fmt: str = "openai") -> list[dict[str, Any]]:
    """`protege export` (the CLI's main, in this process) of one task."""
    from protege.cli import main

    with redirect_stderr(StringIO()):
        assert main(["export", "--task", task, "--out", str(out), "--format", fmt, "--store",
                     f"sqlite:///{store}"]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_plain_message_with_a_system_prompt(gateway: InProcessGateway) -> None:
    raw = client_for(gateway).messages.with_raw_response.create(
        model=MODEL, max_tokens=64, system="You are terse.",
        messages=[{"role": "user", "content": "ping"}], metadata={"user_id": "user-1"})
    message = raw.parse()
    assert message.type == "message" and message.role == "assistant" and message.stop_reason == "end_turn"
    [block] = message.content
    assert block.type == "text" and block.text.endswith("User: ping")
    assert "messages=2 max_tokens=64" in block.text  # the system prompt went up as a system message
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    assert raw.headers["x-protege-route"] == "teacher"
    assert message.id == "msg_" + raw.headers["x-request-id"].removeprefix("req_")
    assert message._request_id == raw.headers["x-request-id"]

    # the task fingerprint is the OpenAI route's for the same model and system prompt
    task = raw.headers["x-protege-task"]
    same = gateway.openai(api_key=KEY).chat.completions.with_raw_response.create(model=MODEL, messages=[
            {"role": "system", "content": "You are terse."}, {"role": "user", "content": "ping"}])
    assert same.headers["x-protege-task"] == task

    row, _ = rows_for(gateway, task)
    assert row.request_id == raw.headers["x-request-id"] and row.status == "ok" and row.stream is False
    assert row.user == "user-1"
    assert row.request == {
        "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "ping"}],
        "params": {"max_tokens": 64}}
    assert row.response is not None and row.response["choices"][0]["message"]["content"] == block.text


def test_streamed_message_with_the_sdk_stream_helper(gateway: InProcessGateway) -> None:
    with client_for(gateway).messages.stream(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "stream me"}],
            extra_headers={"X-Protege-Task": "anthropic-stream"}) as stream:
        kinds = [event.type for event in stream if event.type not in ("text", "input_json")]  # SDK helper events
        final = stream.get_final_message()
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert set(kinds[2:-3]) == {"content_block_delta"} and len(kinds) > 6
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    [block] = final.content
    assert block.type == "text" and block.text.endswith("User: stream me")
    assert final.stop_reason == "end_turn" and final.usage.input_tokens > 0 and final.usage.output_tokens > 0

    [row] = rows_for(gateway, "anthropic-stream")
    assert row.stream is True and row.status == "ok" and row.completion_tokens == final.usage.output_tokens
    assert row.response is not None and row.response["choices"][0]["message"]["content"] == block.text


def test_raw_stream_frames_name_their_events(gateway: InProcessGateway) -> None:
    body = {"model": "m", "max_tokens": 20, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with gateway.client.stream("POST", "/v1/messages", json=body, headers={"x-api-key": KEY}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-protege-route"] == "teacher" and response.headers["x-request-id"]
        frames = response.read().decode().strip().split("\n\n")
    for frame in frames:
        name, data = frame.split("\n")
        assert name == "event: " + json.loads(data.removeprefix("data: "))["type"]
    assert "[DONE]" not in frames[-1] and frames[-1].startswith("event: message_stop")


@pytest.mark.parametrize("stream", [False, True])
def test_tool_use_then_tool_result(gateway: InProcessGateway, stream: bool) -> None:
    client, task = client_for(gateway), f"anthropic-tools-{stream}"
    question = {"role": "user", "content": "Weather in Paris?"}
    params: dict[str, Any] = {"model": MODEL, "max_tokens": 64, "tools": [WEATHER],
                              "extra_headers": {"X-Protege-Task": task}}
    if stream:
        with client.messages.stream(messages=[question], **params) as events:
            reply = events.get_final_message()
    else:
        reply = client.messages.create(messages=[question], tool_choice={"type": "auto"}, **params)
    assert reply.stop_reason == "tool_use"
    [call] = [b for b in reply.content if b.type == "tool_use"]
    assert call.name == "get_weather" and isinstance(call.input, dict) and set(call.input) == {"city"}

    follow_up = client.messages.create(messages=[
        question, {"role": "assistant", "content": reply.content},  # type: ignore[typeddict-item]
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18C, sunny"}]},
    ], **params)
    assert follow_up.content

    first, second = rows_for(gateway, task)
    assert first.request["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city", "parameters": WEATHER["input_schema"]}}]
    assert first.response is not None
    captured_call = first.response["choices"][0]["message"]["tool_calls"][0]
    assert captured_call["id"] == call.id and json.loads(captured_call["function"]["arguments"]) == call.input
    messages = second.request["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["content"] is None and messages[1]["tool_calls"][0]["id"] == call.id
    assert json.loads(messages[1]["tool_calls"][0]["function"]["arguments"]) == call.input
    assert messages[2] == {"role": "tool", "tool_call_id": call.id, "content": "18C, sunny"}


def test_both_apis_land_in_one_task_export_in_the_same_form(gateway: InProcessGateway, gateway_store: Path,
                                                            tmp_path: Path) -> None:
    task, system, question = "anthropic-export", "Extract the city.", "My order to Oslo is late."
    # this SDK version types no sampling parameters; the API still takes them
    client_for(gateway).messages.create(model="m", max_tokens=50, system=system, extra_body={"temperature": 0},
                                        messages=[{"role": "user", "content": question}],
                                        extra_headers={"X-Protege-Task": task})
    gateway.openai(api_key=KEY).chat.completions.create(
        model="m", max_tokens=50, temperature=0, extra_headers={"X-Protege-Task": task},
        messages=[{"role": "system", "content": system}, {"role": "user", "content": question}])
    assert len(rows_for(gateway, task)) == 2

    via_anthropic, via_openai = export(gateway_store, task, tmp_path / "openai.jsonl")
    assert via_anthropic["messages"][:-1] == via_openai["messages"][:-1] == [
        {"role": "system", "content": system}, {"role": "user", "content": question}]
    assert without_time(via_anthropic["messages"][-1]["content"]) == without_time(via_openai["messages"][-1]["content"])
    raw_anthropic, raw_openai = export(gateway_store, task, tmp_path / "raw.jsonl", "jsonl-raw")
    assert raw_anthropic["request"] == raw_openai["request"]  # messages and sampling params alike


def test_missing_max_tokens_is_an_anthropic_invalid_request_error(gateway: InProcessGateway) -> None:
    response = gateway.client.post("/v1/messages", headers={"x-api-key": KEY},
                          json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 400
    assert response.json() == {"type": "error", "error": {"type": "invalid_request_error",
                                                          "message": "max_tokens: Field required"}}
    with pytest.raises(anthropic.BadRequestError) as caught:
        client_for(gateway).messages.create(model="m", max_tokens=10, messages=[
            {"role": "user", "content": [{"type": "document", "source": {"type": "text", "data": "x"}}]}])
    assert caught.value.status_code == 400 and "messages.0.content.0.type" in caught.value.message


def test_bad_or_missing_key_is_an_anthropic_authentication_error(gateway: InProcessGateway) -> None:
    with pytest.raises(anthropic.AuthenticationError) as caught:
        client_for(gateway, api_key="wrong").messages.create(
            model="m", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 401
    assert caught.value.body == {"type": "error", "error": {"type": "authentication_error",
                                                            "message": "invalid API key"}}
    missing = gateway.client.post("/v1/messages", json={"model": "m", "max_tokens": 5, "messages": []})
    assert missing.status_code == 401 and "x-api-key" in missing.json()["error"]["message"]
    bearer = gateway.client.post("/v1/messages", headers={"authorization": f"Bearer {KEY}"},
                                 json={"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
    assert bearer.status_code == 200


def test_other_routes_keep_openais_error_shape(gateway: InProcessGateway) -> None:
    unknown = gateway.client.post("/v1/messages/batches", headers={"x-api-key": KEY}, json={})
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "not_found_error"
    assert unknown.json()["type"] == "error"
    openai_route = gateway.client.post("/v1/chat/completions", json={})
    assert openai_route.status_code == 401 and set(openai_route.json()) == {"error"}


def test_an_upstream_stream_cut_mid_way_ends_with_an_error_event(tmp_path: Path) -> None:
    upstream = BrokenUpstream("drop-mid-stream")
    try:
        settings = settings_for(None, tmp_path / "s.db", teacher="openai/gpt-4o-mini",
                                teacher_api_base=f"{upstream.url}/v1", teacher_api_key="sk-x")
        with inprocess_gateway(settings) as gateway:
            with pytest.raises(anthropic.APIStatusError) as caught, client_for(gateway).messages.stream(
                    model="m", max_tokens=10, messages=[{"role": "user", "content": "hello"}]) as stream:
                for _ in stream.text_stream:
                    pass
            # the SDK raises on the error event: never a silent truncation
            assert caught.value.body["error"]["type"] == "api_error"  # type: ignore[index]
            with gateway.client.stream("POST", "/v1/messages", json={
                    "model": "m", "max_tokens": 10, "stream": True,
                    "messages": [{"role": "user", "content": "hello"}]}) as response:
                frames = response.read().decode().strip().split("\n\n")
    finally:
        upstream.close()
    events = [json.loads(f.split("\ndata: ")[1]) for f in frames]
    assert "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta") == "Hello"
    assert events[-1]["type"] == "error" and events[-1]["error"]["type"] == "api_error"


def test_anthropic_teacher_through_litellm(katan: Server, tmp_path: Path) -> None:
    # teachers: [{model: anthropic/claude-sonnet-4-5, api_base: <katan>, api_key: …, client: auto}]
    teacher = {"model": "anthropic/claude-sonnet-4-5", "api_base": katan.url,
               "api_key": "sk-upstream-secret-123456", "client": "auto"}
    with inprocess_gateway(settings_for(None, tmp_path / "auto.db", config={"teachers": [teacher]})) as gateway:
        client = client_for(gateway, "x")
        messages = [{"role": "user", "content": "bonjour"}]
        reply = client.messages.create(model=MODEL, max_tokens=40, system="Answer in French.",
                                       messages=messages)  # type: ignore[arg-type]
        [block] = reply.content
        assert block.type == "text" and "bonjour" in block.text and reply.usage.output_tokens > 0
        with client.messages.stream(model=MODEL, max_tokens=40, system="Answer in French.",
                                    messages=messages) as stream:  # type: ignore[arg-type]
            streamed = stream.get_final_message()
        assert streamed.content[0].type == "text" and "bonjour" in streamed.content[0].text
        rows = rows_for(gateway, fingerprint(MODEL, "Answer in French."))
    assert [r.status for r in rows] == ["ok", "ok"]
    assert {r.upstream_model for r in rows} == {"anthropic/claude-sonnet-4-5"}


# --- cascade -------------------------------------------------------------------------------------

@pytest.fixture
def student_server(tiny_student: Server) -> Server:
    return tiny_student  # the session's model server with the tiny Llama, served as "tiny"


@pytest.mark.parametrize("stream", [False, True])
def test_a_rolled_out_student_serves_messages(katan: Server, student_server: Server, tmp_path: Path,
                                              stream: bool) -> None:
    store = tmp_path / "store.db"
    register(store)
    # cascade: {timeout_s: 5, refresh_s: 0.2}, retry: {attempts: 0}; no teacher key given
    settings = cascade_settings(katan, student_server, store, teacher_api_key=None)
    with inprocess_gateway(settings) as gateway:
        assert admin(gateway, "PUT", f"/tasks/{TASK}/rollout", {"percent": 100}).status_code == 200

        # a random tiny model never says EOS: a common stop string ends its greedy answer
        params: dict[str, Any] = {"model": "gpt-4o-mini", "max_tokens": 40, "extra_body": {"temperature": 0},
                                  "stop_sequences": ["e"], "system": SYSTEM,
                                  "messages": [{"role": "user", "content": "My order to Oslo is late."}],
                                  "metadata": {"user_id": "u1"}, "extra_headers": {"X-Protege-Task": TASK}}
        client = client_for(gateway, "x")
        if stream:
            with client.messages.with_streaming_response.create(stream=True, **params) as response:
                headers = response.headers
                frames = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
            kinds = [f["type"] for f in frames]
            assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
            text = "".join(f["delta"].get("text", "") for f in frames if f["type"] == "content_block_delta")
            assert frames[-2]["usage"]["output_tokens"] > 0
        else:
            raw = client.messages.with_raw_response.create(**params)
            headers, message = raw.headers, raw.parse()
            assert message.model == "tiny" and message.stop_reason == "end_turn"
            text = "".join(b.text for b in message.content if b.type == "text")
        assert headers["x-protege-route"] == "student" and headers["x-protege-student"] == "tiny@v1"
        assert "[echo]" not in text  # the student's words, not the echo teacher's
        # the default shadow rate (5 %) may add a teacher row in the background: the student's is the one
        [row] = [r for r in rows_for(gateway, TASK) if r.route != "shadow"]
    assert (row.route, row.status, row.stream) == ("student", "ok", stream)
    assert row.request["params"] == {"max_tokens": 40, "temperature": 0, "stop": ["e"]}


def test_count_tokens_estimates_the_input(gateway: InProcessGateway) -> None:
    client, captured_before = client_for(gateway), len(gateway.rows())
    question = [{"role": "user", "content": "How many tokens is this question?"}]
    bare = client.messages.count_tokens(model=MODEL, messages=question)  # type: ignore[arg-type]
    longer = client.messages.count_tokens(model=MODEL, messages=question, system="You are terse. " * 20,  # type: ignore[arg-type]
                                          tools=[WEATHER])  # type: ignore[list-item]
    assert 5 < bare.input_tokens < longer.input_tokens
    bad = gateway.client.post("/v1/messages/count_tokens", json={"model": "m", "messages": []},
                              headers={"x-api-key": KEY})
    assert bad.status_code == 400 and bad.json()["type"] == "error"
    assert len(gateway.rows()) == captured_before  # a count goes to no upstream and is not captured
