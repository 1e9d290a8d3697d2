"""Anthropic's Messages API (`POST /v1/messages`) as a translation onto the OpenAI chat form. Pure.

The gateway has one pipeline — cascade, rollout, capture — and it speaks OpenAI's chat completions.
An Anthropic request is validated here, translated into the OpenAI body `ChatService` already handles
(so a task's captured dataset has one normalised form whichever API its traffic used), and the
OpenAI answer — a completion, or a stream of chunk frames — is translated back:

    system            → a leading system message          tool_use blocks → assistant tool_calls
    tool_result       → tool messages (before the turn's  tools           → function tools
                        remaining text/images)            tool_choice     → auto / required / none / a function
    image (base64/url) → image_url parts                  stop_sequences  → stop
    metadata.user_id  → user (the sticky rollout key)     top_k           → dropped (no OpenAI equivalent)
    output_config.format → response_format (json_schema)  thinking blocks → dropped (not context in later turns)

Its errors are rendered by `gateway.anthropic.errors`, its stream by `gateway.anthropic.stream`.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import BadRequestError, UpstreamError, invalid_field

# --- request -----------------------------------------------------------------------------------

class MessagesRequest(BaseModel):
    """`POST /v1/messages`, top level. Blocks are checked by `to_openai`, which names the offending path.

    Other unknown fields are refused, as Anthropic does: a field the gateway cannot honour
    (`container`, `mcp_servers`, …) must not be dropped silently."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    system: Any = None  # a string or text blocks: checked in `to_openai` for a readable error
    metadata: dict[str, Any] | None = None  # Anthropic's user_id; Protégé also reads `task`
    output_config: dict[str, Any] | None = None  # `format` (a JSON schema) is kept; `effort` is a hint
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, ge=0, le=1)
    thinking: dict[str, Any] | None = None  # a budget ("enabled") is refused; the model may skip thinking anyway
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    # accepted and dropped: hints about Anthropic's own caching, capacity, region and accounts, which mean
    # nothing to an OpenAI-shaped upstream (refusing them would break clients for no gain)
    cache_control: Any = None
    diagnostics: Any = None
    inference_geo: Any = None
    service_tier: Any = None
    speed: Any = None
    user_profile_id: Any = None
    workspace_id: Any = None

    @property
    def user_id(self) -> str | None:
        user = (self.metadata or {}).get("user_id")
        return user if isinstance(user, str) and user else None


def parse_request(body: dict[str, Any]) -> MessagesRequest:
    """The validated request; a `BadRequestError` naming the field otherwise."""
    try:
        request = MessagesRequest.model_validate(body)
    except ValidationError as exc:
        raise invalid_field(exc.errors(include_url=False), brackets=False) from None
    if (request.thinking or {}).get("type") == "enabled":
        raise _bad("thinking", "a thinking budget is not supported by this gateway; use 'adaptive' or 'disabled'")
    user_id = (request.metadata or {}).get("user_id")
    if user_id is not None and not isinstance(user_id, str):
        raise _bad("metadata.user_id", "must be a string")
    return request


def to_openai(request: MessagesRequest) -> dict[str, Any]:
    """The OpenAI chat body for a validated Messages request."""
    messages: list[dict[str, Any]] = []
    system = _system_content(request.system)
    if system is not None:
        messages.append({"role": "system", "content": system})
    for i, message in enumerate(request.messages):
        messages += _messages(message, f"messages.{i}")
    body: dict[str, Any] = {"model": request.model, "messages": messages, "max_tokens": request.max_tokens}
    for key in ("temperature", "top_p"):
        value = getattr(request, key)
        if value is not None:
            body[key] = value
    if request.stop_sequences:
        body["stop"] = request.stop_sequences
    if request.tools:
        body["tools"] = [_tool(t, f"tools.{i}") for i, t in enumerate(request.tools)]
    if request.tool_choice is not None:
        body.update(_tool_choice(request.tool_choice, has_tools=bool(request.tools)))
    response_format = _response_format(request.output_config)
    if response_format is not None:
        body["response_format"] = response_format
    if request.user_id is not None:
        body["user"] = request.user_id
    task = (request.metadata or {}).get("task")
    if task is not None:
        body["metadata"] = {"task": task}  # checked by `resolve_task`, stripped before the upstream
    if request.stream:
        # the usage-only last chunk carries the token counts of message_delta
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def _bad(param: str, message: str) -> BadRequestError:
    return BadRequestError(f"{param}: {message}", param=param)


def _response_format(config: dict[str, Any] | None) -> dict[str, Any] | None:
    fmt = (config or {}).get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise _bad("output_config.format", "must be {'type': 'json_schema', 'schema': {...}}")
    _check_schema(fmt["schema"], "output_config.format.schema")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt["schema"]}}


