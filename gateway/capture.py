"""Recording exchanges without slowing requests: a bounded queue drained in batches to the store.

`CaptureWriter.submit` never blocks and never raises; a full queue or a store failure is counted
(`protege_capture_dropped_exchanges`) and logged. A batch the store refuses (locked, disk full) is
retried with backoff before it is dropped; meanwhile new exchanges wait in the queue, and once it is
full they are dropped (counted) — requests are answered either way. `close()` drains what is queued
(graceful stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from typing import Any

from gateway.config import CaptureConfig
from gateway.metrics import Metrics
from gateway.pii import redact_messages
from gateway.store import Exchange, Store, StoreError, user_hash

log = logging.getLogger("protege.capture")

FORGOTTEN_REFRESH_S = 5.0

# the sampling parameters kept with a captured request (`request.params`): what shaped the answer. Anything
# else a body holds (identifiers, cache keys, provider options) is not training data and is not stored.
STORED_PARAMS = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "n", "stop", "seed",
                 "frequency_penalty", "presence_penalty", "logit_bias", "logprobs", "top_logprobs",
                 "parallel_tool_calls", "reasoning_effort", "verbosity")


def normalise_request(body: dict[str, Any]) -> dict[str, Any]:
    """The training-relevant part of a request: messages, tools, format and sampling params."""
    normalised: dict[str, Any] = {"messages": body.get("messages", [])}
    for key in ("tools", "tool_choice", "response_format"):
        if body.get(key) is not None:
            normalised[key] = body[key]
    params = {k: body[k] for k in STORED_PARAMS if k in body}
    if params:
        normalised["params"] = params
    return normalised


def normalise_response(completion: dict[str, Any]) -> dict[str, Any]:
    """Choices (message + finish reason) and usage of a chat.completion."""
    choices = []
    for choice in completion.get("choices") or []:
        message = choice.get("message") or {}
        kept = {"role": message.get("role") or "assistant", "content": message.get("content")}
        if message.get("tool_calls"):
            kept["tool_calls"] = message["tool_calls"]
        choices.append({"index": choice.get("index", 0), "message": kept,
                        "finish_reason": choice.get("finish_reason")})
    return {"id": completion.get("id"), "model": completion.get("model"), "choices": choices,
            "usage": completion.get("usage")}


class StreamAssembler:
    """Rebuilds a chat.completion from stream chunks: for capture, and for the student's answer that early stop
    watched (`gateway.chat.early_stop`), which the client may get as the completion it asked for."""

    def __init__(self) -> None:
        self.head: dict[str, Any] = {}  # id, created, model, system_fingerprint: of the first chunk that has them
        self.usage: dict[str, Any] | None = None
        self._choices: dict[int, dict[str, Any]] = {}

    @property
    def id(self) -> str | None:
        return self.head.get("id")

    def add(self, chunk: dict[str, Any]) -> None:
        for key in ("id", "created", "model", "system_fingerprint"):
            if key in chunk and self.head.get(key) is None:
                self.head[key] = chunk[key]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            state = self._choices.setdefault(int(choice.get("index", 0)),
                                             {"content": [], "tool_calls": {}, "finish_reason": None,
                                              "logprobs": None})
            delta = choice.get("delta") or {}
            if delta.get("content"):
                state["content"].append(delta["content"])
            for call in delta.get("tool_calls") or []:
                self._add_tool_call(state["tool_calls"], call)
            entries = (choice.get("logprobs") or {}).get("content")
            if isinstance(entries, list):
                state["logprobs"] = (state["logprobs"] or []) + entries
            if choice.get("finish_reason"):
                state["finish_reason"] = choice["finish_reason"]

    @staticmethod
    def _add_tool_call(calls: dict[int, dict[str, Any]], delta: dict[str, Any]) -> None:
        call = calls.setdefault(int(delta.get("index", 0)),
                                {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        if delta.get("id"):
            call["id"] = delta["id"]
        function = delta.get("function") or {}
        if function.get("name"):
            call["function"]["name"] += function["name"]
        if function.get("arguments"):
            call["function"]["arguments"] += function["arguments"]

    def completion(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self._choices):
            state = self._choices[index]
            message: dict[str, Any] = {"role": "assistant",
                                       "content": "".join(state["content"]) if state["content"] else None}
            if state["tool_calls"]:
                message["tool_calls"] = [state["tool_calls"][i] for i in sorted(state["tool_calls"])]
            choice: dict[str, Any] = {"index": index, "message": message}
            if state["logprobs"] is not None:  # streamed with logprobs: kept as a completion keeps them
                choice["logprobs"] = {"content": state["logprobs"]}
            choices.append({**choice, "finish_reason": state["finish_reason"]})
        head = self.head
        return {"id": head.get("id"), "object": "chat.completion",
                **({"created": head["created"]} if "created" in head else {}), "model": head.get("model"),
                **({"system_fingerprint": head["system_fingerprint"]} if "system_fingerprint" in head else {}),
                "choices": choices, "usage": self.usage}


def redact_exchange(exchange: Exchange) -> Exchange:
    """The exchange with PII in its messages and answer replaced by typed placeholders."""
    request = {**exchange.request, "messages": redact_messages(exchange.request.get("messages") or [])}
    response = exchange.response
    if response is not None:
        choices = [{**c, "message": redact_messages([c["message"]])[0]} if c.get("message") else c
                   for c in response.get("choices") or []]
        response = {**response, "choices": choices}
    return dataclasses.replace(exchange, request=request, response=response)


class CaptureWriter:
    """The queue and its writer task. The writer survives anything one exchange can do to it: an exchange
    the store refuses for its content (it cannot be serialised, say) is dropped alone, counted and logged
    with its request id; an unexpected failure of the writer itself is logged and the writer restarted.
    `health()` says when the writer is dead or has made no progress for `stall_s` with work queued."""

    def __init__(self, store: Store, config: CaptureConfig, metrics: Metrics, *, stall_s: float = 30.0) -> None:
        self._store = store
        self._config = config
        self._metrics = metrics
        # None is the stop sentinel put by close()
        self._queue: asyncio.Queue[Exchange | None] = asyncio.Queue(maxsize=config.queue_size)
        self._batch_full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_error_log = 0.0
        self._closing = False
        self._unsettled = 0  # submitted and not yet written or dropped
        self._stall_s = stall_s
        self._progress_at = time.monotonic()  # the last time a batch was settled (or the writer started)
        self.restarts = 0
        self._forgotten: set[str] = set()  # user hashes whose new traffic is not stored either
        self._forgotten_read_at = float("-inf")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._supervise(), name="protege-capture")

    @property
    def enabled(self) -> bool:
        return self._config.enabled

    @property
    def depth(self) -> int:
        """Exchanges waiting to be written."""
        return self._queue.qsize()

    @property
    def unsettled(self) -> int:
        """Exchanges submitted and not yet written or dropped (queued, or in the batch being written)."""
        return self._unsettled

    def health(self) -> str | None:
        """None while the writer works; otherwise why captured exchanges are not reaching the store."""
        if not self._config.enabled:
            return None
        if self._task is None or self._task.done():
            return "the capture writer is not running"
        idle = time.monotonic() - self._progress_at
        if self._unsettled > 0 and idle > self._stall_s:
            return f"the capture writer made no progress for {idle:.0f} s with {self._unsettled} exchange(s) queued"
        return None

    def submit(self, exchange: Exchange) -> None:
        if not self._config.enabled:
            return
        try:
            self._queue.put_nowait(exchange)
            self._unsettled += 1
        except asyncio.QueueFull:
            self._drop(1, "queue_full", "capture queue full")
        depth = self._queue.qsize()
        if depth >= self._config.batch_size:
            self._batch_full.set()
        self._metrics.capture_queue.set(depth)

    async def wait_idle(self, timeout_s: float = 30) -> bool:
        """Whether every exchange submitted so far was written or dropped within `timeout_s` (tests, hand-overs)."""
        deadline = time.monotonic() + timeout_s
        while self._unsettled > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        return self._unsettled == 0

    async def close(self, timeout_s: float = 10.0) -> None:
        """Flush everything queued, then stop the writer; within `timeout_s` whatever the store does
        (what is still queued then is dropped and counted, so shutdown always finishes)."""
        self._closing = True  # a failing store gets one more try, not the whole backoff
        try:
            async with asyncio.timeout(timeout_s):
                if self._task is not None:
                    await self._queue.put(None)  # the writer flushes what precedes this and returns
                    self._batch_full.set()
                    await self._task
                while not self._queue.empty():  # anything submitted while closing
                    await self._write([e for e in self._take_batch() if e is not None])
        except TimeoutError:
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._task
            left = sum(1 for e in self._take_batch(self._queue.qsize()) if e is not None)
            if left:
                self._drop(left, "shutdown", f"the store did not take {left} exchange(s) within {timeout_s:g} s")
                self._unsettled -= left
        finally:
            self._task = None

    async def _supervise(self) -> None:
        """Run the writer; if it ever fails, log it and start it again (nothing queued is lost)."""
        while True:
            try:
                await self._run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                self.restarts += 1
                self._metrics.capture_restarts.inc()
                log.exception("the capture writer failed; restarting it")
                await asyncio.sleep(0.1)

    async def _run(self) -> None:
        interval = self._config.flush_interval_ms / 1000
        while True:
            first = await self._queue.get()
            if first is None:
                return
            # let a batch gather for one flush interval, or until it is full: one wake-up per batch
            if self._queue.qsize() + 1 < self._config.batch_size:
                self._batch_full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._batch_full.wait(), interval)
            items = [first, *self._take_batch(self._config.batch_size - 1)]
            stop = None in items
            await self._write([e for e in items if e is not None])
            if stop:
                return

    def _take_batch(self, limit: int | None = None) -> list[Exchange | None]:
        batch: list[Exchange | None] = []
        limit = self._config.batch_size if limit is None else limit
        while len(batch) < limit and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def _write(self, batch: list[Exchange]) -> None:
        if not batch:
            return
        try:
            await self._write_batch(batch)
        finally:
            self._unsettled -= len(batch)
            self._progress_at = time.monotonic()
            self._metrics.capture_queue.set(self._queue.qsize())

    async def _without_forgotten_users(self, batch: list[Exchange]) -> list[Exchange]:
        """A user forgotten with `protege forget` stays forgotten: their new exchanges are not stored."""
        if time.monotonic() - self._forgotten_read_at > FORGOTTEN_REFRESH_S:
            with contextlib.suppress(StoreError):  # keep the last known set; the insert reports a dead store
                self._forgotten = await self._store.forgotten_user_hashes()
                self._forgotten_read_at = time.monotonic()
        if not self._forgotten:
            return batch
        kept = [e for e in batch if e.user is None or user_hash(e.user) not in self._forgotten]
        if len(kept) < len(batch):
            self._metrics.capture_skipped.labels("forgotten_user").inc(len(batch) - len(kept))
        return kept

    async def _write_batch(self, batch: list[Exchange]) -> None:
        batch = await self._without_forgotten_users(batch)
        if not batch:
            return
        if self._config.redact_pii:  # here, after the response, and off the event loop (regexes over MBs)
            batch = await asyncio.to_thread(lambda: [redact_exchange(e) for e in batch])
        delay = 0.2
        for attempt in range(self._config.write_retries + 1):
            try:
                await self._store.insert_exchanges(batch)
            except StoreError as exc:
                if attempt == self._config.write_retries or self._closing:
                    self._drop(len(batch), "store_error", str(exc))
                    return
                self._metrics.capture_queue.set(self._queue.qsize())
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except Exception:  # the content of some exchange, not the store: find it, keep the others
                await self._write_one_by_one(batch)
                return
            else:
                self._count_written(batch)
                return

    async def _write_one_by_one(self, batch: list[Exchange]) -> None:
        for exchange in batch:
            try:
                await self._store.insert_exchanges([exchange])
            except StoreError as exc:
                self._drop(1, "store_error", str(exc))
            except Exception as exc:
                self._metrics.capture_dropped.labels("unstorable").inc()
                log.warning("dropped captured exchange %s: it cannot be stored (%s: %s)", exchange.request_id,
                            type(exc).__name__, str(exc)[:200])
            else:
                self._count_written([exchange])

    def _count_written(self, batch: list[Exchange]) -> None:
        for exchange in batch:
            self._metrics.captured.labels(exchange.status).inc()

    def _drop(self, count: int, reason: str, detail: str) -> None:
        self._metrics.capture_dropped.labels(reason).inc(count)
        now = time.monotonic()
        if now - self._last_error_log > 5:
            self._last_error_log = now
            log.warning("dropped %d captured exchange(s): %s", count, detail)
