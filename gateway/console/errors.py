"""The console's error shape: a page (`error.html`) with the status, for a person in a browser."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.responses import Response

from gateway.console.pages import page
from gateway.errors import ProtegeError

TITLES = {400: "Bad request", 401: "Sign in first", 403: "Not allowed", 404: "Not found", 405: "Not found",
          408: "Too slow", 413: "Too large", 429: "Too many requests", 503: "Unavailable"}


@dataclass(frozen=True)
class ConsoleDialect:
    name: str = "console"

    def render_error(self, error: ProtegeError) -> Response:
        status = error.status_code
        return page("error.html", status, headers=error.headers(), title=TITLES.get(status, "Something went wrong"),
                    message=error.public_message)


CONSOLE = ConsoleDialect()
