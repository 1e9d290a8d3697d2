"""Secrets never leave: after a run with known secrets (provider key, gateway keys, admin token) that
exercises successes, refusals and upstream failures, none of them is in the log, the store's files,
an export, the metrics or any response.

The gateways are apps in this process (one in front of llm-katan, one in front of nothing), so their
log is every record of every logger at DEBUG (caplog) plus whatever reached stdout or stderr (capfd)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from protege.cli import main as protege
from tests.inprocess import InProcessGateway, inprocess_gateway, settings_for
from tests.servers import Server, free_port

PROVIDER_KEY = "sk-provider-secret-7f3a9c"
GATEWAY_KEY = "pk-gateway-secret-51b2e8"
ADMIN_TOKEN = "adm-secret-token-0c4d11"
SECRETS = (PROVIDER_KEY, GATEWAY_KEY, ADMIN_TOKEN)


def test_no_secret_reaches_logs_store_exports_metrics_or_responses(
        katan: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    # and the loggers `protege` commands quieten when they configure logging (run in-process earlier)
    for name in ("httpx", "httpcore", "protege"):
        caplog.set_level(logging.DEBUG, logger=name)
    store = tmp_path / "store.db"
    common: dict[str, Any] = {"teacher_api_key": PROVIDER_KEY, "admin_token": ADMIN_TOKEN, "gateway_keys": GATEWAY_KEY,
              "log_level": "debug"}
    dead_upstream = f"http://127.0.0.1:{free_port()}/v1"
    seen: list[str] = []

    def call(gateway: InProcessGateway, method: str, path: str, token: str | None, body: object = None) -> int:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        response = gateway.client.request(method, path, json=body, headers=headers)
        seen.append(response.text + str(dict(response.headers)))
        return response.status_code

    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
    with inprocess_gateway(settings_for(katan, store, **common)) as live, \
            inprocess_gateway(settings_for(katan, store, teacher_api_base=dead_upstream, **common)) as dead:
        assert call(live, "POST", "/v1/chat/completions", GATEWAY_KEY, chat) == 200
        assert call(live, "POST", "/v1/chat/completions", GATEWAY_KEY, {**chat, "stream": True}) == 200
        assert call(live, "POST", "/v1/chat/completions", GATEWAY_KEY + "x", chat) == 401
        assert call(live, "POST", "/v1/chat/completions", None, chat) == 401
        assert call(live, "GET", "/admin/tasks", ADMIN_TOKEN + "x") == 403
        assert call(live, "GET", "/admin/tasks", ADMIN_TOKEN) == 200
        assert call(live, "POST", "/v1/chat/completions", GATEWAY_KEY, {"model": 1}) == 400
        assert call(dead, "POST", "/v1/chat/completions", GATEWAY_KEY, chat) == 502
        assert call(live, "GET", "/metrics", ADMIN_TOKEN) == 200
        assert call(dead, "GET", "/metrics", ADMIN_TOKEN) == 200
    # leaving both blocks ran the apps' shutdown: capture flushed, store closed
    # the apps' own records are the ones captured: the upstream call, the retries against the dead upstream
    assert f"{katan.url}/v1/chat/completions" in caplog.text
    assert any(record.name.startswith("protege") for record in caplog.records)
    logs = caplog.text + "".join(capfd.readouterr())

    def cli(*args: str) -> str:
        assert protege([*args, "--store", f"sqlite:///{store}"]) == 0
        out, err = capfd.readouterr()
        return out + err

    tasks = [t["task"] for t in json.loads(cli("tasks", "--json"))]
    assert tasks
    exports = [cli("export", "--task", task, "--format", fmt, "--out", "-")
               for task in tasks for fmt in ("openai", "jsonl-raw")]
    assert all('"hello"' in export for export in exports)  # the exports hold the exchanges
    places = {"responses": "\n".join(seen), "export": "\n".join(exports), "logs": logs + caplog.text}
    for path in tmp_path.glob("store.db*"):
        places[path.name] = path.read_bytes().decode("latin-1")
    assert "hello" in places["store.db"] + places.get("store.db-wal", "")  # the store holds the exchanges
    for secret in SECRETS:
        leaks = [name for name, text in places.items() if secret in text]
        assert not leaks, f"{secret[:6]}… found in {leaks}"
