"""`protege serve` with no teacher starts the embedded model server as a child, uses it as the
teacher, and stops it on exit."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from tests.servers import Server
from tests.stores import captured


def test_no_teacher_means_embedded_model_server(gateway_factory: Callable[..., Server], tiny_model: Path,
                                                tmp_path: Path) -> None:
    config = tmp_path / "protege.yaml"
    config.write_text(f"embedded:\n  model: {tiny_model}\n  threads: 1\n"
                      "  input_cost_per_token: 0.000001\n  output_cost_per_token: 0.000002\n")
    store = tmp_path / "store.db"
    gateway = gateway_factory("--config", str(config), "--store", f"sqlite:///{store}")
    children = psutil.Process(gateway.proc.pid).children(recursive=True)
    [server] = [c for c in children if "model_server.server" in " ".join(c.cmdline())]
    # the embedded server has a random key of its own: other local users cannot use it or load adapters, and
    # the key is on no command line (a 0600 file, removed once the server has read it)
    command = server.cmdline()
    key_file = Path(command[command.index("--api-key-file") + 1])
    assert not key_file.exists()
    port = int(command[command.index("--port") + 1])
    assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401
    assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200

    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="no-key-needed", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["smollm2-135m-instruct"]
    raw = client.chat.completions.with_raw_response.create(
        model="anything", messages=[{"role": "user", "content": "Hello"}], max_tokens=8, temperature=0)
    reply = raw.parse()
    assert raw.headers["x-protege-route"] == "teacher"
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    assert reply.choices[0].finish_reason in ("stop", "length")

    stream = client.chat.completions.create(model="anything", messages=[{"role": "user", "content": "Hi"}],
                                            max_tokens=5, temperature=0, stream=True)
    assert sum(1 for _ in stream) >= 2

    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.proc.wait(timeout=30) == 0
    deadline = time.monotonic() + 15
    while any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children):
        assert time.monotonic() < deadline, "embedded model server outlived the gateway"
        time.sleep(0.2)

    row = next(e for e in captured(store) if not e.stream)
    assert row.status == "ok" and row.prompt_tokens is not None and row.completion_tokens is not None
    assert row.cost_usd == pytest.approx(row.prompt_tokens * 1e-6 + row.completion_tokens * 2e-6)  # the embedded price
    assert row.response is not None
    assert row.response["choices"][0]["message"]["content"] == reply.choices[0].message.content
