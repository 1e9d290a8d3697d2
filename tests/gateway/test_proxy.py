"""The gateway app (in this process) in front of a real upstream (llm-katan), with the openai SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.store import Exchange
from tests.inprocess import InProcessGateway, inprocess_gateway, poll, settings_for
from tests.servers import Server

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


ADMIN = "proxy-admin-token"


@pytest.fixture
def gateway(katan: Server, store_url: str) -> Iterator[InProcessGateway]:
    """On each backend: what a request leaves in the store is the same on SQLite and PostgreSQL."""
    with inprocess_gateway(settings_for(katan, store_url, admin_token=ADMIN)) as gateway:
        yield gateway


def client_for(gateway: InProcessGateway) -> openai.OpenAI:
    return gateway.openai(api_key="sk-client")


def katan_client(katan: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{katan.url}/v1", api_key="sk-direct", max_retries=0)


def wait_captured(gateway: InProcessGateway, count: int, timeout: float = 5) -> list[Exchange]:
    """The captured exchanges once at least `count` are written (read through the Store API after a flush)."""
    def written() -> list[Exchange]:
        found = gateway.rows()
        return found if len(found) >= count else []

    found: list[Exchange] = poll(written, timeout=timeout, what=f"{count} captured exchanges")
    return found


def test_non_streaming_passes_upstream_answer_and_captures(gateway: InProcessGateway, katan: Server,
                                                            tmp_path: Path) -> None:
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "ping"}]
    raw = client_for(gateway).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
    reply = raw.parse()
    direct = katan_client(katan).chat.completions.create(model="gpt-4o-mini", messages=messages)

    assert reply.choices[0].message.content.split("time=")[0] == direct.choices[0].message.content.split("time=")[0]
    assert reply.choices[0].message.content.endswith("User: ping")
    assert reply.usage is not None and reply.usage.total_tokens == direct.usage.total_tokens  # type: ignore[union-attr]
    assert raw.headers["x-protege-route"] == "teacher"
    assert raw.headers["x-protege-task"].startswith("t_") and len(raw.headers["x-protege-task"]) == 14
    request_id = raw.headers["x-request-id"]

    [row] = wait_captured(gateway, 1)
    assert row.request_id == request_id
    assert row.status == "ok" and row.route == "teacher" and row.stream is False
    assert row.task == raw.headers["x-protege-task"] and row.task_source == "fingerprint"
    assert row.request["messages"] == messages and row.response is not None
    assert row.response["choices"][0]["message"]["content"] == reply.choices[0].message.content
    assert row.prompt_tokens == reply.usage.prompt_tokens
    assert row.cost_usd == pytest.approx(  # gpt-4o-mini from litellm's bundled price map
        reply.usage.prompt_tokens * 0.15e-6 + reply.usage.completion_tokens * 0.6e-6)


def test_streaming_relays_chunks_and_captures_assembled_answer(gateway: InProcessGateway, tmp_path: Path) -> None:
    stream = client_for(gateway).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "stream me"}], stream=True,
        stream_options={"include_usage": True}, extra_headers={"X-Protege-Task": "streamer"})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.endswith("User: stream me")
    assert any(c.usage is not None for c in chunks)
    assert chunks[-1].choices == [] or chunks[-1].choices[0].finish_reason == "stop"

    [row] = wait_captured(gateway, 1)
    assert row.task == "streamer" and row.task_source == "header" and row.stream is True
    assert row.status == "ok" and row.finish_reason == "stop" and row.response is not None
    assert row.response["choices"][0]["message"]["content"] == text


def test_stream_without_include_usage_still_records_usage(gateway: InProcessGateway, tmp_path: Path) -> None:
    with gateway.client.stream("POST", "/v1/chat/completions", json={
            "model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(e["choices"] for e in events)  # no usage-only chunk the client did not ask for
    [row] = wait_captured(gateway, 1)
    assert row.completion_tokens is not None and row.completion_tokens > 0


@pytest.mark.parametrize("stream", [False, True])
def test_tools_round_trip(gateway: InProcessGateway, katan: Server, tmp_path: Path, stream: bool) -> None:
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    client = client_for(gateway)
    if stream:
        calls: dict[int, dict[str, str]] = {}
        for chunk in client.chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL],
                                                    tool_choice="auto", stream=True):
            for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
                call["name"] += (delta.function.name or "") if delta.function else ""
                call["arguments"] += (delta.function.arguments or "") if delta.function else ""
        name, arguments = calls[0]["name"], calls[0]["arguments"]
    else:
        reply = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL], tool_choice="auto")
        assert reply.choices[0].finish_reason == "tool_calls"
        name = reply.choices[0].message.tool_calls[0].function.name  # type: ignore[index,union-attr]
        arguments = reply.choices[0].message.tool_calls[0].function.arguments  # type: ignore[index,union-attr]
    direct = katan_client(katan).chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL])
    direct_call = direct.choices[0].message.tool_calls[0].function  # type: ignore[index,union-attr]
    assert (name, json.loads(arguments)) == (direct_call.name, json.loads(direct_call.arguments))

    [row] = wait_captured(gateway, 1)
    request = row.request
    assert request["tools"] == [WEATHER_TOOL] and request["tool_choice"] == "auto"
    assert row.response is not None
    captured_call = row.response["choices"][0]["message"]["tool_calls"][0]
    assert captured_call["function"]["name"] == "get_weather"
    assert json.loads(captured_call["function"]["arguments"]) == json.loads(arguments)


def test_json_mode_passes_and_unknown_fields_are_refused_unless_allowed(gateway: InProcessGateway, katan: Server,
                                                                        tmp_path: Path) -> None:
    params: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "give json"}],
                              "response_format": {"type": "json_object"}, "seed": 7, "stop": ["\n\n"],
                              "max_completion_tokens": 50, "logprobs": True, "top_logprobs": 2, "n": 1}
    reply = client_for(gateway).chat.completions.create(**params, extra_body={"metadata": {"task": "json-task"}})
    assert json.loads(reply.choices[0].message.content or "")["response"].endswith("User: give json")
    # a field OpenAI does not document is refused, naming it, as OpenAI itself does
    with pytest.raises(openai.BadRequestError) as refused:
        client_for(gateway).chat.completions.create(**params, extra_body={"some_future_field": {"x": 1}})
    assert refused.value.body["param"] == "some_future_field"  # type: ignore[index]
    # ... unless the operator forwards it (e.g. a vLLM sampling option)
    allowed = settings_for(katan, tmp_path / "allowed.db", config={"forward_fields": ["some_future_field"]})
    with inprocess_gateway(allowed) as forwarding:
        reply = client_for(forwarding).chat.completions.create(**params, extra_body={"some_future_field": {"x": 1}})
        assert reply.choices[0].message.content


def test_metadata_task_names_the_task(gateway: InProcessGateway) -> None:
    raw = client_for(gateway).chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "x"}], extra_body={"metadata": {"task": "from-body"}})
    assert raw.headers["x-protege-task"] == "from-body"


def test_models_lists_teacher(gateway: InProcessGateway) -> None:
    models = client_for(gateway).models.list()
    assert [m.id for m in models.data] == ["gpt-4o-mini"]


def test_health_ready_and_metrics(gateway: InProcessGateway) -> None:
    assert gateway.client.get("/healthz").json() == {"status": "ok"}
    ready = gateway.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["teachers"] == ["gpt-4o-mini"]
    client_for(gateway).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                                extra_headers={"X-Protege-Task": "metered"})
    assert gateway.client.get("/metrics").status_code == 401  # private: the admin token
    text = gateway.client.get("/metrics", headers={"authorization": f"Bearer {ADMIN}"}).text
    assert 'protege_requests_total{route="teacher",status="ok",task="metered"} 1.0' in text
    assert "protege_gateway_overhead_seconds_bucket" in text
