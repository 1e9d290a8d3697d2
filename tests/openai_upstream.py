"""A scripted OpenAI-compatible upstream on a real socket (stdlib `ThreadingHTTPServer`, in this process), for
what llm-katan does not serve: chat answers a test chooses (JSON for structured output), and the routes the
gateway passes through — embeddings, legacy completions (streamed too), moderations, audio and files
(multipart bodies, binary downloads). It records every request it receives, so tests can check what the
gateway sent: the path, the query, the body byte for byte, and which credentials."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    method: str
    path: str  # with the query string
    headers: dict[str, str]
    body: bytes


@dataclass
class ScriptedUpstream:
    chat_content: str | None = None  # None: echo the last user message
    logprob: float = -0.05  # of every token, when a request asks for logprobs (as a student server is asked)
    fail_next: bool = False  # the next request gets a 500 whose text names an internal address
    throughput: dict[str, Any] | None = None  # GET /throughput, as Protégé's model server answers it (None: 404)
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return None

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                upstream.received.append(Received(self.command, self.path, {k.lower(): v for k, v in
                                                                            self.headers.items()}, body))
                status, content_type, payload, chunks = upstream.answer(self.command, self.path, body)
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("x-upstream", "scripted")
                if chunks is None:
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for chunk in chunks:
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")

            do_GET = do_POST = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> ScriptedUpstream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def last(self, path_prefix: str) -> Received:
        return next(r for r in reversed(self.received) if r.path.startswith(path_prefix))

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, str, bytes, list[bytes] | None]:
        route = path.split("?", 1)[0]
        if self.fail_next:
            self.fail_next = False
            return 500, "application/json", b'{"error": {"message": "upstream broke at 10.0.0.7"}}', None
        data: Any = json.loads(body) if body and not route.startswith(("/v1/audio", "/v1/files")) else {}
        if route == "/v1/chat/completions":
            return self._chat(data)
        if route == "/throughput" and self.throughput is not None:
            return _json(self.throughput)
        if route == "/v1/embeddings":
            inputs = data["input"] if isinstance(data["input"], list) else [data["input"]]
            return _json({"object": "list", "model": data["model"],
                          "data": [{"object": "embedding", "index": i, "embedding": [0.1 * (i + 1), 0.2, 0.3]}
                                   for i in range(len(inputs))],
                          "usage": {"prompt_tokens": 4 * len(inputs), "total_tokens": 4 * len(inputs)}})
        if route == "/v1/completions":
            text = f" completed: {data['prompt']}"
            if data.get("stream"):
                frames = [f"data: {json.dumps({'id': 'cmpl-1', 'object': 'text_completion', 'model': data['model'], 'choices': [{'index': 0, 'text': word, 'finish_reason': None}]})}\n\n".encode()  # noqa: E501
                          for word in text.split(" ")]
                return 200, "text/event-stream", b"", [*frames, b"data: [DONE]\n\n"]
            return _json({"id": "cmpl-1", "object": "text_completion", "created": int(time.time()),
                          "model": data["model"], "choices": [{"index": 0, "text": text, "finish_reason": "stop",
                                                               "logprobs": None}],
                          "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}})
        if route == "/v1/moderations":
            return _json({"id": "modr-1", "model": data.get("model") or "omni-moderation-latest",
                          "results": [{"flagged": False, "categories": {}, "category_scores": {}}]})
        if route == "/v1/audio/transcriptions":
            return _json({"text": f"{len(body)} bytes heard"})
        if route == "/v1/files" and method == "POST":
            return _json({"id": "file-1", "object": "file", "bytes": len(body), "created_at": 0,
                          "filename": "data.jsonl", "purpose": "batch"})
        if route == "/v1/files" and method == "GET":
            return _json({"object": "list", "data": [], "has_more": False})
        if route == "/v1/files/file-1/content":
            return 200, "application/octet-stream", bytes(range(256)), None
        return 404, "application/json", b'{"error": {"message": "no such route"}}', None

    def _chat(self, data: dict[str, Any]) -> tuple[int, str, bytes, list[bytes] | None]:
        """A fixed answer, or the last user message echoed; with tools, a call of the first one (its string
        arguments "Paris") until the conversation holds its result, then a sentence with that result."""
        last = data["messages"][-1]
        message: dict[str, Any] = {"role": "assistant", "content": self.chat_content or str(last.get("content"))}
        finish = "stop"
        if data.get("tools") and last.get("role") != "tool":
            function = data["tools"][0]["function"]
            properties = (function.get("parameters") or {}).get("properties") or {}
            arguments = {name: "Paris" for name, spec in properties.items() if spec.get("type") == "string"}
            message = {"role": "assistant", "content": None, "tool_calls": [{
                "id": f"call_{len(self.received)}", "type": "function",
                "function": {"name": function["name"], "arguments": json.dumps(arguments)}}]}
            finish = "tool_calls"
        elif data.get("tools"):
            message["content"] = f"The tool said: {last.get('content')}"
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish}
        if data.get("logprobs") and message["content"]:
            choice["logprobs"] = {"content": [{"token": word, "logprob": self.logprob, "bytes": list(word.encode()),
                                               "top_logprobs": []} for word in message["content"].split(" ")]}
        usage = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
        completion = {"id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()),
                      "model": data.get("model") or "scripted", "choices": [choice], "usage": usage}
        if not data.get("stream"):
            return _json(completion)
        base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": completion["model"]}
        delta = {k: v for k, v in message.items() if v is not None}
        if "tool_calls" in delta:
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(delta["tool_calls"])]
        first = {"index": 0, "delta": delta, "finish_reason": None,  # logprobs beside their tokens, as servers do
                 **({"logprobs": choice["logprobs"]} if "logprobs" in choice else {})}
        frames = [{**base, "choices": [first]},
                  {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]},
                  {**base, "choices": [], "usage": usage}]
        return 200, "text/event-stream", b"", [f"data: {json.dumps(f)}\n\n".encode() for f in frames] + [
            b"data: [DONE]\n\n"]


def _json(payload: dict[str, Any]) -> tuple[int, str, bytes, None]:
    return 200, "application/json", json.dumps(payload).encode(), None
