"""Which task a request belongs to: header, else `metadata.task`, else a fingerprint. Pure."""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal

from gateway.errors import BadRequestError

TaskSource = Literal["header", "metadata", "fingerprint"]
# The one rule for task names, wherever one comes in (headers, metadata, the admin API, the console, the
# CLI): letters, digits and `_.:-`, starting with a letter or digit, 64 at most. `\Z`, not `$`, which
# would let a trailing newline through; no control characters, no path separators.
TASK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")


def message_text(content: Any) -> str:
    """The text of a message's content (a string or a list of content parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def system_prompt(messages: list[dict[str, Any]]) -> str:
    """The leading system/developer messages' text, joined; '' when there are none."""
    parts = []
    for message in messages:
        if message.get("role") not in ("system", "developer"):
            break
        parts.append(message_text(message.get("content")))
    return "\n".join(parts)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def fingerprint(model: str, system: str) -> str:
    """`t_` + 12 hex chars of sha256(model, system prompt): stable across processes and versions."""
    return "t_" + hashlib.sha256(f"{model}\x00{system}".encode()).hexdigest()[:12]


def resolve_task(header: str | None, body: dict[str, Any]) -> tuple[str, TaskSource]:
    if header is not None:
        return _checked(header, "X-Protege-Task"), "header"
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and metadata.get("task") is not None:
        task = metadata["task"]
        if not isinstance(task, str):
            raise BadRequestError("metadata.task must be a string", param="metadata.task")
        return _checked(task, "metadata.task"), "metadata"
    return fingerprint(str(body.get("model", "")), system_prompt(body.get("messages") or [])), "fingerprint"


def check_task_name(name: str, param: str = "task") -> str:
    """`name` if it is a valid task name; otherwise a 400 naming `param`."""
    return _checked(name, param)


def _checked(name: str, param: str) -> str:
    if not TASK_NAME.match(name):
        raise BadRequestError(
            f"invalid task name {name[:80]!r}: 1-64 characters of letters, digits, '_', '.', ':' or '-'",
            param=param)
    return name
