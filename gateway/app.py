"""`create_app(settings)`: the gateway's FastAPI app. Dependencies are built in the lifespan from the settings
and live on `app.state.protege`; there are no module-level globals. Tests may pass their own metrics registry."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import Depends, FastAPI, Request
from prometheus_client import CollectorRegistry
from starlette.responses import Response

from gateway.admin.routes import build_admin_router
from gateway.admin_auth import require_admin
from gateway.anthropic.errors import ANTHROPIC
from gateway.anthropic.routes import MESSAGES_PATH, build_anthropic_router
from gateway.anthropic.routes import direct_routes as anthropic_direct_routes
from gateway.auth import KeyRing
from gateway.breaker import CircuitBreaker
from gateway.capture import CaptureWriter
from gateway.chat.live_scoring import LiveScorers
from gateway.chat.service import ChatService
from gateway.chat.types import Students, Teacher, TeacherSet
from gateway.compute_price import ComputePricer, ComputePricing
from gateway.config import Settings
from gateway.console.errors import CONSOLE
from gateway.console.pages import PREFIX as CONSOLE_PREFIX
from gateway.console.routes import build_console_router
from gateway.direct_routes import DirectRoutes
from gateway.errors import ConfigError
from gateway.feedback import FeedbackDesk
from gateway.health.routes import build_health_router
from gateway.http_errors import install_error_handler
from gateway.metrics import Metrics, multiprocess_dir
from gateway.openai.errors import OPENAI
from gateway.openai.routes import build_openai_router
from gateway.openai.routes import direct_routes as openai_direct_routes
from gateway.passthrough.routes import build_passthrough_router
from gateway.ports import is_private, port_guard
from gateway.pricing import Price, resolve_price
from gateway.providers import build_provider
from gateway.providers.base import redactor
from gateway.providers.openai_compat import OpenAICompatibleProvider
from gateway.ramp import RampController
from gateway.ratelimit import RateLimiter
from gateway.responses.routes import build_responses_router
from gateway.responses.routes import direct_routes as responses_direct_routes
from gateway.routing_table import RoutingTable
from gateway.state import GatewayState
from gateway.store import Store, StudentVersion, open_store
from gateway.students import load_student
from gateway.tracing import build_tracing

log = logging.getLogger("protege.app")

NO_KEY_MESSAGE = ("authentication is required (auth.required, or a non-loopback host) and no gateway key exists: "
                  "add one with `protege keys add --name <app> --store ...` or set PROTEGE_GATEWAY_KEYS, or "
                  "set auth.required: false to run an open gateway on purpose")


def secrets_of(settings: Settings) -> list[str]:
    """Every secret the settings hold, for redaction."""
    values = [t.api_key.get_secret_value() for t in settings.teachers if t.api_key]
    if settings.student_api_key:
        values.append(settings.student_api_key.get_secret_value())
    values += [k.get_secret_value() for k in settings.gateway_keys]
    if settings.admin_token:
        values.append(settings.admin_token.get_secret_value())
    return values


def build_teachers(settings: Settings) -> TeacherSet:
    redact = redactor(secrets_of(settings))
    return TeacherSet([
        Teacher(config=t, provider=build_provider(t, settings, redact),
                price=priced_as_noted(resolve_price(t.model, t.input_cost_per_token, t.output_cost_per_token,
                                                    t.cached_input_cost_per_token), t.price_note),
                breaker=build_breaker(f"teacher:{t.served_name}", settings))
        for t in settings.teachers
    ])


def priced_as_noted(price: Price | None, note: str | None) -> Price | None:
    """A teacher's price whose config says more about it (the embedded teacher's is simulated)."""
    return price if price is None or note is None else dataclasses.replace(price, source=f"{price.source}: {note}")


def build_students(settings: Settings, store: Store) -> Students | None:
    if not settings.student_api_base:
        return None
    cascade = settings.cascade
    provider = OpenAICompatibleProvider(name="student", api_base=settings.student_api_base,
                                        api_key=settings.student_key, timeout_s=cascade.timeout_s,
                                        connect_timeout_s=min(2.0, cascade.timeout_s),
                                        redact=redactor(secrets_of(settings)))
    price = (Price(cascade.input_cost_per_token, cascade.output_cost_per_token)
             if cascade.input_cost_per_token is not None and cascade.output_cost_per_token is not None else None)
    api_base = settings.student_api_base

    async def load(student: StudentVersion) -> None:
        await load_student(api_base, student, api_key=settings.student_key)

    return Students(provider=provider, table=RoutingTable(store, cascade.refresh_s, load), price=price,
                    price_configured=price is not None,
                    degraded_mode=cascade.degraded_mode, shadow_rate=cascade.shadow_rate, early_stop=cascade.early_stop,
                    predictor=cascade.predictor,
                    breaker=build_breaker("student", settings))


def student_pricing(settings: Settings) -> ComputePricing | None:
    """How the student is priced by compute, when no per-token price is configured."""
    cascade = settings.cascade
    if settings.student_api_base is None or (
            cascade.input_cost_per_token is not None and cascade.output_cost_per_token is not None):
        return None
    return ComputePricing(settings.student_api_base, settings.compute, cascade.hardware, cascade.tokens_per_s,
                          settings.student_key)


def build_breaker(name: str, settings: Settings) -> CircuitBreaker:
    config = settings.circuit_breaker
    return CircuitBreaker(name, failure_threshold=config.failure_threshold, cooldown_s=config.cooldown_s)


def json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def install_openapi_routes(app: FastAPI) -> None:
    """`/openapi.json` describes what clients may call; the admin routes are only in `/admin/openapi.json`,
    behind the admin token (the public schema would map the private surface for an attacker)."""
    public: dict[str, Any] = {}

    @app.get("/openapi.json", include_in_schema=False)
    async def public_schema() -> Response:
        if not public:
            full = app.openapi()
            public.update({**full, "paths": {p: v for p, v in full["paths"].items() if not is_private(p)}})
        return json_response(200, public)

    @app.get("/admin/openapi.json", include_in_schema=False)
    async def admin_schema(request: Request) -> Response:
        token = request.app.state.protege.settings.admin_token
        require_admin(None if token is None else token.get_secret_value(), request.headers.get("authorization"))
        return json_response(200, app.openapi())


def create_app(settings: Settings, *, registry: CollectorRegistry | None = None) -> FastAPI:
    # an injected registry (tests) sees this process only; otherwise /metrics adds up every worker's files
    # when the server runs several (PROMETHEUS_MULTIPROC_DIR, set by `gateway.server`)
    metrics = (Metrics(registry) if registry is not None
               else Metrics(CollectorRegistry(), multiprocess_dir=multiprocess_dir()))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        the_store = open_store(settings.store)
        await the_store.open()
        metrics.pin_tasks(t.name for t in await the_store.list_tasks())
        capture = CaptureWriter(the_store, settings.capture, metrics)
        capture.start()
        teacher_set = build_teachers(settings)
        keys = KeyRing([k.get_secret_value() for k in settings.gateway_keys], the_store,
                       required=settings.auth_required)
        await keys.refresh(force=True)
        if settings.auth_required and keys.active_keys == 0:
            raise ConfigError(NO_KEY_MESSAGE)
        students = build_students(settings, the_store)
        if students is not None:
            await students.table.refresh(force=True)
        pricing = student_pricing(settings)
        pricer = ComputePricer([(students, pricing)] if students is not None and pricing is not None else [],
                               settings.compute.price_refresh_s)
        await pricer.start()
        limits = settings.rate_limits
        tracing = build_tracing(settings.tracing, os.environ)
        scorers = LiveScorers(settings, teacher_set, metrics)
        service = ChatService(teacher_set, capture, metrics, settings.retry, students,
                              RateLimiter(limits.requests_per_minute, limits.tokens_per_minute), settings.limits,
                              tracing, scorers)
        feedback = FeedbackDesk(the_store, capture, metrics, settings.task, redact_pii=settings.capture.redact_pii)
        ramps = None if students is None else RampController(the_store, metrics, settings.cascade.ramp_check_s,
                                                             on_change=lambda: students.table.refresh(force=True))
        if ramps is not None:
            ramps.start()
        app.state.protege = GatewayState(settings=settings, store=the_store, metrics=metrics, capture=capture,
                                         keys=keys, service=service, feedback=feedback, ramps=ramps)
        try:
            yield
        finally:
            if ramps is not None:
                await ramps.aclose()
            await pricer.aclose()
            await service.drain()
            await scorers.aclose()
            await feedback.drain()
            await teacher_set.aclose()
            if students is not None:
                await students.provider.aclose()
            await capture.close()
            await the_store.close()
            tracing.shutdown()  # exports the spans still queued
            metrics.process_exited()

    # with an admin port of its own, a route on the wrong socket is as unknown as one that does not exist
    guards = [] if settings.admin_port is None else [Depends(port_guard(settings.admin_port))]
    app = FastAPI(title="Protégé gateway", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None, dependencies=guards)
    # one handler for every failure, rendered by the dialect of the route (Anthropic's shape under its
    # Messages API, a page in the console, OpenAI's everywhere else, including unknown routes)
    install_error_handler(app, OPENAI, prefixes=[(MESSAGES_PATH, ANTHROPIC), (CONSOLE_PREFIX, CONSOLE)])
    install_openapi_routes(app)
    routers = (build_openai_router(), build_responses_router(), build_anthropic_router(), build_passthrough_router(),
               build_admin_router(), build_console_router(), build_health_router())
    for router in routers:
        app.include_router(router)
    if settings.admin_port is None:  # with two ports, every route goes through the app's port guard
        app.add_middleware(DirectRoutes,
                           routes=[*openai_direct_routes(), *responses_direct_routes(), *anthropic_direct_routes()])
    return app
