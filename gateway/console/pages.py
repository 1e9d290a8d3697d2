"""The console's pages: its templates, the filters they use and the headers every page carries. Shared by the
routes and by the console's error renderer (`gateway.console.errors`)."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.responses import HTMLResponse

from gateway.store import StudentVersion

PREFIX = "/admin/ui"
TEMPLATES = Path(__file__).parent / "templates"
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # not no-referrer: that would make browsers send `Origin: null` on posts
}


# --- formatting (Jinja filters) -----------------------------------------------------------------

def usd(value: float | None) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "$0"
    sign, value = ("−", -value) if value < 0 else ("", value)
    return sign + (f"${value:,.2f}" if value >= 100 else f"${value:,.4f}" if value >= 0.01 else f"${value:.6f}")


def when(ts: float | None) -> str:
    return "—" if ts is None else time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def number(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def path_part(value: str) -> str:
    return quote(value, safe="")


def offline_parity(student: StudentVersion) -> tuple[float | None, float | None]:
    """The version's parity with the teacher on held-out traffic, and the gate it was held to."""
    return student.details.offline_parity, student.details.min_parity


@functools.cache
def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined)
    env.filters.update(usd=usd, when=when, number=number, path=path_part, parity=lambda s: offline_parity(s)[0])
    env.globals.update(prefix=PREFIX)
    return env


def page(name: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any) -> HTMLResponse:
    context.setdefault("session", None)
    html = environment().get_template(name).render(**context)
    return HTMLResponse(html, status_code=status, headers={**HEADERS, **(headers or {})})
