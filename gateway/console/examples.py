"""The answers behind the figures, for a reviewer deciding on a student: three lists of compared examples, each
the request, the teacher's answer, the student's answer and how they compare.

- held-out: a version's test split as the distiller evaluated it (kept with its evaluation), scored 0-1;
- shadow: live shadow comparisons (the teacher asked too, in the background, on student-served requests),
  the student's answer from its own row;
- fallbacks: student answers the cascade rejected, with the reason and confidence, beside the teacher's answer
  that was served instead.

Any list can be narrowed to its disagreements (a score below 1, or every fallback) and exported as JSONL. The
live lists read the newest rows of the window only, at most `limit`, in one indexed query
(`Store.newest_exchanges`): a long window costs no more than a short one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from gateway.store import Exchange, Store, StudentVersion
from gateway.tasks import message_text

ListName = Literal["heldout", "shadow", "fallbacks"]
LISTS: dict[ListName, str] = {"heldout": "Held-out examples", "shadow": "Live shadow comparisons",
                              "fallbacks": "Fallbacks"}
TEXT_CHARS = 2000
SHADOW_SUFFIX = "-shadow"  # a shadow row's request id is the served request's, suffixed (gateway.chat.shadow)


@dataclass(frozen=True, slots=True)
class Compared:
    request_id: str | None
    request: str
    teacher: str
    student: str
    score: float | None  # agreement 0-1; None for a fallback (the cascade rejected it before any comparison)
    note: str = ""  # the fallback's reason and confidence, an evaluation error, the judge's rationale
    version: int | None = None
    at: float | None = None

    @property
    def disagrees(self) -> bool:
        return self.score is None or self.score < 1.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def jsonl(items: Iterable[Compared]) -> bytes:
    return "".join(json.dumps(item.to_json(), ensure_ascii=False) + "\n" for item in items).encode("utf-8")


def _text(message: object) -> str:
    if not isinstance(message, dict):
        return ""
    text = message_text(message.get("content"))
    if not text and message.get("tool_calls"):
        text = json.dumps(message["tool_calls"], ensure_ascii=False)
    return text[:TEXT_CHARS]


def _answer(row: Exchange) -> str:
    """The first choice's message of a captured answer."""
    choices = (row.response or {}).get("choices") or [{}]
    return _text(choices[0].get("message") if isinstance(choices[0], dict) else None)


def _request(row: Exchange) -> str:
    messages = row.request.get("messages") or []
    user = next((m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None)
    return _text(user)


def heldout(student: StudentVersion) -> list[Compared]:
    """The version's held-out test split as evaluated (empty for versions evaluated before examples were kept)."""
    kept = (student.details.evaluation or {}).get("examples") or []
    return [Compared(e.get("request_id"), str(e.get("request", "")), str(e.get("teacher", "")),
                     str(e.get("student", "")), float(e["score"]) if isinstance(e.get("score"), int | float) else None,
                     note=str(e.get("error") or e.get("rationale") or ""), version=student.version)
            for e in kept if isinstance(e, dict)]


async def shadows(store: Store, task: str, start: float | None, limit: int) -> list[Compared]:
    rows = await store.newest_exchanges(task=task, routes=["shadow"], since=start, limit=limit)
    served_ids = [row.request_id.removesuffix(SHADOW_SUFFIX) for row in rows]
    served = {row.request_id: row for row in await store.newest_exchanges(
        task=task, routes=["student"], request_ids=served_ids, limit=len(served_ids))} if served_ids else {}
    out = []
    for row in rows:
        note = row.extra.shadow
        if note is None:
            continue
        student_row = served.get(row.request_id.removesuffix(SHADOW_SUFFIX))
        out.append(Compared(row.request_id.removesuffix(SHADOW_SUFFIX), _request(row), _answer(row),
                            _answer(student_row) if student_row else "(the student's answer was not captured)",
                            note.agreement, version=note.version, at=row.created_at))
    return out


async def fallbacks(store: Store, task: str, start: float | None, limit: int) -> list[Compared]:
    out = []
    for row in await store.newest_exchanges(task=task, routes=["fallback"], since=start, limit=limit):
        st = row.extra.student
        note = ", ".join(part for part in (
            st.reason if st else None,
            f"confidence {st.confidence:.3f}" if st and st.confidence is not None else None,
            st.detail if st and st.detail else None) if part)
        out.append(Compared(row.request_id, _request(row), _answer(row), _text(st.message if st else None), None,
                            note=note or "unknown", version=st.version if st else None, at=row.created_at))
    return out
