"""Per-key rate limits: token buckets on a fake clock, then a real gateway with two keys."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from gateway.errors import RateLimitError
from gateway.ratelimit import RateLimiter
from tests.conftest import teacher_flags
from tests.servers import Server


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_requests_per_minute_refill_continuously() -> None:
    clock = Clock()
    limiter = RateLimiter(requests_per_minute=3, tokens_per_minute=None, clock=clock)
    for _ in range(3):
        limiter.admit("a")
    with pytest.raises(RateLimitError) as err:
        limiter.admit("a")
    assert err.value.retry_after == pytest.approx(20.0)  # one request every 20 s
    assert err.value.headers() == {"retry-after": "20"}
    limiter.admit("b")  # another client has its own bucket
    clock.now = 20.0
    limiter.admit("a")


def test_token_budget_may_be_overdrawn_then_waits() -> None:
    clock = Clock()
    limiter = RateLimiter(requests_per_minute=None, tokens_per_minute=600, clock=clock)
    limiter.admit("a")
    limiter.spend_tokens("a", 900)  # one large answer: 300 tokens in debt
    with pytest.raises(RateLimitError) as err:
        limiter.admit("a")
    assert err.value.retry_after == pytest.approx(30.1)  # 301 tokens at 10 per second
    clock.now = 31.0
    limiter.admit("a")
    assert not RateLimiter(None, None).enabled


def test_gateway_limits_each_key_separately(katan: Server, gateway_factory: Callable[..., Server],
                                           tmp_path: Path) -> None:
    config = tmp_path / "protege.yaml"
    config.write_text("rate_limits:\n  requests_per_minute: 2\n")
    gateway = gateway_factory("--config", str(config), *teacher_flags(katan, tmp_path / "store.db"),
                              env={"PROTEGE_GATEWAY_KEYS": "key-alpha-123,key-beta-456"})

    def ask(key: str) -> httpx.Response:
        return httpx.post(f"{gateway.url}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                          json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)

    assert [ask("key-alpha-123").status_code for _ in range(2)] == [200, 200]
    limited = ask("key-alpha-123")
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(limited.headers["retry-after"]) <= 30
    assert ask("key-beta-456").status_code == 200
    assert ask("wrong-key").status_code == 401  # an unknown key is refused before it is counted
    assert 'protege_rate_limited_requests_total{limit="requests"} 1.0' in httpx.get(f"{gateway.url}/metrics").text


def test_gateway_token_limit_uses_the_answers_usage(katan: Server, gateway_factory: Callable[..., Server],
                                                    tmp_path: Path) -> None:
    config = tmp_path / "protege.yaml"
    config.write_text("rate_limits:\n  tokens_per_minute: 5\n")
    gateway = gateway_factory("--config", str(config), *teacher_flags(katan, tmp_path / "store.db"))
    body = {"model": "m", "messages": [{"role": "user", "content": "a question of more than five tokens"}]}
    first = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=30)
    assert first.status_code == 200 and first.json()["usage"]["total_tokens"] > 5
    second = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=30)
    assert second.status_code == 429 and "token rate limit" in second.json()["error"]["message"]
