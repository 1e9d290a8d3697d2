"""Retries with exponential backoff on 429 and 5xx; never on a client's own 4xx or on timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from gateway.config import RetryConfig
from gateway.errors import (
    CircuitOpenError,
    ProtegeError,
    RateLimitError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)

T = TypeVar("T")


def retry_delay(exc: ProtegeError, attempt: int, policy: RetryConfig) -> float | None:
    """Seconds to wait before retry number `attempt` (0-based), or None when not to retry."""
    if attempt >= policy.attempts:
        return None
    if isinstance(exc, UpstreamStatusError | UpstreamTimeoutError | CircuitOpenError):
        return None
    if isinstance(exc, RateLimitError):
        wait: float | None = exc.retry_after
        if wait is not None:
            return wait if wait <= policy.max_backoff_s else None
    elif not isinstance(exc, UpstreamError) or exc.code == "upstream_auth":
        return None
    backoff: float = policy.backoff_s * 2.0**attempt
    return min(backoff, policy.max_backoff_s)


async def with_retries(call: Callable[[], Awaitable[T]], policy: RetryConfig,
                       on_retry: Callable[[ProtegeError], None] | None = None) -> T:
    attempt = 0
    while True:
        try:
            return await call()
        except ProtegeError as exc:
            delay = retry_delay(exc, attempt, policy)
            if delay is None:
                raise
            if on_retry:
                on_retry(exc)
            await asyncio.sleep(delay)
            attempt += 1


async def open_stream(start: Callable[[], AsyncIterator[dict[str, Any]]], policy: RetryConfig,
                      on_retry: Callable[[ProtegeError], None] | None = None,
                      ) -> tuple[dict[str, Any] | None, AsyncIterator[dict[str, Any]]]:
    """Start a stream, retrying until its first chunk arrives; afterwards failures are final."""

    async def first() -> tuple[dict[str, Any] | None, AsyncIterator[dict[str, Any]]]:
        iterator = start()
        try:
            return await iterator.__anext__(), iterator
        except StopAsyncIteration:
            return None, iterator
        except BaseException:
            await _close(iterator)
            raise

    return await with_retries(first, policy, on_retry)


async def _close(iterator: AsyncIterator[Any]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()
