"""The real SmolLM2-135M-Instruct: the safetensors cache is built once, then reused; it answers sensibly."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from model_server.names import CACHE_ENV
from tests.model_server.conftest import start_model_server
from tests.model_server.reference import client, user
from tests.servers import Server, stop

pytestmark = pytest.mark.slow

SERVED = "smollm2-135m-instruct"


def _load_seconds(server: Server) -> float:
    deadline = time.monotonic() + 10
    while not (match := re.search(r"model server ready on \S+ \(model=(\S+), load took ([\d.]+) s\)",
                                  server.output())):
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.05)
    assert match.group(1) == SERVED
    return float(match.group(2))


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[tuple[Server, float, float]]:
    """Starts the server twice: cold (builds the cache from the GGUF), then warm. Yields the warm one."""
    logs = tmp_path_factory.mktemp("smollm2")
    cold = start_model_server(logs, timeout=300, env={CACHE_ENV: str(model_cache)})  # no --model: SmolLM2
    try:
        cold_load = _load_seconds(cold)
    finally:
        stop(cold.proc)
    warm = start_model_server(logs, "--cache-dir", str(model_cache))
    try:
        yield warm, cold_load, _load_seconds(warm)
    finally:
        stop(warm.proc)


def test_cache_is_built_once_then_reused(smollm2: tuple[Server, float, float], model_cache: Path) -> None:
    _, cold_load, warm_load = smollm2
    assert (model_cache / "model.safetensors").is_file()
    assert (model_cache / "protege-cache.json").is_file()
    assert not [p for p in model_cache.parent.iterdir() if ".tmp-" in p.name]  # the temp folder was renamed
    # the cache makes the load several times faster (53.6 s → 4.4 s on a busy 2-core machine; ~1-2 s quiet)
    assert warm_load < min(10.0, cold_load / 5), (cold_load, warm_load)


def test_answers_a_simple_question(smollm2: tuple[Server, float, float]) -> None:
    server, _, _ = smollm2
    models = httpx.get(f"{server.url}/v1/models").json()["data"]
    assert models[0]["id"] == SERVED and models[0]["max_model_len"] == 8192
    response = client(server).chat.completions.create(
        model=SERVED, messages=user("What is the capital of France?"), max_tokens=30, temperature=0,
    )
    assert "Paris" in (response.choices[0].message.content or "")
    assert response.choices[0].finish_reason == "stop"
