"""A self-hosted model priced by compute: the hour price of its hardware over its server's throughput, configured
or measured (`GET /throughput`), against a scripted server on a real socket."""

from __future__ import annotations

import httpx
import pytest

from gateway.compute_price import ComputePricer, ComputePricing, Throughput, read_throughput
from gateway.config import ComputeConfig
from gateway.pricing import Price
from tests.openai_upstream import ScriptedUpstream


class Holder:
    price: Price | None = None


def test_the_measured_throughput_spreads_the_hour_price_of_the_reported_hardware() -> None:
    pricing = ComputePricing("http://127.0.0.1:9/v1", ComputeConfig())
    price, source = pricing.price(Throughput("cpu", 250.0))
    assert price == Price.per_compute_hour(0.10, 250.0)
    assert price is not None and price.cost(250 * 3600, 0) == pytest.approx(0.10)  # an hour of tokens: the hour
    assert source == ("compute: cpu_hour_usd 0.1 (assumed (default)) over 250 tokens/s "
                      "(measured by the model server)")
    gpu, source = pricing.price(Throughput("cuda", 5000.0))
    assert gpu == Price.per_compute_hour(2.50, 5000.0) and "gpu_hour_usd 2.5" in source


def test_configured_hardware_and_throughput_need_no_measurement() -> None:
    compute = ComputeConfig(gpu_hour_usd=1.8)
    pricing = ComputePricing("http://127.0.0.1:9/v1", compute, hardware="gpu", tokens_per_s=500)
    assert not pricing.needs_measurement
    price, source = pricing.price(None)
    assert price == Price.per_compute_hour(1.8, 500)
    assert source == "compute: gpu_hour_usd 1.8 (configured) over 500 tokens/s (configured)"


def test_nothing_measured_yet_is_unpriced_not_guessed() -> None:
    pricing = ComputePricing("http://127.0.0.1:9/v1", ComputeConfig())
    assert pricing.price(None)[0] is None
    assert pricing.price(Throughput("cpu", None))[0] is None


async def test_the_pricer_reads_the_server_and_keeps_the_last_price_when_it_goes_away() -> None:
    with ScriptedUpstream(throughput={"device": "cpu", "tokens_per_s": 400.0, "busy_s": 3.0}) as server:
        target = Holder()
        pricer = ComputePricer([(target, ComputePricing(f"{server.url}/v1", ComputeConfig(cpu_hour_usd=0.36),
                                                        api_key="k"))], refresh_s=60)
        await pricer.start()
        try:
            assert target.price == Price.per_compute_hour(0.36, 400.0)
            assert server.last("/throughput").headers["authorization"] == "Bearer k"
            server.throughput = None  # the route is gone (a restart into vLLM, say)
            await pricer.refresh()
            assert target.price == Price.per_compute_hour(0.36, 400.0)
        finally:
            await pricer.aclose()


async def test_a_server_without_the_route_measures_nothing() -> None:
    with ScriptedUpstream() as server:
        async with httpx.AsyncClient() as client:
            assert await read_throughput(client, server.url) is None
    async with httpx.AsyncClient() as client:
        assert await read_throughput(client, "http://127.0.0.1:9") is None  # nothing listens
