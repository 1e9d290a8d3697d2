"""Whether a curated dataset is enough to decide on, and, when it is not, why — in the user's terms. Pure.

A gate verdict on three test examples is noise, and a threshold calibrated on three validation examples is a
guess: below the minimum sizes `protege distill` and the scheduler train nothing and say what is missing, with
the curation report's reasons (how much traffic was dropped, and what to change to keep it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Minimums:
    """Examples each split needs before a run is worth its training (the source articles work with tens)."""

    train: int = 30
    validation: int = 15  # calibration: one example is ~7 points of served parity here
    test: int = 15  # the gate: its interval must be able to clear it

    def __post_init__(self) -> None:
        if min(self.train, self.validation, self.test) < 1:
            raise ValueError("every split needs at least one example")


def shortfall(report: dict[str, Any], minimums: Minimums) -> list[str]:
    """What is missing (one sentence per split below its minimum), then why traffic was dropped; [] when the
    dataset is enough."""
    splits = report.get("splits") or {}
    missing = [f"{name}: {splits.get(name, 0)} examples, at least {needed} needed"
               for name, needed in (("train", minimums.train), ("validation", minimums.validation),
                                    ("test", minimums.test)) if splits.get(name, 0) < needed]
    return missing + drop_reasons(report) if missing else []


def drop_reasons(report: dict[str, Any]) -> list[str]:
    """The curation report's drops as advice, largest first."""
    total = int(report.get("input") or 0)
    dropped = {reason: n for reason, n in (report.get("dropped") or {}).items() if n}
    out = []
    for reason, n in sorted(dropped.items(), key=lambda item: -item[1]):
        if reason == "truncated":
            limits = report.get("truncated_at") or {}
            at = ", ".join(f"max_tokens={limit}" if limit != "unset" else "the teacher's own limit"
                           for limit in limits) or "their token limit"
            out.append(f"{n} of {total} answers were cut at {at}: raise max_tokens for this task, or keep "
                       "truncated answers with --keep-truncated")
        elif reason == "refusal":
            out.append(f"{n} of {total} answers were refusals")
        elif reason in ("duplicate", "near_duplicate"):
            out.append(f"{n} of {total} requests repeated earlier ones ({reason.replace('_', ' ')}s)")
        elif reason in ("failed", "incomplete"):
            out.append(f"{n} of {total} exchanges {'failed' if reason == 'failed' else 'were cut off by the client'}")
        else:
            out.append(f"{n} of {total} dropped as {reason.replace('_', ' ')}")
    kept = report.get("kept")
    if kept is not None and total:
        out.append(f"{kept} of {total} captured exchanges were kept; capture more traffic for this task")
    return out