def _check_schema(schema: dict[str, Any], param: str) -> None:
    # the provider would refuse it too, after a round trip; and the cascade validates answers with it
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise _bad(param, f"not a valid JSON Schema: {exc.message}") from None


def _system_content(system: Any, param: str = "system") -> str | list[dict[str, Any]] | None:
    if system is None or system == "" or system == []:
        return None
    if isinstance(system, str):
        return system
    if not isinstance(system, list):
        raise _bad(param, "must be a string or a list of text blocks")
    parts = []
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _bad(f"{param}.{i}", "system blocks must be text blocks")
        parts.append(_text_part(block, f"{param}.{i}"))
    return _collapse(parts)


def _collapse(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A lone text part as a plain string: the form OpenAI clients send, so both APIs capture alike."""
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


def _text_part(block: dict[str, Any], param: str) -> dict[str, Any]:
    text = block.get("text")
    if not isinstance(text, str):
        raise _bad(f"{param}.text", "must be a string")
    return {"type": "text", "text": text}  # cache_control dropped: a caching hint, not content


def _image_part(block: dict[str, Any], param: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _bad(f"{param}.source", "must be an object")
    if source.get("type") == "base64":
        media_type, data = source.get("media_type"), source.get("data")
        if not isinstance(media_type, str) or not isinstance(data, str):
            raise _bad(f"{param}.source", "a base64 image needs media_type and data strings")
        return {"type": "image_url", "image_url": {"url": f"data:{media_type};base64,{data}"}}
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise _bad(f"{param}.source.type", "images must be 'base64' or 'url' sources")


def _messages(message: dict[str, Any], param: str) -> list[dict[str, Any]]:
    """One Anthropic message as one or more OpenAI messages."""
    role = message.get("role")
    if role not in ("user", "assistant", "system"):
        raise _bad(f"{param}.role", "must be 'user', 'assistant' or 'system'")
    extra = set(message) - {"role", "content"}
    if extra:
        raise _bad(f"{param}.{sorted(extra)[0]}", "unsupported field")
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list) or not content:
        raise _bad(f"{param}.content", "must be a string or a non-empty list of content blocks")
    if role == "system":
        return [{"role": "system", "content": _system_content(content, f"{param}.content")}]
    if role == "assistant":
        return [_assistant(content, f"{param}.content")]
    return _user(content, f"{param}.content")


def _assistant(blocks: list[Any], param: str) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for i, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append(_text_part(block, f"{param}.{i}"))
        elif kind == "tool_use":
            calls.append(_tool_call(block, f"{param}.{i}"))
        elif kind in ("thinking", "redacted_thinking"):
            continue  # earlier turns' thinking is not context (Anthropic strips it too)
        else:
            raise _bad(f"{param}.{i}.type", f"unsupported assistant content block {kind!r}")
    # null content is for tool-call turns only: a turn that was all thinking becomes an empty text
    message: dict[str, Any] = {"role": "assistant", "content": _collapse(parts) if parts else (None if calls else "")}
    if calls:
        message["tool_calls"] = calls
    return message


def _tool_call(block: dict[str, Any], param: str) -> dict[str, Any]:
    call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"{param}.id", "must be a non-empty string")
    if not isinstance(name, str) or not name:
        raise _bad(f"{param}.name", "must be a non-empty string")
    if not isinstance(arguments, dict):
        raise _bad(f"{param}.input", "must be an object")
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": orjson.dumps(arguments).decode()}}


def _user(blocks: list[Any], param: str) -> list[dict[str, Any]]:
    """Tool results become tool messages, which OpenAI wants right after the assistant's calls; the
    turn's own text and images follow them as one user message."""
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for i, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append(_text_part(block, f"{param}.{i}"))
        elif kind == "image":
            parts.append(_image_part(block, f"{param}.{i}"))
        elif kind == "tool_result":
            tools.append(_tool_message(block, f"{param}.{i}"))
        else:
            raise _bad(f"{param}.{i}.type", f"unsupported user content block {kind!r}")
    return tools + ([{"role": "user", "content": _collapse(parts)}] if parts else [])


def _tool_message(block: dict[str, Any], param: str) -> dict[str, Any]:
    # is_error has no OpenAI field: the result's own text is what the model reads either way
    call_id, content = block.get("tool_use_id"), block.get("content", "")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"{param}.tool_use_id", "must be a non-empty string")
    if isinstance(content, str):
        return {"role": "tool", "tool_call_id": call_id, "content": content}
    if not isinstance(content, list):
        raise _bad(f"{param}.content", "must be a string or a list of text blocks")
    parts = []
    for j, inner in enumerate(content):
        if not isinstance(inner, dict) or inner.get("type") != "text":
            # OpenAI tool messages hold text only; an image would be lost without a word
            raise _bad(f"{param}.content.{j}", "only text blocks are supported inside tool_result")
        parts.append(_text_part(inner, f"{param}.content.{j}"))
    return {"role": "tool", "tool_call_id": call_id, "content": _collapse(parts) if parts else ""}


