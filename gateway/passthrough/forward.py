"""What passthrough decides before and after forwarding: which teacher serves a request, which headers go up
and come back, and what a response cost. Pure."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.chat.types import Teacher, TeacherSet
from gateway.errors import BadRequestError, NotServedError
from gateway.pricing import lookup_price
from gateway.providers.openai_compat import OpenAICompatibleProvider

EMBEDDINGS = "embeddings"
# litellm providers with no embeddings API of their own
NO_EMBEDDINGS = frozenset({"anthropic"})

# request headers the upstream receives as the client sent them; everything else stays here (the client's
# credentials, cookies, account and project selectors, Protégé's own headers); `accept-encoding: identity`
# keeps the body readable for usage accounting
FORWARDED_REQUEST_HEADERS = ("content-type", "accept", "openai-beta")
# response headers the client receives as the upstream sent them
FORWARDED_RESPONSE_HEADERS = ("content-type", "content-disposition", "retry-after", "openai-processing-ms")

_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_FIELD_NAME = re.compile(rb'name="([^"]*)"', re.IGNORECASE)


def upstream_path(path: str) -> str:
    """The path below the teacher's API base for a client's `/v1/...` path. Dot segments are refused: the
    upstream would resolve `/v1/files/../chat/completions` to a route that must go through the chat core."""
    segments = path.split("/")
    if any(segment in (".", "..") or "\\" in segment for segment in segments):
        raise BadRequestError("the path must not contain '.' or '..' segments", code="invalid_path")
    return path.removeprefix("/v1")


def api_of(path: str) -> str:
    """The route family of a `/v1/...` path (`/v1/audio/transcriptions` → `audio`)."""
    return path.removeprefix("/v1/").split("/", 1)[0]


def request_headers(headers: Mapping[str, str]) -> dict[str, str]:
    out = {name: headers[name] for name in FORWARDED_REQUEST_HEADERS if name in headers}
    out["accept-encoding"] = "identity"
    return out


def response_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {name: headers[name] for name in FORWARDED_RESPONSE_HEADERS if name in headers}


def request_model(body: bytes, content_type: str) -> str | None:
    """The `model` a request names: a JSON body's field, or a multipart form's; None when it names none."""
    if not body:
        return None
    if content_type.startswith("application/json"):
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        model = data.get("model") if isinstance(data, dict) else None
        return model if isinstance(model, str) else None
    if content_type.startswith("multipart/form-data"):
        return form_field(body, content_type, "model")
    return None


def form_field(body: bytes, content_type: str, name: str) -> str | None:
    """A text field of a multipart/form-data body (only as much parsing as finding it takes)."""
    match = _BOUNDARY.search(content_type)
    if match is None:
        return None
    for part in body.split(b"--" + match.group(1).encode()):
        head, sep, value = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        field = _FIELD_NAME.search(head)
        if field is not None and field.group(1) == name.encode() and b"filename=" not in head:
            return value.removesuffix(b"\r\n").decode("utf-8", "replace")
    return None


def can_forward(teacher: Teacher) -> bool:
    """Byte for byte needs an OpenAI-compatible upstream."""
    return isinstance(teacher.provider, OpenAICompatibleProvider)


def can_serve(teacher: Teacher, api: str) -> bool:
    """Whether `teacher` serves this route family: any of them forwarded as they are, embeddings also through
    litellm (for providers whose API is not OpenAI's)."""
    return can_forward(teacher) or (api == EMBEDDINGS and hasattr(teacher.provider, "embed")
                                    and teacher.config.provider not in NO_EMBEDDINGS)


def pick_teacher(teachers: TeacherSet, model: str | None, api: str) -> Teacher:
    """The teacher the request's `model` names, else the first one that serves this route family (an
    embedding model is rarely a chat teacher's name); a 501 when none does."""
    named = teachers.named(model) if model else None
    candidates = [named] if named is not None else teachers.all
    for teacher in candidates:
        if can_serve(teacher, api):
            return teacher
    who = f"teacher {named.config.served_name}" if named is not None else "no configured teacher"
    raise NotServedError(f"/v1/{api}: {who} serves this route (it needs an OpenAI-compatible teacher"
                         f"{', or one litellm can embed with' if api == EMBEDDINGS else ''})", code="not_served")


def usage_cost(payload: Any, model: str | None) -> tuple[int, float | None]:
    """(tokens, USD) of a response body that reports `usage` (embeddings, completions), priced from the bundled
    price map by the request's model; (0, None) when it reports none, a None price when the model is unknown."""
    usage = payload.get("usage") if isinstance(payload, dict) else None
    if not isinstance(usage, dict):
        return 0, None
    prompt = int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
    completion = int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
    price = lookup_price(model) if model else None
    return prompt + completion, None if price is None else price.cost(prompt, completion)
