"""The direct httpx path and the litellm path give the client the same answer; non-OpenAI teachers
(Anthropic's API, here llm-katan's) are reached through litellm. The gateways run in this process."""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from pathlib import Path

import openai
import pytest

from tests.gateway.test_proxy import WEATHER_TOOL
from tests.inprocess import InProcessGateway, inprocess_gateway, settings_for
from tests.servers import Server


def gateway_with(katan: Server, tmp_path: Path, client: str,
                 model: str = "openai/gpt-4o-mini") -> AbstractContextManager[InProcessGateway]:
    teacher = {"model": model, "api_base": f"{katan.url}{'/v1' if 'openai' in model else ''}",
               "api_key": "sk-upstream-secret-123456", "client": client}
    settings = settings_for(None, tmp_path / f"{client}.db", config={"teachers": [teacher]})
    return inprocess_gateway(settings)


def ask(gateway: InProcessGateway, **kwargs: object) -> openai.types.chat.ChatCompletion:
    return gateway.openai().chat.completions.create(model="gpt-4o-mini", **kwargs)  # type: ignore[call-overload,no-any-return]


def stream_text(gateway: InProcessGateway, messages: list[dict[str, str]]) -> str:
    chunks = gateway.openai().chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)  # type: ignore[arg-type]
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def without_time(text: str) -> str:
    return " ".join(part for part in text.split() if not part.startswith("time="))


def test_direct_and_litellm_paths_answer_alike(katan: Server, tmp_path: Path) -> None:
    with gateway_with(katan, tmp_path, "direct") as direct, gateway_with(katan, tmp_path, "litellm") as via_litellm:
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
def test_anthropic_teacher_through_litellm(katan: Server, tmp_path: Path, stream: bool) -> None:
    with gateway_with(katan, tmp_path, "auto", model="anthropic/claude-sonnet-4-5") as gateway:
        messages = [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "bonjour"}]
        if stream:
            text = stream_text(gateway, messages)
        else:
            reply = ask(gateway, messages=messages)
            text = reply.choices[0].message.content or ""
            assert reply.usage is not None and reply.usage.completion_tokens > 0
        assert "bonjour" in text
        [row] = gateway.rows()
    assert row.status == "ok" and row.upstream_model == "anthropic/claude-sonnet-4-5"
    assert row.response is not None and row.response["choices"][0]["message"]["content"] == text
    assert row.cost_usd is not None and row.cost_usd > 0  # claude-sonnet-4-5 is in the bundled price map
