"""`protege serve --workers 2`: two uvicorn worker processes on one port, and a /metrics that adds up
both (prometheus_client's multiprocess mode), whichever worker answers the scrape."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import teacher_flags
from tests.inprocess import poll
from tests.servers import Server, stop
from tests.stores import count_captured

TASK = "multi"


def total(metrics_text: str, name: str) -> float:
    return sum(sample.value for family in text_string_to_metric_families(metrics_text) for sample in family.samples
               if sample.name == name and sample.labels.get("task", TASK) == TASK)


def requests_per_worker(metrics_dir: Path, scratch: Path) -> dict[int, float]:
    """protege_requests_total as each worker counted it, from its own counter file."""
    counts = {}
    for path in sorted(metrics_dir.glob("counter_*.db")):
        folder = scratch / path.stem
        folder.mkdir(parents=True)
        shutil.copy(path, folder / path.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(folder))  # type: ignore[no-untyped-call]
        counts[int(path.stem.split("_")[1])] = registry.get_sample_value(
            "protege_requests_total", {"task": TASK, "route": "teacher", "status": "ok"}) or 0.0
    return counts


def test_two_workers_report_the_sum_of_their_requests(katan: Server, gateway_factory: Callable[..., Server],
                                                      tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"left by an earlier run")  # cleared at start
    store = tmp_path / "store.db"
    gateway = gateway_factory(*teacher_flags(katan, store), "--workers", "2",
                              env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})

    def ask(i: int) -> str:
        # a new connection each time, so the kernel hands requests to both workers
        response = httpx.post(f"{gateway.url}/v1/chat/completions", headers={"X-Protege-Task": TASK},
                              json={"model": "m", "messages": [{"role": "user", "content": f"hello {i}"}]})
        assert response.status_code == 200
        return response.headers["x-protege-route"]

    sent = 0
    with ThreadPoolExecutor(8) as pool:
        # usually one round; more only if the first went to a single worker
        while sent < 400:
            assert set(pool.map(ask, range(sent, sent + 40))) == {"teacher"}
            sent += 40
            per_worker = requests_per_worker(metrics_dir, tmp_path / f"scratch-{sent}")
            if len([n for n in per_worker.values() if n > 0]) == 2:
                break
    assert len(per_worker) == 2 and all(n > 0 for n in per_worker.values()) and sum(per_worker.values()) == sent

    poll(lambda: count_captured(store) >= sent, timeout=10, what=f"{sent} captured exchanges")
    for _ in range(6):  # several scrapes, answered by either worker: always the whole
        text = httpx.get(f"{gateway.url}/metrics", headers={"authorization": f"Bearer {gateway.admin_token}"}).text
        assert total(text, "protege_requests_total") == sent
        assert total(text, "protege_gateway_overhead_seconds_count") == sent
        assert total(text, "protege_captured_exchanges_total") == sent
        assert total(text, "protege_capture_dropped_exchanges_total") == 0
        assert total(text, "protege_capture_queue_depth") == 0  # summed over the live workers
    assert stop(gateway.proc) == 0
    assert not list(metrics_dir.glob("gauge_live*"))  # each worker removed its live gauges on the way out
