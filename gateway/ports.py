"""Admin and metrics on a port of their own: one server listens on two sockets, and each request is
let through by the socket it arrived on (the ASGI scope's `server`). Operators can then bind the admin
port to a private network or keep it off the load balancer."""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request

from gateway.errors import NotFoundError

PRIVATE_PREFIXES = ("/admin", "/metrics")
HEALTH = ("/healthz", "/readyz")


def is_private(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in PRIVATE_PREFIXES)


def allowed(path: str, on_admin_port: bool) -> bool:
    """Admin routes and metrics only on the admin port; the API only on the public one; health on both."""
    if path in HEALTH:
        return True
    return is_private(path) == on_admin_port


def port_guard(admin_port: int) -> Callable[[Request], None]:
    """A route dependency: a route on the wrong socket is as unknown as one that does not exist."""

    def guard(request: Request) -> None:
        server = request.scope.get("server") or (None, None)
        if not allowed(request.url.path, server[1] == admin_port):
            raise NotFoundError("unknown route")

    return guard
