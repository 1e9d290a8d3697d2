from __future__ import annotations

import pytest

from gateway.config import RetryConfig
from gateway.errors import (
    BadRequestError,
    ProtegeError,
    RateLimitError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from gateway.providers.retry import retry_delay, with_retries

POLICY = RetryConfig(attempts=3, backoff_s=0.1, max_backoff_s=1.0)


def test_backoff_doubles_and_is_capped() -> None:
    err = UpstreamError("teacher returned 500")
    assert [retry_delay(err, n, POLICY) for n in range(4)] == [0.1, 0.2, 0.4, None]
    assert retry_delay(err, 0, RetryConfig(attempts=1, backoff_s=5, max_backoff_s=2)) == 2


def test_retry_after_is_honoured_when_short_enough() -> None:
    assert retry_delay(RateLimitError("slow down", retry_after=0.5), 0, POLICY) == 0.5
    assert retry_delay(RateLimitError("slow down", retry_after=30), 0, POLICY) is None
    assert retry_delay(RateLimitError("slow down"), 1, POLICY) == 0.2


@pytest.mark.parametrize("err", [
    UpstreamStatusError("bad", upstream_status=400), UpstreamTimeoutError("slow"), BadRequestError("x"),
    UpstreamError("creds", code="upstream_auth"),
])
def test_no_retry_for_client_errors_timeouts_and_credentials(err: ProtegeError) -> None:
    assert retry_delay(err, 0, POLICY) is None


async def test_with_retries_returns_first_success() -> None:
    calls = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise UpstreamError("teacher returned 503")
        return "ok"

    retried: list[ProtegeError] = []
    assert await with_retries(flaky, RetryConfig(attempts=3, backoff_s=0), retried.append) == "ok"
    assert len(calls) == 3 and len(retried) == 2
