"""OpenAI's Responses API (`POST /v1/responses`) as a translation onto the chat form. Pure.

As with Anthropic's Messages API, the request is validated here and translated into the chat body the chat
core handles, so the cascade, rollout, validators, cost and capture apply unchanged and a task's dataset has
one form whichever API its traffic used; the completion is translated back into a `response` object:

    instructions          → a leading system message     input (a string)      → one user message
    message items         → messages (input_text and      function_call items   → the assistant turn's tool_calls
                            input_image parts)            function_call_output  → tool messages
    tools (function)      → function tools                text.format           → response_format
    tool_choice           → tool_choice                   max_output_tokens     → max_completion_tokens
    reasoning.effort      → reasoning_effort (dropped     user, safety_identifier → the same (the sticky key)
                            for a student)                reasoning items       → dropped (not context)
    previous_response_id  → the stored conversation, before this request's input

What the gateway cannot serve — built-in tools, background mode, stored prompts, conversations, file
inputs — is refused with a 400 naming the parameter, never dropped without a word.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import BadRequestError, invalid_field

BUILT_IN_TOOLS = frozenset({
    "web_search", "web_search_preview", "web_search_2025_08_26", "web_search_preview_2025_03_11", "file_search",
    "code_interpreter", "computer", "computer_use", "computer_use_preview", "image_generation", "mcp",
    "local_shell", "shell", "apply_patch", "custom", "tool_search",
})
# `include` values: each only adds data about outputs this gateway never produces (built-in tool results,
# encrypted reasoning, image URLs it does not rewrite), so asking for them changes nothing
INCLUDABLE = frozenset({
    "file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
    "message.input_image.image_url", "computer_call_output.output.image_url", "code_interpreter_call.outputs",
    "reasoning.encrypted_content", "message.output_text.logprobs",
})


class ResponsesRequest(BaseModel):
    """`POST /v1/responses`, top level. Items, tools and formats are checked by `to_chat`, which names the path.

    Unknown fields are refused, as OpenAI does."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    input: str | list[Any] | None = None
    instructions: str | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    metadata: dict[str, Any] | None = None  # OpenAI's key-value pairs; Protégé reads `task`
    user: str | None = None
    safety_identifier: str | None = None
    reasoning: dict[str, Any] | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None  # include_obfuscation: no obfuscation is added
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None  # nothing is truncated either way
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    max_tool_calls: int | None = Field(default=None, ge=1)  # bounds built-in tool calls, which are refused
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    # refused when set: features the gateway cannot serve
    background: bool | None = None
    conversation: Any = None
    prompt: Any = None

    @property
    def sticky_user(self) -> str | None:
        return self.safety_identifier or self.user

    @property
    def stored(self) -> bool:
        return self.store is not False


def parse_request(body: dict[str, Any]) -> ResponsesRequest:
    """The validated request; a `BadRequestError` naming the field otherwise."""
    try:
        request = ResponsesRequest.model_validate(body)
    except ValidationError as exc:
        raise invalid_field(exc.errors(include_url=False)) from None
    if request.input in (None, "", []) and request.previous_response_id is None:
        raise _bad("input", "is required (a string or a non-empty list of items)")
    if request.background:
        raise _bad("background", "background responses are not supported by this gateway")
    for name in ("conversation", "prompt"):
        if getattr(request, name) is not None:
            raise _bad(name, f"{'conversations' if name == 'conversation' else 'stored prompts'} are not "
                             "supported by this gateway; send the input (or previous_response_id) instead")
    for i, value in enumerate(request.include or []):
        if value not in INCLUDABLE:
            raise _bad(f"include[{i}]", f"unknown value {value[:60]!r}")
    _check_metadata(request.metadata)
    return request


def _check_metadata(metadata: dict[str, Any] | None) -> None:
    if metadata is None:
        return
    if len(metadata) > 16:
        raise _bad("metadata", "at most 16 key-value pairs")
    for key, value in metadata.items():
        if len(key) > 64:
            raise _bad("metadata", f"key {key[:20]!r}… is longer than 64 characters")
        if not isinstance(value, str) or len(value) > 512:
            raise _bad(f"metadata.{key}", "must be a string of at most 512 characters")


