"""Every failure is OpenAI's error body with the right status; never a 500 for bad input, never a hang."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import teacher_flags
from tests.servers import Server, free_port, start_gateway, stop

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param
    return dict(error)


@pytest.fixture(scope="module")
def gateway(katan: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One gateway for the bad-input tests (they do not change its state)."""
    tmp_path = tmp_path_factory.mktemp("errors")
    config = tmp_path / "protege.yaml"
    config.write_text("max_body_bytes: 4096\n")
    server = start_gateway(tmp_path, "--config", str(config), *teacher_flags(katan, tmp_path / "store.db"))
    yield server
    stop(server.proc)


@pytest.mark.parametrize(("body", "param"), [
    (b"{not json", None),
    (b"", None),
    (b"[1, 2]", None),
    (b"\xff\xfe{}", None),
    (b'{"model": "m"}', "messages"),
    (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
    (b'{"model": "m", "messages": []}', "messages"),
    (b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}', "messages.0.role"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', "temperature"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 100000}', "n"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}', "max_tokens"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}',
     "tools.0.function"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "metadata": {"task": 5}}', "metadata.task"),
])
def test_bad_request_bodies_get_400(gateway: Server, body: bytes, param: str | None) -> None:
    response = httpx.post(f"{gateway.url}/v1/chat/completions", content=body,
                          headers={"content-type": "application/json"})
    error = assert_openai_error(response, 400, param)
    assert error["type"] == "invalid_request_error"


def test_bad_task_header_gets_400(gateway: Server) -> None:
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, headers={"X-Protege-Task": "a b/c"})
    assert_openai_error(response, 400, "X-Protege-Task")


def test_unknown_route_and_wrong_method(gateway: Server) -> None:
    assert_openai_error(httpx.get(f"{gateway.url}/v1/nothing-here"), 404)
    assert_openai_error(httpx.get(f"{gateway.url}/v1/chat/completions"), 405)


def test_body_over_limit_gets_413(gateway: Server) -> None:
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * 10_000}]}
    assert_openai_error(httpx.post(f"{gateway.url}/v1/chat/completions", json=big), 413)

    def chunks() -> object:  # no Content-Length: the limit holds while reading
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}]}'

    response = httpx.post(f"{gateway.url}/v1/chat/completions", content=chunks(),  # type: ignore[arg-type]
                          headers={"content-type": "application/json"})
    assert_openai_error(response, 413)


def test_gateway_keys_required_when_configured(katan: Server, gateway_factory: Callable[..., Server],
                                               tmp_path: Path) -> None:
    gateway = gateway_factory(*teacher_flags(katan, tmp_path / "s.db"), env={"PROTEGE_GATEWAY_KEYS": "gk-one,gk-two"})
    url = f"{gateway.url}/v1/chat/completions"
    assert_openai_error(httpx.post(url, json=CHAT), 401)
    assert_openai_error(httpx.post(url, json=CHAT, headers={"authorization": "Bearer wrong"}), 401)
    assert httpx.post(url, json=CHAT, headers={"authorization": "Bearer gk-two"}).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="nope", max_retries=0).models.list()


def test_keys_added_by_cli_are_accepted_without_restart(katan: Server, gateway_factory: Callable[..., Server],
                                                        tmp_path: Path) -> None:
    import subprocess
    import sys

    store = tmp_path / "s.db"
    gateway = gateway_factory(*teacher_flags(katan, store), env={"PROTEGE_GATEWAY_KEYS": "gk-config"})
    out = subprocess.run([sys.executable, "-m", "distiller.cli", "keys", "add", "--name", "app", "--store",
                          f"sqlite:///{store}"], check=True, capture_output=True, text=True).stdout
    key = out.split(": ", 1)[1].split()[0]
    listing = subprocess.run([sys.executable, "-m", "distiller.cli", "keys", "list", "--json", "--store",
                              f"sqlite:///{store}"], check=True, capture_output=True, text=True).stdout
    assert key not in listing and '"name":"app"' in listing
    assert key not in store.read_bytes().decode("latin-1")  # hashed at rest
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)
    import time

    deadline = time.monotonic() + 10
    while True:  # the key ring refreshes from the store every few seconds
        try:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
            break
        except openai.AuthenticationError:
            assert time.monotonic() < deadline
            time.sleep(0.5)


