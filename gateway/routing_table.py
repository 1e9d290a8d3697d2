"""Which student serves each task and at what rollout: read from the store, cached for a few
seconds, so every replica picks up a promotion, rollback, threshold or rollout change quickly — and the shadow
rate of each running rollout ramp (`gateway.ramp`), which gathers its evidence."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.store import Store, StoreError, StudentVersion

log = logging.getLogger("protege.routing")


@dataclass(frozen=True, slots=True)
class TaskRoute:
    student: StudentVersion
    rollout_percent: float


StudentLoader = Callable[[StudentVersion], Awaitable[object]]
RefreshHook = Callable[[list[StudentVersion], dict[str, float]], None]


class RoutingTable:
    """`load` (optional) makes sure an active student is on its server — after a promotion made
    elsewhere, or after the server restarted — before requests are routed to it."""

    def __init__(self, store: Store, refresh_s: float = 2.0, load: StudentLoader | None = None) -> None:
        self._store = store
        self._refresh_s = refresh_s
        self._load = load
        self._loaded: set[tuple[str, int]] = set()
        self._routes: dict[str, TaskRoute] = {}
        self._rollouts: dict[str, float] = {}
        self._shadow_rates: dict[str, float] = {}
        self._loaded_at = float("-inf")
        self.on_refresh: RefreshHook | None = None  # told every student version and rollout after a read

    async def refresh(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._loaded_at < self._refresh_s:
            return
        self._loaded_at = now
        try:
            students = await self._store.list_students()
            rollouts = await self._store.rollouts()
            ramps = await self._store.list_ramps()
        except StoreError as exc:  # keep routing on the last known table
            log.warning("routing table not refreshed: %s", exc)
            return
        self._rollouts = rollouts
        self._shadow_rates = {r.task: r.plan.shadow_rate for r in ramps
                              if r.state == "running" and r.plan.shadow_rate is not None}
        if self.on_refresh is not None:
            self.on_refresh(students, rollouts)
        active = [s for s in students if s.status == "active" and await self._ready(s)]
        self._routes = {s.task: TaskRoute(s, rollouts.get(s.task, 0.0)) for s in active}

    async def _ready(self, student: StudentVersion) -> bool:
        key = (student.task, student.version)
        if self._load is None or key in self._loaded:
            return True
        try:
            await self._load(student)
        except Exception as exc:  # the teacher keeps the task until the student can be loaded
            log.warning("student %s v%d not loaded: %s", student.task, student.version, exc)
            return False
        self._loaded.add(key)
        return True

    def forget_loaded(self, student: StudentVersion) -> None:
        """The server no longer has this student (it restarted): load it again at the next refresh."""
        self._loaded.discard((student.task, student.version))
        self._loaded_at = float("-inf")

    async def route(self, task: str) -> TaskRoute | None:
        await self.refresh()
        return self._routes.get(task)

    def active(self) -> dict[str, TaskRoute]:
        return dict(self._routes)

    def rollouts(self) -> dict[str, float]:
        return dict(self._rollouts)

    def shadow_rate(self, task: str) -> float | None:
        """The shadow rate a running ramp of the task asks for, if any."""
        return self._shadow_rates.get(task)
