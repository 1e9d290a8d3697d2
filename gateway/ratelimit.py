"""Per-client rate limits: requests and tokens per minute, as token buckets.

A client is a gateway key (by its hash) or, on a gateway without keys, everyone at once. A request is
admitted when its client has a whole request left and has not run its token budget into debt; its
tokens are spent when the answer's usage is known, so one large answer may overdraw the budget and
the next requests wait until the bucket has refilled (the Retry-After says how long).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.errors import BadRequestError, RateLimitError, ServiceUnavailableError


@dataclass(slots=True)
class _Bucket:
    level: float
    updated: float


class TokenBuckets:
    """One bucket per client: `capacity` units, refilled at `capacity` per minute."""

    def __init__(self, capacity: float, clock: Callable[[], float]) -> None:
        self.capacity = capacity
        self._rate = capacity / 60.0
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def level(self, client: str) -> float:
        now = self._clock()
        bucket = self._buckets.setdefault(client, _Bucket(self.capacity, now))
        bucket.level = min(self.capacity, bucket.level + (now - bucket.updated) * self._rate)
        bucket.updated = now
        return bucket.level

    def take(self, client: str, amount: float) -> None:
        self.level(client)
        self._buckets[client].level -= amount

    def wait_until(self, client: str, level: float) -> float:
        """Seconds until the bucket holds `level` units again."""
        return max(0.0, (level - self.level(client)) / self._rate)


class RateLimiter:
    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._requests = TokenBuckets(requests_per_minute, clock) if requests_per_minute else None
        self._tokens = TokenBuckets(tokens_per_minute, clock) if tokens_per_minute else None
        self.on_limited: Callable[[str], None] | None = None  # told "requests" or "tokens" per refusal

    @property
    def enabled(self) -> bool:
        return self._requests is not None or self._tokens is not None

    def admit(self, client: str) -> None:
        """Count one request for `client`, or raise a 429 with how long to wait."""
        if self._tokens is not None and self._tokens.level(client) <= 0:
            wait = self._tokens.wait_until(client, 1)
            self._refused("tokens")
            raise RateLimitError(f"token rate limit reached ({self._tokens.capacity:.0f} tokens per minute); "
                                 f"retry in {wait:.1f} s", retry_after=wait, code="rate_limit_exceeded")
        if self._requests is not None:
            if self._requests.level(client) < 1:
                wait = self._requests.wait_until(client, 1)
                self._refused("requests")
                raise RateLimitError(f"request rate limit reached ({self._requests.capacity:.0f} requests per "
                                     f"minute); retry in {wait:.1f} s", retry_after=wait, code="rate_limit_exceeded")
            self._requests.take(client, 1)

    def _refused(self, kind: str) -> None:
        if self.on_limited is not None:
            self.on_limited(kind)

    def spend_tokens(self, client: str, tokens: int) -> None:
        if self._tokens is not None and tokens > 0:
            self._tokens.take(client, tokens)


class ConcurrencyLimiter:
    """Requests in flight, in all and per client. A request over either limit is refused at once (no
    queue to grow): 503 when the process is full, 429 when the client is."""

    def __init__(self, total: int | None, per_client: int | None) -> None:
        self._total_limit = total
        self._client_limit = per_client
        self._total = 0
        self._by_client: dict[str, int] = {}

    @property
    def in_flight(self) -> int:
        return self._total

    def acquire(self, client: str | None) -> Callable[[], None]:
        """Take a slot for `client` (None: the gateway's own calls, counted in the total only); returns
        the function that gives it back (idempotent)."""
        if self._total_limit is not None and self._total >= self._total_limit:
            raise ServiceUnavailableError(f"the gateway is at its limit of {self._total_limit} requests in flight; "
                                          "retry shortly", code="overloaded", retry_after=1)
        held = 0 if client is None else self._by_client.get(client, 0)
        if client is not None and self._client_limit is not None and held >= self._client_limit:
            raise RateLimitError(f"this key has {held} requests in flight, the most it may have; retry when one "
                                 "finishes", retry_after=1, code="too_many_concurrent_requests")
        self._total += 1
        if client is not None:
            self._by_client[client] = held + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self._total -= 1
            if client is not None:
                left = self._by_client[client] - 1
                if left:
                    self._by_client[client] = left
                else:
                    del self._by_client[client]

        return release


def check_request_size(body: dict[str, object], *, max_n: int, max_output_tokens: int | None) -> None:
    """Refuse (400) a request that asks for more choices or output tokens than the operator allows: the
    tokens are paid before any rate limit can charge them."""
    n = body.get("n")
    if isinstance(n, int) and n > max_n:
        raise BadRequestError(f"n is {n}; this gateway allows at most {max_n}", param="n", code="limit_exceeded")
    if max_output_tokens is not None:
        for name in ("max_tokens", "max_completion_tokens"):
            value = body.get(name)
            if isinstance(value, int) and value > max_output_tokens:
                raise BadRequestError(f"{name} is {value}; this gateway allows at most {max_output_tokens}",
                                      param=name, code="limit_exceeded")
