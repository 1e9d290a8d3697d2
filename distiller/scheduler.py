"""When to retrain a task, and the loop that does it (`protege scheduler`).

A task is due when it has enough new good examples since its newest version, when its active
version is older than the configured age, or when its live parity (shadow scoring) fell below the
floor. One training at a time; a failed run leaves the active student as it was, and a task with too little
curated data to decide on waits for more traffic (nothing is trained). Each check first applies the store's
retention (`capture.retention_days`), if one is configured.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Literal

from distiller.pipeline import DistillError, DistillOptions, DistillOutcome, NotEnoughDataError, distill
from gateway.parity import LiveParity, live_parity
from gateway.store import Exchange, Store, StudentVersion, user_hash

log = logging.getLogger("protege.scheduler")


@dataclass(frozen=True, slots=True)
class RetrainPolicy:
    min_new_examples: int = 200
    max_age_s: float | None = 7 * 24 * 3600
    parity_floor: float | None = 0.85
    min_shadow_comparisons: int = 20


@dataclass(frozen=True, slots=True)
class TaskState:
    task: str
    new_good_examples: int  # teacher answers captured since the newest version was trained
    newest: StudentVersion | None
    active: StudentVersion | None
    live_parity: float | None
    shadow_comparisons: int


def due(state: TaskState, policy: RetrainPolicy, now: float) -> str | None:
    """Why the task should be retrained now, or None. Pure."""
    if state.newest is None:
        if state.new_good_examples >= policy.min_new_examples:
            return f"{state.new_good_examples} examples and no student yet"
        return None
    if state.new_good_examples >= policy.min_new_examples:
        return f"{state.new_good_examples} new examples since version {state.newest.version}"
    active = state.active
    if active is not None and policy.max_age_s is not None and now - active.created_at > policy.max_age_s:
        return f"active version {active.version} is older than {policy.max_age_s / 86400:g} days"
    if (active is not None and policy.parity_floor is not None and state.live_parity is not None
            and state.shadow_comparisons >= policy.min_shadow_comparisons and state.live_parity < policy.parity_floor):
        return f"live parity {state.live_parity:.3f} below the floor {policy.parity_floor:.2f}"
    return None


def _is_training_data(exchange: Exchange, forgotten: set[str]) -> bool:
    # a forgotten user's rows never reach a dataset (distiller.dataset), so they must not trigger a retrain either
    return (exchange.status == "ok" and exchange.route != "student"
            and (not forgotten or exchange.user is None or user_hash(exchange.user) not in forgotten))


async def task_state(store: Store, task: str) -> TaskState:
    students = await store.list_students(task=task)
    newest = max(students, key=lambda s: s.version, default=None)
    active = next((s for s in students if s.status == "active"), None)
    exchanges = await store.list_exchanges(task=task, status="ok")
    forgotten = await store.forgotten_user_hashes()
    since = newest.created_at if newest else 0.0
    new_good = sum(1 for e in exchanges if _is_training_data(e, forgotten) and e.created_at > since)
    live = live_parity(exchanges, active.version, since=active.updated_at) if active else LiveParity()
    return TaskState(task, new_good, newest, active, live.mean, live.comparisons)


@dataclass(frozen=True, slots=True)
class Retraining:
    """What a check did with a due task."""

    task: str
    reason: str  # why it was due
    status: Literal["trained", "failed", "not_enough_data"]
    outcome: DistillOutcome | None = None  # the registered (or reused) version, when trained
    detail: str = ""  # why it failed, or what data is missing


async def run_once(store: Store, policy: RetrainPolicy, options: DistillOptions, *,
                   student_api_base: str | None = None, student_api_key: str | None = None,
                   tasks: list[str] | None = None, now: float | None = None) -> list[Retraining]:
    """Check every task once and retrain the due ones, one at a time."""
    names = tasks or [t.name for t in await store.list_tasks()]
    results: list[Retraining] = []
    for name in names:
        reason = due(await task_state(store, name), policy, time.time() if now is None else now)
        if reason is None:
            continue
        log.info("retraining %s: %s", name, reason)
        try:
            outcome = await distill(store, name, options, student_api_base=student_api_base,
                                    student_api_key=student_api_key)
        except NotEnoughDataError as exc:
            log.info("%s waits for more traffic: %s", name, "; ".join(exc.reasons))
            results.append(Retraining(name, reason, "not_enough_data", detail="; ".join(exc.reasons)))
            continue
        except DistillError as exc:
            log.warning("retraining %s failed; its active student is unchanged: %s", name, exc)
            results.append(Retraining(name, reason, "failed", detail=str(exc)))
            continue
        results.append(Retraining(name, reason, "trained", outcome))
    return results


async def apply_retention(store: Store, retention_days: int | None, *, now: float | None = None) -> int:
    """Delete the exchanges older than `retention_days` (none when it is None); returns how many went."""
    if retention_days is None:
        return 0
    cutoff = (time.time() if now is None else now) - retention_days * 86400
    deleted = await store.delete_exchanges_before(cutoff)
    log.info("retention: deleted %d exchanges older than %d days", deleted, retention_days)
    return deleted


async def run_forever(store: Store, policy: RetrainPolicy, options: DistillOptions, *, interval_s: float,
                      student_api_base: str | None = None, student_api_key: str | None = None,
                      retention_days: int | None = None) -> None:
    while True:
        await apply_retention(store, retention_days)
        await run_once(store, policy, options, student_api_base=student_api_base, student_api_key=student_api_key)
        await asyncio.sleep(interval_s)
