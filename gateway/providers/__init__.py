"""Teacher and student upstreams. `build_provider` picks the direct path or litellm per model."""

from __future__ import annotations

import os

from gateway.config import Settings, TeacherConfig
from gateway.providers.base import ChatProvider, Redactor
from gateway.providers.litellm_provider import LiteLLMProvider
from gateway.providers.openai_compat import OPENAI_DEFAULT_BASE, OpenAICompatibleProvider

# litellm provider prefixes whose upstream speaks OpenAI's chat completions API
OPENAI_COMPATIBLE = {"openai", "hosted_vllm", "openai_compatible", "vllm", "protege"}
PROVIDER_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


def teacher_api_key(teacher: TeacherConfig) -> str | None:
    if teacher.api_key is not None:
        return teacher.api_key.get_secret_value()
    env = PROVIDER_KEY_ENV.get(teacher.provider)
    return os.environ.get(env) if env else None


def build_provider(teacher: TeacherConfig, settings: Settings, redact: Redactor) -> ChatProvider:
    key = teacher_api_key(teacher)
    name = f"teacher {teacher.served_name}"
    direct = teacher.client == "direct" or (teacher.client == "auto" and teacher.provider in OPENAI_COMPATIBLE)
    if direct:
        return OpenAICompatibleProvider(
            name=name, api_base=teacher.api_base or OPENAI_DEFAULT_BASE, api_key=key,
            timeout_s=settings.timeout_s, connect_timeout_s=settings.connect_timeout_s, redact=redact)
    return LiteLLMProvider(name=name, model=teacher.model, api_base=teacher.api_base, api_key=key,
                           timeout_s=settings.timeout_s, redact=redact)


__all__ = ["OPENAI_COMPATIBLE", "ChatProvider", "build_provider", "teacher_api_key"]
