"""Exceptions to HTTP, once for the whole app (and for the model server's).

`install_error_handler` registers one handler for everything a route can raise. It first turns the
exception into the error tree (`as_protege_error`: the framework's 404/405/422, a body that fails
validation, a bug), then asks the route's dialect to render it. A route knows its dialect because its
router was built with `dialect_route(dialect)`; a path no route matches goes to the dialect whose prefix
it has, else to the default. Only the dialects know a response shape; nothing here does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from gateway import errors

log = logging.getLogger("protege.errors")


class Dialect(Protocol):
    """An API's way of saying what went wrong."""

    @property
    def name(self) -> str: ...

    def render_error(self, error: errors.ProtegeError) -> Response: ...


def dialect_route(dialect: Dialect) -> type[APIRoute]:
    """A route class for an `APIRouter(route_class=...)`: its routes' errors are rendered by `dialect`."""
    return type(f"{dialect.name.title()}Route", (APIRoute,), {"dialect": dialect})


# what the framework raises by itself (unknown route, wrong method, a malformed form), said our way
_FRAMEWORK_MESSAGES = {404: "unknown route", 405: "method not allowed"}
_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
                 422: "invalid_request_error", 429: "rate_limit_error"}


class FrameworkError(errors.ProtegeError):
    """An HTTP error the framework raised, with its own status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self._status = status

    @property
    def status_code(self) -> int:
        return self._status

    @property
    def openai_type(self) -> str:
        return _OPENAI_TYPES.get(self._status, "api_error" if self._status >= 500 else "invalid_request_error")


def as_protege_error(exc: Exception) -> errors.ProtegeError:
    if isinstance(exc, errors.ProtegeError):
        if isinstance(exc, errors.StoreError | errors.InternalError):
            log.error("%s: %s", type(exc).__name__, exc.message)  # the client sees only the public message
        return exc
    if isinstance(exc, RequestValidationError):
        return errors.invalid_field(exc.errors())
    if isinstance(exc, StarletteHTTPException):
        message = _FRAMEWORK_MESSAGES.get(exc.status_code, str(exc.detail))
        return FrameworkError(exc.status_code, message)
    log.error("unhandled error", exc_info=exc)
    return errors.InternalError(f"{type(exc).__name__}: {exc}")


def install_error_handler(app: FastAPI, default: Dialect, prefixes: Sequence[tuple[str, Dialect]] = ()) -> None:
    """Every exception of `app` is rendered by the dialect of the route that raised it."""

    def dialect_of(request: Request) -> Dialect:
        route = request.scope.get("route")
        dialect: Dialect | None = getattr(route, "dialect", None)
        if dialect is not None:
            return dialect
        path = request.url.path
        return next((d for prefix, d in prefixes if path == prefix or path.startswith(prefix + "/")), default)

    async def handle(request: Request, exc: Exception) -> Response:
        return dialect_of(request).render_error(as_protege_error(exc))

    # ProtegeError and the framework's two are caught inside the app; Exception only by starlette's outermost
    # middleware, which answers with our response and then re-raises to the server (which logs it)
    for kind in (errors.ProtegeError, StarletteHTTPException, RequestValidationError, Exception):
        app.add_exception_handler(kind, handle)
