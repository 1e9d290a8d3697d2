"""OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`: the `/v1` chat and models routes,
the admin API, health and metrics, and the model server all answer in it."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from starlette.responses import Response

from gateway.errors import ProtegeError


@dataclass(frozen=True)
class OpenAIDialect:
    name: str = "openai"

    def render_error(self, error: ProtegeError) -> Response:
        return Response(orjson.dumps(error.to_body()), status_code=error.status_code, media_type="application/json",
                        headers=error.headers())


OPENAI = OpenAIDialect()
