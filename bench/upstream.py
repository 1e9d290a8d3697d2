"""A fixed-delay, OpenAI-compatible upstream ("teacher") for gateway overhead benchmarks.

It is a raw asyncio ``Protocol`` HTTP/1.1 server (httptools parser, uvloop when installed) with
keep-alive, so that one core answers thousands of requests per second and the upstream is never the
bottleneck of a benchmark.  Every answer is scheduled with ``loop.call_later``: no task per request, and
never early (a timer that fires before its time on uvloop's cached millisecond clock is re-armed).

Endpoints:

* ``POST /v1/chat/completions`` (and ``/chat/completions``):
  non-streaming: one small ``chat.completion`` after ``--delay-ms``;
  streaming (``"stream": true``): ``--stream-chunks`` SSE events spread evenly across the delay
  (event *k* of *N* at *k*·delay/*N*, so the first token comes at delay/*N* and the last event,
  followed by ``data: [DONE]``, at exactly the delay).  Response headers go out with the first event,
  as a real model sends them once prefill is done.  With ``stream_options.include_usage`` a usage
  chunk (``"choices": []``) precedes ``[DONE]``, as OpenAI does.
* ``GET /v1/models`` (and ``/models``): one model.
* ``GET /healthz`` and ``/health``: ``{"status": "ok"}``.

Run: ``python -m bench.upstream --port 9100 --delay-ms 50``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import signal
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import httptools
import orjson

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
_COMPLETION_PATHS = {b"/v1/chat/completions", b"/chat/completions"}
_MODELS_PATHS = {b"/v1/models", b"/models"}
_HEALTH_PATHS = {b"/healthz", b"/health"}
_CHUNK_WORDS = ("Hello", " from", " the", " bench", " upstream", ".")
_ids = itertools.count(1)


@dataclass(frozen=True)
class UpstreamConfig:
    """What the upstream answers and when."""

    delay_s: float = 0.05
    stream_chunks: int = 5
    model: str = "bench-model"


@dataclass
class _Request:
    method: bytes
    path: bytes
    body: bytes
    keep_alive: bool


@dataclass(frozen=True)
class _Stream:
    events: list[bytes]
    start: float
    step: float
    keep_alive: bool


def _head(status: int, content_type: bytes, *, length: int | None, keep_alive: bool) -> bytes:
    lines = [
        b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, "Error").encode()),
        b"content-type: " + content_type,
        b"content-length: %d" % length if length is not None else b"transfer-encoding: chunked",
        b"connection: keep-alive" if keep_alive else b"connection: close",
    ]
    if length is None:
        lines.append(b"cache-control: no-cache")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _json_response(status: int, payload: Any, keep_alive: bool) -> bytes:
    body = orjson.dumps(payload)
    return _head(status, b"application/json", length=len(body), keep_alive=keep_alive) + body


def _error(status: int, message: str, keep_alive: bool) -> bytes:
    return _json_response(
        status, {"error": {"message": message, "type": "invalid_request_error"}}, keep_alive
    )


def completion_payload(model: str) -> dict[str, Any]:
    """The fixed non-streaming answer."""
    return {
        "id": f"chatcmpl-bench-{next(_ids)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(_CHUNK_WORDS)},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 8,
            "completion_tokens": len(_CHUNK_WORDS),
            "total_tokens": 8 + len(_CHUNK_WORDS),
        },
    }


def _sse_chunk(data: bytes) -> bytes:
    """One SSE event framed as one HTTP/1.1 chunk."""
    event = b"data: " + data + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


def stream_events(model: str, n_chunks: int, include_usage: bool) -> list[bytes]:
    """The SSE body split into ``n_chunks`` writes; the last one carries ``[DONE]`` and the final chunk."""
    cid, created = f"chatcmpl-bench-{next(_ids)}", int(time.time())

    def chunk(delta: dict[str, str], finish: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
        return _sse_chunk(orjson.dumps({**base, "choices": [choice]}))

    n = max(1, n_chunks)
    words = [w for i, w in enumerate(_CHUNK_WORDS) if i < n - 1] or list(_CHUNK_WORDS[:1])
    events = [chunk({"role": "assistant", "content": words[0]}, None)]
    events += [chunk({"content": w}, None) for w in words[1:]]
    tail = chunk({}, "stop")
    if include_usage:
        usage = {"prompt_tokens": 8, "completion_tokens": len(words), "total_tokens": 8 + len(words)}
        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
        tail += _sse_chunk(orjson.dumps({**base, "choices": [], "usage": usage}))
    tail += _sse_chunk(b"[DONE]") + b"0\r\n\r\n"
    if len(events) >= n:  # n == 1: everything in one write
        return [b"".join(events) + tail]
    return [*events, tail]


class UpstreamProtocol(asyncio.Protocol):
    """One connection: parses requests with httptools and answers them in order (no pipelining races)."""

    def __init__(self, config: UpstreamConfig) -> None:
        self._config = config
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._queue: deque[_Request] = deque()
        self._busy = False
        self._timers: list[asyncio.TimerHandle] = []
        self._url = b""
        self._body: list[bytes] = []

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._write(_error(400, "malformed HTTP request", keep_alive=False), close=True)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url, self._body = b"", []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        method = self._parser.get_method()
        path = self._url.split(b"?", 1)[0]
        keep_alive = bool(self._parser.should_keep_alive())
        self._queue.append(_Request(method, path, b"".join(self._body), keep_alive))
        if not self._busy:
            self._next()

    # answering
    def _next(self) -> None:
        if not self._queue or self._transport is None:
            self._busy = False
            return
        self._busy = True
        self._timers = []  # the previous answer's timers have all fired by now
        self._route(self._queue.popleft())

    def _route(self, req: _Request) -> None:
        if req.path in _COMPLETION_PATHS:
            if req.method != b"POST":
                self._finish(_error(405, "use POST", req.keep_alive), req.keep_alive)
            else:
                self._chat(req)
        elif req.path in _MODELS_PATHS:
            models = {
                "object": "list",
                "data": [{"id": self._config.model, "object": "model", "owned_by": "bench"}],
            }
            self._finish(_json_response(200, models, req.keep_alive), req.keep_alive)
        elif req.path in _HEALTH_PATHS:
            self._finish(_json_response(200, {"status": "ok"}, req.keep_alive), req.keep_alive)
        else:
            self._finish(
                _error(404, f"no route {req.path.decode(errors='replace')}", req.keep_alive), req.keep_alive
            )

    def _chat(self, req: _Request) -> None:
        try:
            payload = orjson.loads(req.body)
            if not isinstance(payload, dict):
                raise ValueError("body must be a JSON object")
        except ValueError:
            self._finish(_error(400, "body must be a JSON object", req.keep_alive), req.keep_alive)
            return
        model = str(payload.get("model") or self._config.model)
        delay = self._config.delay_s
        if not payload.get("stream"):
            data = _json_response(200, completion_payload(model), req.keep_alive)
            self._later(delay, self._finish, data, req.keep_alive)
            return
        options = payload.get("stream_options") or {}
        include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
        events = stream_events(model, self._config.stream_chunks, include_usage)
        events[0] = _head(200, b"text/event-stream", length=None, keep_alive=req.keep_alive) + events[0]
        start, step = time.perf_counter(), delay / len(events)
        self._later(step, self._stream, _Stream(events, start, step, req.keep_alive), 0)

    def _stream(self, stream: _Stream, index: int) -> None:
        """Writes event ``index`` and only then arms the next one, so events can never be reordered."""
        if index == len(stream.events) - 1:
            self._finish(stream.events[index], stream.keep_alive)
            return
        self._write(stream.events[index])
        deadline = stream.start + stream.step * (index + 2)
        self._later(deadline - time.perf_counter(), self._stream, stream, index + 1)

    def _later(self, delay: float, fn: Any, *args: Any) -> None:
        self._timers.append(
            self._loop.call_later(delay, self._when_due, time.perf_counter() + delay, fn, args)
        )

    def _when_due(self, deadline: float, fn: Any, args: tuple[Any, ...]) -> None:
        """uvloop's timers use a cached millisecond clock and may fire early: never answer before time."""
        remaining = deadline - time.perf_counter()
        if remaining > 0:
            self._timers.append(self._loop.call_later(remaining, self._when_due, deadline, fn, args))
        else:
            fn(*args)

    def _write(self, data: bytes, close: bool = False) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        self._transport.write(data)
        if close:
            self._transport.close()

    def _finish(self, data: bytes, keep_alive: bool) -> None:
        self._write(data, close=not keep_alive)
        self._next()


