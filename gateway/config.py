"""Settings: data only. Sources, lowest to highest precedence: YAML file, environment, CLI flags.

`load_settings` merges the three into one dict and validates it once; a bad key or value fails
with a `ConfigError` naming the dotted key (and the file it came from).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from gateway.errors import ConfigError, StoreError
from gateway.scoring.base import ScorerChoice
from gateway.store import check_store_url


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TeacherConfig(_Strict):
    """One teacher model the gateway forwards to."""

    model: str = Field(description="litellm model string, e.g. openai/gpt-4o-mini or anthropic/claude-sonnet-4-5")
    name: str | None = Field(default=None, description="name clients use; default: model without provider prefix")
    aliases: list[str] = Field(default_factory=list, description="other names that select this teacher")
    api_base: str | None = Field(default=None, description="base URL of the provider (…/v1 for OpenAI-compatible)")
    api_key: SecretStr | None = Field(default=None, description="provider key; else the provider's env var")
    client: Literal["auto", "direct", "litellm"] = Field(
        default="auto", description="auto: direct httpx for OpenAI-compatible upstreams, litellm otherwise")
    input_cost_per_token: float | None = Field(default=None, ge=0, description="USD; overrides the price map")
    output_cost_per_token: float | None = Field(default=None, ge=0, description="USD; overrides the price map")
    price_note: str | None = Field(default=None, description="shown beside this teacher's costs in the console, "
                                   "e.g. that its price is simulated")
    cached_input_cost_per_token: float | None = Field(default=None, ge=0, description="USD per prompt token "
                                                      "read from the provider's cache (with the two above)")

    @field_validator("model")
    @classmethod
    def _model_has_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @property
    def provider(self) -> str:
        return self.model.split("/", 1)[0] if "/" in self.model else "openai"

    @property
    def upstream_model(self) -> str:
        return self.model.split("/", 1)[1] if "/" in self.model else self.model

    @property
    def served_name(self) -> str:
        return self.name or self.upstream_model


class CaptureConfig(_Strict):
    enabled: bool = True
    queue_size: int = Field(default=10_000, ge=1, description="exchanges waiting to be written; beyond, dropped")
    batch_size: int = Field(default=256, ge=1)
    flush_interval_ms: int = Field(default=100, ge=1, le=10_000)
    write_retries: int = Field(default=3, ge=0, le=20, description="retries of a batch the store refuses "
                               "(backoff 0.2 s doubling) before it is dropped and counted")
    redact_pii: bool = Field(default=False, description="replace emails, phones, cards, IBANs and IPs with "
                             "typed placeholders before anything is stored")
    skip_tasks: list[str] = Field(default_factory=list, description="tasks never captured (sensitive traffic); a "
                                  "request can also opt out with the header X-Protege-Capture: off")
    retention_days: int | None = Field(default=None, ge=1, description="exchanges older than this are deleted by "
                                       "each `protege scheduler` check; None keeps them (or use `protege prune`)")


class RetryConfig(_Strict):
    attempts: int = Field(default=2, ge=0, le=10, description="retries after the first try, on 429/5xx")
    backoff_s: float = Field(default=0.25, ge=0, description="first backoff; doubles each retry")
    max_backoff_s: float = Field(default=4.0, ge=0, description="longest wait, also caps Retry-After")


class CircuitBreakerConfig(_Strict):
    """Per upstream (each teacher, the student server): fail fast while it keeps failing."""

    failure_threshold: int = Field(default=5, ge=0, description="failed requests in a row that open the circuit; "
                                   "0 disables the breaker")
    cooldown_s: float = Field(default=10, gt=0, description="how long the circuit stays open before one probe")


class RateLimitConfig(_Strict):
    """Per gateway key (or for everyone on a gateway without keys); 429 with Retry-After beyond."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1, description="input + output tokens")


class LimitsConfig(_Strict):
    """What one request may ask for, and how many may run at once (beyond: 400, 429 or 503)."""

    max_n: int = Field(default=8, ge=1, le=128, description="most choices (`n`) one request may ask for")
    max_output_tokens: int | None = Field(default=None, ge=1, description="most output tokens (`max_tokens`, "
                                          "`max_completion_tokens`) one request may ask for; None: no cap")
    max_concurrent: int | None = Field(default=1024, ge=1, description="requests in flight in this process; "
                                       "beyond, 503 with Retry-After")
    max_concurrent_per_key: int | None = Field(default=None, ge=1, description="requests in flight per gateway "
                                               "key; beyond, 429 with Retry-After")


