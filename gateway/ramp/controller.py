"""The loop that moves rollout ramps, run by every gateway process: each check reads the running ramps from the
store, gathers each one's evidence since its step started (the store's sums of the captured rows), asks
`decide` what to do, and makes the move by compare-and-set, so that of all the replicas and workers checking
the same ramp one makes each move, records it and counts it. The move's effect on routing (the rollout, the
student versions) follows the record; a process that dies between the two leaves a running ramp whose rollout
the next check puts right (a held or waiting ramp's rollout is set back to its step's)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.chat.types import ROUTE_FALLBACK, ROUTE_SHADOW, ROUTE_STUDENT
from gateway.metrics import Metrics
from gateway.ramp.decision import Evidence, RampDecision, decide
from gateway.store import RampEvent, RolloutRamp, Store, StoreError

log = logging.getLogger("protege.ramp")
WHOLE_WINDOW_S = 1e12  # one bucket for everything since the step started


async def gather_evidence(store: Store, ramp: RolloutRamp) -> Evidence:
    comparisons, total, squares, routed, fallbacks = 0, 0.0, 0.0, 0, 0
    for group in await store.exchange_groups(task=ramp.task, since=ramp.step_started_at, bucket_s=WHOLE_WINDOW_S):
        if group.route == ROUTE_SHADOW and group.shadow_version == ramp.version:
            comparisons += group.agreements
            total += group.agreement_sum
            squares += group.agreement_sq_sum
        elif group.route in (ROUTE_STUDENT, ROUTE_FALLBACK):
            routed += group.rows
            fallbacks += group.rows if group.route == ROUTE_FALLBACK else 0
    return Evidence(comparisons, total, squares, routed, fallbacks)


def moved(ramp: RolloutRamp, decision: RampDecision, evidence: Evidence, now: float) -> RolloutRamp:
    """The ramp after an advance, finish or rollback, with the event recorded."""
    step = ramp.step + 1 if decision.action == "advance" else ramp.step
    state = {"advance": "running", "finish": "done", "rollback": "rolled_back"}[decision.action]
    percent = ramp.plan.steps[step] if decision.action != "rollback" else restored_percent(ramp)
    event = RampEvent(now, decision.action, percent, decision.reason, evidence.parity, evidence.comparisons,
                      evidence.fallback_rate, evidence.student_requests)
    return dataclasses.replace(ramp, state=state, step=step, updated_at=now,  # type: ignore[arg-type]
                               step_started_at=now if step != ramp.step else ramp.step_started_at,
                               history=(*ramp.history, event))


def restored_percent(ramp: RolloutRamp) -> float:
    return ramp.previous_percent if ramp.previous_version is not None else 0.0


@dataclass(frozen=True, slots=True)
class RampMove:
    """What a check did to one ramp: `action` is what it decided; `made` whether this process made the move
    (a hold or wait is never a move; another replica may have made it first)."""

    task: str
    action: str
    reason: str
    made: bool


class RampController:
    """Checks every `check_s` seconds in the background (`start`, `aclose`); `check_once` is one pass.
    `on_change` is told when this process moved a ramp (its routing table should re-read the store now)."""

    def __init__(self, store: Store, metrics: Metrics, check_s: float,
                 on_change: Callable[[], Awaitable[None]] | None = None) -> None:
        self.store, self.metrics, self.check_s, self.on_change = store, metrics, check_s, on_change
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.check_s)
            try:
                await self.check_once()
            except StoreError as exc:  # the next check tries again
                log.warning("rollout ramps not checked: %s", exc)
            except Exception:  # a bug must not end the loop that guards every ramp
                log.exception("rollout ramp check failed")

    async def check_once(self, now: float | None = None) -> list[RampMove]:
        # the rollouts before the ramps: a rollout already moved means its ramp's record moved first, so the
        # reconcile below never puts a rollout back to a step the ramp has left
        rollouts = await self.store.rollouts()
        running = [r for r in await self.store.list_ramps() if r.state == "running"]
        moves = [await self._check(ramp, rollouts, time.time() if now is None else now) for ramp in running]
        if any(m.made for m in moves) and self.on_change is not None:
            await self.on_change()
        return moves

    async def _check(self, ramp: RolloutRamp, rollouts: dict[str, float], now: float) -> RampMove:
        active = next((s.version for s in await self.store.list_students(task=ramp.task) if s.status == "active"),
                      None)
        if active != ramp.version or not ramp.plan.steps:
            why = (f"version {ramp.version} is no longer active (now: {active or 'none'})" if ramp.plan.steps
                   else "its plan cannot be read")
            stopped = dataclasses.replace(ramp, state="stopped", updated_at=now,
                                          history=(*ramp.history, RampEvent(now, "stop", ramp.percent, why)))
            return self._record(ramp, "stop", why, await self.store.replace_ramp(ramp, stopped))
        evidence = await gather_evidence(self.store, ramp)
        decision = decide(ramp, evidence, now)
        if decision.action in ("hold", "wait"):
            if rollouts.get(ramp.task) != ramp.percent:  # a move recorded whose rollout was never set
                await self.store.set_rollout(ramp.task, ramp.percent)
            return RampMove(ramp.task, decision.action, decision.reason, False)
        after = moved(ramp, decision, evidence, now)
        if not await self.store.replace_ramp(ramp, after):
            return RampMove(ramp.task, decision.action, decision.reason, False)
        if decision.action == "rollback":
            await self._roll_back(ramp)
        else:
            await self.store.set_rollout(ramp.task, after.percent)
        return self._record(ramp, decision.action, decision.reason, True)

    async def _roll_back(self, ramp: RolloutRamp) -> None:
        """The version active before the ramp at its old rollout, or the teacher alone."""
        versions = {s.version: s for s in await self.store.list_students(task=ramp.task)}
        previous = versions.get(ramp.previous_version) if ramp.previous_version is not None else None
        if previous is not None and previous.status in ("retired", "candidate"):
            # activated first: the ramped version never serves at the restored (perhaps larger) rollout
            await self.store.set_student_status(ramp.task, previous.version, "active")  # retires the ramped one
            await self.store.set_rollout(ramp.task, ramp.previous_percent)
        else:
            await self.store.set_rollout(ramp.task, 0.0)
            await self.store.set_student_status(ramp.task, ramp.version, "retired")

    def _record(self, ramp: RolloutRamp, action: str, reason: str, made: bool) -> RampMove:
        if made:
            self.metrics.ramp_moves.labels(self.metrics.task_label(ramp.task), action).inc()
            level = logging.WARNING if action in ("rollback", "stop") else logging.INFO
            log.log(level, "ramp of %s v%d: %s (%s)", ramp.task, ramp.version, action, reason)
        return RampMove(ramp.task, action, reason, made)


def ramp_view(ramp: RolloutRamp, decision: RampDecision | None = None,
              evidence: Evidence | None = None) -> dict[str, Any]:
    """A ramp as the admin API and `protege rollout --json` show it, with what it would do now when running."""
    view: dict[str, Any] = {
        "task": ramp.task, "version": ramp.version, "state": ramp.state, "step": ramp.step,
        "percent": ramp.percent, "steps": list(ramp.plan.steps), "dwell_s": ramp.plan.dwell_s,
        "parity_floor": ramp.plan.parity_floor, "max_fallback_rate": ramp.plan.max_fallback_rate,
        "min_comparisons": ramp.plan.min_comparisons, "shadow_rate": ramp.plan.shadow_rate,
        "started_at": ramp.started_at, "step_started_at": ramp.step_started_at, "updated_at": ramp.updated_at,
        "previous_version": ramp.previous_version, "previous_percent": ramp.previous_percent,
        "history": [e.to_json() for e in ramp.history]}
    if evidence is not None:
        parity_bounds, rate_bounds = evidence.parity_interval(), evidence.fallback_interval()
        view["evidence"] = {"comparisons": evidence.comparisons, "parity": evidence.parity,
                            "parity_interval": list(parity_bounds) if parity_bounds else None,
                            "student_requests": evidence.student_requests, "fallback_rate": evidence.fallback_rate,
                            "fallback_interval": list(rate_bounds) if rate_bounds else None}
    if decision is not None:
        view["next"] = {"action": decision.action, "reason": decision.reason}
    return view


async def describe_ramp(store: Store, ramp: RolloutRamp, now: float | None = None) -> dict[str, Any]:
    """`ramp_view` with the evidence so far and the next move, when it runs."""
    if ramp.state != "running":
        return ramp_view(ramp)
    evidence = await gather_evidence(store, ramp)
    return ramp_view(ramp, decide(ramp, evidence, time.time() if now is None else now), evidence)
