"""What a rollout ramp does next, decided from its evidence: pure and repeatable, no I/O.

A ramp holds each step for at least its dwell, then goes on only when the evidence gathered at that step shows the
floors hold: live parity (the mean agreement of shadow comparisons, on the version's own scorer) with its 95 %
interval at or above `parity_floor`, and the fallback rate (the student's rejected answers among the requests
routed to it) with its 95 % interval at or below `max_fallback_rate`, each over at least `min_comparisons`
observations. Too few observations, or an interval that straddles a floor, and it waits: more traffic decides.
It rolls back as soon as the evidence shows a floor breached, its whole interval on the wrong side, dwell or
not. After the last step's dwell and evidence it finishes, leaving the last step's rollout in place.

Intervals: live parity's is the normal approximation over the comparisons' own spread (agreements lie in
[0, 1]; two scorers' figures differ in spread, not in meaning); the fallback rate's is Wilson's score interval.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

from gateway.store import RolloutRamp

Z95 = 1.959964
RampAction = Literal["hold", "wait", "advance", "finish", "rollback"]


@dataclass(frozen=True, slots=True)
class Evidence:
    """What a ramp's current step has shown so far, from the captured rows since the step started."""

    comparisons: int = 0  # shadow comparisons of the ramp's version
    agreement_sum: float = 0.0
    agreement_sq_sum: float = 0.0
    student_requests: int = 0  # requests routed to the student: answered by it, or fallen back
    fallbacks: int = 0

    @property
    def parity(self) -> float | None:
        return self.agreement_sum / self.comparisons if self.comparisons else None

    def parity_interval(self) -> tuple[float, float] | None:
        n = self.comparisons
        if n < 2:
            return None
        mean = self.agreement_sum / n
        variance = max(0.0, (self.agreement_sq_sum - n * mean * mean) / (n - 1))
        half = Z95 * math.sqrt(variance / n)
        return max(0.0, mean - half), min(1.0, mean + half)

    @property
    def fallback_rate(self) -> float | None:
        return self.fallbacks / self.student_requests if self.student_requests else None

    def fallback_interval(self) -> tuple[float, float] | None:
        n = self.student_requests
        if n == 0:
            return None
        p, z2 = self.fallbacks / n, Z95 * Z95
        centre = (p + z2 / (2 * n)) / (1 + z2 / n)
        half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
        return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True, slots=True)
class RampDecision:
    action: RampAction
    reason: str


def _interval(bounds: tuple[float, float] | None) -> str:
    return "" if bounds is None else f" (95 % interval {bounds[0]:.3f}–{bounds[1]:.3f})"


def decide(ramp: RolloutRamp, evidence: Evidence, now: float) -> RampDecision:
    """The next move of a running ramp."""
    plan = ramp.plan
    enough = max(2, plan.min_comparisons)
    parity, parity_bounds = evidence.parity, evidence.parity_interval()
    rate, rate_bounds = evidence.fallback_rate, evidence.fallback_interval()
    if evidence.comparisons >= enough and parity is not None and parity_bounds and \
            parity_bounds[1] < plan.parity_floor:
        return RampDecision("rollback", f"live parity {parity:.3f}{_interval(parity_bounds)} over "
                                        f"{evidence.comparisons} comparisons is below the floor {plan.parity_floor:g}")
    if evidence.student_requests >= enough and rate is not None and rate_bounds and \
            rate_bounds[0] > plan.max_fallback_rate:
        return RampDecision("rollback", f"fallback rate {rate:.3f}{_interval(rate_bounds)} over "
                                        f"{evidence.student_requests} student requests is above "
                                        f"{plan.max_fallback_rate:g}")
    left = ramp.step_started_at + plan.dwell_s - now
    if left > 0:
        return RampDecision("hold", f"dwelling at {ramp.percent:g} % for {format_duration(left)} more")
    short = []
    if evidence.comparisons < enough:
        short.append(f"{evidence.comparisons} of {enough} shadow comparisons")
    elif parity_bounds is None or parity_bounds[0] < plan.parity_floor:
        short.append(f"live parity {parity:.3f}{_interval(parity_bounds)} not yet clear of the floor "
                     f"{plan.parity_floor:g}")
    if evidence.student_requests < enough:
        short.append(f"{evidence.student_requests} of {enough} student requests")
    elif rate_bounds is None or rate_bounds[1] > plan.max_fallback_rate:
        short.append(f"fallback rate {rate:.3f}{_interval(rate_bounds)} not yet clear of {plan.max_fallback_rate:g}")
    if short:
        return RampDecision("wait", "waiting for evidence: " + "; ".join(short))
    healthy = (f"live parity {parity:.3f}{_interval(parity_bounds)} over {evidence.comparisons} comparisons, "
               f"fallback rate {rate:.3f} over {evidence.student_requests} student requests")
    if ramp.step + 1 >= len(plan.steps):
        return RampDecision("finish", f"{healthy} at {ramp.percent:g} %")
    return RampDecision("advance", f"{healthy}: {ramp.percent:g} % → {plan.steps[ramp.step + 1]:g} %")


# --- what people type ------------------------------------------------------------------------------------

def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def parse_steps(text: str) -> tuple[float, ...]:
    """"5,25,50,100" → (5.0, 25.0, 50.0, 100.0); checked by `check_steps`."""
    try:
        steps = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a list of percentages such as 5,25,50,100") from None
    return check_steps(steps)


def check_steps(steps: tuple[float, ...]) -> tuple[float, ...]:
    if not steps:
        raise ValueError("a ramp needs at least one step")
    if any(not 0 < s <= 100 for s in steps):
        raise ValueError("every step is a percentage above 0 and at most 100")
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise ValueError("steps must rise: each above the one before")
    return steps
