"""Error bodies, context limits, liveness during generation and cancellation, over real sockets."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import openai
import pytest

from tests.model_server.conftest import TINY_NAME
from tests.model_server.reference import async_client, client, user
from tests.servers import Server


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


def test_unknown_model_is_404(tiny_server: Server) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(tiny_server).chat.completions.create(model="no-such-model", messages=user("hi"), max_tokens=2)
    assert caught.value.body == {"message": "The model `no-such-model` does not exist.", "type": "not_found_error",
                                 "param": "model", "code": "model_not_found"}


@pytest.mark.parametrize(("body", "param"), [
    (b"{not json", None),
    (b"[1, 2]", None),
    (b"", None),
    (b'{"model": "tiny"}', "messages"),
    (b'{"model": "tiny", "messages": "hello"}', "messages"),
    (b'{"model": "tiny", "messages": []}', "messages"),
    (b'{"model": "tiny", "messages": [{"content": "hi"}]}', "messages[0].role"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}', "max_tokens"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 7}', "temperature"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 30,'
     b' "logprobs": true}', "top_logprobs"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 3}', "top_logprobs"),
    (b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stop": 3}', "stop"),
])
def test_bad_requests_get_400_bodies(tiny_server: Server, body: bytes, param: str | None) -> None:
    r = httpx.post(f"{tiny_server.url}/v1/chat/completions", content=body,
                   headers={"content-type": "application/json"}, timeout=30)
    error = _error(r, 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_framework_errors_use_the_same_body(tiny_server: Server) -> None:
    assert _error(httpx.get(f"{tiny_server.url}/v1/nothing-here"), 404)["type"] == "not_found_error"
    assert _error(httpx.get(f"{tiny_server.url}/v1/chat/completions"), 405)["type"] == "invalid_request_error"


def test_context_length_exceeded(tiny_server: Server) -> None:
    long_prompt = "apple " * 600  # the tiny model's context is 512 tokens
    with pytest.raises(openai.BadRequestError) as caught:
        client(tiny_server).chat.completions.create(model=TINY_NAME, messages=user(long_prompt), max_tokens=5)
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.param == "messages"
    # a prompt that fits, with a completion budget that does not
    r = httpx.post(f"{tiny_server.url}/v1/chat/completions", timeout=30, json={
        "model": TINY_NAME, "messages": user("apple " * 400), "max_tokens": 200})
    assert _error(r, 400)["code"] == "context_length_exceeded"


def test_health_and_models(tiny_server: Server) -> None:
    assert httpx.get(f"{tiny_server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{tiny_server.url}/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ok"
    models = httpx.get(f"{tiny_server.url}/v1/models").json()
    assert models["object"] == "list"
    assert models["data"][0]["id"] == TINY_NAME
    assert models["data"][0]["parent"] is None
    assert next(m.id for m in client(tiny_server).models.list()) == TINY_NAME


async def test_healthz_answers_while_generating(tiny_server: Server) -> None:
    # a busy machine (other torch processes) can slow generation a lot; the point is /healthz's latency
    async with async_client(tiny_server, timeout=300) as api, httpx.AsyncClient(base_url=tiny_server.url) as http:
        jobs = [asyncio.ensure_future(api.chat.completions.create(
            model=TINY_NAME, messages=user(f"story number {i}"), max_tokens=96, temperature=0,
            extra_body={"ignore_eos": True})) for i in range(8)]
        latencies = []
        while not all(job.done() for job in jobs):
            started = time.perf_counter()
            r = await http.get("/healthz")
            latencies.append(time.perf_counter() - started)
            assert r.status_code == 200
            await asyncio.sleep(0.05)
        results = await asyncio.gather(*jobs)
    assert all(r.usage is not None and r.usage.completion_tokens == 96 for r in results)
    assert len(latencies) >= 3
    assert max(latencies) < 0.5, latencies


async def _wait_cancelled(server: Server, before: dict[str, int]) -> dict[str, int]:
    deadline = time.monotonic() + 10
    while True:
        stats: dict[str, int] = httpx.get(f"{server.url}/readyz").json()["engine"]
        if stats["running"] == 0 and stats["cancelled"] > before["cancelled"]:
            return stats
        assert time.monotonic() < deadline, stats
        await asyncio.sleep(0.02)


async def test_client_disconnect_frees_the_slot(tiny_server: Server) -> None:
    before = httpx.get(f"{tiny_server.url}/readyz").json()["engine"]
    body = {"model": TINY_NAME, "messages": user("go on forever"), "max_tokens": 450, "temperature": 0,
            "stream": True, "ignore_eos": True}
    async with httpx.AsyncClient(base_url=tiny_server.url, timeout=30) as http, \
            http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        seen = 0
        async for line in r.aiter_lines():
            seen += line.startswith("data: ")
            if seen >= 3:
                break
    stats = await _wait_cancelled(tiny_server, before)
    assert stats["cancelled"] == before["cancelled"] + 1
    # a non-streaming request whose client gives up is cancelled too
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{tiny_server.url}/v1/chat/completions", json={**body, "stream": False}, timeout=0.05)
    after = await _wait_cancelled(tiny_server, stats)
    assert after["cancelled"] == before["cancelled"] + 2
