"""A scorer measured on a labelled check set: requests with the teacher's answer and a candidate answer that a
person labelled acceptable or not — paraphrases of the good answer and a different good answer (acceptable);
fluent text with wrong facts, a truncated answer, another request's answer, an empty one and the generic
majority reply (not). A scorer "accepts" a candidate when it scores it ≥ 0.5; its accuracy is the share of
items where that matches the label, beside what rejecting everything would score (5 of 7 on the shipped
set). For the judge, the share of items whose verdict did not change when the order was swapped is its
agreement with itself.

The shipped set (`scorer_checks/support_replies.jsonl`) is 8 hand-written support replies × those 7 kinds
(the truncated, off-task, empty and majority candidates are derived from the written ones); a task names its
own with `tasks.<task>.scorer_check`."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.scoring import Comparison, Scorer

DEFAULT_CHECK_SET = Path(__file__).with_name("scorer_checks") / "support_replies.jsonl"
ACCEPT = 0.5


@dataclass(frozen=True, slots=True)
class CheckItem:
    request: list[dict[str, Any]]
    teacher: str
    candidate: str
    kind: str
    acceptable: bool


def load_check_set(path: Path | None = None) -> list[CheckItem]:
    items = []
    for n, line in enumerate((path or DEFAULT_CHECK_SET).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            items.append(CheckItem(list(row["request"]), str(row["teacher"]), str(row["candidate"]),
                                   str(row.get("kind", "")), bool(row["acceptable"])))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path or DEFAULT_CHECK_SET}:{n}: not a check item ({exc})") from exc
    return items


async def check_scorer(scorer: Scorer, items: Sequence[CheckItem], *, source: str = "") -> dict[str, Any]:
    """Accuracy overall and per kind, mean score per kind, and (judge) swap consistency."""
    scores = await scorer.score([Comparison(i.request, {"role": "assistant", "content": i.candidate},
                                            {"role": "assistant", "content": i.teacher}) for i in items])
    right, by_kind = 0, defaultdict(list)
    consistent = [bool((s.details or {}).get("consistent")) for s in scores if (s.details or {}).get("orders")]
    for item, score in zip(items, scores, strict=True):
        correct = (score.value >= ACCEPT) == item.acceptable
        right += correct
        by_kind[item.kind].append((correct, score.value))
    return {"source": source or str(DEFAULT_CHECK_SET.name), "items": len(items),
            "accuracy": round(right / len(items), 4) if items else None,
            "by_kind": {kind: {"items": len(v), "accuracy": round(sum(c for c, _ in v) / len(v), 4),
                               "mean_score": round(sum(s for _, s in v) / len(v), 4)} for kind, v in by_kind.items()},
            "swap_consistency": round(sum(consistent) / len(consistent), 4) if consistent else None,
            # what a scorer that rejects (accepts) everything would get: the floor an accuracy must beat
            "reject_all_accuracy": round(sum(not i.acceptable for i in items) / len(items), 4) if items else None,
            "accept_all_accuracy": round(sum(i.acceptable for i in items) / len(items), 4) if items else None}
