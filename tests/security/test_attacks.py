"""The findings of the security probe of 939c5e9, each reproduced against real processes (a gateway, an
llm-katan teacher direct and through litellm, a listener standing in for an attacker's server) and now
refused. In-process checks of the same mechanisms live beside the modules they test."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import teacher_flags
from tests.inprocess import poll
from tests.security.listener import Listener, listener
from tests.servers import REPO, Server, free_port, metric, start_gateway, stop
from tests.stores import captured, count_captured

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
ADMIN = "admin-token-for-the-attack-suite"


@pytest.fixture
def attacker() -> Iterator[Listener]:
    with listener() as server:
        yield server


@pytest.fixture(scope="module")
def litellm_gateway(katan: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A gateway whose teacher is reached through litellm (Anthropic's API on llm-katan)."""
    tmp_path = tmp_path_factory.mktemp("litellm-gateway")
    gateway = start_gateway(tmp_path, "--store", f"sqlite:///{tmp_path / 'store.db'}", "--teacher",
                            "anthropic/claude-sonnet-4-5", "--teacher-api-base", katan.url, "--teacher-api-key",
                            "sk-ant-operator-secret-0001", "--admin-token", ADMIN)
    yield gateway
    stop(gateway.proc)


@pytest.mark.parametrize("field", ["base_url", "api_base", "api_key", "extra_headers", "extra_body", "headers",
                                   "timeout", "custom_llm_provider"])
def test_a_client_cannot_steer_the_provider_client(litellm_gateway: Server, attacker: Listener, field: str) -> None:
    value: object = {"authorization": "x"} if field in ("extra_headers", "headers", "extra_body") else (
        30 if field == "timeout" else f"{attacker.url}/steal")
    response = httpx.post(f"{litellm_gateway.url}/v1/chat/completions", json={**CHAT, "model": "lite", field: value},
                          timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field and error["code"] == "forbidden_parameter"
    assert attacker.received == []


def test_unknown_fields_are_refused_not_forwarded(katan: Server, gateway_factory: Callable[..., Server],
                                                  attacker: Listener, tmp_path: Path) -> None:
    gateway = gateway_factory(*teacher_flags(katan, tmp_path / "store.db"))
    for body in ({**CHAT, "lora_name": "x", "lora_path": "/etc"}, {**CHAT, "future_field": 1}):
        response = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=30)
        assert response.status_code == 400 and response.json()["error"]["code"] == "unknown_parameter"
    assert attacker.received == []


def test_an_operator_can_allow_extra_fields_but_never_provider_control(tmp_path: Path) -> None:
    config = tmp_path / "protege.yaml"
    config.write_text("forward_fields: [base_url]\n")
    result = subprocess.run([sys.executable, "-m", "protege", "serve", "--config", str(config), "--store",
                             f"sqlite:///{tmp_path / 's.db'}", "--teacher", "openai/x", "--port", str(free_port())],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2 and "forward_fields" in result.stderr and "steers" in result.stderr


def test_connection_failures_are_summarised_not_relayed(gateway_factory: Callable[..., Server],
                                                       tmp_path: Path) -> None:
    closed = free_port()
    for model in ("openai/gpt-4o-mini", "anthropic/claude-sonnet-4-5"):
        gateway = gateway_factory("--store", f"sqlite:///{tmp_path / f'{model[:6]}.db'}", "--teacher", model,
                                  "--teacher-api-base", f"http://127.0.0.1:{closed}", "--teacher-api-key", "sk-x-1")
        response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=60)
        assert response.status_code == 502
        message = response.json()["error"]["message"]
        assert str(closed) not in message and "127.0.0.1" not in message and "refused" not in message.lower()


def test_a_client_cannot_open_the_shared_breaker_on_an_address_of_its_choosing(
        katan: Server, gateway_factory: Callable[..., Server], tmp_path: Path) -> None:
    config = tmp_path / "protege.yaml"
    config.write_text("circuit_breaker: {failure_threshold: 5, cooldown_s: 30}\nretry: {attempts: 0}\n")
    gateway = gateway_factory("--config", str(config), *teacher_flags(katan, tmp_path / "store.db"))
    for _ in range(8):
        aimed = httpx.post(f"{gateway.url}/v1/chat/completions", json={**CHAT, "base_url": "http://127.0.0.1:1"})
        assert aimed.status_code == 400
    assert httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=30).status_code == 200
    assert metric(gateway, "protege_circuit_opened_total") == 0


