"""Anthropic's error shape, `{"type": "error", "error": {"type", "message"}}`, for `/v1/messages`: its SDK
parses that and no other."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from starlette.responses import Response

from gateway.errors import ProtegeError

_STATUS_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                       404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                       503: "overloaded_error", 529: "overloaded_error"}

# OpenAI error types the gateway uses that Anthropic spells differently (for mid-stream error events,
# where only the OpenAI body is at hand)
_OPENAI_ERROR_TYPES = {"service_unavailable": "overloaded_error", "upstream_error": "api_error",
                       "timeout": "api_error"}
_ANTHROPIC_ERROR_TYPES = {*_STATUS_ERROR_TYPES.values(), "api_error"}


def error_type_for_status(status: int) -> str:
    return _STATUS_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_type_from_openai(openai_type: str) -> str:
    mapped = _OPENAI_ERROR_TYPES.get(openai_type, openai_type)
    return mapped if mapped in _ANTHROPIC_ERROR_TYPES else "api_error"


@dataclass(frozen=True)
class AnthropicDialect:
    name: str = "anthropic"

    def render_error(self, error: ProtegeError) -> Response:
        body = {"type": "error", "error": {"type": error_type_for_status(error.status_code),
                                           "message": error.public_message}}
        return Response(orjson.dumps(body), status_code=error.status_code, media_type="application/json",
                        headers=error.headers())


ANTHROPIC = AnthropicDialect()
