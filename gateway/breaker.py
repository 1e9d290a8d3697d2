"""A circuit breaker per upstream: stop hammering one that keeps failing, and probe it back.

closed ──(`failure_threshold` failed requests in a row)──▶ open ──(`cooldown_s`)──▶ half-open
half-open: one request goes through as a probe; its success closes the circuit, its failure opens
it again for another cooldown. While open (and while a probe is in flight) requests fail at once
with `CircuitOpenError` (503 with Retry-After), so the cascade falls back or degrades without
waiting for timeouts. Only server-side failures count (5xx, unreachable, timeouts): a 4xx is the
request's fault and a 429 is the upstream asking to slow down, which retries already honour.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

from gateway.errors import CircuitOpenError, ProtegeError, UpstreamError

T = TypeVar("T")
CircuitState = Literal["closed", "open", "half_open"]


def is_upstream_failure(exc: ProtegeError) -> bool:
    return isinstance(exc, UpstreamError) and not isinstance(exc, CircuitOpenError) and exc.status_code >= 500


class CircuitBreaker:
    def __init__(self, name: str, *, failure_threshold: int = 5, cooldown_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.failure_threshold = failure_threshold  # 0: never opens
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self.on_open: Callable[[str], None] | None = None  # told the breaker's name each time it opens

    @property
    def state(self) -> CircuitState:
        if self._opened_at is None:
            return "closed"
        return "open" if self._clock() - self._opened_at < self.cooldown_s else "half_open"

    def before_call(self) -> bool:
        """Raise when the call must not go through; True when it is the half-open probe."""
        state = self.state
        if state == "closed":
            return False
        if state == "half_open" and not self._probing:
            self._probing = True
            return True
        assert self._opened_at is not None
        wait = max(0.0, self.cooldown_s - (self._clock() - self._opened_at))
        raise CircuitOpenError(f"{self.name} is failing; its circuit is open (next try in {wait:.1f} s)",
                               retry_after=wait or 1.0)

    def record(self, *, failed: bool, probe: bool) -> None:
        if probe:
            self._probing = False
        if not failed:
            self._failures = 0
            self._opened_at = None
            return
        self._failures += 1
        if probe or (self.failure_threshold and self._failures >= self.failure_threshold):
            self._opened_at = self._clock()
            if self.on_open is not None:
                self.on_open(self.name)

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        probe = self.before_call()
        try:
            result = await fn()
        except ProtegeError as exc:
            self.record(failed=is_upstream_failure(exc), probe=probe)
            raise
        except BaseException:
            if probe:
                self._probing = False  # cancelled: let the next request probe
            raise
        self.record(failed=False, probe=probe)
        return result