def test_one_poisoned_request_never_stops_capture(katan: Server, gateway_factory: Callable[..., Server],
                                                  tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    gateway = gateway_factory(*teacher_flags(katan, store))
    url = f"{gateway.url}/v1/chat/completions"
    for depth in (253, 254, 5000):
        deep: object = "x"
        for _ in range(depth):
            deep = {"a": deep}
        # nested inside an allowed field (metadata is free-form): refused before it is forwarded or stored
        response = httpx.post(url, json={**CHAT, "metadata": deep} if depth < 1000 else None,
                              content=None if depth < 1000 else b'{"metadata": ' + b'{"a": ' * depth + b'1' +
                              b'}' * depth + b', "model": "m", "messages": []}',
                              headers={"content-type": "application/json"}, timeout=30)
        assert response.status_code == 400, response.text[:200]
    for i in range(5):
        assert httpx.post(url, json=CHAT, headers={"X-Protege-Task": f"after-{i}"}, timeout=30).status_code == 200
    poll(lambda: count_rows(store) == 5, what="the five normal exchanges in the store")
    assert httpx.get(f"{gateway.url}/readyz").status_code == 200
    # a graceful stop finishes well within its deadline
    started = time.monotonic()
    assert stop(gateway.proc) == 0 and time.monotonic() - started < 15


def count_rows(store: Path) -> int:
    return count_captured(store)


def protege(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "protege", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO)


def test_revoking_the_last_key_leaves_a_ring_that_accepts_nobody(katan: Server, tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    added = protege("keys", "add", "--name", "only", "--store", f"sqlite:///{store}")
    key = re.search(r"(pk-\S+)", added.stdout).group(1)  # type: ignore[union-attr]
    key_id = re.search(r"(key_[0-9a-f]+)", added.stdout).group(1)  # type: ignore[union-attr]
    gateway = start_gateway(tmp_path, *teacher_flags(katan, store))
    try:
        url = f"{gateway.url}/v1/chat/completions"
        assert httpx.post(url, json=CHAT, headers={"authorization": f"Bearer {key}"}, timeout=30).status_code == 200
        assert protege("keys", "revoke", key_id, "--store", f"sqlite:///{store}").returncode == 0

        def refused_to_all() -> bool:
            return all(httpx.post(url, json=CHAT, headers=h, timeout=30).status_code == 401 for h in (
                {}, {"authorization": f"Bearer {key}"}, {"authorization": "Bearer pk-garbage"}))

        poll(refused_to_all, timeout=15, what="the revoked ring to refuse everyone")
    finally:
        stop(gateway.proc)


def test_a_public_bind_without_keys_refuses_to_start(katan: Server, tmp_path: Path) -> None:
    flags = ["serve", "--host", "0.0.0.0", "--port", str(free_port()), *teacher_flags(katan, tmp_path / "s.db")]
    result = subprocess.run([sys.executable, "-m", "protege", *flags], capture_output=True, text=True,
                            timeout=60, cwd=REPO, env={**os.environ, "PROTEGE_GATEWAY_KEYS": ""})
    assert result.returncode == 2 and "no gateway key exists" in result.stderr
    required = subprocess.run([sys.executable, "-m", "protege", "serve", "--auth", "required", "--port",
                               str(free_port()), *teacher_flags(katan, tmp_path / "s.db")],
                              capture_output=True, text=True, timeout=60, cwd=REPO)
    assert required.returncode == 2 and "no gateway key exists" in required.stderr


def test_the_start_line_says_whether_the_gateway_is_open(katan: Server, tmp_path: Path) -> None:
    open_one = start_gateway(tmp_path, *teacher_flags(katan, tmp_path / "open.db"))
    keyed = start_gateway(tmp_path, *teacher_flags(katan, tmp_path / "keyed.db"),
                          env={"PROTEGE_GATEWAY_KEYS": "pk-one,pk-two"})
    try:
        poll(lambda: "authentication:" in open_one.output() and "authentication:" in keyed.output())
        assert "authentication: OFF, open to this machine only" in open_one.output()
        assert "authentication: required (2 active keys)" in keyed.output()
    finally:
        stop(open_one.proc)
        stop(keyed.proc)


def test_private_surfaces_need_the_admin_token(katan: Server, gateway_factory: Callable[..., Server],
                                               tmp_path: Path) -> None:
    gateway = gateway_factory(*teacher_flags(katan, tmp_path / "store.db"), "--admin-token", ADMIN)
    assert httpx.get(f"{gateway.url}/metrics").status_code == 401
    assert httpx.get(f"{gateway.url}/metrics", headers={"authorization": "Bearer wrong"}).status_code == 403
    assert httpx.get(f"{gateway.url}/metrics", headers={"authorization": f"Bearer {ADMIN}"}).status_code == 200
    public = httpx.get(f"{gateway.url}/openapi.json").json()
    assert public["paths"] and not [p for p in public["paths"] if p.startswith("/admin") or p == "/metrics"]
    assert httpx.get(f"{gateway.url}/admin/openapi.json").status_code == 401
    full = httpx.get(f"{gateway.url}/admin/openapi.json", headers={"authorization": f"Bearer {ADMIN}"}).json()
    assert any(p.startswith("/admin/tasks") for p in full["paths"])
    without_token = gateway_factory(*teacher_flags(katan, tmp_path / "store2.db"), env={"PROTEGE_ADMIN_TOKEN": ""})
    assert httpx.get(f"{without_token.url}/metrics").status_code == 403


def test_console_sessions_are_random_expiring_and_end_at_sign_out(
        katan: Server, gateway_factory: Callable[..., Server], tmp_path: Path) -> None:
    gateway = gateway_factory(*teacher_flags(katan, tmp_path / "store.db"), "--admin-token", ADMIN)
    ui = f"{gateway.url}/admin/ui"

    def sign_in() -> httpx.Client:
        client = httpx.Client(timeout=10)
        response = client.post(f"{ui}/login", data={"token": ADMIN}, headers={"origin": gateway.url})
        assert response.status_code == 303
        assert "max-age=28800" in response.headers["set-cookie"].lower()
        return client

    first, second = sign_in(), sign_in()
    cookie = first.cookies["protege_console"]
    assert cookie != second.cookies["protege_console"] and ADMIN not in cookie and len(cookie) >= 40
    page = first.get(ui)
    assert page.status_code == 200
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text).group(1)  # type: ignore[union-attr]
    assert first.post(f"{ui}/logout", data={"csrf": csrf}, headers={"origin": gateway.url}).status_code == 303
    replayed = httpx.get(ui, cookies={"protege_console": cookie}, timeout=10)
    assert replayed.status_code == 303 and replayed.headers["location"].endswith("/login")  # the old cookie is dead
    assert second.get(ui).status_code == 200  # other sessions stay signed in


def test_sign_in_attempts_are_throttled_with_one_log_line(katan: Server, gateway_factory: Callable[..., Server],
                                                          tmp_path: Path) -> None:
    gateway = gateway_factory(*teacher_flags(katan, tmp_path / "store.db"), "--admin-token", ADMIN)
    statuses = [httpx.post(f"{gateway.url}/admin/ui/login", data={"token": f"guess-{i}"},
                           headers={"origin": gateway.url}).status_code for i in range(30)]
    assert statuses[:10] == [403] * 10 and set(statuses[10:]) == {429}
    throttled = httpx.post(f"{gateway.url}/admin/ui/login", data={"token": ADMIN}, headers={"origin": gateway.url})
    assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) > 0  # even the right token waits
    assert gateway.output().count("refused") <= 1


