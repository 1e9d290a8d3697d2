"""Admin and metrics on a separate port: the admin API, the console and /metrics answer only there,
the OpenAI API only on the public port, health checks on both."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from gateway.ports import allowed
from tests.conftest import teacher_flags
from tests.servers import Server, free_port

ADMIN = "ports-admin-token"


def test_routes_are_let_through_by_port() -> None:
    assert allowed("/v1/chat/completions", on_admin_port=False) and not allowed("/v1/models", on_admin_port=True)
    assert allowed("/admin/tasks", on_admin_port=True) and not allowed("/admin/ui", on_admin_port=False)
    assert allowed("/metrics", on_admin_port=True) and not allowed("/metrics", on_admin_port=False)
    assert not allowed("/administrator", on_admin_port=True)  # a prefix, not a substring
    assert all(allowed("/healthz", on_admin_port=p) for p in (True, False))


def test_a_gateway_with_an_admin_port(katan: Server, gateway_factory: Callable[..., Server], tmp_path: Path) -> None:
    admin_port = free_port()
    gateway = gateway_factory(*teacher_flags(katan, tmp_path / "store.db"), "--admin-token", ADMIN,
                              "--admin-port", str(admin_port))
    public, private = gateway.url, f"http://127.0.0.1:{admin_port}"
    auth = {"authorization": f"Bearer {ADMIN}"}
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(f"{public}/v1/chat/completions", json=chat, timeout=30).status_code == 200
    assert httpx.post(f"{private}/v1/chat/completions", json=chat, timeout=30).status_code == 404
    hidden = httpx.get(f"{public}/admin/tasks", headers=auth)
    assert hidden.status_code == 404 and hidden.json()["error"]["message"] == "unknown route"
    assert httpx.get(f"{private}/admin/tasks", headers=auth).status_code == 200
    assert httpx.get(f"{public}/metrics").status_code == 404
    assert "protege_requests_total" in httpx.get(f"{private}/metrics").text
    assert httpx.get(f"{public}/admin/ui/login").status_code == 404
    assert httpx.get(f"{private}/admin/ui/login").status_code == 200
    assert httpx.get(f"{public}/healthz").status_code == httpx.get(f"{private}/healthz").status_code == 200
