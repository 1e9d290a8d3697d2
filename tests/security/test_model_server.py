"""The model server is no way in: its key, body limit, bounded queue and adapter folders, against a real
model server process (the tiny random Llama)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import Server, start_model_server, stop

KEY = "model-server-key-for-the-tests"


@pytest.fixture(scope="module")
def guarded(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    folder = tmp_path_factory.mktemp("guarded")
    key_file = folder / "key"
    key_file.write_text(KEY + "\n")
    adapters = folder / "adapters"
    adapters.mkdir()
    server = start_model_server(folder, "--model", str(tiny_model), "--served-model-name", "tiny",
                                "--api-key-file", str(key_file), "--adapter-dir", str(adapters),
                                "--max-body-bytes", "4096")
    yield server, adapters
    stop(server.proc)


def test_every_route_but_health_needs_the_key(guarded: tuple[Server, Path]) -> None:
    server, _ = guarded
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    for headers in ({}, {"authorization": "Bearer wrong"}):
        assert httpx.get(f"{server.url}/v1/models", headers=headers).status_code == 401
        refused = httpx.post(f"{server.url}/v1/chat/completions", json=chat, headers=headers)
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
        assert httpx.post(f"{server.url}/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/tmp"},
                          headers=headers).status_code == 401
    ok = httpx.post(f"{server.url}/v1/chat/completions", json=chat, headers={"authorization": f"Bearer {KEY}"},
                    timeout=60)
    assert ok.status_code == 200


def test_a_body_over_the_limit_is_a_413(guarded: tuple[Server, Path]) -> None:
    server, _ = guarded
    big = {"model": "tiny", "messages": [{"role": "user", "content": "x" * 10_000}]}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=big, headers={"authorization": f"Bearer {KEY}"})
    assert response.status_code == 413


def test_adapters_load_only_from_the_adapter_folder_and_probe_nothing(guarded: tuple[Server, Path],
                                                                      tmp_path: Path) -> None:
    server, adapters = guarded
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    answers = []
    for path in (str(outside), "/nonexistent/adapter", str(adapters / ".." / ".." / "etc"), "/etc/passwd"):
        response = httpx.post(f"{server.url}/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": path},
                              headers={"authorization": f"Bearer {KEY}"})
        assert response.status_code == 400
        answers.append(response.json()["error"]["message"])
    assert len(set(answers)) == 1  # the same answer whether the path exists or not
    inside = httpx.post(f"{server.url}/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(adapters)},
                        headers={"authorization": f"Bearer {KEY}"})
    assert inside.status_code == 400 and "adapter_config.json" in inside.text  # allowed, but not an adapter


def test_a_full_queue_is_a_503_not_a_longer_queue(tiny_model: Path, tmp_path: Path) -> None:
    import asyncio

    server = start_model_server(tmp_path, "--model", str(tiny_model), "--served-model-name", "tiny",
                                "--max-batch", "1", "--max-waiting", "1")
    try:
        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=120) as client:
                chat = {"model": "tiny", "messages": [{"role": "user", "content": "count"}], "max_tokens": 300,
                        "ignore_eos": True}
                return list(await asyncio.gather(*(client.post(f"{server.url}/v1/chat/completions", json=chat)
                                                   for _ in range(12))))

        statuses = [r.status_code for r in asyncio.run(burst())]
        assert 200 in statuses and 503 in statuses and set(statuses) <= {200, 503}, statuses
    finally:
        stop(server.proc)