def to_chat(request: ResponsesRequest, history: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The chat body for a validated request whose conversation so far is `history` (chat messages), and this
    request's own input messages (what a follow-up's history adds)."""
    turn = input_messages(request.input)
    messages = ([{"role": "system", "content": request.instructions}] if request.instructions else []) + history + turn
    if not messages:
        raise _bad("input", "is required (a string or a non-empty list of items)")
    body: dict[str, Any] = {"model": request.model, "messages": messages}
    if request.max_output_tokens is not None:
        body["max_completion_tokens"] = request.max_output_tokens
    for key in ("temperature", "top_p", "user", "safety_identifier", "service_tier", "prompt_cache_key",
                "prompt_cache_retention"):
        value = getattr(request, key)
        if value is not None:
            body[key] = value
    if request.top_logprobs:
        body["logprobs"], body["top_logprobs"] = True, request.top_logprobs
    if request.tools:
        body["tools"] = [_tool(t, f"tools[{i}]") for i, t in enumerate(request.tools)]
        if request.parallel_tool_calls is not None:  # chat refuses it without tools
            body["parallel_tool_calls"] = request.parallel_tool_calls
    if request.tool_choice is not None:
        body.update(_tool_choice(request.tool_choice, has_tools=bool(request.tools)))
    body.update(_text_options(request.text))
    effort = (request.reasoning or {}).get("effort")
    if effort is not None:
        if not isinstance(effort, str):
            raise _bad("reasoning.effort", "must be a string")
        body["reasoning_effort"] = effort
    task = (request.metadata or {}).get("task")
    if task is not None:
        body["metadata"] = {"task": task}  # checked by `resolve_task`, stripped before the upstream
    if request.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}  # the usage-only last chunk feeds response.completed
    return body, turn


def _bad(param: str, message: str) -> BadRequestError:
    return BadRequestError(f"{param}: {message}", param=param)


def _check_schema(schema: Any, param: str) -> dict[str, Any]:
    # the provider would refuse it too, after a round trip; and the cascade validates answers with it
    if not isinstance(schema, dict):
        raise _bad(param, "must be a JSON Schema object")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise _bad(param, f"not a valid JSON Schema: {exc.message}") from None
    return schema


def _text_options(text: dict[str, Any] | None) -> dict[str, Any]:
    """`text.format` as `response_format`, `text.verbosity` as `verbosity`."""
    if not text:
        return {}
    unknown = set(text) - {"format", "verbosity"}
    if unknown:
        raise _bad(f"text.{sorted(unknown)[0]}", "unsupported field")
    out: dict[str, Any] = {}
    if text.get("verbosity") is not None:
        if text["verbosity"] not in ("low", "medium", "high"):
            raise _bad("text.verbosity", "must be 'low', 'medium' or 'high'")
        out["verbosity"] = text["verbosity"]
    fmt = text.get("format")
    if fmt is None:
        return out
    if not isinstance(fmt, dict):
        raise _bad("text.format", "must be an object with a type")
    kind = fmt.get("type")
    if kind == "text":
        return out
    if kind == "json_object":
        return {**out, "response_format": {"type": "json_object"}}
    if kind != "json_schema":
        raise _bad("text.format.type", "must be 'text', 'json_object' or 'json_schema'")
    name = fmt.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= 64:
        raise _bad("text.format.name", "must be a string of 1 to 64 characters")
    schema: dict[str, Any] = {"name": name, "schema": _check_schema(fmt.get("schema"), "text.format.schema")}
    for key, kinds in (("strict", bool), ("description", str)):
        if fmt.get(key) is not None:
            if not isinstance(fmt[key], kinds):
                raise _bad(f"text.format.{key}", f"must be a {kinds.__name__}")
            schema[key] = fmt[key]
    return {**out, "response_format": {"type": "json_schema", "json_schema": schema}}


def _tool(tool: Any, param: str) -> dict[str, Any]:
    if not isinstance(tool, dict):
        raise _bad(param, "must be an object")
    kind = tool.get("type")
    if kind in BUILT_IN_TOOLS:
        raise _bad(f"{param}.type", f"built-in tool {kind!r} is not supported by this gateway; only function tools")
    if kind != "function":
        raise _bad(f"{param}.type", f"unknown tool type {str(kind)[:40]!r}; only 'function' tools are supported")
    unknown = set(tool) - {"type", "name", "description", "parameters", "strict"}
    if unknown:
        raise _bad(f"{param}.{sorted(unknown)[0]}", "unsupported field")
    name, description = tool.get("name"), tool.get("description")
    if not isinstance(name, str) or not 1 <= len(name) <= 64:
        raise _bad(f"{param}.name", "must be a string of 1 to 64 characters")
    if description is not None and not isinstance(description, str):
        raise _bad(f"{param}.description", "must be a string")
    function: dict[str, Any] = {"name": name}
    if description is not None:
        function["description"] = description
    if tool.get("parameters") is not None:
        function["parameters"] = _check_schema(tool["parameters"], f"{param}.parameters")
    if tool.get("strict") is not None:
        if not isinstance(tool["strict"], bool):
            raise _bad(f"{param}.strict", "must be a boolean")
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _tool_choice(choice: str | dict[str, Any], *, has_tools: bool) -> dict[str, Any]:
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise _bad("tool_choice", "must be 'auto', 'none', 'required' or {'type': 'function', 'name': ...}")
        if choice == "required" and not has_tools:
            raise _bad("tool_choice", "'required' needs tools")
        return {"tool_choice": choice} if has_tools else {}
    if choice.get("type") != "function":
        raise _bad("tool_choice.type", "only 'function' (with a name) is supported")
    if not isinstance(choice.get("name"), str) or not has_tools:
        raise _bad("tool_choice.name", "must name one of the request's function tools")
    return {"tool_choice": {"type": "function", "function": {"name": choice["name"]}}}


def input_messages(items: str | list[Any] | None) -> list[dict[str, Any]]:
    """The request's input as chat messages. A function_call item joins the assistant turn before it (or
    starts one), since chat wants a turn's tool calls on one assistant message, before their results."""
    if items is None:
        return []
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(param, "must be an object (an input item)")
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, param))
        elif kind == "function_call":
            call = _function_call(item, param)
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and not _followed_by_tools(messages):
                last.setdefault("tool_calls", []).append(call)
                if last.get("content") == "":
                    last["content"] = None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append(_function_output(item, param))
        elif kind == "reasoning":
            continue  # earlier turns' reasoning is not context for a chat model
        elif kind == "item_reference":
            raise _bad(f"{param}.type", "item references are not supported; send the item, or previous_response_id")
        else:
            raise _bad(f"{param}.type", f"unsupported input item type {str(kind)[:40]!r}")
    return messages


