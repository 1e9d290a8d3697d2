"""Direct httpx calls to an OpenAI-compatible server: OpenAI itself, vLLM, the embedded model server.

This path skips litellm (~3 ms per call) wherever the upstream already speaks OpenAI's API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from gateway.errors import ProtegeError, UpstreamError, UpstreamTimeoutError
from gateway.providers.base import Redactor, error_for_status, parse_retry_after
from gateway.tracing import trace_headers

OPENAI_DEFAULT_BASE = "https://api.openai.com/v1"


def completion_as_chunks(completion: dict[str, Any]) -> list[dict[str, Any]]:
    """A chat.completion as the chunks a streaming server would have sent."""
    base = {k: completion.get(k) for k in ("id", "created", "model")}
    base["object"] = "chat.completion.chunk"
    chunks = []
    for choice in completion.get("choices") or []:
        index, message = choice.get("index", 0), choice.get("message") or {}
        delta: dict[str, Any] = {"role": message.get("role") or "assistant"}
        if message.get("content") is not None:
            delta["content"] = message["content"]
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
        first: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": None}
        if choice.get("logprobs") is not None:  # as a streaming server sends them, beside their tokens
            first["logprobs"] = choice["logprobs"]
        chunks.append({**base, "choices": [first]})
        chunks.append({**base, "choices": [{"index": index, "delta": {},
                                            "finish_reason": choice.get("finish_reason")}]})
    if completion.get("usage"):
        chunks.append({**base, "choices": [], "usage": completion["usage"]})
    return chunks


class OpenAICompatibleProvider:
    def __init__(self, *, name: str, api_base: str, api_key: str | None, timeout_s: float,
                 connect_timeout_s: float, redact: Redactor, max_connections: int = 1000) -> None:
        self.name = name
        self._redact = redact
        headers = {"content-type": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self._client = httpx.AsyncClient(
            base_url=api_base.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            # httpcore scans every pooled connection per request: keep the idle pool small
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=64),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self._client.post("/chat/completions", content=orjson.dumps(body),
                                               headers=trace_headers())
        except httpx.TimeoutException as exc:
            raise UpstreamTimeoutError(f"{self.name} timed out") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"{self.name} unreachable: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise self._status_error(response.status_code, response.content, response.headers)
        return self._parse_completion(response.content)

    def _parse_completion(self, content: bytes) -> dict[str, Any]:
        try:
            payload = orjson.loads(content)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"{self.name} returned invalid JSON", code="upstream_invalid_json") from exc
        if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list):
            raise UpstreamError(f"{self.name} returned a malformed completion", code="upstream_invalid_json")
        return payload

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            async with self._client.stream("POST", "/chat/completions", content=orjson.dumps(body),
                                           headers=trace_headers()) as resp:
                if resp.status_code != 200:
                    raise self._status_error(resp.status_code, await resp.aread(), resp.headers)
                if resp.headers.get("content-type", "").startswith("application/json"):
                    # some servers ignore stream=true (e.g. for tool calls): replay the completion
                    for chunk in completion_as_chunks(self._parse_completion(await resp.aread())):
                        yield chunk
                    return
                done = False
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        # read on to the end of the response, so the connection goes back to the pool
                        done = True
                        continue
                    try:
                        chunk = orjson.loads(data)
                    except orjson.JSONDecodeError as exc:
                        raise UpstreamError(f"{self.name} sent an invalid stream event",
                                            code="upstream_invalid_json") from exc
                    if isinstance(chunk, dict) and "error" in chunk:
                        message = str((chunk["error"] or {}).get("message", "error event"))
                        raise UpstreamError(f"{self.name} stream failed: {self._redact(message)}")
                    yield chunk
                if not done:
                    raise UpstreamError(f"{self.name} stream ended before [DONE]", code="upstream_stream_cut")
        except ProtegeError:
            raise
        except httpx.TimeoutException as exc:
            raise UpstreamTimeoutError(f"{self.name} timed out") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"{self.name} connection failed: {type(exc).__name__}") from exc

    async def forward(self, method: str, path: str, *, params: list[tuple[str, str]], headers: dict[str, str],
                      content: bytes) -> httpx.Response:
        """Send a request as it came (`path` below the API base, e.g. `/embeddings`) with this provider's
        credentials, and return the response with its body unread (the caller streams it, then closes it)."""
        request = self._client.build_request(method, path, params=tuple(params), headers=headers,
                                             content=content)
        try:
            return await self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeoutError(f"{self.name} timed out") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"{self.name} unreachable: {type(exc).__name__}") from exc

    def status_error(self, response: httpx.Response, content: bytes) -> ProtegeError:
        """The client-facing error for an upstream's error response (its text redacted)."""
        return self._status_error(response.status_code, content, response.headers)

    def _status_error(self, status: int, content: bytes, headers: httpx.Headers) -> ProtegeError:
        message, param, code = "", None, None
        try:
            err = orjson.loads(content).get("error")
            if isinstance(err, dict):
                message = str(err.get("message") or "")
                param = err.get("param") if isinstance(err.get("param"), str) else None
                code = err.get("code") if isinstance(err.get("code"), str) else None
            elif isinstance(err, str):
                message = err
        except (orjson.JSONDecodeError, AttributeError):
            message = content[:200].decode("utf-8", "replace")
        return error_for_status(self.name, status, self._redact(message),
                                retry_after=parse_retry_after(headers.get("retry-after")), param=param, code=code)