async def start_upstream(host: str, port: int, config: UpstreamConfig) -> asyncio.Server:
    """Starts the server on the running loop (port 0 picks a free port: see ``server.sockets``)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: UpstreamProtocol(config), host, port, backlog=4096, reuse_address=True
    )


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.upstream",
        description="Fixed-delay OpenAI-compatible upstream for gateway overhead benchmarks "
        "(POST /v1/chat/completions, GET /v1/models, GET /healthz).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (keep it on loopback)")
    parser.add_argument("--port", type=int, default=9100, help="port to bind (0: any free port, printed)")
    parser.add_argument(
        "--delay-ms", type=float, default=50.0, help="time to the full answer (last SSE event)"
    )
    parser.add_argument(
        "--stream-chunks",
        type=int,
        default=5,
        help="SSE writes spread evenly across the delay (first at delay/N)",
    )
    parser.add_argument(
        "--model", default="bench-model", help="model id for /v1/models and a body without one"
    )
    parser.add_argument(
        "--no-uvloop", action="store_true", help="use the stdlib asyncio loop even if uvloop exists"
    )
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    config = UpstreamConfig(
        delay_s=args.delay_ms / 1000.0, stream_chunks=args.stream_chunks, model=args.model
    )
    server = await start_upstream(args.host, args.port, config)
    port = server.sockets[0].getsockname()[1]
    print(f"bench upstream on http://{args.host}:{port}/v1 delay={args.delay_ms}ms", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    runner: Any = asyncio.run
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            runner = uvloop.run
    runner(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
