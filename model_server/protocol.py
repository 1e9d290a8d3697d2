"""OpenAI chat-completions request parsing and response shapes for the model server.

Unknown request fields are ignored. Validation failures become `BadRequestError` (400) whose
`param` names the first offending field, e.g. `messages[0].content`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import BadRequestError, invalid_field
from model_server.detokenize import TokenTable
from model_server.sampling import LogprobEntry

MAX_N = 16
_Model = TypeVar("_Model", bound=BaseModel)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None  # vLLM's: the usage so far on every chunk (with include_usage)


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int | None = Field(default=None, ge=1, le=MAX_N)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    # vLLM extensions
    ignore_eos: bool = False
    return_tokens_as_token_ids: bool = False

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class LoadLoraRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)


class UnloadLoraRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    lora_name: str = Field(min_length=1)


def parse_body(raw: bytes, model: type[_Model]) -> _Model:
    """Decode and validate a JSON body, or raise `BadRequestError` with the offending `param`."""
    try:
        data = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequestError("The request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_field(exc.errors(include_url=False)) from None


def template_messages(request: ChatCompletionRequest) -> list[dict[str, Any]]:
    """Plain {role, content: str} dicts for the chat template."""
    messages: list[dict[str, Any]] = []
    for i, message in enumerate(request.messages):
        content = message.content
        if content is None:
            text = ""
        elif isinstance(content, str):
            text = content
        else:
            parts = []
            for j, part in enumerate(content):
                if part.type != "text" or part.text is None:
                    raise BadRequestError(
                        f"Only text content parts are supported, got {part.type!r}.",
                        param=f"messages[{i}].content[{j}]",
                    )
                parts.append(part.text)
            text = "".join(parts)
        role = "system" if message.role == "developer" else message.role
        messages.append({"role": role, "content": text})
    return messages


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def logprob_content(entries: list[LogprobEntry], table: TokenTable, *, as_ids: bool) -> list[dict[str, Any]]:
    """OpenAI's `choices[i].logprobs.content` list."""

    def token(token_id: int) -> tuple[str, list[int]]:
        text, raw = table.lookup(token_id)
        return (f"token_id:{token_id}", raw) if as_ids else (text, raw)

    out: list[dict[str, Any]] = []
    for entry in entries:
        text, raw = token(entry.token_id)
        top = []
        for token_id, value in entry.top:
            top_text, top_raw = token(token_id)
            top.append({"token": top_text, "logprob": value, "bytes": top_raw})
        out.append({"token": text, "logprob": entry.logprob, "bytes": raw, "top_logprobs": top})
    return out


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chunk(cid: str, created: int, model: str, choices: list[dict[str, Any]],
          usage_value: dict[str, int] | None = None, *, with_usage: bool = False) -> bytes:
    body: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                            "system_fingerprint": None, "choices": choices}
    if with_usage:
        body["usage"] = usage_value
    return b"data: " + orjson.dumps(body) + b"\n\n"


def model_card(name: str, *, created: int, root: str, parent: str | None, max_model_len: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "protege", "root": root,
            "parent": parent, "max_model_len": max_model_len}
