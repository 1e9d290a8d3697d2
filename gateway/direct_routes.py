"""The chat routes' fast lane: an ASGI middleware that hands `POST /v1/chat/completions` (and the other APIs'
chat calls) straight to their handlers, past FastAPI's routing, dependency solving and exception middleware.

Those layers cost a sixth of the gateway's CPU per chat call (lane on vs off, 200 req/s) and do nothing for these
routes: their handlers take the raw request and parse it themselves. The routes stay registered in the app
(the OpenAPI document, and every request when the lane is off); a failure is rendered by the route's dialect,
as `install_error_handler` renders it. Anything else — another path or method — goes through the app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.http_errors import Dialect, as_protege_error

Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class DirectRoute:
    method: str
    path: str
    handler: Handler
    dialect: Dialect


class DirectRoutes:
    """`app.add_middleware(DirectRoutes, routes=[...])`: inside starlette's outermost error middleware, which
    still answers for a response that fails after it started."""

    def __init__(self, app: ASGIApp, routes: list[DirectRoute]) -> None:
        self.app = app
        self.routes: Mapping[tuple[str, str], DirectRoute] = {(r.method, r.path): r for r in routes}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get((scope.get("method", ""), scope.get("path", ""))) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        try:
            response = await route.handler(request)
        except Exception as exc:  # rendered, as the app's exception handler renders it
            response = route.dialect.render_error(as_protege_error(exc))
        await response(scope, receive, send)
