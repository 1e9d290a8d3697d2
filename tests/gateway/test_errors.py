"""Every failure is OpenAI's error body with the right status; never a 500 for bad input, never a hang.

The HTTP contract is checked against the app in this process (`tests.inprocess`), in front of real
upstreams (llm-katan, with failure injection); uvicorn's header and body timeouts against slow-loris
clients need a real socket, so they run against a `protege serve` process."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest

from tests.conftest import teacher_flags
from tests.inprocess import InProcessGateway, inprocess_gateway, poll, settings_for
from tests.servers import Server, free_port, start_gateway, stop

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def assert_openai_error(response: httpx2.Response, status: int, param: str | None = None) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param
    return dict(error)


@pytest.fixture(scope="module")
def gateway(katan: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    """One gateway for the bad-input tests (they do not change its state)."""
    tmp_path = tmp_path_factory.mktemp("errors")
    with inprocess_gateway(settings_for(katan, tmp_path / "store.db", config={"max_body_bytes": 4096})) as gateway:
        yield gateway


def post_in_chunks(gateway: InProcessGateway, path: str, chunks: list[bytes]) -> tuple[httpx2.Response, int]:
    """POST a body without Content-Length to the app, one ASGI message per chunk, as a server hands a
    chunked body over (the test client sends any body as one message). Returns the response and how
    many chunks the app asked for."""
    app: Any = gateway.client.app

    async def call() -> tuple[httpx2.Response, int]:
        pending = list(chunks)
        asked = 0
        done = asyncio.Event()
        start: dict[str, Any] = {}
        body: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal asked
            if pending:
                asked += 1
                return {"type": "http.request", "body": pending.pop(0), "more_body": bool(pending)}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    done.set()

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
                 "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                             (b"transfer-encoding", b"chunked")],
                 "client": ("127.0.0.1", 50000), "server": ("testserver", 80), "state": {}}
        await app(scope, receive, send)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start["headers"]]
        return httpx2.Response(start["status"], headers=headers, content=b"".join(body)), asked

    result: tuple[httpx2.Response, int] = gateway.run(call())
    return result


@pytest.mark.parametrize(("body", "param"), [
    (b"{not json", None),
    (b"", None),
    (b"[1, 2]", None),
    (b"\xff\xfe{}", None),
    (b'{"model": "m"}', "messages"),
    (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
    (b'{"model": "m", "messages": []}', "messages"),
    (b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}', "messages[0].role"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', "temperature"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 100000}', "n"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}', "max_tokens"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}',
     "tools[0].function"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "metadata": {"task": 5}}', "metadata.task"),
])
def test_bad_request_bodies_get_400(gateway: InProcessGateway, body: bytes, param: str | None) -> None:
    response = gateway.client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    error = assert_openai_error(response, 400, param)
    assert error["type"] == "invalid_request_error"


def test_bad_task_header_gets_400(gateway: InProcessGateway) -> None:
    response = gateway.client.post("/v1/chat/completions", json=CHAT, headers={"X-Protege-Task": "a b/c"})
    assert_openai_error(response, 400, "X-Protege-Task")


def test_unknown_route_and_wrong_method(gateway: InProcessGateway) -> None:
    assert_openai_error(gateway.client.get("/v1/nothing-here"), 404)
    assert_openai_error(gateway.client.get("/v1/chat/completions"), 405)


def test_body_over_limit_gets_413(gateway: InProcessGateway) -> None:
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * 10_000}]}
    assert_openai_error(gateway.client.post("/v1/chat/completions", json=big), 413)

    def parts() -> list[bytes]:  # no Content-Length: the limit holds while reading
        return [b'{"model": "m", "messages": [{"role": "user", "content": "', *[b"x" * 1000] * 10, b'"}]}']

    response = gateway.client.post("/v1/chat/completions", content=iter(parts()),
                                   headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert_openai_error(response, 413)
    # chunk by chunk, the app stops reading once the limit (4096 bytes) is passed
    response, asked = post_in_chunks(gateway, "/v1/chat/completions", parts())
    assert_openai_error(response, 413)
    assert asked == 6 < len(parts())


def test_gateway_keys_required_when_configured(katan: Server, tmp_path: Path) -> None:
    with inprocess_gateway(settings_for(katan, tmp_path / "s.db", gateway_keys="gk-one,gk-two")) as gateway:
        url = "/v1/chat/completions"
        assert_openai_error(gateway.client.post(url, json=CHAT), 401)
        assert_openai_error(gateway.client.post(url, json=CHAT, headers={"authorization": "Bearer wrong"}), 401)
        assert gateway.client.post(url, json=CHAT, headers={"authorization": "Bearer gk-two"}).status_code == 200
        with pytest.raises(openai.AuthenticationError):
            gateway.openai(api_key="nope").models.list()


def test_keys_added_by_cli_are_accepted_without_restart(katan: Server, tmp_path: Path) -> None:
    """The `protege keys` CLI (a separate process) changes the store under a running gateway."""
    store = tmp_path / "s.db"
    with inprocess_gateway(settings_for(katan, store, gateway_keys="gk-config")) as gateway:
        out = subprocess.run([sys.executable, "-m", "protege", "keys", "add", "--name", "app", "--store",
                              f"sqlite:///{store}"], check=True, capture_output=True, text=True).stdout
        key = out.split(": ", 1)[1].split()[0]
        listing = subprocess.run([sys.executable, "-m", "protege", "keys", "list", "--json", "--store",
                                  f"sqlite:///{store}"], check=True, capture_output=True, text=True).stdout
        assert key not in listing and '"name":"app"' in listing
        assert key not in store.read_bytes().decode("latin-1")  # hashed at rest
        client = gateway.openai(api_key=key)

        def accepted() -> bool:
            try:
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
            except openai.AuthenticationError:
                return False
            return True

        # the key ring refreshes from the store every few seconds
        poll(accepted, timeout=10, interval=0.2, what="the gateway to accept the key the CLI added")


def test_teacher_429_is_passed_on(katan_factory: Callable[..., Server], tmp_path: Path) -> None:
    limited = katan_factory("--rate-limit-after", "1")
    with inprocess_gateway(settings_for(limited, tmp_path / "s.db")) as gateway:
        url = "/v1/chat/completions"
        assert gateway.client.post(url, json=CHAT).status_code == 200
        error = assert_openai_error(gateway.client.post(url, json=CHAT), 429)
        assert error["type"] == "rate_limit_error"
        # a stream that fails before its first chunk gets the same status, not a 200 with an error event
        assert_openai_error(gateway.client.post(url, json={**CHAT, "stream": True}), 429)


def test_teacher_unreachable_is_502(tmp_path: Path) -> None:
    settings = settings_for(None, tmp_path / "s.db", teacher="openai/gpt-4o-mini",
                            teacher_api_base=f"http://127.0.0.1:{free_port()}/v1",
                            teacher_api_key="sk-secret-never-shown-123")
    with inprocess_gateway(settings) as gateway:
        response = gateway.client.post("/v1/chat/completions", json=CHAT)
    error = assert_openai_error(response, 502)
    assert "sk-secret" not in response.text
    assert error["type"] == "upstream_error"


def test_teacher_timeout_is_504(katan_factory: Callable[..., Server], tmp_path: Path) -> None:
    slow = katan_factory("--latency-ms", "5000", "--max-concurrent", "10")
    with inprocess_gateway(settings_for(slow, tmp_path / "s.db", config={"timeout_s": 0.5})) as gateway:
        started = time.monotonic()
        response = gateway.client.post("/v1/chat/completions", json=CHAT)
        assert time.monotonic() - started < 3
    assert response.elapsed.total_seconds() < 3
    assert_openai_error(response, 504)


def test_teacher_rejecting_gateway_credentials_does_not_leak_them(
        katan_factory: Callable[..., Server], tmp_path: Path, caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)  # every record of every logger, where the process logged warnings only
    # and the loggers `protege` commands quieten when they configure logging (run in-process earlier)
    for name in ("httpx", "httpcore", "protege"):
        caplog.set_level(logging.DEBUG, logger=name)
    strict = katan_factory("--validate-keys", "--api-keys", "openai=the-right-key")
    with inprocess_gateway(settings_for(strict, tmp_path / "s.db")) as gateway:
        response = gateway.client.post("/v1/chat/completions", json=CHAT)
    assert_openai_error(response, 502)
    output = caplog.text + "".join(capfd.readouterr())
    assert f"{strict.url}/v1/chat/completions" in output  # the app's records are the ones captured
    assert "sk-upstream-secret" not in response.text and "sk-upstream-secret" not in output


@pytest.fixture(scope="module")
def slow_loris_gateway(katan: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real `protege serve` (uvicorn on a socket) with short body and header deadlines."""
    tmp_path = tmp_path_factory.mktemp("slow-loris")
    config = tmp_path / "protege.yaml"
    config.write_text("body_timeout_s: 1\nheader_timeout_s: 1\n")
    server = start_gateway(tmp_path, "--config", str(config), *teacher_flags(katan, tmp_path / "store.db"))
    yield server
    stop(server.proc)


def test_a_slow_loris_body_gets_a_408(slow_loris_gateway: Server) -> None:
    with socket.create_connection(("127.0.0.1", slow_loris_gateway.port), timeout=10) as sock:
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


def test_slow_loris_headers_get_a_408_and_the_connection_is_closed(slow_loris_gateway: Server) -> None:
    def wait_for_close(sock: socket.socket) -> bytes:
        answer = b""
        while data := sock.recv(4096):
            answer += data
        return answer

    with socket.create_connection(("127.0.0.1", slow_loris_gateway.port), timeout=10) as trickle:
        trickle.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # and the rest never comes
        started = time.monotonic()
        answer = wait_for_close(trickle)
    assert time.monotonic() - started < 5
    assert answer.startswith(b"HTTP/1.1 408") and b"header_timeout" in answer
    with socket.create_connection(("127.0.0.1", slow_loris_gateway.port), timeout=10) as idle:  # sends nothing
        assert wait_for_close(idle).startswith(b"HTTP/1.1 408")
    # a client that keeps its connection between requests is unaffected
    with httpx.Client(base_url=slow_loris_gateway.url, timeout=30) as client:
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
            time.sleep(0.6)  # idle on the open connection, longer in all than the header deadline: the behaviour
