"""Per-key rate limits: token buckets on a fake clock, then the gateway app (in this process, in front of a
real upstream) with two keys."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from gateway.errors import RateLimitError
from gateway.ratelimit import RateLimiter
from tests.inprocess import inprocess_gateway, settings_for
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


def test_gateway_limits_each_key_separately(katan: Server, tmp_path: Path) -> None:
    settings = settings_for(katan, tmp_path / "store.db", config={"rate_limits": {"requests_per_minute": 2}},
                            gateway_keys="key-alpha-123,key-beta-456")
    with inprocess_gateway(settings) as gateway:
        def ask(key: str) -> httpx2.Response:
            return gateway.client.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                                       json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})

        assert [ask("key-alpha-123").status_code for _ in range(2)] == [200, 200]
        limited = ask("key-alpha-123")
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "rate_limit_exceeded"
        assert limited.json()["error"]["type"] == "rate_limit_error"
        assert 1 <= int(limited.headers["retry-after"]) <= 30
        assert ask("key-beta-456").status_code == 200
        assert ask("wrong-key").status_code == 401  # an unknown key is refused before it is counted
        assert 'protege_rate_limited_requests_total{limit="requests"} 1.0' in gateway.metrics_text()


def test_gateway_token_limit_uses_the_answers_usage(katan: Server, tmp_path: Path) -> None:
    settings = settings_for(katan, tmp_path / "store.db", config={"rate_limits": {"tokens_per_minute": 5}})
    body = {"model": "m", "messages": [{"role": "user", "content": "a question of more than five tokens"}]}
    with inprocess_gateway(settings) as gateway:
        first = gateway.client.post("/v1/chat/completions", json=body)
        assert first.status_code == 200 and first.json()["usage"]["total_tokens"] > 5
        second = gateway.client.post("/v1/chat/completions", json=body)
        assert second.status_code == 429 and "token rate limit" in second.json()["error"]["message"]