def _tool(tool: dict[str, Any], param: str) -> dict[str, Any]:
    if tool.get("type") not in (None, "custom"):
        raise _bad(f"{param}.type", f"server tool {tool.get('type')!r} is not supported; "
                                    "only custom tools (name, description, input_schema)")
    name, description, schema = tool.get("name"), tool.get("description"), tool.get("input_schema")
    if not isinstance(name, str) or not 1 <= len(name) <= 64:
        raise _bad(f"{param}.name", "must be a string of 1 to 64 characters")
    if description is not None and not isinstance(description, str):
        raise _bad(f"{param}.description", "must be a string")
    if not isinstance(schema, dict):
        raise _bad(f"{param}.input_schema", "must be a JSON Schema object")
    _check_schema(schema, f"{param}.input_schema")
    # cache_control, defer_loading, input_examples, …: hints for Anthropic's own tool handling, dropped
    function: dict[str, Any] = {"name": name}
    if description is not None:
        function["description"] = description
    function["parameters"] = schema
    if isinstance(tool.get("strict"), bool):
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _tool_choice(choice: dict[str, Any], *, has_tools: bool) -> dict[str, Any]:
    kind = choice.get("type")
    out: dict[str, Any]
    if kind == "auto":
        out = {"tool_choice": "auto"}
    elif kind == "any":
        out = {"tool_choice": "required"}
    elif kind == "none":
        out = {"tool_choice": "none"}
    elif kind == "tool":
        if not isinstance(choice.get("name"), str):
            raise _bad("tool_choice.name", "must name a tool")
        out = {"tool_choice": {"type": "function", "function": {"name": choice["name"]}}}
    else:
        raise _bad("tool_choice.type", "must be 'auto', 'any', 'tool' or 'none'")
    if not has_tools:
        if kind in ("any", "tool"):
            raise _bad("tool_choice", f"tool_choice {kind!r} needs tools")
        return {}  # OpenAI refuses tool_choice without tools; auto/none mean nothing then
    if choice.get("disable_parallel_tool_use") and kind != "none":
        out["parallel_tool_calls"] = False
    return out


# --- response ----------------------------------------------------------------------------------

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"]


def message_id(request_id: str) -> str:
    """The Anthropic message id for a gateway request id (`req_<hex>` → `msg_<hex>`): one key in logs."""
    return "msg_" + request_id.removeprefix("req_")


def stop_reason(choice: dict[str, Any], stop_sequences: list[str] | None) -> tuple[StopReason | None, str | None]:
    """(stop_reason, stop_sequence) for an OpenAI choice. OpenAI's `stop` does not say whether a stop
    sequence ended the answer; vLLM's `stop_reason` does, and is used when present."""
    finish = choice.get("finish_reason")
    if finish == "length":
        return "max_tokens", None
    if finish in ("tool_calls", "function_call"):
        return "tool_use", None
    if finish == "content_filter":
        return "refusal", None
    if finish == "stop":
        matched = choice.get("stop_reason")
        if isinstance(matched, str) and matched in (stop_sequences or []):
            return "stop_sequence", matched
        return "end_turn", None
    return None, None


def usage(openai_usage: dict[str, Any] | None) -> dict[str, int]:
    """Anthropic's usage. Its input_tokens leave out cache reads, which OpenAI counts in prompt_tokens."""
    openai_usage = openai_usage or {}
    prompt = int(openai_usage.get("prompt_tokens") or 0)
    cached = int((openai_usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    out = {"input_tokens": prompt - cached, "output_tokens": int(openai_usage.get("completion_tokens") or 0)}
    if cached:
        out["cache_read_input_tokens"] = cached
    return out


def from_openai(completion: dict[str, Any], *, msg_id: str, model: str,
                stop_sequences: list[str] | None = None) -> dict[str, Any]:
    """An OpenAI chat.completion as an Anthropic message."""
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    text = message.get("content") or message.get("refusal")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or tool_id(),
                        "name": function.get("name", ""), "input": tool_arguments(function.get("arguments"))})
    reason, sequence = stop_reason(choice, stop_sequences)
    return {"id": msg_id, "type": "message", "role": "assistant", "model": completion.get("model") or model,
            "content": content, "stop_reason": reason or "end_turn", "stop_sequence": sequence,
            "usage": usage(completion.get("usage"))}


def tool_id() -> str:
    return "toolu_" + uuid.uuid4().hex[:24]


def tool_arguments(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    try:
        value = orjson.loads(arguments or "{}")
    except (orjson.JSONDecodeError, TypeError):
        value = None
    if not isinstance(value, dict):
        # Anthropic's tool_use.input is an object by contract: a client could not use anything else
        raise UpstreamError("the model returned tool arguments that are not a JSON object",
                            code="invalid_tool_arguments")
    return value
