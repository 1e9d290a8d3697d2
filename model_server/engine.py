"""The inference engine: one thread owns the model and decodes a dynamic batch of sequences.

Requests queue up in an inbox. When the engine is idle it waits a few milliseconds for more to
arrive, then prefills them together (left-padded) and decodes token by token. Rows join the
running batch between steps (continuous batching, up to `max_batch` rows) and leave it as soon as
they finish, are cancelled or fail. Each row has its own sampling parameters, stop strings,
length limit and adapter. Adapter loading and unloading run on the same thread, between steps, so
they never race with a forward pass.

Results are delivered through a callback per sequence, called on the engine thread;
`model_server.streams` turns those into asyncio queues.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from model_server.adapters import BASE, AdapterError, AdapterManager, AdapterNotFound
from model_server.batch import BatchState
from model_server.detokenize import TextState, TokenTable
from model_server.model_loading import LoadedModel
from model_server.prefix_cache import PrefixCache
from model_server.sampling import LogprobEntry, Sampler, SamplingParams, sample_batch

log = logging.getLogger(__name__)


@dataclass
class Update:
    """What one sequence produced since the last update; `finish_reason` is set on the last one."""

    text: str
    logprobs: list[LogprobEntry]
    completion_tokens: int
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"
    error: str | None = None


Callback = Callable[[Update], None]


@dataclass
class Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    callback: Callback
    adapter: str | None = None
    id: int = field(default_factory=itertools.count().__next__)


@dataclass
class _Row:
    seq: Sequence
    sampler: Sampler
    text: TextState
    generated: int = 0


@dataclass
class _AdapterOp:
    kind: str  # "load" | "unload"
    name: str
    path: Path | None
    future: Future[None]


class Engine:
    """Owns the model on a dedicated thread; thread-safe `submit`, `cancel` and adapter operations."""

    def __init__(self, loaded: LoadedModel, *, max_batch: int = 8, threads: int | None = None,
                 max_new_tokens: int = 512, batch_wait_s: float = 0.005, prefix_cache_bytes: int = 0) -> None:
        self.tokenizer = loaded.tokenizer
        self.source = loaded.source
        self.load_seconds = loaded.load_seconds
        self.max_batch = max(1, max_batch)
        self.threads = threads or os.cpu_count() or 1
        self.max_new_tokens = max_new_tokens
        self.batch_wait_s = batch_wait_s
        config = loaded.model.config
        self.context_length = int(getattr(config, "max_position_embeddings", 0) or 2048)
        self.eos_ids = _eos_ids(loaded.model, self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.tokenizer_lock = threading.Lock()
        self.tokens = TokenTable(self.tokenizer, self.decode)
        self._adapters = AdapterManager(loaded.model)
        self._prefix = PrefixCache(prefix_cache_bytes)
        self._adapter_names: dict[str, str] = {}  # visible to requests; guarded by _names_lock
        self._names_lock = threading.Lock()
        self._inbox: queue.Queue[Sequence | _AdapterOp | None] = queue.Queue()
        self._cancelled: set[int] = set()
        self._cancel_lock = threading.Lock()
        self._waiting: list[Sequence] = []
        self._ops: list[_AdapterOp] = []
        self._rows: list[_Row] = []
        self._batch: BatchState | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.counters = {"steps": 0, "peak_batch": 0, "finished": 0, "cancelled": 0, "failed": 0,
                         "prompt_tokens": 0, "generated_tokens": 0}
        self.device = "gpu" if next(loaded.model.parameters()).device.type == "cuda" else "cpu"
        self.busy_s = 0.0  # time the engine thread spent on prefill and decode steps (its throughput's denominator)

    # ---------------------------------------------------------------- public, any thread
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="protege-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> dict[str, int]:
        """Counters for /readyz: rows decoding now, requests waiting, and totals since start."""
        return {"running": len(self._rows), "waiting": len(self._waiting) + self._inbox.qsize(), **self.counters,
                **self._prefix.counters}

    def throughput(self) -> dict[str, float | str | None]:
        """Tokens (prompt and generated) per second of busy engine time since start: what a self-hosted model's
        compute price is spread over. None before the first step."""
        tokens = self.counters["prompt_tokens"] + self.counters["generated_tokens"]
        busy = self.busy_s
        return {"device": self.device, "prompt_tokens": self.counters["prompt_tokens"],
                "generated_tokens": self.counters["generated_tokens"], "busy_s": round(busy, 3),
                "tokens_per_s": round(tokens / busy, 2) if busy > 0 and tokens else None}

    def submit(self, seq: Sequence) -> None:
        self._inbox.put(seq)

    def cancel(self, seq_id: int) -> None:
        with self._cancel_lock:
            self._cancelled.add(seq_id)
        self._inbox.put(None)  # wake an idle engine so the slot is freed promptly

    def adapter_names(self) -> dict[str, str]:
        with self._names_lock:
            return dict(self._adapter_names)

    def has_adapter(self, name: str) -> bool:
        with self._names_lock:
            return name in self._adapter_names

    def load_adapter(self, name: str, path: Path) -> Future[None]:
        op = _AdapterOp("load", name, path, Future())
        self._inbox.put(op)
        return op.future

    def unload_adapter(self, name: str) -> Future[None]:
        """Hides the adapter from new requests at once; it is deleted when no running row uses it."""
        op = _AdapterOp("unload", name, None, Future())
        with self._names_lock:
            if name not in self._adapter_names:
                op.future.set_exception(AdapterNotFound(name))
                return op.future
            del self._adapter_names[name]
        self._inbox.put(op)
        return op.future

    def decode(self, ids: list[int]) -> str:
        with self.tokenizer_lock:
            return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        with self.tokenizer_lock:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return [int(i) for i in ids]

    # ---------------------------------------------------------------- engine thread
    def _run(self) -> None:
        torch.set_num_threads(self.threads)
        with torch.inference_mode():
            while not self._stopping:
                try:
                    self._iterate()
                except Exception as exc:  # a failed step fails its rows, not the server
                    log.exception("engine step failed")
                    self._fail_all(f"generation failed: {exc}")
        self._fail_all("the model server is shutting down")

    def _iterate(self) -> None:
        self._collect()
        self._run_ops()
        self._drop_cancelled()
        started = time.perf_counter()
        if self._waiting and len(self._rows) < self.max_batch:
            self._admit()
        if self._rows:
            self._decode_step()
        self.busy_s += time.perf_counter() - started

    def _collect(self) -> None:
        """Move inbox items into `_waiting` / `_ops`; block when there is nothing to do."""
        idle = not self._rows and not self._waiting and not self._ops
        if idle:
            item = self._inbox.get()
            self._accept(item)
            if isinstance(item, Sequence):  # give concurrent requests a moment to join the batch
                deadline = time.monotonic() + self.batch_wait_s
                while len(self._waiting) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                    try:
                        self._accept(self._inbox.get(timeout=left))
                    except queue.Empty:
                        break
        while True:
            try:
                self._accept(self._inbox.get_nowait())
            except queue.Empty:
                return

    def _accept(self, item: Sequence | _AdapterOp | None) -> None:
        if isinstance(item, Sequence):
            self._waiting.append(item)
        elif isinstance(item, _AdapterOp):
            self._ops.append(item)

    def _run_ops(self) -> None:
        remaining: list[_AdapterOp] = []
        for op in self._ops:
            if op.kind == "unload" and self._adapter_in_use(op.name):
                remaining.append(op)  # wait until its rows are done
                continue
            try:
                if op.kind == "load":
                    assert op.path is not None
                    with self._names_lock:
                        if op.name in self._adapter_names:
                            raise AdapterError(f"the LoRA adapter {op.name!r} is already loaded")
                    self._adapters.load(op.name, op.path)
                    with self._names_lock:
                        self._adapter_names[op.name] = str(op.path)
                else:
                    self._adapters.unload(op.name)
                self._prefix.drop_adapter(op.name)  # its KV was computed through that adapter
            except Exception as exc:
                op.future.set_exception(exc)
            else:
                op.future.set_result(None)
        self._ops = remaining

    def _adapter_in_use(self, name: str) -> bool:
        return any(r.seq.adapter == name for r in self._rows) or any(s.adapter == name for s in self._waiting)

    def _drop_cancelled(self) -> None:
        with self._cancel_lock:
            if not self._cancelled:
                return
            cancelled, self._cancelled = self._cancelled, set()
        kept = [s for s in self._waiting if s.id not in cancelled]
        for seq in self._waiting:
            if seq.id in cancelled:
                _deliver(seq, Update("", [], 0, "cancelled"))
        self._waiting = kept
        gone = [i for i, r in enumerate(self._rows) if r.seq.id in cancelled]
        for i in gone:
            _deliver(self._rows[i].seq, Update("", [], self._rows[i].generated, "cancelled"))
        self.counters["cancelled"] += len(gone)
        if gone:
            self._keep([i for i in range(len(self._rows)) if i not in gone])

    def _admit(self) -> None:
        room = self.max_batch - len(self._rows)
        admitted, self._waiting = self._waiting[:room], self._waiting[room:]
        orphans = [s for s in admitted if s.adapter is not None and s.adapter not in self._adapters.paths]
        for seq in orphans:  # its adapter was unloaded between the request's check and now
            _deliver(seq, Update("", [], 0, "error", f"the LoRA adapter {seq.adapter!r} is not loaded"))
        admitted = [s for s in admitted if all(s is not o for o in orphans)]
        if not admitted:
            return
        rows = [_Row(s, Sampler(s.params), TextState(self.decode, list(s.params.stop))) for s in admitted]
        adapters = [s.adapter or BASE for s in admitted]
        pasts = [self._prefix.lookup(adapter, s.prompt_ids) for adapter, s in zip(adapters, admitted, strict=True)]
        try:
            state, logits = BatchState.prefill(
                self._adapters.forward, [s.prompt_ids for s in admitted], adapters, self.pad_id, pasts
            )
        except Exception as exc:
            log.exception("prefill failed")
            for seq in admitted:
                _deliver(seq, Update("", [], 0, "error", f"generation failed: {exc}"))
            return
        if self._prefix.enabled:
            for i, (adapter, seq, past) in enumerate(zip(adapters, admitted, pasts, strict=True)):
                self._prefix.store(adapter, seq.prompt_ids, state.row_layers(i), past.length if past else 0)
        if self._batch is None:
            self._batch = state
        else:
            self._batch.merge(state)
        self.counters["prompt_tokens"] += sum(len(s.prompt_ids) for s in admitted)
        first = len(self._rows)
        self._rows.extend(rows)
        self.counters["peak_batch"] = max(self.counters["peak_batch"], len(self._rows))
        self._consume(logits, first)

    def _decode_step(self) -> None:
        assert self._batch is not None
        logits = self._batch.step(self._adapters.forward)
        self.counters["steps"] += 1
        self._consume(logits, 0)

    def _consume(self, logits: torch.Tensor, first: int) -> None:
        """Sample for rows `first:` from their logits, emit text, finish rows, set pending tokens."""
        rows = self._rows[first:]
        tokens, entries = sample_batch(logits, [r.sampler for r in rows])
        self.counters["generated_tokens"] += len(rows)
        finished: set[int] = set()
        for offset, (row, token, entry) in enumerate(zip(rows, tokens, entries, strict=True)):
            row.generated += 1
            reason: str | None = None
            if token in self.eos_ids and not row.seq.params.ignore_eos:
                text, released = row.text.finish()
                reason = "stop"
            else:
                text, released = row.text.push(token, entry)
                if row.text.stopped:
                    reason = "stop"
                elif row.generated >= row.seq.params.max_tokens:
                    tail, more = row.text.finish()
                    text, released, reason = text + tail, released + more, "length"
            if reason is not None:
                finished.add(first + offset)
            if text or released or reason is not None:
                _deliver(row.seq, Update(text, released, row.generated, reason))
        assert self._batch is not None
        pending = self._batch.pending.tolist()
        pending[first:] = tokens
        self._batch.set_pending(pending)
        if finished:
            self.counters["finished"] += len(finished)
            self._keep([i for i in range(len(self._rows)) if i not in finished])

    def _keep(self, indices: list[int]) -> None:
        self._rows = [self._rows[i] for i in indices]
        if not self._rows:
            self._batch = None
        elif self._batch is not None:
            self._batch.keep(indices)

    def _fail_all(self, message: str) -> None:
        self.counters["failed"] += len(self._rows) + len(self._waiting)
        for row in self._rows:
            _deliver(row.seq, Update("", [], row.generated, "error", message))
        for seq in self._waiting:
            _deliver(seq, Update("", [], 0, "error", message))
        self._rows, self._waiting, self._batch = [], [], None
        if self._stopping:
            for op in self._ops:
                op.future.set_exception(RuntimeError(message))
            self._ops = []


def _deliver(seq: Sequence, update: Update) -> None:
    try:
        seq.callback(update)
    except Exception:  # a dead event loop must not take the engine down
        log.debug("dropping an update for sequence %s", seq.id, exc_info=True)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    generation_config = getattr(model, "generation_config", None)
    configured = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, list):
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids
