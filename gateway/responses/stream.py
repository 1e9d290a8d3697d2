"""The Responses API's stream events from the chat core's OpenAI chunk frames.

    response.created, response.in_progress
    per output item: response.output_item.added
        a message:       response.content_part.added, response.output_text.delta…, response.output_text.done,
                         response.content_part.done
        a function call: response.function_call_arguments.delta…, response.function_call_arguments.done
    response.output_item.done
    response.completed (or response.incomplete at the token limit) — or response.failed when the upstream fails
    mid-stream: never a clean end over a truncated answer.

Every event carries a `sequence_number`, counted from 0.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.http_utils import sse_event
from gateway.responses.response import function_call_item, incomplete_reason, item_id, message_item, response_object
from gateway.responses.translate import ResponsesRequest


@dataclass
class ResponsesStreamTranslator:
    """Chunk dicts in, event payloads out. Tool calls are taken to stream one after another (as OpenAI, vLLM
    and litellm send them): a new call closes the item of the one before."""

    request: ResponsesRequest
    resp_id: str
    created_at: float = field(default_factory=time.time)
    closed: bool = field(default=False, init=False)
    response: dict[str, Any] | None = field(default=None, init=False)  # the final response, once closed
    _sequence: int = field(default=0, init=False)
    _started: bool = field(default=False, init=False)
    _model: str = field(default="", init=False)
    _output: list[dict[str, Any]] = field(default_factory=list, init=False)  # items done so far
    _open: dict[str, Any] | None = field(default=None, init=False)  # the item being streamed
    _open_key: str | None = field(default=None, init=False)  # "text" or "tool:<chat index>"
    _finish: Any = field(default=None, init=False)
    _usage: dict[str, Any] | None = field(default=None, init=False)

    def _event(self, kind: str, **payload: Any) -> dict[str, Any]:
        out = {"type": kind, "sequence_number": self._sequence, **payload}
        self._sequence += 1
        return out

    def _snapshot(self, status: str, **extra: Any) -> dict[str, Any]:
        return response_object(self.request, resp_id=self.resp_id, created_at=self.created_at,
                               model=self._model or self.request.model, output=list(self._output), status=status,
                               chat_usage=self._usage if status != "in_progress" else None, **extra)

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """Events for the next chunk of the core's stream (an `{"error": ...}` dict ends it with response.failed)."""
        if self.closed:
            return []
        out = self._start(chunk)
        if "error" in chunk:
            error = chunk["error"] if isinstance(chunk["error"], dict) else {}
            return out + self._fail(str(error.get("message") or "upstream stream failed"))
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue  # a response has one answer; the gateway never asks for n > 1
            out += self._delta(choice.get("delta") or {})
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return out

    def _start(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        if self._started:
            return []
        self._started = True
        self._model = str(chunk.get("model") or self.request.model)
        snapshot = self._snapshot("in_progress")
        return [self._event("response.created", response=snapshot),
                self._event("response.in_progress", response=snapshot)]

    def _delta(self, delta: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        text = delta.get("content")
        if isinstance(text, str) and text:
            if self._open_key != "text":
                out += self._open_item("text", message_item("", item=item_id("msg"), status="in_progress"))
                out.append(self._event("response.content_part.added", item_id=self._open_id, output_index=self._index,
                                       content_index=0, part={"type": "output_text", "text": "", "annotations": []}))
            assert self._open is not None
            self._open["content"][0]["text"] += text
            out.append(self._event("response.output_text.delta", item_id=self._open_id, output_index=self._index,
                                   content_index=0, delta=text, logprobs=[]))
        for call in delta.get("tool_calls") or []:
            key = f"tool:{call.get('index', 0)}"
            if self._open_key != key:
                item = function_call_item({**call, "function": {**(call.get("function") or {}), "arguments": ""}},
                                          item=item_id("fc"), status="in_progress")
                out += self._open_item(key, item)
            assert self._open is not None
            arguments = (call.get("function") or {}).get("arguments")
            if arguments:
                self._open["arguments"] += arguments
                out.append(self._event("response.function_call_arguments.delta", item_id=self._open_id,
                                       output_index=self._index, delta=arguments))
        return out

    @property
    def _index(self) -> int:
        return len(self._output)

    @property
    def _open_id(self) -> str:
        assert self._open is not None
        return str(self._open["id"])

    def _open_item(self, key: str, item: dict[str, Any]) -> list[dict[str, Any]]:
        out = self._close_item()
        self._open, self._open_key = item, key
        added = {**item, "content": []} if item["type"] == "message" else dict(item)
        out.append(self._event("response.output_item.added", output_index=self._index, item=added))
        return out

    def _close_item(self) -> list[dict[str, Any]]:
        item = self._open
        if item is None:
            return []
        out: list[dict[str, Any]] = []
        index = self._index
        item["status"] = "completed"
        if item["type"] == "message":
            part = item["content"][0]
            out.append(self._event("response.output_text.done", item_id=item["id"], output_index=index,
                                   content_index=0, text=part["text"], logprobs=[]))
            out.append(self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                   content_index=0, part=part))
        else:
            out.append(self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                                   name=item["name"], arguments=item["arguments"]))
        out.append(self._event("response.output_item.done", output_index=index, item=item))
        self._output.append(item)
        self._open, self._open_key = None, None
        return out

    def end(self) -> list[dict[str, Any]]:
        """The closing events once the core's stream is over (nothing after response.failed). `self.response`
        is then the final response."""
        if self.closed:
            return []
        out = self._start({}) + self._close_item()
        incomplete = incomplete_reason(self._finish)
        self.response = self._snapshot("incomplete" if incomplete else "completed", incomplete=incomplete)
        out.append(self._event("response.incomplete" if incomplete else "response.completed", response=self.response))
        self.closed = True
        return out

    def _fail(self, message: str) -> list[dict[str, Any]]:
        # the item being streamed stays as far as it got, "incomplete": the client sees what was cut
        if self._open is not None:
            self._open["status"] = "incomplete"
            self._output.append(self._open)
            self._open = None
        self.closed = True
        failed = self._snapshot("failed", error={"code": "server_error", "message": message})
        return [self._event("response.failed", response=failed)]


async def responses_events(chunks: AsyncIterator[dict[str, Any]], translator: ResponsesStreamTranslator,
                           on_done: Callable[[dict[str, Any]], Awaitable[None]] | None = None) -> AsyncIterator[bytes]:
    """The core's stream as Responses events. `on_done(response)` runs before the last event of a stream that
    ended well (the response is stored before the client can ask for it). Closing this closes `chunks`, so the
    core records a client that went away at once."""
    try:
        async for chunk in chunks:
            for payload in translator.feed(chunk):
                yield sse_event(payload)
        closing = translator.end()
        if closing and on_done is not None and translator.response is not None:
            await on_done(translator.response)
        for payload in closing:
            yield sse_event(payload)
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
