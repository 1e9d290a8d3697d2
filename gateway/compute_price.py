"""A self-hosted model's price per token: the hourly price of the compute it runs on (`compute.cpu_hour_usd`
or `compute.gpu_hour_usd`) spread over the tokens per second its server serves.

The throughput is the configured one (`cascade.tokens_per_s`) or, from Protégé's own model server, the one
it measures (`GET /throughput`: prompt and generated tokens over the engine's busy time), re-read every
`compute.price_refresh_s`; the hardware is the configured one (`cascade.hardware`) or the one the server
reports. Until a throughput is known the model is unpriced (counted in `protege_unknown_price_requests_total`), never
priced by a guess.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from typing import Literal, Protocol

import httpx

from gateway.config import ComputeConfig
from gateway.pricing import Price

log = logging.getLogger("protege.pricing")

Hardware = Literal["cpu", "gpu"]


class Priced(Protocol):
    """What the pricer keeps current: a teacher or the students (`price` is read per request)."""

    price: Price | None


@dataclass(frozen=True, slots=True)
class Throughput:
    """What a model server measured: the device it runs on and its tokens per second (None: nothing served)."""

    device: str
    tokens_per_s: float | None


@dataclass(frozen=True, slots=True)
class ComputePricing:
    """How one self-hosted model is priced: where its server is, and what is configured rather than measured."""

    api_base: str  # the OpenAI base URL (`…/v1`); the throughput route is at the server's root
    compute: ComputeConfig
    hardware: Hardware | None = None  # None: as the server reports
    tokens_per_s: float | None = None  # None: as the server measures
    api_key: str | None = None

    @property
    def server_root(self) -> str:
        return self.api_base.rstrip("/").removesuffix("/v1")

    @property
    def needs_measurement(self) -> bool:
        return self.hardware is None or self.tokens_per_s is None

    def price(self, measured: Throughput | None) -> tuple[Price | None, str]:
        """The price per token and a sentence saying where each of its two inputs comes from."""
        hardware = self.hardware or (_hardware(measured.device) if measured else None)
        tokens_per_s = self.tokens_per_s or (measured.tokens_per_s if measured else None)
        if hardware is None or not tokens_per_s:
            return None, "unpriced: the server's throughput is not known yet"
        name = f"{hardware}_hour_usd"
        hour_usd: float = getattr(self.compute, name)
        speed = ("configured" if self.tokens_per_s else "measured by the model server")
        source = (f"compute: {name} {hour_usd:g} ({self.compute.source(name)}) over {tokens_per_s:g} tokens/s "
                  f"({speed})")
        return dataclasses.replace(Price.per_compute_hour(hour_usd, tokens_per_s), source=source), source


def _hardware(device: str) -> Hardware | None:
    return "gpu" if device in ("gpu", "cuda") else "cpu" if device == "cpu" else None


async def read_throughput(client: httpx.AsyncClient, server_root: str) -> Throughput | None:
    """The server's measured throughput; None when it has no such route (vLLM, a hosted API) or is down."""
    try:
        response = await client.get(f"{server_root}/throughput")
        if response.status_code != 200:
            return None
        data = response.json()
        tokens_per_s = data.get("tokens_per_s")
        return Throughput(str(data.get("device", "")),
                          float(tokens_per_s) if isinstance(tokens_per_s, int | float) and tokens_per_s > 0 else None)
    except (httpx.HTTPError, ValueError, AttributeError):
        return None


class ComputePricer:
    """Keeps the `price` of each compute-priced model current, in the background."""

    def __init__(self, targets: list[tuple[Priced, ComputePricing]], refresh_s: float) -> None:
        self.targets = targets
        self.refresh_s = refresh_s
        self.sources: dict[int, str] = {}
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        for target, pricing in self.targets:
            measured = None
            if pricing.needs_measurement:
                headers = {"authorization": f"Bearer {pricing.api_key}"} if pricing.api_key else None
                async with httpx.AsyncClient(timeout=5, headers=headers) as client:
                    measured = await read_throughput(client, pricing.server_root)
            price, source = pricing.price(measured)
            if price is None and target.price is not None:
                continue  # keep the last measured price while the server is unreachable
            if source != self.sources.get(id(target)):
                log.info("%s: %s", pricing.api_base, source)
            target.price, self.sources[id(target)] = price, source

    async def _run(self) -> None:
        while True:
            # until a first measurement exists, look again soon: requests meanwhile are unpriced
            unpriced = any(t.price is None for t, _ in self.targets)
            await asyncio.sleep(min(5.0, self.refresh_s) if unpriced else self.refresh_s)
            try:
                await self.refresh()
            except Exception:  # pricing must never take the gateway down
                log.warning("compute prices not refreshed", exc_info=True)

    async def start(self) -> None:
        if not self.targets:
            return
        await self.refresh()
        if any(p.needs_measurement for _, p in self.targets):
            self._task = asyncio.create_task(self._run(), name="protege-compute-pricer")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
