"""Open-loop asyncio load generator for OpenAI-compatible chat completions.

Requests are sent on a fixed schedule (constant or Poisson inter-arrival) that never waits for
responses: each request is its own task, and its latency is measured from its *scheduled* send time,
so a slow server cannot slow the generator down and hide its own queueing (no coordinated omission).
See bench/README.md for why that matters.

The default client is a minimal HTTP/1.1 keep-alive client on raw asyncio streams (a pool that
grows to ``--max-connections``), far cheaper per request than httpx, so the generator is not the
bottleneck; ``--client httpx`` uses ``httpx.AsyncClient`` instead, as a cross-check.

Run: ``python -m bench.loadgen --url http://127.0.0.1:9100 --rate 100 --duration 10 [--stream] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import orjson

Arrival = Literal["constant", "poisson"]
ClientKind = Literal["raw", "httpx"]
_CONTENT_RE = re.compile(rb'"content"\s*:\s*"[^"]')
_DONE = b"data: [DONE]"
_MAX_IDLE_S = 2.0  # below uvicorn's 5 s keep-alive timeout, so we rarely race a server-side close


@dataclass(frozen=True)
class LoadConfig:
    """One load run: where, how fast, for how long, and what to send."""

    url: str
    rate: float
    duration: float
    warmup: float = 1.0
    stream: bool = False
    arrival: Arrival = "constant"
    timeout: float = 10.0
    max_connections: int = 1024
    path: str = "/v1/chat/completions"
    model: str = "bench-model"
    api_key: str = "sk-bench"
    client: ClientKind = "raw"
    seed: int = 0

    def body(self) -> bytes:
        payload: dict[str, Any] = {"model": self.model, "messages": [{"role": "user", "content": "hi"}]}
        if self.stream:
            payload["stream"] = True
        return orjson.dumps(payload)


@dataclass
class Percentiles:
    """Latency summary in milliseconds."""

    p50: float
    p90: float
    p99: float
    mean: float
    max: float
    min: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Percentiles | None:
        if not seconds:
            return None
        ordered = sorted(seconds)
        ms = [s * 1000.0 for s in ordered]
        return cls(
            p50=percentile(ms, 50),
            p90=percentile(ms, 90),
            p99=percentile(ms, 99),
            mean=sum(ms) / len(ms),
            max=ms[-1],
            min=ms[0],
        )


@dataclass
class LoadResult:
    """What a run measured; only requests scheduled after the warm-up count."""

    target_rate: float
    duration: float
    stream: bool
    client: str
    sent: int
    ok: int
    errors: int
    error_rate: float
    error_kinds: dict[str, int]
    sent_rate: float
    achieved_rate: float
    latency_ms: Percentiles | None
    ttft_ms: Percentiles | None
    dispatch_lag_ms: Percentiles | None
    connections_opened: int
    warmup_sent: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(ordered: Sequence[float], pct: float) -> float:
    """Linear-interpolated percentile of an already sorted sequence."""
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * pct / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def schedule(rate: float, total_s: float, arrival: Arrival, seed: int = 0) -> list[float]:
    """Send offsets in seconds from the start, in ``[0, total_s)``."""
    if rate <= 0 or total_s <= 0:
        return []
    if arrival == "constant":
        return [i / rate for i in range(math.ceil(total_s * rate - 1e-9))]
    rng, t = random.Random(seed), 0.0
    offsets: list[float] = []
    while True:
        t += rng.expovariate(rate)
        if t >= total_s:
            return offsets
        offsets.append(t)


# ---------------------------------------------------------------------------------------------- clients


@dataclass
class Outcome:
    """One response as the client saw it."""

    status: int
    ttft: float | None  # perf_counter() of the first content-bearing SSE event (streams only)
    complete: bool  # non-stream: body read; stream: ``data: [DONE]`` seen


class Client(Protocol):
    connections_opened: int

    async def send(self) -> Outcome: ...

    async def aclose(self) -> None: ...


class _StreamScan:
    """Finds the first token and the ``[DONE]`` marker in a body that arrives in pieces."""

    def __init__(self) -> None:
        self.tail = b""
        self.ttft: float | None = None
        self.done = False

    def feed(self, data: bytes) -> None:
        window = self.tail + data
        if self.ttft is None and _CONTENT_RE.search(window):
            self.ttft = time.perf_counter()
        if _DONE in window:
            self.done = True
        self.tail = window[-64:]


def _parse_head(head: bytes) -> tuple[int, dict[bytes, bytes]]:
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ValueError(f"bad status line {lines[0][:80]!r}")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().lower()] = value.strip().lower()
    return int(parts[1]), headers


class _StaleConnection(Exception):
    """A kept-alive connection that the server had closed before our request."""


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.used = False
        self.idle_since = 0.0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class RawClient:
    """HTTP/1.1 keep-alive client on asyncio streams: one request per connection at a time."""

    def __init__(self, config: LoadConfig) -> None:
        parts = urlsplit(config.url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"--url must be http://host:port, not {config.url!r}")
        self._host, self._port = parts.hostname, parts.port or 80
        self._stream = config.stream
        path = (parts.path.rstrip("/") + config.path) if parts.path not in ("", "/") else config.path
        body = config.body()
        accept = "text/event-stream" if config.stream else "application/json"
        self._request = (
            f"POST {path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
            f"Content-Type: application/json\r\nAccept: {accept}\r\n"
            f"Authorization: Bearer {config.api_key}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self._idle: list[_Conn] = []
        self._slots = asyncio.Semaphore(config.max_connections)
        self.connections_opened = 0

    async def send(self) -> Outcome:
        async with self._slots:
            conn = self._reuse()
            if conn is not None:
                try:
                    return await self._exchange_on(conn)
                except _StaleConnection:
                    pass  # the server closed it while idle: retry once on a fresh connection, as clients do
            return await self._exchange_on(await self._open())

    def _reuse(self) -> _Conn | None:
        now = time.perf_counter()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.idle_since < _MAX_IDLE_S and not conn.reader.at_eof():
                return conn
            conn.close()
        return None

    async def _exchange_on(self, conn: _Conn) -> Outcome:
        try:
            outcome, reusable = await self._exchange(conn)
        except BaseException:
            conn.close()
            raise
        if reusable:
            conn.idle_since = time.perf_counter()
            self._idle.append(conn)
        else:
            conn.close()
        return outcome

    async def _open(self) -> _Conn:
        reader, writer = await asyncio.open_connection(self._host, self._port, limit=1 << 20)
        self.connections_opened += 1
        return _Conn(reader, writer)

    async def _exchange(self, conn: _Conn) -> tuple[Outcome, bool]:
        try:
            conn.writer.write(self._request)
            head = await conn.reader.readuntil(b"\r\n\r\n")
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            if conn.used and not getattr(exc, "partial", b""):
                raise _StaleConnection from exc
            raise
        conn.used = True
        status, headers = _parse_head(head)
        scan = _StreamScan() if self._stream else None
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"")
        if chunked:
            await self._read_chunked(conn.reader, scan)
        elif b"content-length" in headers:
            data = await conn.reader.readexactly(int(headers[b"content-length"]))
            if scan is not None:
                scan.feed(data)
        else:
            await self._read_to_eof(conn.reader, scan)
            return Outcome(status, scan.ttft if scan else None, scan.done if scan else True), False
        reusable = headers.get(b"connection", b"") != b"close"
        return Outcome(status, scan.ttft if scan else None, scan.done if scan else True), reusable

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader, scan: _StreamScan | None) -> None:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, then the blank line
                    pass
                return
            data = await reader.readexactly(size + 2)
            if scan is not None:
                scan.feed(data[:-2])

    @staticmethod
    async def _read_to_eof(reader: asyncio.StreamReader, scan: _StreamScan | None) -> None:
        while data := await reader.read(65536):
            if scan is not None:
                scan.feed(data)

    async def aclose(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


class HttpxClient:
    """The same exchange through ``httpx.AsyncClient`` (a cross-check of the raw client)."""

    def __init__(self, config: LoadConfig) -> None:
        import httpx

        limits = httpx.Limits(
            max_connections=config.max_connections, max_keepalive_connections=config.max_connections
        )
        self._client = httpx.AsyncClient(base_url=config.url, limits=limits, timeout=None)
        self._path, self._body, self._stream = config.path, config.body(), config.stream
        self._headers = {"authorization": f"Bearer {config.api_key}", "content-type": "application/json"}
        self.connections_opened = 0  # httpx does not tell

    async def send(self) -> Outcome:
        request = self._client.build_request("POST", self._path, content=self._body, headers=self._headers)
        response = await self._client.send(request, stream=True)
        try:
            if not self._stream:
                await response.aread()
                return Outcome(response.status_code, None, True)
            scan = _StreamScan()
            async for data in response.aiter_raw():
                scan.feed(data)
            return Outcome(response.status_code, scan.ttft, scan.done)
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()


def make_client(config: LoadConfig) -> Client:
    return HttpxClient(config) if config.client == "httpx" else RawClient(config)


# ---------------------------------------------------------------------------------------------- the run


@dataclass
class _Sample:
    measured: bool
    end: float = 0.0
    latency: float | None = None
    ttft: float | None = None
    error: str | None = None


async def _one(client: Client, config: LoadConfig, when: float, sample: _Sample) -> None:
    try:
        async with asyncio.timeout(config.timeout):
            outcome = await client.send()
    except TimeoutError:
        sample.error = "timeout"
        return
    except Exception as exc:  # any client failure (reset, bad framing, ...) is an error, never a crash
        sample.error = type(exc).__name__
        return
    end = sample.end = time.perf_counter()
    if outcome.status != 200:
        sample.error = f"http_{outcome.status}"
    elif not outcome.complete:
        sample.error = "incomplete_stream"
    else:
        sample.latency = end - when
        sample.ttft = outcome.ttft - when if outcome.ttft is not None else None


async def run_load(config: LoadConfig) -> LoadResult:
    """Runs one open-loop load: ``warmup`` seconds not counted, then ``duration`` seconds counted."""
    offsets = schedule(config.rate, config.warmup + config.duration, config.arrival, config.seed)
    client = make_client(config)
    samples: list[_Sample] = []
    lags: list[float] = []
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter() + 0.02
    try:
        for offset in offsets:
            when = start + offset
            wait = when - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            measured = offset >= config.warmup
            sample = _Sample(measured)
            samples.append(sample)
            if measured:
                lags.append(max(0.0, time.perf_counter() - when))
            task = asyncio.create_task(_one(client, config, when, sample))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=config.timeout + 5.0)
    finally:
        leftovers = list(tasks)
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
        await client.aclose()
    return summarize(config, samples, lags, client.connections_opened, start + config.warmup)


def summarize(
    config: LoadConfig, samples: Sequence[_Sample], lags: Sequence[float], opened: int, window_start: float
) -> LoadResult:
    """Aggregates counted samples; achieved rate = OK answers / max(duration, time to the last one)."""
    counted = [s for s in samples if s.measured]
    ok = [s for s in counted if s.error is None and s.latency is not None]
    kinds = Counter(s.error or "unfinished" for s in counted if s.latency is None)
    errors = sum(kinds.values())
    span = max([config.duration, *(s.end - window_start for s in ok)])
    notes = []
    lag = Percentiles.of(lags)
    if lag is not None and lag.p99 > 5.0:
        notes.append(f"load generator fell behind its schedule (dispatch lag p99 {lag.p99:.1f} ms)")
    return LoadResult(
        target_rate=config.rate,
        duration=config.duration,
        stream=config.stream,
        client=config.client,
        sent=len(counted),
        ok=len(ok),
        errors=errors,
        error_rate=errors / len(counted) if counted else 0.0,
        error_kinds=dict(kinds),
        sent_rate=len(counted) / config.duration if config.duration else 0.0,
        achieved_rate=len(ok) / span if span > 0 else 0.0,
        latency_ms=Percentiles.of([s.latency for s in ok if s.latency is not None]),
        ttft_ms=Percentiles.of([s.ttft for s in ok if s.ttft is not None]) if config.stream else None,
        dispatch_lag_ms=lag,
        connections_opened=opened,
        warmup_sent=len(samples) - len(counted),
        notes=notes,
    )


# ---------------------------------------------------------------------------------------------- CLI


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loadgen",
        description="Open-loop load generator: POSTs chat completions at a fixed rate, never waiting for "
        "answers, and reports latency from each request's scheduled send time.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--url", required=True, help="base URL of the server, e.g. http://127.0.0.1:9100")
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds at the same rate before measuring")
    parser.add_argument(
        "--stream", action="store_true", help="request SSE streams (adds time to first token)"
    )
    parser.add_argument(
        "--arrival", choices=["constant", "poisson"], default="constant", help="inter-arrival law"
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="per-request timeout in seconds (an error)"
    )
    parser.add_argument("--max-connections", type=int, default=1024, help="connection pool size")
    parser.add_argument("--path", default="/v1/chat/completions", help="request path")
    parser.add_argument("--model", default="bench-model", help="model field of the request")
    parser.add_argument("--api-key", default="sk-bench", help="sent as Authorization: Bearer")
    parser.add_argument(
        "--client", choices=["raw", "httpx"], default="raw", help="HTTP client implementation"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the Poisson schedule")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.add_argument(
        "--no-uvloop", action="store_true", help="use the stdlib asyncio loop even if uvloop exists"
    )
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    return LoadConfig(
        url=args.url,
        rate=args.rate,
        duration=args.duration,
        warmup=args.warmup,
        stream=args.stream,
        arrival=args.arrival,
        timeout=args.timeout,
        max_connections=args.max_connections,
        path=args.path,
        model=args.model,
        api_key=args.api_key,
        client=args.client,
        seed=args.seed,
    )


def format_result(result: LoadResult) -> str:
    def pct(p: Percentiles | None) -> str:
        return (
            "n/a" if p is None else f"p50 {p.p50:.2f}  p90 {p.p90:.2f}  p99 {p.p99:.2f}  max {p.max:.2f} ms"
        )

    mode = "stream" if result.stream else "non-stream"
    errors = f"errors {result.errors} ({result.error_rate:.2%}) {result.error_kinds}"
    lines = [
        f"{mode} @ {result.target_rate:g} req/s for {result.duration:g} s "
        f"({result.client} client, {result.connections_opened} connections)",
        f"  sent {result.sent}  ok {result.ok}  {errors}",
        f"  achieved {result.achieved_rate:.1f} req/s (sent {result.sent_rate:.1f} req/s)",
        f"  latency  {pct(result.latency_ms)}",
    ]
    if result.stream:
        lines.append(f"  ttft     {pct(result.ttft_ms)}")
    lines.append(f"  dispatch lag {pct(result.dispatch_lag_ms)}")
    lines += [f"  note: {n}" for n in result.notes]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    config = config_from_args(args)
    runner: Any = asyncio.run
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            runner = uvloop.run
    result: LoadResult = runner(run_load(config))
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(result.to_dict()) + b"\n")
    else:
        print(format_result(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
