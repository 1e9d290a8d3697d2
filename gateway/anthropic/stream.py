"""Anthropic's stream events from the chat core's OpenAI chunk frames: message_start, content blocks,
message_delta, message_stop, or an error event."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from gateway.anthropic.errors import error_type_from_openai
from gateway.anthropic.translate import stop_reason, tool_id, usage
from gateway.http_utils import sse_event as event


@dataclass
class StreamTranslator:
    """The chat core's OpenAI chat.completion.chunk dicts → Anthropic stream events:
    message_start, content blocks (start, deltas, stop), message_delta, message_stop — or an error event.

    Tool calls are taken to stream one after another (as OpenAI, vLLM and litellm send them): a new
    call closes the block of the one before."""

    msg_id: str
    model: str
    stop_sequences: list[str] | None = None
    closed: bool = field(default=False, init=False)  # after message_stop or an error event
    _started: bool = field(default=False, init=False)
    _blocks: int = field(default=0, init=False)
    _open: str | None = field(default=None, init=False)  # "text" or "tool:<openai index>" while a block is open
    _choice: dict[str, Any] = field(default_factory=dict, init=False)  # the choice that carried finish_reason
    _usage: dict[str, Any] | None = field(default=None, init=False)

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        """Events for the next chunk of the core's stream (an `{"error": ...}` dict ends it with an error event)."""
        if self.closed:
            return []
        if "error" in chunk:
            error = chunk["error"] if isinstance(chunk["error"], dict) else {}
            return self._error({"type": error_type_from_openai(str(error.get("type") or "")),
                                "message": str(error.get("message") or "upstream stream failed")})
        out = self._start(chunk)
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue  # the Messages API has one answer; the gateway never asks for n > 1
            out += self._delta(choice.get("delta") or {})
            if choice.get("finish_reason"):
                self._choice = choice
        return out

    def _start(self, chunk: dict[str, Any]) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        message: dict[str, Any] = {
            "id": self.msg_id, "type": "message", "role": "assistant", "model": chunk.get("model") or self.model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            # OpenAI counts tokens only at the end: the real numbers come in message_delta
            "usage": {"input_tokens": 0, "output_tokens": 0}}
        return [event({"type": "message_start", "message": message})]

    def _delta(self, delta: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        text = delta.get("content")
        if isinstance(text, str) and text:
            if self._open != "text":
                out += self._open_block("text", {"type": "text", "text": ""})
            out.append(event({"type": "content_block_delta", "index": self._blocks - 1,
                              "delta": {"type": "text_delta", "text": text}}))
        for call in delta.get("tool_calls") or []:
            key = f"tool:{call.get('index', 0)}"
            function = call.get("function") or {}
            if self._open != key:
                block: dict[str, Any] = {"type": "tool_use", "id": call.get("id") or tool_id(),
                                         "name": function.get("name") or "", "input": {}}
                out += self._open_block(key, block)
            if function.get("arguments"):
                out.append(event({"type": "content_block_delta", "index": self._blocks - 1,
                                  "delta": {"type": "input_json_delta", "partial_json": function["arguments"]}}))
        return out

    def _open_block(self, key: str, block: dict[str, Any]) -> list[bytes]:
        out = self._close_block()
        out.append(event({"type": "content_block_start", "index": self._blocks, "content_block": block}))
        self._blocks += 1
        self._open = key
        return out

    def _close_block(self) -> list[bytes]:
        if self._open is None:
            return []
        self._open = None
        return [event({"type": "content_block_stop", "index": self._blocks - 1})]

    def end(self) -> list[bytes]:
        """The closing events, once the core's stream is over (nothing after an error event)."""
        if self.closed:
            return []
        out = self._start({}) + self._close_block()
        reason, sequence = stop_reason(self._choice, self.stop_sequences)
        out.append(event({"type": "message_delta", "delta": {"stop_reason": reason or "end_turn",
                                                             "stop_sequence": sequence},
                          "usage": usage(self._usage)}))
        out.append(event({"type": "message_stop"}))
        self.closed = True
        return out

    def _error(self, error: dict[str, str]) -> list[bytes]:
        self.closed = True
        return [event({"type": "error", "error": error})]


async def anthropic_events(chunks: AsyncIterator[dict[str, Any]],
                           translator: StreamTranslator) -> AsyncIterator[bytes]:
    """The core's stream as Anthropic events. Closing this closes `chunks`, so the core records a client that
    went away at once."""
    try:
        async for chunk in chunks:
            for out in translator.feed(chunk):
                yield out
        for out in translator.end():
            yield out
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


