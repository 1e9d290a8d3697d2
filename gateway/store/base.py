"""The store interface: what the gateway and the distiller read and write, for every backend."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Literal

ExchangeStatus = Literal["ok", "failed", "incomplete"]


@dataclass(slots=True)
class Exchange:
    """One request/response pair as captured. `request` and `response` are normalised dicts."""

    request_id: str
    created_at: float
    task: str
    task_source: str
    route: str
    model: str
    upstream_model: str
    status: ExchangeStatus
    http_status: int
    stream: bool
    request: dict[str, Any]
    response: dict[str, Any] | None = None
    user: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    cost_usd: float | None = None
    finish_reason: str | None = None
    error: str | None = None
    system_hash: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TaskSummary:
    name: str
    source: str
    captured: int
    good: int
    first_seen: float
    last_seen: float


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    key_id: str
    name: str
    key_hash: str
    created_at: float
    revoked: bool


StudentStatus = Literal["candidate", "active", "retired", "rejected"]
ConfidenceMethod = Literal["mean_logprob", "min_logprob", "quantile_logprob"]


@dataclass(slots=True)
class StudentVersion:
    """One trained student of a task, as registered by the distiller."""

    task: str
    version: int
    status: StudentStatus
    model: str  # its name on the student server (LoRA adapter name or hosted model id)
    created_at: float
    updated_at: float
    base_model: str | None = None
    trainer: str | None = None
    artifact: str | None = None  # adapter path or hosted model id
    dataset_hash: str | None = None
    system_prompt_hash: str | None = None  # the system prompt it was trained without, if prompt-distilled
    prompt_distilled: bool = False
    threshold: float | None = None  # calibrated confidence threshold; None → accept on validators alone
    confidence_method: ConfidenceMethod = "mean_logprob"
    details: dict[str, Any] = field(default_factory=dict)  # hyper-parameters, evaluation results


class StoreError(RuntimeError):
    """The store could not be read or written."""


class Store(abc.ABC):
    """Backends implement this; `open_store(url)` picks one."""

    url: str

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply pending migrations."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def schema_version(self) -> int: ...

    @abc.abstractmethod
    async def check_writable(self) -> None:
        """Raise StoreError unless a write transaction can be opened now."""

    @abc.abstractmethod
    async def insert_exchanges(self, exchanges: list[Exchange]) -> None:
        """Write a batch in one transaction; a request id seen before is ignored."""

    @abc.abstractmethod
    async def list_tasks(self) -> list[TaskSummary]: ...

    @abc.abstractmethod
    async def list_exchanges(self, *, task: str | None = None, status: ExchangeStatus | None = None,
                             limit: int | None = None) -> list[Exchange]:
        """Oldest first."""

    @abc.abstractmethod
    async def count_exchanges(self, *, task: str | None = None, status: ExchangeStatus | None = None) -> int: ...

    @abc.abstractmethod
    async def add_api_key(self, record: ApiKeyRecord) -> None: ...

    @abc.abstractmethod
    async def list_api_keys(self) -> list[ApiKeyRecord]: ...

    @abc.abstractmethod
    async def revoke_api_key(self, key_id: str) -> bool: ...

    @abc.abstractmethod
    async def add_student(self, student: StudentVersion) -> None: ...

    @abc.abstractmethod
    async def list_students(self, *, task: str | None = None) -> list[StudentVersion]:
        """By task, then version."""

    @abc.abstractmethod
    async def set_student_status(self, task: str, version: int, status: StudentStatus) -> bool:
        """Making a version `active` retires the task's previously active one, atomically."""

    @abc.abstractmethod
    async def set_student_threshold(self, task: str, version: int, threshold: float | None) -> bool: ...

    @abc.abstractmethod
    async def set_rollout(self, task: str, percent: float) -> None: ...

    @abc.abstractmethod
    async def rollouts(self) -> dict[str, float]:
        """Rollout percentage per task that has one."""
