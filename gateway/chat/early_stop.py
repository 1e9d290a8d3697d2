"""Early stop: the student's answer is streamed inside the gateway and stopped as soon as it can no longer be
accepted, so a request that falls back pays for the student's first few tokens, not its whole answer. Closing
the stream is the stop: the student server sees the client go and frees the slot (Protégé's model server
cancels the sequence; vLLM aborts the request).

An answer cannot be accepted when, whatever tokens follow (each token's logprob is at most 0, and at most
`max_tokens` of them in all):
- its confidence cannot reach the threshold: the minimum logprob is below it already (exact); the mean
  cannot rise above (sum so far) / max_tokens, reached only if every remaining token had logprob 0; the 10 %
  quantile cannot rise above the value at its rank with the remaining tokens counted as 0s;
- it is already invalid: JSON mode, and the text so far cannot be the start of a JSON object (another first
  character, a bracket closed that was not open, more after the object closed); or a tool call names a tool
  the request does not have.
Every check is a bound, never a guess: an answer it stops would have failed `gateway.router.judge` whole, so
an accepted answer is the same with early stop on or off.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from gateway.capture import StreamAssembler
from gateway.router import CONFIDENCE_QUANTILE
from gateway.store import ConfidenceMethod


@dataclass(slots=True)
class ConfidenceBound:
    """The best confidence the answer can still end with, kept as its tokens arrive."""

    method: ConfidenceMethod
    max_tokens: int | None  # None: unknown, and the mean and quantile cannot be bounded
    count: int = 0
    total: float = 0.0
    lowest: float = 0.0
    ordered: list[float] = field(default_factory=list)  # only for the quantile

    def add(self, logprob: float) -> None:
        self.count += 1
        self.total += logprob
        self.lowest = logprob if self.count == 1 else min(self.lowest, logprob)
        if self.method == "quantile_logprob":
            bisect.insort(self.ordered, logprob)

    def best(self) -> float | None:
        """The highest confidence any continuation can give; None when it cannot be bounded."""
        if self.count == 0:
            return None
        if self.method == "min_logprob":
            return self.lowest
        if self.max_tokens is None or self.max_tokens < self.count:
            return None
        if self.method == "mean_logprob":
            return self.total / self.max_tokens
        # nearest rank from the bottom, with the remaining tokens as 0s above every value seen
        rank = min(self.max_tokens - 1, max(0, math.ceil(CONFIDENCE_QUANTILE * self.max_tokens) - 1))
        return self.ordered[rank] if rank < self.count else 0.0


class JsonObjectPrefix:
    """Whether text can still be the start of one JSON object: brackets and strings tracked, nothing else
    (a prefix this accepts may still fail to parse; one it refuses never parses)."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.started = self.closed = self.in_string = self.escaped = False

    def feed(self, text: str) -> str | None:
        """Why the text so far cannot be a JSON object, or None."""
        for char in text:
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
                continue
            if char in " \t\r\n":
                continue
            if self.closed:
                return "text after the JSON object"
            if not self.started:
                if char != "{":
                    return "answer does not start a JSON object"
                self.started = True
            if char == '"':
                self.in_string = True
            elif char in "{[":
                self.stack.append("}" if char == "{" else "]")
            elif char in "}]":
                if not self.stack or self.stack.pop() != char:
                    return f"unbalanced {char!r} in the JSON answer"
                self.closed = not self.stack
        return None


def wants_json_object(request: dict[str, Any]) -> bool:
    fmt = request.get("response_format") or {}
    if fmt.get("type") == "json_object":
        return True
    schema = (fmt.get("json_schema") or {}).get("schema") if fmt.get("type") == "json_schema" else None
    return isinstance(schema, dict) and schema.get("type") == "object"


@dataclass(frozen=True, slots=True)
class Stop:
    """Why the answer was stopped: a fallback reason of `gateway.router` and its detail."""

    reason: str  # "low_confidence" | "validator"
    detail: str


class EarlyStop:
    """Watches one streamed answer (choice 0) against its request, threshold and confidence method."""

    def __init__(self, request: dict[str, Any], threshold: float | None, method: ConfidenceMethod) -> None:
        limit = request.get("max_completion_tokens") or request.get("max_tokens")
        self.threshold = threshold
        self.bound = ConfidenceBound(method, int(limit) if isinstance(limit, int) and limit > 0 else None)
        # with tools, an answer that calls one is not held to JSON mode (`gateway.router.validate_output`)
        self.json = JsonObjectPrefix() if wants_json_object(request) and not request.get("tools") else None
        self.tools = {(t.get("function") or {}).get("name") for t in request.get("tools") or []}
        self.names: dict[int, str] = {}  # tool calls' names so far, by call index

    def check(self, chunk: dict[str, Any]) -> Stop | None:
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            for entry in (choice.get("logprobs") or {}).get("content") or []:
                if isinstance(entry, dict) and isinstance(entry.get("logprob"), int | float):
                    self.bound.add(float(entry["logprob"]))
            delta = choice.get("delta") or {}
            for call in delta.get("tool_calls") or []:
                index, function = call.get("index", 0), call.get("function") or {}
                self.names[index] = self.names.get(index, "") + (function.get("name") or "")
                # judged once its arguments start: a server may send a name in pieces
                if function.get("arguments") and self.names[index] not in self.tools:
                    return Stop("validator", f"tool {self.names[index]!r} does not exist")
            if self.json is not None and delta.get("content"):
                problem = self.json.feed(delta["content"])
                if problem is not None:
                    return Stop("validator", problem)
        best = self.bound.best()
        if self.threshold is not None and best is not None and best < self.threshold:
            return Stop("low_confidence", f"stopped after {self.bound.count} tokens: confidence can reach at "
                                          f"most {best:.4f} < threshold {self.threshold}")
        return None


async def stream_until_stopped(chunks: AsyncIterator[dict[str, Any]],
                               guard: EarlyStop) -> tuple[dict[str, Any], Stop | None]:
    """The answer rebuilt from its chunks, and why it was stopped (None: it ran to its end). Stopping closes the
    stream, and with it the connection to the student server."""
    assembler = StreamAssembler()
    stop: Stop | None = None
    try:
        async for chunk in chunks:
            assembler.add(chunk)
            if (stop := guard.check(chunk)) is not None:
                break
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    return assembler.completion(), stop
