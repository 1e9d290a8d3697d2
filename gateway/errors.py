"""One error tree for Protégé, mapped to HTTP in one place (`to_response_body` / `status_code`).

Every failure a client can see is a `ProtegeError`. Each subclass knows its HTTP status and the
OpenAI error `type`; the instance carries a human message, the offending `param` (for bad input)
and an optional machine `code`. The HTTP layer turns any of them into OpenAI's error body:

    {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}

    ProtegeError (500, api_error)
    ├── BadRequestError (400, invalid_request_error)
    │   └── ContextLengthError (400, code=context_length_exceeded)
    ├── AuthenticationError (401, authentication_error)
    ├── PermissionDeniedError (403, permission_error)
    ├── NotFoundError (404, not_found_error)
    ├── MethodNotAllowedError (405, invalid_request_error)
    ├── PayloadTooLargeError (413, invalid_request_error)
    ├── RateLimitError (429, rate_limit_error)  — carries retry_after seconds when known
    ├── ServiceUnavailableError (503, service_unavailable)
    └── UpstreamError (502, upstream_error)     — the teacher or student failed
        ├── UpstreamStatusError (upstream's own 4xx status passed on)
        └── UpstreamTimeoutError (504, timeout)

Messages never contain secrets: callers pass text they built themselves, and upstream messages
go through `redact` in the provider layer before they get here.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ProtegeError(Exception):
    """Base of every client-visible failure."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "api_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    @property
    def status_code(self) -> int:
        return self.status

    def headers(self) -> dict[str, str]:
        return {}

    def to_body(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, param=self.param, code=self.code)


class BadRequestError(ProtegeError):
    status = 400
    error_type = "invalid_request_error"


class ContextLengthError(BadRequestError):
    def __init__(self, message: str, *, param: str | None = "messages") -> None:
        super().__init__(message, param=param, code="context_length_exceeded")


class AuthenticationError(ProtegeError):
    status = 401
    error_type = "authentication_error"


class PermissionDeniedError(ProtegeError):
    status = 403
    error_type = "permission_error"


class NotFoundError(ProtegeError):
    status = 404
    error_type = "not_found_error"


class MethodNotAllowedError(ProtegeError):
    status = 405
    error_type = "invalid_request_error"


class RequestTimeoutError(ProtegeError):
    status = 408
    error_type = "invalid_request_error"


class PayloadTooLargeError(ProtegeError):
    status = 413
    error_type = "invalid_request_error"


class RateLimitError(ProtegeError):
    status = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: float | None = None, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"retry-after": str(max(1, round(self.retry_after)))}


class ServiceUnavailableError(ProtegeError):
    status = 503
    error_type = "service_unavailable"

    def __init__(self, message: str, *, code: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"retry-after": str(max(1, round(self.retry_after)))}


class UpstreamError(ProtegeError):
    """The upstream model server could not be reached or answered with a server error."""

    status = 502
    error_type = "upstream_error"


class UpstreamStatusError(UpstreamError):
    """The upstream refused the request with a 4xx; the client gets the same status."""

    def __init__(self, message: str, *, upstream_status: int, param: str | None = None,
                 code: str | None = None, error_type: str | None = None) -> None:
        super().__init__(message, param=param, code=code)
        self.upstream_status = upstream_status
        self._error_type = error_type or ("invalid_request_error" if upstream_status < 500 else "upstream_error")

    @property
    def status_code(self) -> int:
        return self.upstream_status

    def to_body(self) -> dict[str, Any]:
        return error_body(self.message, self._error_type, param=self.param, code=self.code)


class UpstreamTimeoutError(UpstreamError):
    status = 504
    error_type = "timeout"


class CircuitOpenError(UpstreamError):
    """The upstream kept failing; requests fail fast until it is probed back (`gateway.breaker`)."""

    status = 503
    error_type = "service_unavailable"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, code="circuit_open")
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(max(1, round(self.retry_after)))}


def error_body(message: str, error_type: str, *, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error body."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


_STATUS_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
                 422: "invalid_request_error", 429: "rate_limit_error"}


def error_type_for_status(status: int) -> str:
    """The OpenAI error type for a bare HTTP status (used for framework-raised errors)."""
    return _STATUS_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
