"""The direct httpx path and the litellm path give the client the same answer; non-OpenAI teachers
(Anthropic's API, here llm-katan's) are reached through litellm. The gateways run in this process."""

from __future__ import annotations

import json
import threading
import urllib.request
from contextlib import AbstractContextManager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


class ForwardProxy:
    """An HTTP forward proxy on a real socket: it takes absolute-form requests (`POST http://host/path`), notes
    them and relays them upstream (without a proxy of its own)."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return None

            def do_POST(self) -> None:
                proxy.seen.append(self.path)
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "proxy-connection")}
                direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
                with direct.open(urllib.request.Request(self.path, data=body, headers=headers, method="POST")) as up:
                    payload, status, content_type = up.read(), up.status, up.headers.get("content-type", "")
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_the_environment_s_proxy_carries_the_teacher_calls(katan: Server, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = ForwardProxy()
    try:
        for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)  # the direct (httpx) path honours it
        with gateway_with(katan, tmp_path, "direct") as gateway:
            reply = ask(gateway, messages=[{"role": "user", "content": "through the proxy"}])
        assert "through the proxy" in (reply.choices[0].message.content or "")
        assert proxy.seen == [f"{katan.url}/v1/chat/completions"]
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # exempt: straight to the teacher
        with gateway_with(katan, tmp_path, "direct") as gateway:
            ask(gateway, messages=[{"role": "user", "content": "not through it"}])
        assert len(proxy.seen) == 1
    finally:
        proxy.close()
