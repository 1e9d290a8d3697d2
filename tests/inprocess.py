"""The gateway in this process: `create_app(settings)` behind starlette's TestClient (an httpx client
on an ASGI transport), with its lifespan run, so tests of an HTTP contract skip starting a process.

Upstreams stay real servers on sockets (llm-katan, scripted servers, the model server). Process-level
behaviour (start-up, signals, workers, uvicorn's header and body timeouts, the embedded model server)
is tested with `tests.servers.start_gateway` instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.config import Settings, load_settings
from gateway.state import GatewayState
from gateway.store import Exchange
from tests.servers import TEST_ADMIN_TOKEN, Server

BASE_URL = "http://testserver"


@dataclass
class InProcessGateway:
    client: TestClient
    registry: CollectorRegistry

    @property
    def url(self) -> str:
        return BASE_URL

    @property
    def state(self) -> GatewayState:
        state: GatewayState = self.client.app.state.protege  # type: ignore[attr-defined]
        return state

    def openai(self, api_key: str = "unused", **kwargs: Any) -> openai.OpenAI:
        """The official SDK, talking to this app through the test client's transport."""
        return openai.OpenAI(base_url=f"{BASE_URL}/v1", api_key=api_key, http_client=self.client, max_retries=0,
                             **kwargs)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples whose labels include `labels`, as /metrics shows them (a scrape also
        refreshes the registry gauges); read from the registry when the gateway has no admin token."""
        if self.state.settings.admin_token is None:
            samples = [s for family in self.registry.collect() for s in family.samples]
        else:
            samples = [s for family in text_string_to_metric_families(self.metrics_text()) for s in family.samples]
        return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    def metrics_text(self) -> str:
        """What Prometheus scrapes: /metrics with the admin token."""
        token = self.state.settings.admin_token
        assert token is not None, "this gateway has no admin token: /metrics is off"
        response = self.client.get("/metrics", headers={"authorization": f"Bearer {token.get_secret_value()}"})
        assert response.status_code == 200, response.text
        return response.text

    def run(self, coroutine: Any) -> Any:
        """Run a coroutine on the app's own event loop (where its store and capture writer live)."""
        portal = self.client.portal
        assert portal is not None, "the gateway is not running (use it inside `with inprocess_gateway(...)`)"
        return portal.call(lambda: coroutine)

    def flush(self) -> None:
        """Wait until every exchange submitted so far is written (or dropped): polls the capture queue."""
        assert self.run(self.state.capture.wait_idle()), "the capture writer did not catch up"

    def rows(self, **filters: Any) -> list[Exchange]:
        """Captured exchanges, oldest first, read through the Store API after a flush."""
        self.flush()
        exchanges: list[Exchange] = self.run(self.state.store.list_exchanges(**filters))
        return sorted(exchanges, key=lambda e: e.created_at)


def settings_for(upstream: Server | None, store: str | Path, *, config: dict[str, Any] | None = None,
                 model: str = "openai/gpt-4o-mini", **overrides: Any) -> Settings:
    """Settings as `protege serve --teacher ... --teacher-api-base <upstream> --store ...` builds them."""
    flat: dict[str, Any] = {"store": store if isinstance(store, str) else f"sqlite:///{store}",
                            "admin_token": TEST_ADMIN_TOKEN}  # /metrics needs one; pass admin_token=None for none
    if upstream is not None:
        flat |= {"teacher": model, "teacher_api_base": f"{upstream.url}/v1",
                 "teacher_api_key": "sk-upstream-secret-123456"}
    flat = {k: v for k, v in (flat | overrides).items() if v is not None}  # an override None: not set
    settings = load_settings(None, env={}, overrides=flat)
    if config:
        settings = Settings.model_validate(_merged(settings.model_dump(exclude_unset=True), config))
    return settings


def _merged(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in patch.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@contextmanager
def inprocess_gateway(settings: Settings, **client_kwargs: Any) -> Iterator[InProcessGateway]:
    registry = CollectorRegistry()
    app = create_app(settings, registry=registry)
    with TestClient(app, base_url=BASE_URL, raise_server_exceptions=False, **client_kwargs) as client:
        yield InProcessGateway(client, registry)


def _ready(condition: Callable[[], Any], deadline: float, timeout: float, what: str) -> Any:
    """`condition()`'s value when truthy, None while there is time left; fails past the deadline."""
    value = condition()
    if value:
        return value
    if time.monotonic() > deadline:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")
    return None


def poll(condition: Callable[[], Any], timeout: float = 10, interval: float = 0.02, what: str = "condition") -> Any:
    """Wait until `condition()` is truthy and return its value; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (value := _ready(condition, deadline, timeout, what)) is None:
        time.sleep(interval)
    return value


async def apoll(condition: Callable[[], Any], timeout: float = 10, interval: float = 0.02,
                what: str = "condition") -> Any:
    """`poll` in a coroutine: the event loop runs on while it waits."""
    deadline = time.monotonic() + timeout
    while (value := _ready(condition, deadline, timeout, what)) is None:
        await asyncio.sleep(interval)
    return value


