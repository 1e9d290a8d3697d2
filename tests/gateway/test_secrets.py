"""Secrets never leave: after a run with known secrets (provider key, gateway keys, admin token) that
exercises successes, refusals and upstream failures, none of them is in the log, the store's files,
an export, the metrics or any response."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.servers import Server, free_port

PROVIDER_KEY = "sk-provider-secret-7f3a9c"
GATEWAY_KEY = "pk-gateway-secret-51b2e8"
ADMIN_TOKEN = "adm-secret-token-0c4d11"
SECRETS = (PROVIDER_KEY, GATEWAY_KEY, ADMIN_TOKEN)


def test_no_secret_reaches_logs_store_exports_metrics_or_responses(
        katan: Server, gateway_factory: Callable[..., Server], tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    common = ["--store", f"sqlite:///{store}", "--teacher", "openai/gpt-4o-mini", "--teacher-api-key", PROVIDER_KEY,
              "--admin-token", ADMIN_TOKEN, "--log-level", "debug"]
    env = {"PROTEGE_GATEWAY_KEYS": GATEWAY_KEY}
    live = gateway_factory(*common, "--teacher-api-base", f"{katan.url}/v1", env=env)
    dead = gateway_factory(*common, "--teacher-api-base", f"http://127.0.0.1:{free_port()}/v1", env=env)
    seen: list[str] = []

    def call(gateway: Server, method: str, path: str, token: str | None, body: object = None) -> int:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        response = httpx.request(method, f"{gateway.url}{path}", json=body, headers=headers, timeout=30)
        seen.append(response.text + str(dict(response.headers)))
        return response.status_code

    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
    assert call(live, "POST", "/v1/chat/completions", GATEWAY_KEY, chat) == 200
    assert call(live, "POST", "/v1/chat/completions", GATEWAY_KEY, {**chat, "stream": True}) == 200
    assert call(live, "POST", "/v1/chat/completions", GATEWAY_KEY + "x", chat) == 401
    assert call(live, "POST", "/v1/chat/completions", None, chat) == 401
    assert call(live, "GET", "/admin/tasks", ADMIN_TOKEN + "x") == 403
    assert call(live, "GET", "/admin/tasks", ADMIN_TOKEN) == 200
    assert call(live, "POST", "/v1/chat/completions", GATEWAY_KEY, {"model": 1}) == 400
    assert call(dead, "POST", "/v1/chat/completions", GATEWAY_KEY, chat) == 502
    assert call(live, "GET", "/metrics", None) == 200
    assert call(dead, "GET", "/metrics", None) == 200
    for gateway in (live, dead):
        gateway.proc.terminate()
        gateway.proc.wait(timeout=20)  # flushes capture

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "distiller.cli", *args, "--store", f"sqlite:///{store}"],
                              capture_output=True, text=True, timeout=120, check=True)
        return done.stdout + done.stderr

    tasks = [t["task"] for t in json.loads(cli("tasks", "--json"))]
    assert tasks
    exports = [cli("export", "--task", task, "--format", fmt, "--out", "-")
               for task in tasks for fmt in ("openai", "jsonl-raw")]
    places = {"responses": "\n".join(seen), "export": "\n".join(exports), "logs": live.output() + dead.output()}
    for path in tmp_path.glob("store.db*"):
        places[path.name] = path.read_bytes().decode("latin-1")
    assert "hello" in places["store.db"] + places.get("store.db-wal", "")  # the store holds the exchanges
    for secret in SECRETS:
        leaks = [name for name, text in places.items() if secret in text]
        assert not leaks, f"{secret[:6]}… found in {leaks}"
