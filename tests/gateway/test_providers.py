"""The direct httpx path and the litellm path give the client the same answer; non-OpenAI teachers
(Anthropic's API, here llm-katan's) are reached through litellm."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import openai
import pytest

from tests.gateway.test_proxy import WEATHER_TOOL, wait_captured
from tests.servers import Server


def gateway_with(gateway_factory: Callable[..., Server], katan: Server, tmp_path: Path, client: str,
                 model: str = "openai/gpt-4o-mini") -> Server:
    config = tmp_path / f"{client}.yaml"
    config.write_text(f"teachers:\n  - model: {model}\n    api_base: {katan.url}{'/v1' if 'openai' in model else ''}\n"
                      f"    api_key: sk-upstream-secret-123456\n    client: {client}\n")
    return gateway_factory("--config", str(config), "--store", f"sqlite:///{tmp_path / (client + '.db')}")


def ask(server: Server, **kwargs: object) -> openai.types.chat.ChatCompletion:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    return client.chat.completions.create(model="gpt-4o-mini", **kwargs)  # type: ignore[call-overload,no-any-return]


def stream_text(server: Server, messages: list[dict[str, str]]) -> str:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    chunks = client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)  # type: ignore[arg-type]
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def without_time(text: str) -> str:
    return " ".join(part for part in text.split() if not part.startswith("time="))


def test_direct_and_litellm_paths_answer_alike(katan: Server, gateway_factory: Callable[..., Server],
                                               tmp_path: Path) -> None:
    direct = gateway_with(gateway_factory, katan, tmp_path, "direct")
    via_litellm = gateway_with(gateway_factory, katan, tmp_path, "litellm")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "same?"}]
    a, b = ask(direct, messages=messages), ask(via_litellm, messages=messages)
    assert without_time(a.choices[0].message.content or "") == without_time(b.choices[0].message.content or "")
    assert (a.choices[0].finish_reason, a.usage) == (b.choices[0].finish_reason, b.usage)

    ta = ask(direct, messages=messages, tools=[WEATHER_TOOL]).choices[0].message.tool_calls
    tb = ask(via_litellm, messages=messages, tools=[WEATHER_TOOL]).choices[0].message.tool_calls
    assert ta and tb
    assert (ta[0].function.name, json.loads(ta[0].function.arguments)) == (
        tb[0].function.name, json.loads(tb[0].function.arguments))

    assert without_time(stream_text(direct, messages)) == without_time(stream_text(via_litellm, messages))


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_teacher_through_litellm(katan: Server, gateway_factory: Callable[..., Server], tmp_path: Path,
                                           stream: bool) -> None:
    gateway = gateway_with(gateway_factory, katan, tmp_path, "auto", model="anthropic/claude-sonnet-4-5")
    messages = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "bonjour"}]
    if stream:
        text = stream_text(gateway, messages)
    else:
        reply = ask(gateway, messages=messages)
        text = reply.choices[0].message.content or ""
        assert reply.usage is not None and reply.usage.completion_tokens > 0
    assert "bonjour" in text
    [row] = wait_captured(tmp_path / "auto.db", 1)
    assert row["status"] == "ok" and row["upstream_model"] == "anthropic/claude-sonnet-4-5"
    assert json.loads(row["response_json"])["choices"][0]["message"]["content"] == text
    assert row["cost_usd"] is not None and row["cost_usd"] > 0  # claude-sonnet-4-5 is in the bundled price map