class CascadeConfig(_Strict):
    """How the gateway uses students."""

    timeout_s: float = Field(default=10, gt=0, description="a slower student falls back to the teacher")
    degraded_mode: bool = Field(default=False, description="serve the student's answer when the teacher is down")
    predictor: bool = Field(default=True, description="skip the student for requests its version's pre-generation "
                            "predictor scores below its cutoff (only where the distiller found it measurably better "
                            "on held-out traffic)")
    early_stop: bool = Field(default=True, description="stream the student's answer inside the gateway and stop it "
                             "as soon as it can no longer be accepted (confidence bound, JSON prefix, tool name), "
                             "so a fallback pays for a few student tokens; an accepted answer is the same either way")
    shadow_rate: float = Field(default=0.05, ge=0, le=1, description="share of student answers also sent to the "
                               "teacher in the background to measure live parity (and capture training data)")
    refresh_s: float = Field(default=2, gt=0, description="how often rollout and students are re-read from the store")
    ramp_check_s: float = Field(default=15, gt=0, description="how often this gateway checks the running rollout "
                                "ramps (`protege rollout --ramp`) and makes their next move")
    input_cost_per_token: float | None = Field(default=None, ge=0, description="USD per student input token")
    output_cost_per_token: float | None = Field(default=None, ge=0, description="USD per student output token")
    hardware: Literal["cpu", "gpu"] | None = Field(default=None, description="without a per-token price, the "
                                                    "student is priced by compute: compute.cpu_hour_usd or "
                                                    "gpu_hour_usd; None: the hardware its server reports")
    tokens_per_s: float | None = Field(default=None, gt=0, description="the student server's throughput, input "
                                       "and output tokens per second, that the compute price is spread over; "
                                       "None: as Protégé's model server measures it (GET /throughput)")


class ComputeConfig(_Strict):
    """What compute costs, for the distiller's run costs (training, evaluation) and a local student's price.
    The defaults are assumptions, labelled as such wherever a figure uses them: set your own."""

    cpu_hour_usd: float = Field(default=0.10, ge=0, description="one machine of the kind that trains and serves "
                                "on CPU, per hour (default: a few-vCPU cloud VM on demand)")
    gpu_hour_usd: float = Field(default=2.50, ge=0, description="one GPU, per hour (default: an A100-class GPU on "
                                "demand)")
    hosted_training_usd_per_million_tokens: float = Field(default=3.00, ge=0, description="a hosted fine-tuning "
                                                          "job's price per million trained tokens (default: "
                                                          "OpenAI's for gpt-4o-mini)")
    price_refresh_s: float = Field(default=60, gt=0, description="how often a compute-priced model's measured "
                                   "throughput is read again")

    def source(self, name: str) -> str:
        return "configured" if name in self.model_fields_set else "assumed (default)"


class AuthConfig(_Strict):
    """Who may call /v1: holders of a gateway key, or (only where explicitly allowed) anyone."""

    required: bool | None = Field(default=None, description="true: every /v1 request needs a gateway key, and the "
                                  "gateway refuses to start without one; false: without any key the gateway is "
                                  "open; default: required unless the gateway binds a loopback address only")


class TracingConfig(_Strict):
    """OpenTelemetry traces of gateway requests, exported over OTLP/HTTP. The standard `OTEL_*` environment
    variables apply (`OTEL_EXPORTER_OTLP_ENDPOINT`, `…_TRACES_ENDPOINT`, `…_HEADERS`, `OTEL_SERVICE_NAME`,
    `OTEL_TRACES_SAMPLER`, `OTEL_SDK_DISABLED`); a value set here wins over them."""

    enabled: bool | None = Field(default=None, description="true: export traces; false: never; default: on when "
                                 "OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set")
    endpoint: str | None = Field(default=None, description="the OTLP/HTTP traces URL (e.g. http://jaeger:4318/v1/"
                                 "traces); default: from the OTEL_EXPORTER_OTLP_* variables, else localhost:4318")
    service_name: str | None = Field(default=None, description="default: OTEL_SERVICE_NAME, else protege-gateway")
    capture_content: bool = Field(default=False, description="put the request's messages and the answer on the "
                                  "spans (gen_ai.input.messages, gen_ai.output.messages); off: token counts, "
                                  "models and decisions only")


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class EmbeddedConfig(_Strict):
    """The model server `protege serve` starts when no teacher is configured."""

    model: str | None = Field(default=None, description="local model folder; default SmolLM2-135M-Instruct")
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port")
    threads: int | None = Field(default=None, ge=1)
    startup_timeout_s: float = Field(default=180, gt=0)
    # billed at gpt-4o-mini's list price for simulation: offline cost figures stand in for a hosted teacher's
    input_cost_per_token: float = Field(default=0.15e-6, ge=0, description="USD per input token, for simulation "
                                        "(default: gpt-4o-mini's list price; the model runs on this machine)")
    output_cost_per_token: float = Field(default=0.60e-6, ge=0, description="USD per output token, for "
                                         "simulation (default: gpt-4o-mini's list price)")


