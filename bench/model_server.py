"""Benchmark of the embedded model server with the real SmolLM2-135M-Instruct (CPU).

    python -m bench.model_server [--max-tokens 96] [--rounds 4] [--threads N]

Measures completion tokens per second of wall time for three ways of generating:

* raw: a plain transformers `generate` loop, batch 1, greedy, in this process (chat template,
  tokenisation and decoding included, as the server does them);
* server, 1 client: one request at a time through the HTTP API (openai SDK);
* server, 8 clients: 8 concurrent clients, one request each.

The three are interleaved, round by round (raw, 1 client, 8 clients, raw, ...), so that load from
other processes on a shared machine hits all of them alike.

    python -m bench.model_server --prefix-reuse [--rounds 4]

measures teacher-style traffic instead — the demo task's long system prompt before every ticket, the way
the embedded model answers as a teacher — on two servers, prefix reuse on (`--prefix-cache-mb` default)
and off (`0`), alternated round by round: each round streams the same tickets one at a time (time to the
first token, p50/p95) and 8 at once (completion tokens per second of wall time). Every request generates exactly
`--max-tokens` tokens (`min_new_tokens` for raw, vLLM's `ignore_eos` for the server). The server's
peak RSS is read from /proc/<pid>/status (VmHWM). Results are printed as a table and written to
bench/results/model_server-<date>-<commit>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
from rich.console import Console
from rich.table import Table

from bench.results import write_result

REPO = Path(__file__).resolve().parents[1]
SERVED = "smollm2-135m-instruct"
PROMPTS = [
    "Write a long story about a dragon who learns to cook.",
    "Explain in detail how a steam engine works.",
    "Describe a walk through a busy market in a big city.",
    "Write a letter to a friend about your summer holidays.",
    "Explain why the sky is blue, step by step.",
    "Describe the history of the bicycle.",
    "Write a poem about the sea and the wind.",
    "Give advice to someone starting to learn the piano.",
]


def _messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def raw_generator(max_tokens: int, threads: int) -> Callable[[str], int]:
    """A function generating one completion with plain transformers; returns its token count."""
    import torch

    from model_server.model_loading import load_default_model

    torch.set_num_threads(threads)
    loaded = load_default_model()
    model, tokenizer = loaded.model, loaded.tokenizer

    def one(prompt: str) -> int:  # what a server does for one request, minus HTTP
        text = tokenizer.apply_chat_template(_messages(prompt), add_generation_prompt=True, tokenize=False)
        inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        new = out[0, inputs["input_ids"].shape[1]:]
        tokenizer.decode(new, skip_special_tokens=True)
        return int(new.shape[0])

    return one


def start_server(threads: int, max_batch: int, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    cmd = [sys.executable, "-m", "model_server.server", "--port", "0", "--threads", str(threads),
           "--max-batch", str(max_batch), "--log-level", "warning", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO)
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode(errors="replace").strip()
        if match := re.search(r"model server ready on (http://\S+)", line):
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep draining its output
            return proc, match.group(1)
    raise RuntimeError(f"the model server exited with {proc.wait()}")


async def _request(api: openai.AsyncOpenAI, prompt: str, max_tokens: int) -> int:
    response = await api.chat.completions.create(
        model=SERVED, messages=_messages(prompt), max_tokens=max_tokens, temperature=0,  # type: ignore[arg-type]
        extra_body={"ignore_eos": True},
    )
    assert response.usage is not None
    return int(response.usage.completion_tokens)


class Tally:
    def __init__(self) -> None:
        self.requests = 0
        self.tokens = 0
        self.wall = 0.0

    def add(self, requests: int, tokens: int, wall: float) -> None:
        self.requests += requests
        self.tokens += tokens
        self.wall += wall

    def summary(self, **extra: Any) -> dict[str, Any]:
        return {**extra, "requests": self.requests, "completion_tokens": self.tokens, "wall_s": self.wall,
                "tokens_per_s": self.tokens / self.wall if self.wall else 0.0}


async def run_rounds(url: str, raw: Callable[[str], int], rounds: int, max_tokens: int,
                     console: Console) -> tuple[Tally, Tally, Tally]:
    raw_t, one_t, eight_t = Tally(), Tally(), Tally()
    async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600) as api:
        raw(PROMPTS[0])  # warm-up, both sides
        await _request(api, PROMPTS[0], 8)
        for r in range(rounds):
            prompt = PROMPTS[r % len(PROMPTS)]
            started = time.perf_counter()
            tokens = raw(prompt)
            raw_t.add(1, tokens, time.perf_counter() - started)

            started = time.perf_counter()
            tokens = await _request(api, prompt, max_tokens)
            one_t.add(1, tokens, time.perf_counter() - started)

            started = time.perf_counter()
            counts = await asyncio.gather(*(_request(api, p, max_tokens) for p in PROMPTS[:8]))
            eight_t.add(8, sum(counts), time.perf_counter() - started)
            console.print(f"round {r + 1}/{rounds}: raw {raw_t.tokens / raw_t.wall:.1f}, "
                          f"1 client {one_t.tokens / one_t.wall:.1f}, 8 clients {eight_t.tokens / eight_t.wall:.1f} "
                          "tokens/s so far")
    return raw_t, one_t, eight_t


def peak_rss_mib(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in {"VmHWM", "VmRSS"}:
            fields[key] = int(value.split()[0]) / 1024
    return {"peak_rss_mib": fields.get("VmHWM", 0.0), "rss_mib": fields.get("VmRSS", 0.0)}


# --- prefix reuse: teacher-style traffic, the cache on and off ------------------------------------------

async def _streamed(api: openai.AsyncOpenAI, messages: list[dict[str, str]], max_tokens: int) -> tuple[float, int]:
    """(seconds to the first content token, completion tokens) of one streamed answer."""
    started, first = time.perf_counter(), None
    stream = await api.chat.completions.create(
        model=SERVED, messages=messages, max_tokens=max_tokens, temperature=0, stream=True,  # type: ignore[call-overload]
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    tokens = 0
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - started
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return (first if first is not None else time.perf_counter() - started), tokens


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def prefix_rounds(urls: dict[str, str], tickets: list[list[dict[str, str]]], rounds: int, max_tokens: int,
                        console: Console) -> dict[str, dict[str, Any]]:
    ttft: dict[str, list[float]] = {name: [] for name in urls}
    tally = {name: Tally() for name in urls}
    apis = {name: openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
            for name, url in urls.items()}
    for api in apis.values():  # warm-up (and, with reuse on, the first sight of the system prompt)
        await _streamed(api, tickets[0], 4)
    for r in range(rounds):
        batch = tickets[(r * 8) % len(tickets):][:8]
        for name, api in apis.items():
            for messages in batch:  # one at a time: time to first token
                seconds, _ = await _streamed(api, messages, max_tokens)
                ttft[name].append(seconds)
            started = time.perf_counter()
            done = await asyncio.gather(*(_streamed(api, m, max_tokens) for m in batch))
            tally[name].add(len(batch), sum(t for _, t in done), time.perf_counter() - started)
        console.print(f"round {r + 1}/{rounds}: " + ", ".join(
            f"{name}: TTFT p50 {_percentile(ttft[name], 0.5) * 1000:.0f} ms, "
            f"{tally[name].tokens / tally[name].wall:.1f} tokens/s (8 clients)" for name in urls))
    for api in apis.values():
        await api.close()
    return {name: {**tally[name].summary(clients=8), "ttft_ms": {
        "p50": _percentile(ttft[name], 0.5) * 1000, "p95": _percentile(ttft[name], 0.95) * 1000,
        "n": len(ttft[name])}} for name in urls}


def prefix_reuse(args: argparse.Namespace, console: Console) -> int:
    from distiller.demo.workload import SYSTEM_PROMPT, build_workload

    workload = build_workload(64, seed=1)
    tickets = [workload.messages(t) for t in workload.tickets]
    console.print(f"teacher-style requests: a {len(SYSTEM_PROMPT)}-character system prompt before every ticket")
    servers = {"reuse on": start_server(args.threads, 8),
               "reuse off": start_server(args.threads, 8, "--prefix-cache-mb", "0")}
    try:
        measured = asyncio.run(prefix_rounds({n: url for n, (_, url) in servers.items()}, tickets, args.rounds,
                                             args.max_tokens, console))
        engines = {name: httpx.get(f"{url}/readyz").json().get("engine", {}) for name, (_, url) in servers.items()}
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=30)
    on, off = measured["reuse on"], measured["reuse off"]
    table = Table(title=f"model server, teacher-style requests, {args.threads} threads, {args.max_tokens} new "
                        f"tokens/request, {args.rounds} rounds")
    for column in ("prefix reuse", "TTFT p50 ms", "TTFT p95 ms", "tokens/s (8 clients)", "prompt tokens reused"):
        table.add_column(column, justify="left" if column == "prefix reuse" else "right")
    for name, figures in measured.items():
        engine = engines[name]
        table.add_row(name, f"{figures['ttft_ms']['p50']:.0f}", f"{figures['ttft_ms']['p95']:.0f}",
                      f"{figures['tokens_per_s']:.1f}",
                      f"{engine.get('prefix_tokens_reused', 0)} of {engine.get('prompt_tokens', 0)}")
    console.print(table)
    result = {
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "python": platform.python_version()},
        "workload": {"system_prompt_chars": len(SYSTEM_PROMPT), "tickets": len(tickets),
                     "max_tokens": args.max_tokens, "rounds": args.rounds},
        "reuse_on": on, "reuse_off": off, "engines": engines,
        "ttft_p50_speedup": off["ttft_ms"]["p50"] / on["ttft_ms"]["p50"],
        "tokens_per_s_ratio": on["tokens_per_s"] / off["tokens_per_s"],
    }
    console.print(f"wrote {write_result('model_server_prefix', result, args.output)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.model_server", description=__doc__.splitlines()[0])
    parser.add_argument("--prefix-reuse", action="store_true", help="teacher-style requests with prefix reuse on "
                        "and off, instead of the raw / 1 client / 8 clients comparison")
    parser.add_argument("--max-tokens", type=int, default=96, help="completion tokens per request (default 96)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="rounds of (raw, 1 client, 8 clients) (default 4)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads, raw and server alike (default: all cores)")
    parser.add_argument("--output", type=Path, default=None, help="JSON results file (default: "
                        "bench/results/model_server-<date>-<commit>.json)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    hf_logging: Any = transformers.utils.logging
    hf_logging.disable_progress_bar()
    console = Console()
    if args.prefix_reuse:
        return prefix_reuse(args, console)
    console.print("loading SmolLM2 for the raw baseline (builds the cache on first use) …")
    raw = raw_generator(args.max_tokens, args.threads)
    console.print("starting the model server …")
    started = time.perf_counter()
    proc, url = start_server(args.threads, 8)
    startup = time.perf_counter() - started
    try:
        raw_t, one_t, eight_t = asyncio.run(run_rounds(url, raw, args.rounds, args.max_tokens, console))
        memory = peak_rss_mib(proc.pid)
        stats = httpx.get(f"{url}/readyz").json().get("engine", {})
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    raw_r, one, eight = raw_t.summary(batch=1), one_t.summary(clients=1), eight_t.summary(clients=8)
    ratio_1 = one["tokens_per_s"] / raw_r["tokens_per_s"]
    ratio_8 = eight["tokens_per_s"] / one["tokens_per_s"]
    table = Table(title=f"model server, SmolLM2-135M-Instruct fp32, {args.threads} threads, "
                        f"{args.max_tokens} new tokens/request, {args.rounds} rounds")
    for column in ("run", "requests", "tokens", "wall s", "tokens/s", "ratio"):
        table.add_column(column, justify="left" if column == "run" else "right")
    table.add_row("raw generate, batch 1", str(raw_r["requests"]), str(raw_r["completion_tokens"]),
                  f"{raw_r['wall_s']:.1f}", f"{raw_r['tokens_per_s']:.1f}", "1.00x raw")
    table.add_row("server, 1 client", str(one["requests"]), str(one["completion_tokens"]), f"{one['wall_s']:.1f}",
                  f"{one['tokens_per_s']:.1f}", f"{ratio_1:.2f}x raw (target >= 0.9)")
    table.add_row("server, 8 clients", str(eight["requests"]), str(eight["completion_tokens"]),
                  f"{eight['wall_s']:.1f}", f"{eight['tokens_per_s']:.1f}", f"{ratio_8:.2f}x 1 client (target >= 3)")
    console.print(table)
    console.print(f"server start {startup:.1f} s, peak RSS {memory['peak_rss_mib']:.0f} MiB "
                  f"(now {memory['rss_mib']:.0f} MiB), peak batch {stats.get('peak_batch')}")
    try:
        load_average = os.getloadavg()
    except OSError:  # pragma: no cover - not on Linux
        load_average = (0.0, 0.0, 0.0)
    result = {
        "machine": {"cpus": os.cpu_count(), "threads": args.threads, "python": platform.python_version(),
                    "platform": platform.platform(), "load_average_after": load_average},
        "max_tokens": args.max_tokens, "rounds": args.rounds, "server_start_s": startup,
        "raw_batch1": raw_r, "server_1_client": one, "server_8_clients": eight,
        "ratio_1_client_vs_raw": ratio_1, "ratio_8_vs_1_client": ratio_8, "server_memory": memory,
        "engine": stats, "targets_met": {"1_client_ge_0.9x_raw": ratio_1 >= 0.9, "8_clients_ge_3x": ratio_8 >= 3.0},
    }
    console.print(f"wrote {write_result('model_server', result, args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
