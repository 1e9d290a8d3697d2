"""A task's cost report over a window, as the console builds it: added up in the store (`window_report`,
`Store.exchange_groups`) against reading every row of the window and adding it up in Python — with the
message bodies (what the console did before 88bb7a2) and without (`read_exchanges` + `task_report`, what
`protege report` did until it used `window_report` too). Medians of three runs after a warm-up.

    python -m bench.console_report [--exchanges 50000] [--stores sqlite,postgresql]

Rows are captured-like exchanges of ~2 kB (a 1.5 kB system prompt, a JSON answer) with a realistic route mix:
teacher, student (with its teacher-only estimate), fallback (with the rejected attempt's cost), and shadow
rows (with their agreement). Each way is timed three times after one warm-up; the reports must agree.
PostgreSQL at postgresql://postgres@127.0.0.1:5432/test, in a schema of its own that is dropped afterwards. The raw
result goes to bench/results/console_report-<date>-<commit>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.capture import SYSTEM
from bench.results import write_result
from gateway.savings import read_exchanges, task_report
from gateway.store import Exchange, ExchangeExtra, Store, open_store
from gateway.window_report import window_report

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def exchange(i: int, start: float, span_s: float) -> Exchange:
    route = ("teacher", "student", "student", "student", "fallback", "shadow")[i % 6]
    extra: dict[str, Any] = {"price_source": "list price (gpt-4o-mini in litellm's bundled price map)"}
    if route == "student":
        extra |= {"counterfactual_cost_usd": 7.5e-5, "student": {"version": 1, "confidence": -0.2}}
    elif route == "fallback":
        extra |= {"student": {"version": 1, "confidence": -2.0, "reason": "low_confidence", "cost_usd": 2e-6}}
    elif route == "shadow":
        extra |= {"shadow": {"version": 1, "agreement": 1.0 if i % 12 else 0.5}}
    answer = json.dumps({"order_id": str(10000 + i), "city": "Oslo", "product": "router", "issue": "late"})
    return Exchange(
        request_id=f"req-{i:08d}", created_at=start + span_s * i / 1e6, task="bench", task_source="header",
        route=route, model="gpt-4o-mini", upstream_model="gpt-4o-mini", status="ok", http_status=200, stream=False,
        request={"messages": [{"role": "system", "content": SYSTEM},
                              {"role": "user", "content": f"Ticket {i}: my router to Oslo is late."}]},
        response={"choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                               "finish_reason": "stop"}], "usage": {"prompt_tokens": 380, "completion_tokens": 30}},
        prompt_tokens=380, completion_tokens=30, cost_usd=3e-6 if route == "student" else 7.5e-5,
        finish_reason="stop", extra=ExchangeExtra.from_json(extra))


async def timed(what: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    value = await what()
    return time.perf_counter() - started, value


async def measure(store: Store, total: int) -> dict[str, Any]:
    now = time.time()
    start = now - 30 * 86400
    span = 30 * 86400 * 1e6 / total
    for first in range(0, total, 1000):
        await store.insert_exchanges([exchange(i, start, span) for i in range(first, min(total, first + 1000))])

    async def bodies_way() -> Any:  # before 88bb7a2: every row with its request and response, then dropped
        found: list[Exchange] = []
        after: tuple[float, str] | None = (start, "")
        while page := await store.list_exchanges(task="bench", limit=5000, after=after):
            found += page
            after = (page[-1].created_at, page[-1].request_id)
        return task_report("bench", found, [], now=now)

    async def rows_way() -> Any:
        exchanges = await read_exchanges(store, task="bench", start=start)
        return task_report("bench", exchanges, [], now=now)

    async def sums_way() -> Any:
        return await window_report(store, "bench", [], since=start, now=now)

    times: dict[str, list[float]] = {"bodies": [], "rows": [], "sums": []}
    reports: dict[str, Any] = {}
    for name, way in (("bodies", bodies_way), ("rows", rows_way), ("sums", sums_way)):
        await way()  # warm-up: caches, prepared statements
        for _ in range(3):
            seconds, reports[name] = await timed(way)
            times[name].append(seconds)
    a, b = reports["rows"].to_dict(), reports["sums"].to_dict()
    def same(x: dict[str, Any], y: dict[str, Any]) -> bool:
        return all(abs(x[k] - y[k]) <= 1e-9 * max(1.0, abs(x[k])) if isinstance(x[k], float) else x[k] == y[k]
                   for k in x)

    agree = same(a, b) and same(reports["bodies"].to_dict(), b)
    medians = {name: statistics.median(seconds) for name, seconds in times.items()}
    return {"exchanges": total, "seconds": times, "median_s": medians,
            "speedup_vs_bodies": medians["bodies"] / medians["sums"],
            "speedup_vs_rows": medians["rows"] / medians["sums"],
            "reports_agree": agree, "requests": b["requests"], "routes": b["routes"],
            "live_comparisons": b["live_comparisons"], "savings_usd": b["savings_usd"]}


async def run(stores: list[str], total: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in stores:
        if name == "sqlite":
            with tempfile.TemporaryDirectory() as folder:
                store = open_store(f"sqlite:///{Path(folder) / 'bench.db'}")
                await store.open()
                try:
                    results[name] = await measure(store, total)
                finally:
                    await store.close()
        else:
            import asyncpg

            schema = f"bench_{secrets.token_hex(4)}"
            admin = await asyncpg.connect(PG_URL)
            await admin.execute(f"CREATE SCHEMA {schema}")
            try:
                store = open_store(f"{PG_URL}?search_path={schema}")  # as bench.capture does
                await store.open()
                try:
                    results[name] = await measure(store, total)
                finally:
                    await store.close()
            finally:
                await admin.execute(f"DROP SCHEMA {schema} CASCADE")
                await admin.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--exchanges", type=int, default=50_000, help="rows in the window (default 50000)")
    parser.add_argument("--stores", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    args = parser.parse_args(argv)
    results = asyncio.run(run([s.strip() for s in args.stores.split(",") if s.strip()], args.exchanges))
    table = Table(title=f"A 30-day window of {args.exchanges:,} exchanges: the task's cost report")
    for column in ("store", "every row with bodies (s)", "every row, no bodies (s)", "added up in the store (s)",
                   "speedup vs bodies / rows", "same report"):
        table.add_column(column)
    for name, r in results.items():
        m = r["median_s"]
        table.add_row(name, f"{m['bodies']:.3f}", f"{m['rows']:.3f}", f"{m['sums']:.3f}",
                      f"{r['speedup_vs_bodies']:.1f}× / {r['speedup_vs_rows']:.1f}×", str(r["reports_agree"]))
    Console().print(table)
    out = write_result("console_report", {"exchanges": args.exchanges, "stores": results})
    print(f"raw result: {out}")
    return 0 if all(r["reports_agree"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