DEFAULT_MIN_RATING = 0.5


class JudgeConfig(_Strict):
    """An LLM judge: one of the configured teachers, asked through its provider (`tasks.<task>.judge`)."""

    teacher: str = Field(description="served name of a configured teacher (or the embedded model's) to ask")
    prompt_file: Path | None = Field(default=None, description="the judge prompt, with {{request}}, "
                                     "{{answer_a}} and {{answer_b}}; default: the one shipped in gateway/scoring")
    max_tokens: int = Field(default=200, ge=16, le=4096)


class ScoringConfig(_Strict):
    """How free-text answers are compared (`scoring:`)."""

    embeddings_api_base: str | None = Field(default=None, description="an OpenAI-compatible /v1 base serving the "
                                            "embeddings model; default: the student server (the model server "
                                            "serves all-MiniLM-L6-v2)")
    embeddings_model: str = "all-MiniLM-L6-v2"
    reference_temperature: float = Field(default=0.7, gt=0, le=2, description="temperature of the second teacher "
                                         "answer the similarity scale is measured with")
    reference_requests: int = Field(default=32, ge=2, le=1000, description="validation requests the teacher is "
                                    "asked again to measure its own variability (one call each, priced)")


class TaskConfig(_Strict):
    """One task's own settings (`tasks: {<task>: {...}}`); a task not listed has the defaults."""

    scorer: ScorerChoice = Field(
        default="auto", description="how the task's answers are compared with the teacher's; auto: from its "
        "traffic (tool calls → tools, JSON → fields, short labels → exact, free text → judge when one is set, "
        "else similarity)")
    judge: JudgeConfig | None = None
    scorer_check: Path | None = Field(default=None, description="a labelled JSON-lines check set the scorer is "
                                      "measured on (default: the shipped support-reply set)")

    min_rating: float | None = Field(default=DEFAULT_MIN_RATING, allow_inf_nan=False, description=(
        "an exchange the app rated below this (POST /v1/feedback) is left out of training data; in the app's own "
        "scale, where a boolean rating counts as 1 or 0, so the default drops a thumbs-down; 4 for 1-5 stars; "
        "null: ratings never drop an exchange"))


class Settings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    store: str = Field(default="sqlite:///data/protege.db", description="sqlite:///path.db or postgresql://…")
    teachers: list[TeacherConfig] = Field(default_factory=list)
    student_api_base: str | None = None
    student_api_key: SecretStr | None = Field(default=None, description="the student server's API key (its "
                                              "--api-key-file), sent by the gateway and the distiller")
    timeout_s: float = Field(default=120, gt=0, description="upstream read timeout")
    connect_timeout_s: float = Field(default=5, gt=0)
    retry: RetryConfig = RetryConfig()
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
    rate_limits: RateLimitConfig = RateLimitConfig()
    limits: LimitsConfig = LimitsConfig()
    cascade: CascadeConfig = CascadeConfig()
    capture: CaptureConfig = CaptureConfig()
    embedded: EmbeddedConfig = EmbeddedConfig()
    compute: ComputeConfig = ComputeConfig()
    tracing: TracingConfig = TracingConfig()
    tasks: dict[str, TaskConfig] = Field(default_factory=dict, description="per-task settings, by task name")
    scoring: ScoringConfig = ScoringConfig()
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    body_timeout_s: float = Field(default=30, gt=0, description="a request body must arrive within this time")
    header_timeout_s: float = Field(default=10, gt=0, description="a request's headers must arrive within this "
                                    "time (from the connection's start or the request's first byte)")
    gateway_keys: list[SecretStr] = Field(default_factory=list, description="accepted client keys, plain")
    auth: AuthConfig = AuthConfig()
    admin_token: SecretStr | None = None
    admin_port: int | None = Field(default=None, ge=1, le=65535, description="serve /admin, the console and "
                                   "/metrics only on this port (and nothing else there); default: on `port`")
    admin_host: str | None = Field(default=None, description="bind address of admin_port; default: host")
    log_level: str = Field(default="info", pattern="^(debug|info|warning|error)$")
    passthrough: bool = Field(default=True, description="forward the other /v1 routes apps call (embeddings, "
                              "completions, moderations, audio, images, files, batches, uploads) to the teacher; "
                              "false: they answer 501")
    forward_fields: list[str] = Field(default_factory=list, description="request fields beyond OpenAI's documented "
                                      "ones that clients may send and the teachers receive (e.g. vLLM's top_k); "
                                      "anything else is refused with a 400")

    @field_validator("forward_fields")
    @classmethod
    def _no_provider_control(cls, value: list[str]) -> list[str]:
        from gateway.protocol import PROVIDER_CONTROL_FIELDS

        steering = sorted(set(value) & PROVIDER_CONTROL_FIELDS)
        if steering:
            raise ValueError(f"{steering[0]!r} steers the provider client and is never taken from clients")
        return value

    def task(self, name: str) -> TaskConfig:
        """The task's settings: its entry under `tasks`, else the defaults."""
        return self.tasks.get(name) or TaskConfig()

    @property
    def student_key(self) -> str | None:
        return None if self.student_api_key is None else self.student_api_key.get_secret_value()

    @property
    def auth_required(self) -> bool:
        """`auth.required`, or by default: required on anything but a loopback bind."""
        if self.auth.required is not None:
            return self.auth.required
        return not (self.host in LOOPBACK_HOSTS or self.host.startswith("127."))

    @field_validator("store")
    @classmethod
    def _store_scheme(cls, value: str) -> str:
        try:
            check_store_url(value)
        except StoreError as exc:  # pydantic reports a ValueError as the key's error
            raise ValueError(str(exc)) from exc
        return value


