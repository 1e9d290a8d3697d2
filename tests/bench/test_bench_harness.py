"""The benchmark harness can be trusted: the load generator against the fixed-delay upstream, directly."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.loadgen import LoadConfig, percentile, run_load, schedule
from bench.overhead import Run, added_latency, bracket, check_rows, is_sustainable, noise_band, target_checks

REPO = Path(__file__).resolve().parents[2]
DELAY_MS = 30.0
CHUNKS = 5


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    """`python -m bench.upstream` on a free port (it prints the port it bound)."""
    argv = [sys.executable, "-m", "bench.upstream", "--port", "0", "--delay-ms", f"{DELAY_MS:g}"]
    argv += ["--stream-chunks", str(CHUNKS)]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline().decode()
        assert "http://127.0.0.1:" in line, line
        host_port = line.split("http://", 1)[1].split("/", 1)[0]
        yield f"http://{host_port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


async def test_direct_load_counts_and_latency(upstream: str) -> None:
    rate, duration = 50.0, 2.0
    result = await run_load(LoadConfig(url=upstream, rate=rate, duration=duration, warmup=0.0))
    assert result.sent == rate * duration
    assert result.errors == 0, result.error_kinds
    assert result.ok == result.sent
    assert 0.8 * rate <= result.achieved_rate <= rate * 1.01
    assert result.latency_ms is not None
    assert result.latency_ms.min >= DELAY_MS  # measured from the scheduled send: never below the delay
    assert result.latency_ms.p50 < DELAY_MS + 50  # and not absurdly above it on an idle loopback


async def test_stream_ttft_before_last_byte(upstream: str) -> None:
    result = await run_load(LoadConfig(url=upstream, rate=50.0, duration=1.0, warmup=0.0, stream=True))
    assert result.errors == 0, result.error_kinds
    assert result.latency_ms is not None and result.ttft_ms is not None
    assert result.ttft_ms.min >= DELAY_MS / CHUNKS  # the first SSE event leaves at delay / chunks
    assert result.latency_ms.min >= DELAY_MS
    assert result.ttft_ms.p50 < result.latency_ms.p50
    assert result.ttft_ms.max < result.latency_ms.max


def test_loadgen_cli_json(upstream: str) -> None:
    argv = [sys.executable, "-m", "bench.loadgen", "--url", upstream, "--rate", "20", "--duration", "1"]
    done = subprocess.run([*argv, "--warmup", "0", "--json"], cwd=REPO, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout)
    assert result["sent"] == 20 and result["errors"] == 0
    assert result["latency_ms"]["p50"] >= DELAY_MS


def test_schedule_and_percentile() -> None:
    assert schedule(4.0, 1.0, "constant") == [0.0, 0.25, 0.5, 0.75]
    poisson = schedule(1000.0, 2.0, "poisson", seed=1)
    assert 1800 < len(poisson) < 2200 and poisson == sorted(poisson) and poisson[-1] < 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([0.0, 10.0], 90) == pytest.approx(9.0)


def _result(p50: float, p99: float, error_rate: float = 0.0) -> dict[str, object]:
    return {"latency_ms": {"p50": p50, "p90": p99, "p99": p99}, "ttft_ms": None, "error_rate": error_rate}


def test_added_latency_and_sustainable_rate() -> None:
    base = _result(50.0, 52.0)
    added = added_latency(_result(52.0, 60.0), base)
    assert added["p50"] == pytest.approx(2.0) and added["p99"] == pytest.approx(8.0)
    assert added["ttft_p50"] is None
    assert is_sustainable(_result(52.0, 60.0), added)
    assert not is_sustainable(_result(52.0, 60.0, error_rate=0.002), added)
    assert not is_sustainable(_result(52.0, 200.0), added_latency(_result(52.0, 200.0), base))

    def run(rate: float, ok: bool) -> Run:
        return Run("protege", "non-stream", rate, "grid", {}, {}, ok)

    runs = [run(50, True), run(100, True), run(200, False), run(400, True)]
    assert bracket(runs, "protege", "non-stream") == (100, 200)  # a lucky pass above a failure does not count
    assert bracket(runs[:2], "protege", "non-stream") == (100, None)
    assert bracket([], "protege", "non-stream") == (0, None)


def test_a_peer_failing_requests_is_not_scored_and_its_error_rate_is_reported() -> None:
    base = _result(50.0, 52.0)
    mine, theirs = _result(51.0, 54.0), _result(400.0, 2000.0, error_rate=0.43)
    runs = [Run("direct", "non-stream", 200, "grid", base),
            Run("protege", "non-stream", 200, "grid", mine, added_latency(mine, base), True),
            Run("litellm", "non-stream", 200, "grid", theirs, added_latency(theirs, base), False)]
    [check] = [c for c in target_checks(runs, ["non-stream"]) if c.goal == "added p50 at 200 req/s ≤ 0.5× LiteLLM's"]
    assert check.passed is None and check.litellm == "failing 43.0 % of requests"
    assert check_rows([check])[1][0][-1] == "not scored: LiteLLM failing 43.0 % of requests"
    healthy = _result(60.0, 70.0)
    runs[2] = Run("litellm", "non-stream", 200, "grid", healthy, added_latency(healthy, base), True)
    [check] = [c for c in target_checks(runs, ["non-stream"]) if c.goal == "added p50 at 200 req/s ≤ 0.5× LiteLLM's"]
    assert check.passed is True  # 1 ms added against LiteLLM's 10


def test_capture_on_and_off_inside_the_noise_band_is_no_difference() -> None:
    # two runs of the same direct load differ by 0.3 ms at p50: the band
    runs = [Run("direct", "non-stream", 200, "grid", _result(50.0, 52.0)),
            Run("direct", "non-stream", 200, "repeat", _result(50.3, 52.5)),
            Run("protege", "non-stream", 200, "grid", _result(51.0, 53.0)),
            Run("protege-nocapture", "non-stream", 200, "grid", _result(51.2, 53.0))]
    assert noise_band(runs, "non-stream", 200, "p50") == pytest.approx(0.3)
    [check] = [c for c in target_checks(runs, ["non-stream"]) if c.goal.startswith("capture cost")]
    assert check.verdict == "no difference (inside the noise band)" and "±0.30 ms" in check.measured
    runs[2] = Run("protege", "non-stream", 200, "grid", _result(52.0, 53.0))  # +0.8 ms: outside, and over 0.5
    [check] = [c for c in target_checks(runs, ["non-stream"]) if c.goal.startswith("capture cost")]
    assert check.verdict is None and check.passed is False


def test_a_peer_that_sustains_no_tested_rate_is_not_a_multiple_to_beat() -> None:
    base = _result(50.0, 52.0)
    mine, theirs = _result(51.0, 54.0), _result(4000.0, 7000.0)
    runs = [Run("direct", "stream", 50, "grid", base),
            Run("protege", "stream", 50, "grid", mine, added_latency(mine, base), True),
            Run("litellm", "stream", 50, "grid", theirs, added_latency(theirs, base), False)]
    [check] = [c for c in target_checks(runs, ["stream"]) if c.goal == "max sustainable rate ≥ 2× LiteLLM's"]
    assert check.passed is None and check.verdict == "not scored: LiteLLM sustains none of the tested rates"


def test_the_targets_pinned_and_unpinned() -> None:
    base = _result(50.0, 52.0)
    fast, slow = _result(50.8, 54.5), _result(51.5, 54.5)
    runs = [Run("direct", "non-stream", 200, "grid", base),
            Run("protege", "non-stream", 200, "grid", fast, added_latency(fast, base), True),
            Run("protege", "non-stream", 1000, "grid", slow, added_latency(slow, base), True)]
    pinned = {c.goal: c for c in target_checks(runs, ["non-stream"])}
    assert pinned["added p50 at 200 req/s ≤ 1 ms"].passed is True  # 0.8 ms
    assert pinned["added p99 at 200 req/s ≤ 3 ms"].passed is True  # 2.5 ms
    assert pinned["max sustainable rate ≥ 1000 req/s"].passed is True
    runs[2] = Run("protege", "non-stream", 1000, "grid", slow, added_latency(slow, base), False)
    assert {c.goal: c for c in target_checks(runs, ["non-stream"])}["max sustainable rate ≥ 1000 req/s"].passed is False
    unpinned = {c.goal: c for c in target_checks(runs, ["non-stream"], pinned=False)}
    assert unpinned["added p50 at 200 req/s ≤ 2 ms"].passed is True
    assert unpinned["at 500 req/s: errors < 0.1 %, added p99 < 50 ms"].passed is None  # not run
    assert "max sustainable rate ≥ 1000 req/s" not in unpinned


def test_a_gateway_run_twice_widens_the_noise_band_and_its_repeat_is_not_the_reported_run() -> None:
    runs = [Run("direct", "non-stream", 200, "grid", _result(50.0, 52.0)),
            Run("direct", "non-stream", 200, "repeat", _result(50.1, 52.5)),
            Run("protege", "non-stream", 200, "grid", _result(52.0, 53.0)),
            Run("protege", "non-stream", 200, "repeat", _result(51.1, 53.0)),
            Run("protege-nocapture", "non-stream", 200, "grid", _result(51.2, 53.0))]
    assert noise_band(runs, "non-stream", 200, "p50") == pytest.approx(0.9)  # the gateway's own spread
    [check] = [c for c in target_checks(runs, ["non-stream"]) if c.goal.startswith("capture cost")]
    # +0.8 ms on − off, measured on the grid runs, is inside how far two runs of the same gateway differ
    assert check.verdict == "no difference (inside the noise band)" and "0.80 ms" in check.measured
