"""Capture benchmark: how fast each store takes captured exchanges, and what capture costs a request.

    python -m bench.capture [--exchanges 20000] [--postgres postgresql://postgres@127.0.0.1:5432/test]

For SQLite (a file in a temporary folder) and PostgreSQL (a fresh schema, dropped afterwards):

* store throughput: `Store.insert_exchanges` in batches of 1, 16, 64 and 256 realistic exchanges (a
  system prompt of ~1.5 kB, a user message, a JSON answer, usage) — exchanges written per second;
* the capture path as the gateway runs it: a `CaptureWriter` (bounded queue of 10,000, batches, flush
  interval) fed at `--rate` submissions per second (default 5,000, ~20x what one gateway core serves):
  the submit cost per request (µs, the only part on a request's path), drops, the deepest queue and the
  lag from the last submit to an empty queue; then one full queue at once: how fast the writer drains it.

Results: a table, and bench/results/capture-<date>-<commit>.json. End-to-end latency with capture on and off through a
real gateway is `bench.overhead`'s business (targets `protege` and `protege-nocapture`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.table import Table

from bench.results import write_result
from gateway.capture import CaptureWriter
from gateway.config import CaptureConfig
from gateway.metrics import Metrics
from gateway.store import Exchange, Store, open_store

REPO = Path(__file__).resolve().parents[1]
SYSTEM = "You are a support assistant. " * 50  # ~1.5 kB, like a real task's system prompt


def exchange(i: int, run: str) -> Exchange:
    answer = json.dumps({"order_id": str(10000 + i), "city": "Oslo", "product": "router", "issue": "late"})
    return Exchange(
        request_id=f"{run}-{i}", created_at=time.time(), task="bench", task_source="header", route="teacher",
        model="gpt-4o-mini", upstream_model="gpt-4o-mini", status="ok", http_status=200, stream=bool(i % 2),
        request={"messages": [{"role": "system", "content": SYSTEM},
                              {"role": "user", "content": f"Ticket {i}: my router to Oslo is late."}],
                 "params": {"temperature": 0}},
        response={"id": f"c{i}", "model": "gpt-4o-mini", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                  "usage": {"prompt_tokens": 380, "completion_tokens": 30}},
        user=f"u{i % 50}", prompt_tokens=380, completion_tokens=30, latency_ms=12.5, cost_usd=7.5e-5,
        finish_reason="stop", system_hash="abc123")


async def store_throughput(store: Store, total: int, batch: int) -> float:
    run = secrets.token_hex(4)
    items = [exchange(i, run) for i in range(total)]
    started = time.perf_counter()
    for start in range(0, total, batch):
        await store.insert_exchanges(items[start:start + batch])
    return total / (time.perf_counter() - started)


async def writer_path(store: Store, total: int, rate: float) -> dict[str, float]:
    """`total` exchanges submitted at `rate` per second (paced in 1 ms ticks, like requests arriving),
    then a burst of one full queue: the submit cost, drops, the writer's lag and its drain rate."""
    metrics = Metrics(CollectorRegistry())
    config = CaptureConfig(queue_size=10_000)
    writer = CaptureWriter(store, config, metrics)
    writer.start()
    run = secrets.token_hex(4)
    items = [exchange(i, run) for i in range(total + config.queue_size)]
    submit_ns: list[int] = []
    max_depth = 0
    started = time.perf_counter()
    for i, item in enumerate(items[:total]):
        due = started + i / rate
        if due > time.perf_counter():
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
        t0 = time.perf_counter_ns()
        writer.submit(item)
        submit_ns.append(time.perf_counter_ns() - t0)
        max_depth = max(max_depth, writer.depth)
    while writer.depth:
        await asyncio.sleep(0.005)
    lag = time.perf_counter() - started - (total - 1) / rate
    paced_dropped = _dropped(metrics)
    burst_started = time.perf_counter()
    for item in items[total:]:  # one full queue at once: how fast does the writer empty it?
        writer.submit(item)
    await writer.close()
    drain = config.queue_size / (time.perf_counter() - burst_started)
    submit_ns.sort()
    return {"rate": rate, "paced_dropped": paced_dropped, "max_queue_depth": max_depth, "lag_s": lag,
            "burst_dropped": _dropped(metrics) - paced_dropped, "drain_per_s": drain,
            "submit_p50_us": submit_ns[len(submit_ns) // 2] / 1000,
            "submit_p99_us": submit_ns[int(len(submit_ns) * 0.99)] / 1000}


def _dropped(metrics: Metrics) -> float:
    return sum(s.value for f in metrics.registry.collect() for s in f.samples
               if s.name == "protege_capture_dropped_exchanges_total")


async def bench_store(name: str, url: str, total: int, rate: float) -> dict[str, Any]:
    store = open_store(url)
    await store.open()
    try:
        result: dict[str, Any] = {"store": name}
        for batch in (1, 16, 64, 256):
            count = min(total, 2000) if batch == 1 else total
            result[f"batch_{batch}_per_s"] = await store_throughput(store, count, batch)
        result.update(await writer_path(store, total, rate))
        return result
    finally:
        await store.close()


def _postgres_schema(base: str) -> tuple[str, str]:
    schema = f"bench_{secrets.token_hex(4)}"
    subprocess.run(["psql", base, "-qc", f"CREATE SCHEMA {schema}"], check=True)
    joiner = "&" if "?" in base else "?"
    return f"{base}{joiner}search_path={schema}", schema


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.capture", description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=20_000, help="exchanges per measurement (default 20000)")
    parser.add_argument("--rate", type=float, default=5000, help="paced submissions per second for the writer "
                        "(default 5000: ~20x what one gateway core serves)")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test",
                        help="PostgreSQL server to measure ('' to skip)")
    args = parser.parse_args(argv)
    console = Console(width=140)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        results.append(asyncio.run(bench_store("sqlite", f"sqlite:///{tmp}/capture.db", args.exchanges, args.rate)))
    if args.postgres:
        url, schema = _postgres_schema(args.postgres)
        try:
            results.append(asyncio.run(bench_store("postgresql", url, args.exchanges, args.rate)))
        finally:
            subprocess.run(["psql", args.postgres, "-qc", f"SET client_min_messages = warning; "
                            f"DROP SCHEMA {schema} CASCADE"], check=False)
    table = Table(title=f"capture, {args.exchanges} exchanges of ~2 kB")
    for column in ("store", "batch 1/s", "batch 16/s", "batch 64/s", "batch 256/s", f"paced {args.rate:.0f}/s: drops",
                   "max queue", "lag s", "burst drain/s", "submit p50 µs", "submit p99 µs"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(r["store"], *(f"{r[f'batch_{b}_per_s']:,.0f}" for b in (1, 16, 64, 256)),
                      f"{r['paced_dropped']:.0f}", f"{r['max_queue_depth']}", f"{r['lag_s']:.2f}",
                      f"{r['drain_per_s']:,.0f}", f"{r['submit_p50_us']:.1f}", f"{r['submit_p99_us']:.1f}")
    console.print(table)
    out = write_result("capture", {"exchanges": args.exchanges, "rate": args.rate, "stores": results})
    console.print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