# environment variable → dotted settings key
ENV_KEYS: dict[str, str] = {
    "PROTEGE_HOST": "host",
    "PROTEGE_PORT": "port",
    "PROTEGE_STORE": "store",
    "PROTEGE_TEACHER": "teacher",
    "PROTEGE_TEACHER_API_BASE": "teacher_api_base",
    "PROTEGE_TEACHER_API_KEY": "teacher_api_key",
    "PROTEGE_STUDENT_API_BASE": "student_api_base",
    "PROTEGE_STUDENT_API_KEY": "student_api_key",
    "PROTEGE_ADMIN_TOKEN": "admin_token",
    "PROTEGE_ADMIN_PORT": "admin_port",
    "PROTEGE_GATEWAY_KEYS": "gateway_keys",
    "PROTEGE_AUTH_REQUIRED": "auth_required",
    "PROTEGE_LOG_LEVEL": "log_level",
}

# flat keys that describe the single teacher
_TEACHER_FLAT = {"teacher": "model", "teacher_api_base": "api_base", "teacher_api_key": "api_key"}


def load_settings(
    config_path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge YAML, environment and CLI overrides (flat keys, None = not given) and validate."""
    source = str(config_path) if config_path else "defaults"
    data: dict[str, Any] = _read_yaml(Path(config_path)) if config_path else {}
    environ = os.environ if env is None else env
    flat: dict[str, Any] = {}
    for var, key in ENV_KEYS.items():
        if environ.get(var):
            flat[key] = environ[var]
    flat.update({k: v for k, v in (overrides or {}).items() if v is not None})
    _apply_flat(data, flat)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    return loaded


def _apply_flat(data: dict[str, Any], flat: dict[str, Any]) -> None:
    teacher_patch = {_TEACHER_FLAT[k]: flat.pop(k) for k in list(flat) if k in _TEACHER_FLAT}
    if "gateway_keys" in flat and isinstance(flat["gateway_keys"], str):
        flat["gateway_keys"] = [k.strip() for k in flat["gateway_keys"].split(",") if k.strip()]
    if "auth_required" in flat:
        data["auth"] = {**(data.get("auth") or {}), "required": flat.pop("auth_required")}
    data.update(flat)
    if not teacher_patch:
        return
    teachers = data.get("teachers") or []
    if "model" in teacher_patch:
        data["teachers"] = [teacher_patch]
    elif isinstance(teachers, list) and len(teachers) == 1 and isinstance(teachers[0], dict):
        data["teachers"] = [{**teachers[0], **teacher_patch}]
    else:
        key = next(iter(teacher_patch))
        raise ConfigError(f"teacher_{key}: set --teacher too, or configure exactly one teacher")


def _describe(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"]) or "(root)"
        lines.append(f"{key}: {err['msg']}")
    return f"invalid configuration ({source}): " + "; ".join(lines)