def test_teacher_429_is_passed_on(katan_factory: Callable[..., Server], gateway_factory: Callable[..., Server],
                                  tmp_path: Path) -> None:
    limited = katan_factory("--rate-limit-after", "1")
    gateway = gateway_factory(*teacher_flags(limited, tmp_path / "s.db"))
    url = f"{gateway.url}/v1/chat/completions"
    assert httpx.post(url, json=CHAT).status_code == 200
    error = assert_openai_error(httpx.post(url, json=CHAT), 429)
    assert error["type"] == "rate_limit_error"
    # a stream that fails before its first chunk gets the same status, not a 200 with an error event
    assert_openai_error(httpx.post(url, json={**CHAT, "stream": True}), 429)


def test_teacher_unreachable_is_502(gateway_factory: Callable[..., Server], tmp_path: Path) -> None:
    gateway = gateway_factory("--store", f"sqlite:///{tmp_path / 's.db'}", "--teacher", "openai/gpt-4o-mini",
                              "--teacher-api-base", f"http://127.0.0.1:{free_port()}/v1",
                              "--teacher-api-key", "sk-secret-never-shown-123")
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT)
    error = assert_openai_error(response, 502)
    assert "sk-secret" not in response.text
    assert error["type"] == "upstream_error"


def test_teacher_timeout_is_504(katan_factory: Callable[..., Server], gateway_factory: Callable[..., Server],
                                tmp_path: Path) -> None:
    slow = katan_factory("--latency-ms", "5000", "--max-concurrent", "10")
    config = tmp_path / "protege.yaml"
    config.write_text("timeout_s: 0.5\n")
    gateway = gateway_factory("--config", str(config), *teacher_flags(slow, tmp_path / "s.db"))
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT, timeout=10)
    assert response.elapsed.total_seconds() < 3
    assert_openai_error(response, 504)


def test_teacher_rejecting_gateway_credentials_does_not_leak_them(
        katan_factory: Callable[..., Server], gateway_factory: Callable[..., Server], tmp_path: Path) -> None:
    strict = katan_factory("--validate-keys", "--api-keys", "openai=the-right-key")
    gateway = gateway_factory(*teacher_flags(strict, tmp_path / "s.db"))
    response = httpx.post(f"{gateway.url}/v1/chat/completions", json=CHAT)
    assert_openai_error(response, 502)
    assert "sk-upstream-secret" not in response.text and "sk-upstream-secret" not in gateway.output()


def test_a_slow_loris_body_gets_a_408(katan: Server, gateway_factory: Callable[..., Server], tmp_path: Path) -> None:
    import json
    import socket
    import time

    config = tmp_path / "protege.yaml"
    config.write_text("body_timeout_s: 1\n")
    slow = gateway_factory("--config", str(config), *teacher_flags(katan, tmp_path / "store.db"))
    with socket.create_connection(("127.0.0.1", slow.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 500\r\n\r\n{\"model\": ")  # and then nothing more
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = sock.recv(4096)
            if not data:
                break
            answer += data
    assert time.monotonic() - started < 5
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(body)["error"]["code"] == "body_timeout"


def test_slow_loris_headers_get_a_408_and_the_connection_is_closed(
        katan: Server, gateway_factory: Callable[..., Server], tmp_path: Path) -> None:
    import socket
    import time

    config = tmp_path / "protege.yaml"
    config.write_text("header_timeout_s: 1\n")
    slow = gateway_factory("--config", str(config), *teacher_flags(katan, tmp_path / "store.db"))

    def wait_for_close(sock: socket.socket) -> bytes:
        answer = b""
        while data := sock.recv(4096):
            answer += data
        return answer

    with socket.create_connection(("127.0.0.1", slow.port), timeout=10) as trickle:
        trickle.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # and the rest never comes
        started = time.monotonic()
        answer = wait_for_close(trickle)
    assert time.monotonic() - started < 5
    assert answer.startswith(b"HTTP/1.1 408") and b"header_timeout" in answer
    with socket.create_connection(("127.0.0.1", slow.port), timeout=10) as idle:  # connects, sends nothing
        assert wait_for_close(idle).startswith(b"HTTP/1.1 408")
    # a client that keeps its connection between requests is unaffected
    with httpx.Client(base_url=slow.url, timeout=30) as client:
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
            time.sleep(0.6)