def _followed_by_tools(messages: list[dict[str, Any]]) -> bool:
    return bool(messages) and messages[-1]["role"] == "tool"


def _message(item: dict[str, Any], param: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise _bad(f"{param}.role", "must be 'user', 'assistant', 'system' or 'developer'")
    unknown = set(item) - {"type", "role", "content", "id", "status", "phase"}
    if unknown:
        raise _bad(f"{param}.{sorted(unknown)[0]}", "unsupported field")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise _bad(f"{param}.content", "must be a string or a list of content parts")
    parts = [_part(part, f"{param}.content[{j}]", role) for j, part in enumerate(content)]
    if role != "user" and any(p["type"] != "text" for p in parts):
        raise _bad(f"{param}.content", f"{role} messages hold text only")
    return {"role": role, "content": _collapse(parts) if parts else ""}


def _collapse(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Text-only content as one string: the form chat clients send, so both APIs capture alike."""
    if all(p["type"] == "text" for p in parts):
        return "".join(str(p["text"]) for p in parts)
    return parts


def _part(part: Any, param: str, role: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text", "text"):
        if not isinstance(part.get("text"), str):
            raise _bad(f"{param}.text", "must be a string")
        return {"type": "text", "text": part["text"]}
    if kind == "refusal" and role == "assistant":
        if not isinstance(part.get("refusal"), str):
            raise _bad(f"{param}.refusal", "must be a string")
        return {"type": "text", "text": part["refusal"]}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise _bad(f"{param}.image_url", "must be a URL or a data: URL (file ids are not supported)")
        image: dict[str, Any] = {"url": url}
        if part.get("detail") is not None:
            if part["detail"] not in ("auto", "low", "high"):
                raise _bad(f"{param}.detail", "must be 'auto', 'low' or 'high'")
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        raise _bad(f"{param}.type", "file inputs are not supported by this gateway")
    raise _bad(f"{param}.type", f"unsupported content part {str(kind)[:40]!r}")


def _function_call(item: dict[str, Any], param: str) -> dict[str, Any]:
    call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"{param}.call_id", "must be a non-empty string")
    if not isinstance(name, str) or not name:
        raise _bad(f"{param}.name", "must be a non-empty string")
    if not isinstance(arguments, str):
        raise _bad(f"{param}.arguments", "must be a string (JSON)")
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _function_output(item: dict[str, Any], param: str) -> dict[str, Any]:
    call_id, output = item.get("call_id"), item.get("output")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"{param}.call_id", "must be a non-empty string")
    if isinstance(output, list):
        texts = []
        for j, part in enumerate(output):
            if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text"):
                # chat tool messages hold text only: an image would be lost without a word
                raise _bad(f"{param}.output[{j}]", "only text parts are supported in a function_call_output")
            texts.append(str(part.get("text", "")))
        output = "".join(texts)
    if not isinstance(output, str):
        raise _bad(f"{param}.output", "must be a string or a list of text parts")
    return {"role": "tool", "tool_call_id": call_id, "content": output}


def input_items(items: str | list[Any] | None) -> list[dict[str, Any]]:
    """The request's input as the items `GET /v1/responses/{id}/input_items` lists: each with an id and,
    for messages, content parts (a string input is one user message)."""
    if items is None:
        return []
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    out = []
    for item in items:
        item = {"type": "message", **item}
        if item["type"] == "message":
            content = item.get("content")
            if isinstance(content, str):
                item["content"] = [{"type": "input_text" if item.get("role") != "assistant" else "output_text",
                                    "text": content, **({"annotations": []} if item.get("role") == "assistant"
                                                        else {})}]
            item.setdefault("status", "completed")
        prefix = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}.get(item["type"], "item")
        item.setdefault("id", f"{prefix}_{uuid.uuid4().hex}")
        out.append(item)
    return out
