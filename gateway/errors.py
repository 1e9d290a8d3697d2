"""One error tree for Protégé; no web framework in it.

Every failure is a `ProtegeError`. Each subclass knows its HTTP status and the OpenAI error `type`; the
instance carries a human message, the offending `param` (for bad input) and an optional machine `code`.
`gateway.http_errors` turns any exception into one of these, and each API dialect renders it in its own
shape (OpenAI's `{"error": {...}}`, Anthropic's `{"type": "error", ...}`, the console's page):

    ProtegeError (500, api_error)
    ├── ConfigError (500)                       — invalid settings; the message names the key
    ├── BadRequestError (400, invalid_request_error)
    │   └── ContextLengthError (400, code=context_length_exceeded)
    ├── AuthenticationError (401, authentication_error)
    ├── PermissionDeniedError (403, permission_error)
    ├── NotFoundError (404, not_found_error)
    ├── MethodNotAllowedError (405, invalid_request_error)
    ├── RequestTimeoutError (408, invalid_request_error)
    ├── PayloadTooLargeError (413, invalid_request_error)
    ├── RateLimitError (429, rate_limit_error)  — carries retry_after seconds when known
    ├── ServiceUnavailableError (503, service_unavailable)
    │   └── StoreError (503, code=store_unavailable) — the store could not be read or written
    └── UpstreamError (502, upstream_error)     — the teacher or student failed
        ├── UpstreamStatusError (upstream's own 4xx status passed on)
        ├── UpstreamTimeoutError (504, timeout)
        └── CircuitOpenError (503, code=circuit_open)

Messages never contain secrets: callers pass text they built themselves, and upstream messages go
through `redact` in the provider layer before they get here. Where a message may hold internals (a
store's driver text, an unexpected exception), `public_message` is what a client sees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar


class ProtegeError(Exception):
    """Base of every client-visible failure. A subclass names its status and OpenAI type in its class line:
    `class NotFoundError(ProtegeError, status=404, error_type="not_found_error")`."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "api_error"

    def __init_subclass__(cls, *, status: int | None = None, error_type: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status = status
        if error_type is not None:
            cls.error_type = error_type

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = retry_after  # seconds, when the client should try again (Retry-After)

    @property
    def status_code(self) -> int:
        return self.status

    @property
    def openai_type(self) -> str:
        return self.error_type

    @property
    def public_message(self) -> str:
        """The message a client may see."""
        return self.message

    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"retry-after": str(max(1, round(self.retry_after)))}

    def to_body(self) -> dict[str, Any]:
        """OpenAI's error body for this error."""
        return error_body(self.public_message, self.openai_type, param=self.param, code=self.code)


class ConfigError(ProtegeError, ValueError):
    """The configuration is invalid; the message names the bad key."""


class InternalError(ProtegeError):
    """A bug: what went wrong is logged, never shown."""

    @property
    def public_message(self) -> str:
        return "internal error"


class BadRequestError(ProtegeError, status=400, error_type="invalid_request_error"):
    """The request is malformed or asks for something the gateway does not allow; `param` names the field."""


class ContextLengthError(BadRequestError):
    def __init__(self, message: str, *, param: str | None = "messages") -> None:
        super().__init__(message, param=param, code="context_length_exceeded")


class AuthenticationError(ProtegeError, status=401, error_type="authentication_error"):
    """No key, or one the gateway does not know."""


class PermissionDeniedError(ProtegeError, status=403, error_type="permission_error"):
    """A known caller without the right (a wrong admin token, a surface that is off)."""


class NotFoundError(ProtegeError, status=404, error_type="not_found_error"):
    """No such route, model, task or version."""


class MethodNotAllowedError(ProtegeError, status=405, error_type="invalid_request_error"):
    """The route exists, not with this method."""


class RequestTimeoutError(ProtegeError, status=408, error_type="invalid_request_error"):
    """The client was too slow sending its headers or body."""


class PayloadTooLargeError(ProtegeError, status=413, error_type="invalid_request_error"):
    """The body is over the limit."""


class RateLimitError(ProtegeError, status=429, error_type="rate_limit_error"):
    """Over a rate, concurrency or upstream limit; `retry_after` when known."""


class NotServedError(ProtegeError, status=501, error_type="not_implemented"):
    """A route the gateway knows but cannot serve as configured (no teacher for it, or switched off)."""


class ServiceUnavailableError(ProtegeError, status=503, error_type="service_unavailable"):
    """Not ready, draining or overloaded; `retry_after` when known."""


class StoreError(ServiceUnavailableError):
    """The store could not be read or written. During a request that is a 503 (retry later), and the
    driver's text stays in the log: it can name hosts, files or SQL."""

    def __init__(self, message: str, *, code: str | None = "store_unavailable") -> None:
        super().__init__(message, code=code, retry_after=1)

    @property
    def public_message(self) -> str:
        return "the gateway's store is unavailable; retry shortly"


class UpstreamError(ProtegeError, status=502, error_type="upstream_error"):
    """The upstream model server could not be reached or answered with a server error."""


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

    @property
    def openai_type(self) -> str:
        return self._error_type


class UpstreamTimeoutError(UpstreamError, status=504, error_type="timeout"):
    """The upstream did not answer in time."""


class CircuitOpenError(UpstreamError, status=503, error_type="service_unavailable"):
    """The upstream kept failing; requests fail fast until it is probed back (`gateway.breaker`)."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, code="circuit_open", retry_after=retry_after)


def error_body(message: str, error_type: str, *, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error body."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def param_of(loc: Sequence[int | str], *, brackets: bool = True) -> str | None:
    """The offending field from a pydantic error location: `messages[0].content` (OpenAI's spelling) or, with
    `brackets=False`, `messages.0.content` (Anthropic's). Union branch labels (`str`, `list[...]`) are dropped."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]" if brackets else f".{part}"
        elif "[" in part or part in _TYPE_LABELS or part.startswith("function-"):
            continue  # which branch of a union failed, e.g. `list[ContentPart]`
        else:
            out += f".{part}" if out else part
    return out.lstrip(".") or None


_TYPE_LABELS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "json-or-python"})


def invalid_field(errors: Sequence[Mapping[str, Any]], *, brackets: bool = True) -> BadRequestError:
    """The error for a body that failed validation (pydantic's `errors()`): the first problem, naming its field."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    param = param_of(tuple(first.get("loc", ())), brackets=brackets)
    message = "unsupported field" if first.get("type") == "extra_forbidden" else str(first.get("msg", "invalid value"))
    return BadRequestError(f"{param or 'body'}: {message}", param=param)
