"""Admin and metrics on a port of their own: one server listens on two sockets, and each request is
let through by the socket it arrived on (the ASGI scope's `server`). Operators can then bind the admin
port to a private network or keep it off the load balancer."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import error_body

PRIVATE_PREFIXES = ("/admin", "/metrics")
HEALTH = ("/healthz", "/readyz")


def is_private(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in PRIVATE_PREFIXES)


def allowed(path: str, on_admin_port: bool) -> bool:
    """Admin routes and metrics only on the admin port; the API only on the public one; health on both."""
    if path in HEALTH:
        return True
    return is_private(path) == on_admin_port


class AdminPortGuard:
    def __init__(self, app: ASGIApp, admin_port: int) -> None:
        self.app = app
        self.admin_port = admin_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            server = scope.get("server") or (None, None)
            if not allowed(scope["path"], server[1] == self.admin_port):
                await _not_found(send)
                return
        await self.app(scope, receive, send)


async def _not_found(send: Send) -> None:
    import orjson

    body = orjson.dumps(error_body("unknown route", "invalid_request_error"))
    await send({"type": "http.response.start", "status": 404,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