def test_junk_task_names_cannot_push_a_real_task_out_of_the_metrics(
        katan: Server, gateway_factory: Callable[..., Server], tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    first = gateway_factory(*teacher_flags(katan, store), "--admin-token", ADMIN)
    assert httpx.post(f"{first.url}/v1/chat/completions", json=CHAT, headers={"X-Protege-Task": "billing"},
                      timeout=30).status_code == 200
    poll(lambda: count_rows(store) == 1)
    stop(first.proc)
    gateway = gateway_factory(*teacher_flags(katan, store), "--admin-token", ADMIN)
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for i in range(205):
            client.post("/v1/chat/completions", json=CHAT, headers={"X-Protege-Task": f"junk-{i}"})
        client.post("/v1/chat/completions", json=CHAT, headers={"X-Protege-Task": "billing"})
    assert metric(gateway, "protege_requests_total", task="billing") == 1
    assert metric(gateway, "protege_requests_total", task="other") > 0


def test_requests_are_bounded(katan_factory: Callable[..., Server], gateway_factory: Callable[..., Server],
                              tmp_path: Path) -> None:
    slow = katan_factory("--latency-ms", "1500", "--max-concurrent", "50")
    config = tmp_path / "protege.yaml"
    config.write_text("limits: {max_n: 2, max_output_tokens: 100, max_concurrent: 3}\n")
    gateway = gateway_factory("--config", str(config), *teacher_flags(slow, tmp_path / "store.db"))
    url = f"{gateway.url}/v1/chat/completions"
    assert httpx.post(url, json={**CHAT, "n": 3}).json()["error"]["param"] == "n"
    assert httpx.post(url, json={**CHAT, "max_tokens": 101}).json()["error"]["param"] == "max_tokens"

    async def burst() -> list[httpx.Response]:
        import asyncio

        async with httpx.AsyncClient(timeout=30) as client:
            return list(await asyncio.gather(*(client.post(url, json=CHAT) for _ in range(6))))

    import asyncio

    responses = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 3 and statuses.count(503) == 3, statuses
    assert all(r.headers.get("retry-after") for r in responses if r.status_code == 503)


def test_task_names_follow_one_rule_everywhere(katan: Server, gateway_factory: Callable[..., Server],
                                               tmp_path: Path) -> None:
    gateway = gateway_factory(*teacher_flags(katan, tmp_path / "store.db"), "--admin-token", ADMIN)
    for task in ("ok\n", "a/b", "..\\..\\x", "tab\there"):
        response = httpx.post(f"{gateway.url}/v1/chat/completions", json={**CHAT, "metadata": {"task": task}})
        assert response.status_code == 400 and response.json()["error"]["param"] == "metadata.task", task
    for name in ("..%5C..%5Cx", "a%0Ab", "x%2F..%2Fy"):
        admin = httpx.put(f"{gateway.url}/admin/tasks/{name}/rollout", json={"percent": 5},
                          headers={"authorization": f"Bearer {ADMIN}"})
        assert admin.status_code in (400, 404), (name, admin.status_code)
    assert httpx.get(f"{gateway.url}/admin/tasks", headers={"authorization": f"Bearer {ADMIN}"}).json() == {"tasks": []}


def test_store_and_run_folders_are_private(katan: Server, gateway_factory: Callable[..., Server],
                                           tmp_path: Path) -> None:
    store = tmp_path / "private" / "store.db"
    gateway = gateway_factory(*teacher_flags(katan, store))
    assert httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=30).status_code == 200
    poll(lambda: count_rows(store) == 1)
    assert oct(store.parent.stat().st_mode & 0o777) == "0o700"
    for path in store.parent.iterdir():  # the database, its -wal and -shm
        assert oct(path.stat().st_mode & 0o777) == "0o600", path


