"""The store interface: what the gateway and the distiller read and write, for every backend."""

from __future__ import annotations

import abc
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.store.records import ExchangeExtra, RampEvent, RampPlan, StudentDetails

ExchangeStatus = Literal["ok", "failed", "incomplete"]
DeleteProgress = Callable[[int], None]
"""Called after each batch of a batched delete with the number of rows deleted so far."""


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
    extra: ExchangeExtra = field(default_factory=ExchangeExtra)


@dataclass(frozen=True, slots=True)
class TaskSummary:
    name: str
    source: str
    captured: int
    good: int
    first_seen: float
    last_seen: float


@dataclass(frozen=True, slots=True)
class ExchangeGroup:
    """Exchanges of one task that a cost report treats alike, added up by the store (`Store.exchange_groups`):
    same route, status, time bucket, price source, shadowed version, and whether a price and a recorded
    teacher-only estimate are known. Values of the wrong type in a row's notes count as unset, as
    `ExchangeExtra.from_json` reads them."""

    route: str
    status: str
    bucket: int  # created_at // bucket_s
    price_source: str | None
    shadow_version: int | None
    priced: bool  # cost_usd is known
    has_counterfactual: bool  # extra.counterfactual_cost_usd is recorded
    rows: int
    first_at: float
    cost_usd: float  # the sum of cost_usd
    student_cost_usd: float  # the sum of extra.student.cost_usd (a fallback's rejected attempt)
    counterfactual_usd: float  # the sum of extra.counterfactual_cost_usd
    agreements: int  # shadow rows with an agreement
    agreement_sum: float
    agreement_sq_sum: float = 0.0  # the sum of the agreements' squares (a rollout ramp's interval)


@dataclass(slots=True)
class StoredResponse:
    """A Responses API response kept for `previous_response_id`, `GET /v1/responses/{id}` and its input items.

    `history` is the conversation in OpenAI chat messages up to and including this response's output, without
    its `instructions` (which a follow-up does not inherit): what a follow-up's teacher sees before its own input.
    `client` is the gateway key that created it (None on an open gateway): only that key may read it."""

    response_id: str
    created_at: float
    task: str
    client: str | None
    user: str | None
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    history: list[dict[str, Any]]


FeedbackSource = Literal["api", "header", "admin"]


@dataclass(frozen=True, slots=True)
class Feedback:
    """What the app said about one captured exchange (`POST /v1/feedback`, the X-Protege-Feedback header, the
    admin API). `rating` is the app's own scale (a boolean is stored as 1 or 0); `correction` is the assistant
    message the answer should have been, which curation trains on in place of the captured one. The exchange's
    task, user and time are copied so that reports, forget and retention need no join."""

    request_id: str
    task: str
    created_at: float
    exchange_created_at: float
    source: FeedbackSource
    rating: float | None = None
    labels: tuple[str, ...] = ()
    comment: str | None = None
    correction: dict[str, Any] | None = None
    user: str | None = None


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
    threshold: float | None = None  # calibrated confidence threshold; None → serves no routed traffic
    confidence_method: ConfidenceMethod = "mean_logprob"
    details: StudentDetails = field(default_factory=StudentDetails)  # lineage: evaluation, gate, training


RampState = Literal["running", "done", "rolled_back", "stopped"]


@dataclass(frozen=True, slots=True)
class RolloutRamp:
    """A rollout that moves itself (`gateway.ramp`): one per task, the newest started; the ended ones stay as the
    record of what happened. Replicas move it by compare-and-set (`Store.replace_ramp`) on (ramp_id, state, step),
    so each move is made, recorded and counted once. `previous_version`/`previous_percent` are what a rollback
    restores: the version active before the ramp started and its rollout (no version: teacher only)."""

    ramp_id: str
    task: str
    version: int
    plan: RampPlan
    state: RampState
    step: int
    started_at: float
    step_started_at: float
    updated_at: float
    previous_version: int | None = None
    previous_percent: float = 0.0
    history: tuple[RampEvent, ...] = ()

    @property
    def percent(self) -> float:
        """The rollout of the current step."""
        return self.plan.steps[min(self.step, len(self.plan.steps) - 1)] if self.plan.steps else 0.0


