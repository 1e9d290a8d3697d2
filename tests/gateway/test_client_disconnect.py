"""A client that goes away mid-stream: the gateway (a real `protege serve` process) notices at once, ends its
call to the teacher and records the exchange as incomplete (499) with what had arrived — not when the
teacher finally finishes."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from gateway.store import Exchange, Store
from tests.servers import start_gateway, stop
from tests.stores import read_store

KEY = "sk-gateway-disconnect-test-key-0123"
SLOW_S = 20.0  # how long the teacher would take to finish


class SlowTeacher:
    """An OpenAI-shaped streaming upstream: one chunk at once, the rest after SLOW_S seconds. It notes when the
    gateway closes the connection."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.closed_at: float | None = None
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    @staticmethod
    def _event(payload: dict[str, object]) -> bytes:
        data = b"data: " + orjson.dumps(payload) + b"\n\n"
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            delta = {"role": "assistant", "content": "Hello"}
            chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "slow",
                     "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                         + self._event(chunk))
            conn.settimeout(SLOW_S)
            try:
                if conn.recv(1) == b"":  # the gateway hung up
                    self.closed_at = time.monotonic()
            except TimeoutError:
                return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def teacher() -> Iterator[SlowTeacher]:
    server = SlowTeacher()
    yield server
    server.close()


def stream_and_leave(port: int) -> None:
    """Ask for a stream, read its first event, then close the connection."""
    body = orjson.dumps({"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"authorization: Bearer " + KEY.encode() + b"\r\n"
                     b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        received = b""
        while b"Hello" not in received:
            received += conn.recv(65536)
        assert received.startswith(b"HTTP/1.1 200")


def test_a_client_that_leaves_mid_stream_is_recorded_at_once(teacher: SlowTeacher, tmp_path: Path) -> None:
    store = tmp_path / "store.db"
    gateway = start_gateway(tmp_path, "--store", f"sqlite:///{store}", "--teacher", "openai/gpt-4o-mini",
                            "--teacher-api-base", f"{teacher.url}/v1", "--teacher-api-key", "sk-teacher",
                            env={"PROTEGE_GATEWAY_KEYS": KEY})
    try:
        left_at = time.monotonic()
        stream_and_leave(gateway.port)
        rows: list[Exchange] = []

        async def read(db: Store) -> None:
            rows[:] = await db.list_exchanges()

        deadline = time.monotonic() + 10
        while not rows and time.monotonic() < deadline:
            time.sleep(0.2)
            read_store(store, read)
    finally:
        stop(gateway.proc)
    [row] = rows
    assert (row.status, row.http_status, row.stream) == ("incomplete", 499, True)
    assert row.error == "client disconnected"
    assert row.response is not None and "Hello" in orjson.dumps(row.response).decode()  # what had arrived
    # the gateway hung up on the teacher when the client left, long before the teacher would have finished
    assert teacher.closed_at is not None and teacher.closed_at - left_at < 5
