"""Capture: stream assembly, normalisation, and the batching writer against a real SQLite store."""

from __future__ import annotations

import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from gateway.capture import CaptureWriter, StreamAssembler, normalise_request, normalise_response
from gateway.config import CaptureConfig
from gateway.metrics import Metrics
from gateway.store import Exchange, StoreError, open_store
from gateway.store.sqlite import SQLiteStore
from tests.gateway.store.test_sqlite import exchange


def test_stream_assembler_rebuilds_content_tool_calls_and_usage() -> None:
    assembler = StreamAssembler()
    chunks = [
        {"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {"content": "lo"}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_", "arguments": '{"ci'}}]}}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"name": "weather", "arguments": 'ty": "Oslo"}'}}]}}]},
        {"id": "c1", "choices": [{"index": 1, "delta": {"content": "second"}, "finish_reason": "stop"}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {"id": "c1", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 7}},
    ]
    for chunk in chunks:
        assembler.add(chunk)
    completion = assembler.completion()
    first, second = completion["choices"]
    assert first["message"]["content"] == "Hello"
    assert first["message"]["tool_calls"] == [{"id": "call_1", "type": "function",
                                               "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]
    assert first["finish_reason"] == "tool_calls"
    assert second == {"index": 1, "message": {"role": "assistant", "content": "second"}, "finish_reason": "stop"}
    assert completion["usage"] == {"prompt_tokens": 5, "completion_tokens": 7}
    assert completion["id"] == "c1" and completion["model"] == "m"


def test_normalise_request_separates_structure_from_params() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 0.2, "stream": True,
            "tools": [{"type": "function", "function": {"name": "f"}}], "user": "u", "metadata": {"task": "t"},
            "prompt_cache_key": "user-7", "safety_identifier": "someone@example.org", "future_param": 1}
    # only sampling parameters are kept: identifiers, cache keys and anything unknown are not training data
    assert normalise_request(body) == {"messages": body["messages"], "tools": body["tools"],
                                       "params": {"temperature": 0.2}}
    response = normalise_response({"id": "x", "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "a", "refusal": None}, "finish_reason": "stop",
         "logprobs": None}], "usage": {"total_tokens": 1}})
    assert response["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "a"},
                                    "finish_reason": "stop"}]


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels or None) or 0.0


async def test_writer_batches_and_flushes_on_close(store_url: str) -> None:
    store = open_store(store_url)
    await store.open()
    registry = CollectorRegistry()
    writer = CaptureWriter(store, CaptureConfig(batch_size=10, flush_interval_ms=50), Metrics(registry))
    writer.start()
    for i in range(25):
        writer.submit(exchange(i))
    await writer.close()  # everything queued is written before close returns
    assert await store.count_exchanges() == 25
    assert sample(registry, "protege_captured_exchanges_total", status="ok") == 25
    assert sample(registry, "protege_capture_queue_depth") == 0
    await store.close()


async def test_writer_flushes_within_the_interval(store_url: str) -> None:
    store = open_store(store_url)
    await store.open()
    writer = CaptureWriter(store, CaptureConfig(flush_interval_ms=50), Metrics(CollectorRegistry()))
    writer.start()
    started = time.monotonic()
    writer.submit(exchange(1))
    await writer.wait_idle()  # written, without a close
    assert time.monotonic() - started < 0.3
    assert await store.count_exchanges() == 1
    await writer.close()
    await store.close()


async def test_full_queue_drops_and_counts_without_raising(store_url: str) -> None:
    store = open_store(store_url)
    await store.open()
    registry = CollectorRegistry()
    writer = CaptureWriter(store, CaptureConfig(queue_size=3), Metrics(registry))  # not started: nothing drains
    for i in range(5):
        writer.submit(exchange(i))
    assert sample(registry, "protege_capture_dropped_exchanges_total", reason="queue_full") == 2
    writer.start()
    await writer.close()
    assert await store.count_exchanges() == 3
    await store.close()


class FailingOnceStore(SQLiteStore):
    def __init__(self, url: str, failures: int = 1) -> None:
        super().__init__(url)
        self.failures = failures

    async def insert_exchanges(self, exchanges: list[Exchange]) -> None:
        if self.failures:
            self.failures -= 1
            raise StoreError("disk full")
        await super().insert_exchanges(exchanges)


async def test_a_refused_batch_is_retried_before_anything_is_dropped(tmp_path: Path) -> None:
    store = FailingOnceStore(f"sqlite:///{tmp_path / 'p.db'}", failures=2)  # locked twice, then fine
    await store.open()
    registry = CollectorRegistry()
    writer = CaptureWriter(store, CaptureConfig(flush_interval_ms=10, write_retries=3), Metrics(registry))
    writer.start()
    writer.submit(exchange(1))
    await writer.wait_idle()  # backoff 0.2 s, then 0.4 s, then written
    assert store.failures == 0
    assert [e.request_id for e in await store.list_exchanges()] == ["req_1"]
    await writer.close()
    assert sample(registry, "protege_capture_dropped_exchanges_total", reason="store_error") == 0
    await store.close()


async def test_store_error_is_counted_and_writer_keeps_going(tmp_path: Path) -> None:
    store = FailingOnceStore(f"sqlite:///{tmp_path / 'p.db'}")
    await store.open()
    registry = CollectorRegistry()
    writer = CaptureWriter(store, CaptureConfig(flush_interval_ms=10, write_retries=0), Metrics(registry))
    writer.start()
    writer.submit(exchange(1))
    await writer.wait_idle()  # the first batch is refused and dropped, alone
    assert sample(registry, "protege_capture_dropped_exchanges_total", reason="store_error") == 1
    writer.submit(exchange(2))
    await writer.close()
    assert sample(registry, "protege_capture_dropped_exchanges_total", reason="store_error") == 1
    assert [e.request_id for e in await store.list_exchanges()] == ["req_2"]
    await store.close()


async def test_disabled_capture_records_nothing(store_url: str) -> None:
    store = open_store(store_url)
    await store.open()
    writer = CaptureWriter(store, CaptureConfig(enabled=False), Metrics(CollectorRegistry()))
    writer.start()
    writer.submit(exchange(1))
    await writer.close()
    assert await store.count_exchanges() == 0
    await store.close()


async def test_pii_is_redacted_before_it_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    store = open_store(f"sqlite:///{path}")
    await store.open()
    writer = CaptureWriter(store, CaptureConfig(redact_pii=True), Metrics(CollectorRegistry()))
    writer.start()
    ex = exchange(1)
    ex.request["messages"] = [{"role": "user", "content": "Mail jane.doe@example.com or call +44 20 7946 0958"}]
    ex.response = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Card 4111 1111 1111 1111"},
                                "finish_reason": "stop"}]}
    writer.submit(ex)
    await writer.close()
    [stored] = await store.list_exchanges()
    assert "[EMAIL]" in stored.request["messages"][0]["content"]
    assert "[CARD]" in stored.response["choices"][0]["message"]["content"]  # type: ignore[index]
    await store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("p.db*"))
    for secret in (b"jane.doe@example.com", b"7946 0958", b"4111 1111 1111 1111"):
        assert secret not in raw
