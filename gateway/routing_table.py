"""Which student serves each task and at what rollout: read from the store, cached for a few
seconds, so every replica picks up a promotion, rollback, threshold or rollout change quickly."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from gateway.store import Store, StoreError, StudentVersion

log = logging.getLogger("protege.routing")


@dataclass(frozen=True, slots=True)
class TaskRoute:
    student: StudentVersion
    rollout_percent: float


class RoutingTable:
    def __init__(self, store: Store, refresh_s: float = 2.0) -> None:
        self._store = store
        self._refresh_s = refresh_s
        self._routes: dict[str, TaskRoute] = {}
        self._rollouts: dict[str, float] = {}
        self._loaded_at = float("-inf")

    async def refresh(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._loaded_at < self._refresh_s:
            return
        self._loaded_at = now
        try:
            students = await self._store.list_students()
            rollouts = await self._store.rollouts()
        except StoreError as exc:  # keep routing on the last known table
            log.warning("routing table not refreshed: %s", exc)
            return
        self._rollouts = rollouts
        self._routes = {s.task: TaskRoute(s, rollouts.get(s.task, 0.0)) for s in students if s.status == "active"}

    async def route(self, task: str) -> TaskRoute | None:
        await self.refresh()
        return self._routes.get(task)

    def active(self) -> dict[str, TaskRoute]:
        return dict(self._routes)

    def rollouts(self) -> dict[str, float]:
        return dict(self._rollouts)