def redacted_url(url: str) -> str:
    """The store URL without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{host}"


def user_hash(user: str) -> str:
    """How a forgotten user is recorded: sha256 hex of the id, never the id in clear. NUL is hashed as U+FFFD
    because that is how PostgreSQL stores it: the same user then has the same hash in every backend."""
    return hashlib.sha256(user.replace("\x00", "\ufffd").encode("utf-8")).hexdigest()


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
                             limit: int | None = None, after: tuple[float, str] | None = None,
                             bodies: bool = True) -> list[Exchange]:
        """Oldest first (by created_at, then request_id). `after` is the (created_at, request_id) of the last
        exchange of the previous page: pages read this way never skip or repeat a row, unlike offsets. Without
        `bodies` the request reads as {} and the response as None, and the database never sends them: what
        reports over a window read."""

    @abc.abstractmethod
    async def newest_exchanges(self, *, task: str, limit: int, routes: Sequence[str] | None = None,
                               since: float | None = None,
                               request_ids: Sequence[str] | None = None) -> list[Exchange]:
        """Newest first: the last `limit` exchanges of `task` created from `since` on, of these routes and ids
        (None: any) — one indexed query, for pages that show the latest rows of a window, bodies included."""

    @abc.abstractmethod
    async def exchange_groups(self, *, task: str, since: float | None, bucket_s: float) -> list[ExchangeGroup]:
        """The task's exchanges from `since` on, added up in the database by what a cost report distinguishes
        (`ExchangeGroup`): a report over a window reads a few groups, not every row."""

    @abc.abstractmethod
    async def count_exchanges(self, *, task: str | None = None, status: ExchangeStatus | None = None,
                              user: str | None = None, created_before: float | None = None) -> int: ...

    @abc.abstractmethod
    async def _delete_exchanges(self, *, task: str | None, user: str | None, created_before: float | None,
                                batch_size: int, progress: DeleteProgress | None) -> int:
        """Delete the exchanges these filters pick (oldest first), `batch_size` rows per transaction so that
        capture is never blocked for long; returns how many were deleted."""

    async def delete_exchanges_before(self, created_before: float, *, task: str | None = None,
                                      batch_size: int = 1000, progress: DeleteProgress | None = None) -> int:
        """Retention: delete exchanges created before this time (of one task, if given), and the stored
        Responses API responses of the same age."""
        deleted = await self._delete_exchanges(task=task, user=None, created_before=created_before,
                                               batch_size=batch_size, progress=progress)
        await self._delete_responses(task=task, user=None, created_before=created_before)
        await self._delete_feedback(task=task, user=None, created_before=created_before)
        return deleted

    async def forget_user(self, user: str, *, batch_size: int = 1000, progress: DeleteProgress | None = None) -> int:
        """Record `user_hash(user)` as forgotten, then delete the user's exchanges in batches; returns how many
        were deleted. Recorded first: if the deletion is interrupted, the user is already kept out of datasets."""
        if not user:
            raise ValueError("no user to forget")
        await self.add_forgotten_users({user_hash(user): time.time()})
        deleted = await self._delete_exchanges(task=None, user=user, created_before=None, batch_size=batch_size,
                                               progress=progress)
        await self._delete_responses(task=None, user=user, created_before=None)
        await self._delete_feedback(task=None, user=user, created_before=None)
        return deleted

    @abc.abstractmethod
    async def get_exchange(self, request_id: str) -> Exchange | None: ...

    @abc.abstractmethod
    async def put_feedback(self, feedback: Feedback) -> None:
        """Record feedback on an exchange (newer feedback on the same request replaces the older)."""

    @abc.abstractmethod
    async def list_feedback(self, *, task: str | None = None,
                            request_ids: Sequence[str] | None = None) -> list[Feedback]:
        """Oldest first; of one task and/or on these requests (None: any)."""

    @abc.abstractmethod
    async def _delete_feedback(self, *, task: str | None, user: str | None, created_before: float | None) -> int:
        """Delete the feedback these filters pick (`created_before` is the exchange's age)."""

    @abc.abstractmethod
    async def put_response(self, response: StoredResponse) -> None:
        """Keep a response (an id seen before is replaced)."""

    @abc.abstractmethod
    async def get_response(self, response_id: str) -> StoredResponse | None: ...

    @abc.abstractmethod
    async def list_responses(self, *, limit: int, after: tuple[float, str] | None = None) -> list[StoredResponse]:
        """Oldest first (by created_at, then response_id), in keyset pages as `list_exchanges` (store copies)."""

    @abc.abstractmethod
    async def delete_response(self, response_id: str) -> bool:
        """False when there was no such response."""

    @abc.abstractmethod
    async def _delete_responses(self, *, task: str | None, user: str | None, created_before: float | None) -> int:
        """Delete the stored responses these filters pick (retention, forget); returns how many."""

    @abc.abstractmethod
    async def forgotten_users(self) -> dict[str, float]:
        """`user_hash` → when the user was first forgotten."""

    @abc.abstractmethod
    async def add_forgotten_users(self, forgotten: Mapping[str, float]) -> None:
        """Record hashes as forgotten (store-to-store copies); a hash already recorded keeps its time."""

    async def forgotten_user_hashes(self) -> set[str]:
        """What curation checks each exchange's `user_hash` against."""
        return set(await self.forgotten_users())

    @abc.abstractmethod
    async def add_console_session(self, session_hash: str, created_at: float, expires_at: float) -> None:
        """Record a console sign-in (and forget the ones that have expired)."""

    @abc.abstractmethod
    async def console_session_expiry(self, session_hash: str) -> float | None:
        """When the session ends; None when there is no such session."""

    @abc.abstractmethod
    async def delete_console_session(self, session_hash: str) -> None: ...

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

    @abc.abstractmethod
    async def put_ramp(self, ramp: RolloutRamp) -> None:
        """Record a task's new ramp (it replaces the task's previous one, running or ended)."""

    @abc.abstractmethod
    async def list_ramps(self, *, task: str | None = None) -> list[RolloutRamp]:
        """The ramp of each task that has one (by task)."""

    @abc.abstractmethod
    async def replace_ramp(self, old: RolloutRamp, new: RolloutRamp) -> bool:
        """Compare-and-set: write `new` only while the stored ramp is still `old` (same ramp id, state and step);
        False when another writer moved it first."""