def test_only_allowlisted_params_are_stored(katan: Server, gateway_factory: Callable[..., Server],
                                            tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    gateway = gateway_factory(*teacher_flags(katan, store))
    body = {**CHAT, "temperature": 0.3, "prompt_cache_key": "user-123-cache", "safety_identifier": "person@x.org",
            "service_tier": "flex"}
    assert httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=30).status_code == 200
    poll(lambda: count_rows(store) == 1)
    [row] = captured(store)
    request_json = json.dumps(row.request)
    assert row.request["params"]["temperature"] == 0.3
    assert "user-123-cache" not in request_json and "person@x.org" not in request_json and "flex" not in request_json


def test_a_forgotten_users_new_traffic_is_not_stored(katan: Server, gateway_factory: Callable[..., Server],
                                                     tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    assert protege("forget", "--user", "alice", "--yes", "--store", f"sqlite:///{store}").returncode == 0
    gateway = gateway_factory(*teacher_flags(katan, store), "--admin-token", ADMIN)
    for user in ("alice", "bob"):
        assert httpx.post(f"{gateway.url}/v1/chat/completions", json={**CHAT, "user": user},
                          timeout=30).status_code == 200
    poll(lambda: metric(gateway, "protege_capture_skipped_exchanges_total") == 1)
    poll(lambda: count_rows(store) == 1)
    assert [e.user for e in captured(store)] == ["bob"]


def test_no_secret_in_worker_environments_or_process_lists(katan: Server, tmp_path: Path) -> None:
    import psutil

    config = tmp_path / "protege.yaml"
    config.write_text("admin_token: admin-secret-in-a-file-0001\ngateway_keys: [pk-gateway-secret-0002]\n"
                      "teachers:\n  - model: openai/gpt-4o-mini\n    api_base: " + katan.url + "/v1\n"
                      "    api_key: sk-teacher-secret-0003\n")
    gateway = start_gateway(tmp_path, "--config", str(config), "--store", f"sqlite:///{tmp_path / 's.db'}",
                            "--workers", "2")
    try:
        poll(lambda: len(psutil.Process(gateway.proc.pid).children(recursive=True)) >= 2, timeout=30)
        secrets = ("admin-secret-in-a-file-0001", "pk-gateway-secret-0002", "sk-teacher-secret-0003")
        for proc in [psutil.Process(gateway.proc.pid), *psutil.Process(gateway.proc.pid).children(recursive=True)]:
            seen = " ".join(proc.cmdline()) + " " + " ".join(f"{k}={v}" for k, v in proc.environ().items())
            assert not any(s in seen for s in secrets), proc.pid
    finally:
        stop(gateway.proc)
