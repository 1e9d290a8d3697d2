"""`build_chat_request`: what every dialect does once it has an OpenAI-shaped body — name the task, find the
user, decide whether the exchange may be captured — so each API reaches the chat core the same way."""

from __future__ import annotations

import secrets
from collections.abc import Collection, Mapping
from typing import Any

from gateway.chat.types import ChatRequest, RouteInfo
from gateway.errors import BadRequestError
from gateway.tasks import resolve_task
from gateway.tracing import incoming_context

_CAPTURE_VALUES = {"on": True, "true": True, "1": True, "yes": True,
                   "off": False, "false": False, "0": False, "no": False}


def build_chat_request(body: dict[str, Any], headers: Mapping[str, str], *, client: str | None,
                       user: str | None, skip_tasks: Collection[str]) -> ChatRequest:
    """The core's request for an OpenAI-shaped `body`. `user` is the dialect's own user field; the
    X-Protege-User header wins over it. `skip_tasks` are never captured."""
    task, source = resolve_task(headers.get("x-protege-task"), body)
    capture = capture_wanted(headers.get("x-protege-capture")) and task not in skip_tasks
    return ChatRequest(request_id="req_" + secrets.token_hex(16), body=body, task=task, task_source=source,
                       user=headers.get("x-protege-user") or user, capture=capture, client=client,
                       trace_context=incoming_context(headers))


def capture_wanted(header: str | None) -> bool:
    """X-Protege-Capture: off keeps a request out of the store (sensitive traffic)."""
    if header is None:
        return True
    wanted = _CAPTURE_VALUES.get(header.strip().lower())
    if wanted is None:
        raise BadRequestError(f"X-Protege-Capture must be 'on' or 'off', not {header[:40]!r}",
                              param="X-Protege-Capture", code="invalid_header")
    return wanted


def route_headers(req: ChatRequest, info: RouteInfo) -> dict[str, str]:
    """The response headers every dialect sends: the request id, the task and how it was served."""
    return {"x-request-id": req.request_id, "x-protege-task": req.task, **info.headers()}
