"""What a model provider is to the gateway: a completion call and a chunk stream, in OpenAI's shape."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from gateway.errors import (
    ProtegeError,
    RateLimitError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)

Redactor = Callable[[str], str]

log = logging.getLogger("protege.providers")


class ChatProvider(Protocol):
    """An upstream that speaks OpenAI chat completions (directly or through litellm).

    `body` is the client's request with `model` already set to the upstream's model name.
    Failures are raised as `ProtegeError`s: 429 → RateLimitError, 4xx → UpstreamStatusError,
    5xx/unreachable/bad payload → UpstreamError, timeout → UpstreamTimeoutError.
    """

    name: str

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]: ...

    async def aclose(self) -> None: ...


def redactor(secrets: list[str]) -> Redactor:
    """A function that blanks every known secret (and its first 8+ chars) out of a text."""
    needles = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def redact(text: str) -> str:
        for secret in needles:
            text = text.replace(secret, "***")
            if len(secret) > 12:
                text = text.replace(secret[:8], "***")
        return text

    return redact


def error_for_status(who: str, status: int, message: str, *, retry_after: float | None = None,
                     param: str | None = None, code: str | None = None) -> ProtegeError:
    """The client-facing error for an upstream HTTP status."""
    text = f"{who} returned {status}: {message}" if message else f"{who} returned {status}"
    if status == 429:
        return RateLimitError(text, retry_after=retry_after, code=code)
    if status in (408, 504):
        return UpstreamTimeoutError(text, code=code)
    if status in (401, 403):
        # the gateway's provider credentials are wrong: the client cannot fix that
        return UpstreamError(f"{who} rejected the gateway's credentials ({status})", code="upstream_auth")
    if 400 <= status < 500:
        return UpstreamStatusError(message or text, upstream_status=status, param=param, code=code)
    # a server error's text is the upstream's business (and may carry addresses or internals: a 500 from
    # litellm wraps the connection error): the client learns the status, the log keeps the text
    log.warning("%s returned %d: %s", who, status, message[:300])
    return UpstreamError(f"{who} returned {status}", code=code)


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from model APIs, treated as unknown


__all__ = [
    "ChatProvider",
    "Redactor",
    "UpstreamError",
    "UpstreamStatusError",
    "UpstreamTimeoutError",
    "error_for_status",
    "parse_retry_after",
    "redactor",
]
