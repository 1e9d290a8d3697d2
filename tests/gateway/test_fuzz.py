"""Fuzzing the HTTP API from its own OpenAPI schema (schemathesis) against a real gateway process:
no 5xx, every error in OpenAI's shape, nothing hangs past the client's timeout."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.conftest import teacher_flags
from tests.servers import Server, start_gateway, stop

ADMIN = "fuzz-admin-token"
EXAMPLES = 25  # per route and identity: bounded, a few seconds each


@pytest.fixture(scope="module")
def fuzz_gateway(katan: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("fuzz")
    gateway = start_gateway(tmp, *teacher_flags(katan, tmp / "store.db"), "--admin-token", ADMIN)
    yield gateway
    stop(gateway.proc)


def check_openai_error(status: int, body: Any) -> None:
    assert status < 500, f"server error {status}: {body}"
    if status >= 400:
        error = body["error"]
        assert isinstance(error["message"], str) and error["message"]
        assert isinstance(error["type"], str)


def call_and_check(case: Any, gateway: Server, auth: str | None) -> None:
    headers = {"authorization": f"Bearer {auth}"} if auth else None
    response = case.call(base_url=gateway.url, headers=headers, timeout=30)
    content_type = (response.headers.get("content-type") or [""])[0]  # schemathesis: header → list of values
    body = response.json() if content_type.startswith("application/json") else None
    if response.status_code >= 400:
        assert body is not None, f"{response.status_code} without a JSON body: {response.text[:200]}"
    check_openai_error(response.status_code, body)


@pytest.mark.parametrize("auth", [None, ADMIN], ids=["anonymous", "admin"])
def test_every_route_never_answers_a_server_error(fuzz_gateway: Server, auth: str | None) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzz_gateway.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/models", "/admin/tasks"}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def fuzz(case: Any) -> None:
            call_and_check(case, fuzz_gateway, auth)

        fuzz()


def test_hostile_bodies_get_clear_4xx(fuzz_gateway: Server) -> None:
    import httpx

    url = f"{fuzz_gateway.url}/v1/chat/completions"
    nested: str = '{"model": "m", "messages": ' + "[" * 5000 + "]" * 5000 + "}"
    cases: list[tuple[bytes | str, int]] = [
        (nested, 400),
        (b'{"model": "m", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400),  # invalid UTF-8
        ('{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}', 400),
        ('{"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 100000}', 400),
        ('{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}', 400),
        ('{"model": "m", "messages": [{"role": "user", "content": "x"}], '
         '"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 42}}}]}', 400),
        ("[]", 400),
        ("", 400),
    ]
    for body, status in cases:
        response = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30)
        assert response.status_code == status, (body[:80], response.status_code, response.text[:300])
        check_openai_error(response.status_code, response.json())
