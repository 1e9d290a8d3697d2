"""Fuzzing the HTTP API from its own OpenAPI schema (schemathesis) against the gateway app in this process
(schemathesis' ASGI transport, which runs the app's lifespan) in front of a real upstream: no 5xx, every
error in OpenAI's shape, nothing hangs past the client's timeout (the transport's read deadline)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from prometheus_client import CollectorRegistry
from schemathesis.python import asgi

from gateway.app import create_app
from tests.inprocess import inprocess_gateway, settings_for
from tests.servers import Server

ADMIN = "fuzz-admin-token"
EXAMPLES = 25  # per route and identity: bounded, a few seconds each


@pytest.fixture
def fuzz_app(katan: Server, tmp_path: Path) -> Iterator[FastAPI]:
    """The app as `protege serve ... --admin-token` builds it; schemathesis starts its lifespan on first use."""
    yield create_app(settings_for(katan, tmp_path / "store.db", admin_token=ADMIN), registry=CollectorRegistry())
    asgi.shutdown_lifespans()  # also done by schemathesis' pytest plugin; here in case that is disabled


def check_openai_error(status: int, body: Any) -> None:
    assert status < 500, f"server error {status}: {body}"
    if status >= 400:
        error = body["error"]
        assert isinstance(error["message"], str) and error["message"]
        assert isinstance(error["type"], str)


def call_and_check(case: Any, auth: str | None) -> None:
    headers = {"authorization": f"Bearer {auth}"} if auth else None
    response = case.call(headers=headers, timeout=30)  # the ASGI transport fails a call running past 30 s
    content_type = (response.headers.get("content-type") or [""])[0]  # schemathesis: header → list of values
    body = response.json() if content_type.startswith("application/json") else None
    if response.status_code >= 400:
        assert body is not None, f"{response.status_code} without a JSON body: {response.text[:200]}"
    check_openai_error(response.status_code, body)


@pytest.mark.parametrize("auth", [None, ADMIN], ids=["anonymous", "admin"])
def test_every_route_never_answers_a_server_error(fuzz_app: FastAPI, auth: str | None) -> None:
    # every route, the admin ones included: from the full schema, which is private (/admin/openapi.json)
    schema = schemathesis.openapi.from_asgi("/admin/openapi.json", fuzz_app,
                                            headers={"authorization": f"Bearer {ADMIN}"})
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/responses", "/v1/responses/{response_id}",
                                              "/v1/models", "/admin/tasks"}
    public = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    public_paths = {result.ok().path for result in public.get_all_operations()}
    assert "/v1/chat/completions" in public_paths and not [p for p in public_paths if p.startswith("/admin")]
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def fuzz(case: Any) -> None:
            call_and_check(case, auth)

        fuzz()


def test_hostile_bodies_get_clear_4xx(katan: Server, tmp_path: Path) -> None:
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
    with inprocess_gateway(settings_for(katan, tmp_path / "store.db", admin_token=ADMIN)) as gateway:
        for body, status in cases:
            response = gateway.client.post("/v1/chat/completions", content=body,
                                           headers={"content-type": "application/json"})
            assert response.status_code == status, (body[:80], response.status_code, response.text[:300])
            check_openai_error(response.status_code, response.json())


def test_console_forms_never_answer_a_server_error(katan: Server, tmp_path: Path) -> None:
    """The console's forms (outside the OpenAPI schema): any field values, signed in or not, get a page or a
    redirect, never a 5xx."""
    from hypothesis import strategies as st

    text = st.text(max_size=80)
    fields = st.dictionaries(st.sampled_from(["token", "csrf", "percent", "version", "threshold", "window"]), text,
                             max_size=4)
    paths = st.sampled_from(["/admin/ui/login", "/admin/ui/logout", "/admin/ui/tasks/t/rollout",
                             "/admin/ui/tasks/t/promote", "/admin/ui/tasks/t/rollback", "/admin/ui/tasks/t/threshold",
                             "/admin/ui/tasks/%2e%2e/rollout", "/admin/ui/tasks/t/nothing"])
    with inprocess_gateway(settings_for(katan, tmp_path / "store.db", admin_token=ADMIN)) as gateway:

        @given(path=paths, form=fields, signed_in=st.booleans())
        @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def fuzz(path: str, form: dict[str, str], signed_in: bool) -> None:
            headers = {"authorization": f"Bearer {ADMIN}"} if signed_in else {}
            response = gateway.client.post(path, data=form, headers=headers, follow_redirects=False)
            assert response.status_code < 500, (path, form, response.status_code, response.text[:200])

        fuzz()
