"""Live parity: the mean agreement (`gateway.scoring.agreement`) of a student version with the teacher on
shadowed traffic. One definition, over whichever comparisons a reader has: the captured shadow rows of a
window (the console and `protege report`), those since the version was last changed (the retrain scheduler),
or the comparisons this process made (the `protege_live_parity` gauge and the admin API, which need no store
read; across workers, Prometheus's recording rule divides the summed agreement and comparison counters)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gateway.chat.types import ROUTE_SHADOW
from gateway.store import Exchange


@dataclass(slots=True)
class LiveParity:
    comparisons: int = 0
    total_agreement: float = 0.0

    def add(self, agreement: float) -> None:
        self.comparisons += 1
        self.total_agreement += agreement

    @property
    def mean(self) -> float | None:
        return self.total_agreement / self.comparisons if self.comparisons else None


def live_parity(exchanges: Iterable[Exchange], version: int, *, since: float | None = None) -> LiveParity:
    """Over the captured shadow rows of `version` (created after `since`, when given)."""
    parity = LiveParity()
    for ex in exchanges:
        shadow = ex.extra.shadow
        if (ex.route == ROUTE_SHADOW and shadow is not None and shadow.version == version
                and (since is None or ex.created_at > since)):
            parity.add(shadow.agreement)
    return parity
