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
