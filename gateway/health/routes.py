"""Health probes and metrics: `/healthz` (alive), `/readyz` (store writable, a teacher, capture keeping up)
and `/metrics` (Prometheus; the admin token unless on the admin port). OpenAI's error shape."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.admin_auth import require_admin
from gateway.errors import ServiceUnavailableError, StoreError
from gateway.http_errors import dialect_route
from gateway.http_utils import gateway_state
from gateway.openai.errors import OPENAI


def build_health_router() -> APIRouter:
    router = APIRouter(route_class=dialect_route(OPENAI))

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz(request: Request) -> dict[str, Any]:
        state = gateway_state(request)
        if not state.service.teachers.all:
            raise ServiceUnavailableError("no teacher configured", code="not_ready")
        try:
            await state.store.check_writable()
        except StoreError as exc:
            raise ServiceUnavailableError(f"store not writable: {exc}", code="not_ready") from None
        capture_problem = state.capture.health()
        if capture_problem is not None:
            raise ServiceUnavailableError(capture_problem, code="not_ready")
        return {"status": "ready", "teachers": [t.config.served_name for t in state.service.teachers.all],
                "uptime_s": round(time.time() - state.started_at, 1)}

    @router.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        state = gateway_state(request)
        if state.settings.admin_port is None:  # on an admin port of its own, the socket is what is private
            token = state.settings.admin_token
            require_admin(None if token is None else token.get_secret_value(), request.headers.get("authorization"),
                          surface="/metrics")
        if state.service.students is not None:
            await state.service.students.table.refresh()  # registry and rollout gauges, also without traffic
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router
