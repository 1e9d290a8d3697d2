"""OpenAI wire models: what the gateway validates on the way in (pydantic, and jsonschema for tool schemas).

Fields follow OpenAI's order. Validation is deliberately shallow: the gateway checks what it must
understand (messages, roles, sampling limits, tools, response_format). The top level is an allowlist:
OpenAI's documented request fields (plus any the operator names in `forward_fields`) are forwarded,
and anything else is refused with a 400 naming it, as OpenAI itself does. Fields that steer a provider
client (`base_url`, `api_key`, `extra_headers`, …) are never accepted from a client, whatever the
config says: the gateway alone decides where requests go and with which credentials. Protégé's own
fields are marked.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.errors import BadRequestError

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Role
    # str, a list of content parts, or null for assistant tool-call turns
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _parameters_are_json_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # the provider would refuse it too, after a round trip; and the cascade validates arguments with it
        if value is not None:
            try:
                Draft202012Validator.check_schema(value)
            except SchemaError as exc:
                raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
        return value


class ToolDefinition(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    function: FunctionDefinition


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool | None = None


class ChatCompletionRequest(BaseModel):
    """`POST /v1/chat/completions`. Unknown top-level fields pass pydantic (`extra="allow"`) and are then
    checked against the allowlist by `check_fields`."""

    model_config = ConfigDict(extra="allow")

    messages: list[ChatMessage] = Field(min_length=1)
    model: str = Field(min_length=1)
    audio: dict[str, Any] | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    function_call: str | dict[str, Any] | None = None  # deprecated by OpenAI for tool_choice
    functions: list[dict[str, Any]] | None = None  # deprecated by OpenAI for tools
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    modalities: list[str] | None = None
    n: int | None = Field(default=None, ge=1, le=128)
    prediction: dict[str, Any] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    reasoning_effort: str | None = None
    response_format: ResponseFormat | None = None
    safety_identifier: str | None = None
    seed: int | None = None
    service_tier: str | None = None
    stop: str | list[str] | None = None
    store: bool | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    tools: list[ToolDefinition] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None
    verbosity: str | None = None
    web_search_options: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None  # OpenAI's field; Protégé reads `metadata.task`


CHAT_FIELDS = frozenset(ChatCompletionRequest.model_fields)

# Keyword arguments with which provider clients (litellm, the openai SDK) let a caller choose the
# upstream, its credentials or its headers. Never taken from a client body, and never allowed in
# `forward_fields`.
PROVIDER_CONTROL_FIELDS = frozenset({
    "api_base", "api_key", "api_type", "api_version", "base_url", "custom_llm_provider", "deployment_id",
    "extra_body", "extra_headers", "extra_query", "headers", "http_client", "litellm_params", "max_retries",
    "mock_response", "model_list", "num_retries", "organization", "project", "timeout", "aws_access_key_id",
    "aws_secret_access_key", "aws_session_token", "aws_region_name", "vertex_credentials", "vertex_project",
    "vertex_location", "azure_ad_token", "client", "input_cost_per_token", "output_cost_per_token",
})


def check_fields(body: dict[str, Any], known: frozenset[str], extra: Collection[str] = ()) -> None:
    """Refuse (400, naming it) a top-level field that is not a documented request field of this route
    or one the operator allowed, and always a field that steers the provider client."""
    for name in body:
        if name in PROVIDER_CONTROL_FIELDS:
            raise BadRequestError(f"{name!r} is not accepted from clients: the gateway decides where requests "
                                  "go and with which credentials", param=name, code="forbidden_parameter")
        if name not in known and name not in extra:
            raise BadRequestError(f"Unrecognized request argument supplied: {name}", param=name,
                                  code="unknown_parameter")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # Protégé: "teacher" or "student", and the task a student serves
    protege_role: str | None = None
    protege_task: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
