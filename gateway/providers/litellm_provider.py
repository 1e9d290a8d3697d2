"""Teachers that are not OpenAI-compatible (Anthropic, Bedrock, Vertex, …) go through litellm.

litellm is imported on first use (it takes seconds and fetches a price map over the network
unless LITELLM_LOCAL_MODEL_COST_MAP is set, which we force before importing it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

from gateway.errors import ProtegeError, UpstreamError, UpstreamTimeoutError
from gateway.providers.base import Redactor, error_for_status, parse_retry_after

log = logging.getLogger("protege.providers")


def import_litellm() -> ModuleType:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    return litellm


class LiteLLMProvider:
    def __init__(self, *, name: str, model: str, api_base: str | None, api_key: str | None,
                 timeout_s: float, redact: Redactor) -> None:
        self.name = name
        self._model = model
        self._api_base = api_base
        self._api_key = api_key
        self._timeout_s = timeout_s
        self._redact = redact
        self._litellm = import_litellm()

    async def aclose(self) -> None:
        return None

    def _kwargs(self, body: dict[str, Any]) -> dict[str, Any]:
        params = {k: v for k, v in body.items() if k != "model"}
        params.update(model=self._model, timeout=self._timeout_s, num_retries=0)
        if self._api_base:
            params["api_base"] = self._api_base
        if self._api_key:
            params["api_key"] = self._api_key
        return params

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self._litellm.acompletion(**self._kwargs({**body, "stream": False}))
        except Exception as exc:
            raise self._translate(exc) from exc
        result: dict[str, Any] = response.model_dump()
        return result

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            response = await self._litellm.acompletion(**self._kwargs({**body, "stream": True}))
            async for chunk in response:
                yield chunk.model_dump(exclude_none=True)
        except ProtegeError:
            raise
        except Exception as exc:
            raise self._translate(exc) from exc

    async def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        """`/v1/embeddings` through litellm, for providers whose API is not OpenAI's. The model is the request's,
        under this teacher's provider (`text-embedding-004` → `gemini/text-embedding-004`)."""
        model = str(body.get("model") or "")
        provider = self._model.split("/", 1)[0] if "/" in self._model else ""
        params = {k: v for k, v in self._kwargs(body).items() if k != "num_retries"}
        params["model"] = model if "/" in model or not provider else f"{provider}/{model}"
        try:
            response = await self._litellm.aembedding(**params)
        except Exception as exc:
            raise self._translate(exc) from exc
        result: dict[str, Any] = response.model_dump()
        return result

    def _translate(self, exc: Exception) -> ProtegeError:
        status = getattr(exc, "status_code", None)
        message = self._redact(str(getattr(exc, "message", None) or exc))
        if isinstance(exc, self._litellm.Timeout):
            return UpstreamTimeoutError(f"{self.name} timed out")
        if isinstance(exc, self._litellm.APIConnectionError) or not isinstance(status, int):
            # the client learns that the upstream failed, not what the network said (no address, no
            # resolver or TLS detail: the gateway is not a port scanner); the log keeps the detail
            log.warning("%s unreachable: %s", self.name, message[:300])
            return UpstreamError(f"{self.name} unreachable ({type(exc).__name__})")
        headers = getattr(getattr(exc, "response", None), "headers", None) or {}
        retry_after = parse_retry_after(headers.get("retry-after")) if hasattr(headers, "get") else None
        return error_for_status(self.name, status, message[:500], retry_after=retry_after)
