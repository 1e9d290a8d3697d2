"""The LLM judge: a configured model reads the request and both answers and says which is better.

Pairwise, asked twice with the order swapped (teacher first, then student first) to cancel position bias.
Per order the student is acceptable when it wins or ties; the score is the share of the two orders in which it
was, so 1 is "at least as good as the teacher both ways", 0.5 "the judge's verdict depended on the order" (or
it lost one), 0 "worse both ways". A verdict the judge fails to give (an error, no parseable answer) counts as
a loss: a broken judge never passes a student. Verdicts are cached by (model, prompt, request, answers), so
re-scoring costs nothing; every call is counted and priced (`JudgeUsage`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.errors import ProtegeError
from gateway.pricing import Price
from gateway.scoring.base import Comparison, Score, ScorerKind, answer_text

DEFAULT_PROMPT_FILE = Path(__file__).with_name("judge_prompt.md")
REQUEST_CHARS = 6000  # of the request shown to the judge
ANSWER_CHARS = 3000  # of each answer
Verdict = Literal["A", "B", "tie"]
Outcome = Literal["win", "tie", "loss"]
_VERDICT = re.compile(r'"?verdict"?\s*[:=]\s*"?(A|B|tie)\b', re.IGNORECASE)


def read_prompt(path: Path | None) -> str:
    """The judge prompt: `path` (the user's) or the default; it must hold the three placeholders."""
    text = (path or DEFAULT_PROMPT_FILE).read_text(encoding="utf-8")
    missing = [p for p in ("{{request}}", "{{answer_a}}", "{{answer_b}}") if p not in text]
    if missing:
        raise ValueError(f"judge prompt {path or DEFAULT_PROMPT_FILE} lacks {', '.join(missing)}")
    return text


def prompt_sha256(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def render_request(messages: Sequence[dict[str, Any]]) -> str:
    lines = [f"[{m.get('role', 'user')}] {answer_text(m) if m.get('role') == 'assistant' else _content(m)}"
             for m in messages]
    text = "\n\n".join(lines)
    if len(text) <= REQUEST_CHARS:
        return text
    return text[:REQUEST_CHARS // 3] + "\n[…]\n" + text[-2 * REQUEST_CHARS // 3:]  # the system prompt and the ask


def _content(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return str(content or "")


def parse_verdict(text: str) -> tuple[Verdict | None, str]:
    """The verdict and rationale from the judge's reply: a JSON object, a verdict alone, or a `verdict: X` line."""
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        try:
            data = json.loads(text[start:end + 1])
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            verdict = str(data.get("verdict", "")).strip()
            normal = "tie" if verdict.lower() == "tie" else verdict.upper()
            if normal in ("A", "B", "tie"):
                return normal, str(data.get("rationale") or "")[:500]  # type: ignore[return-value]
    bare = text.strip().strip("\"'`.*").strip()
    if bare.upper() in ("A", "B") or bare.lower() == "tie":  # a verdict alone (small models answer so)
        return ("tie" if bare.lower() == "tie" else bare.upper()), text.strip()  # type: ignore[return-value]
    found = _VERDICT.search(text)
    if found is None:
        return None, text.strip()[:500]
    value = found.group(1)
    return ("tie" if value.lower() == "tie" else value.upper()), text.strip()[:500]  # type: ignore[return-value]


@dataclass(slots=True)
class JudgeUsage:
    """What judging cost: calls made, answered from the cache, failed, tokens, and their price."""

    calls: int = 0
    cached: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0  # None once a call could not be priced
    price_source: str = "unpriced"

    def to_json(self) -> dict[str, Any]:
        return {"calls": self.calls, "cached": self.cached, "failed": self.failed,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 8),
                "price_source": self.price_source}


class JudgeCache:
    """Verdicts by key, newest kept (an LRU of `capacity`); with `path`, also appended to a JSON-lines file and
    read back from it, so a distiller run does not pay again for what an earlier run asked."""

    def __init__(self, path: Path | None = None, capacity: int = 10_000) -> None:
        self.path, self.capacity = path, capacity
        self._entries: OrderedDict[str, str] = OrderedDict()
        if path is not None and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                    self._put(str(record["key"]), str(record["reply"]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut short by a crash: that verdict is asked again

    def get(self, key: str) -> str | None:
        reply = self._entries.get(key)
        if reply is not None:
            self._entries.move_to_end(key)
        return reply

    def put(self, key: str, reply: str) -> None:
        self._put(key, reply)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "reply": reply}) + "\n")

    def _put(self, key: str, reply: str) -> None:
        self._entries[key] = reply
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)


Complete = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
OnCall = Callable[[str, float | None], None]  # ("called" | "cached" | "failed", cost in USD or None)


@dataclass(slots=True)
class JudgeModel:
    """The model asked as judge: a completion function (a teacher's provider), its upstream model, its price."""

    name: str  # the configured teacher's served name
    complete: Complete
    model: str
    price: Price | None = None
    max_tokens: int = 200


def _noop(_: str, __: float | None) -> None:
    return None


@dataclass(slots=True)
class JudgeScorer:
    judge: JudgeModel
    prompt: str = field(default_factory=lambda: read_prompt(None))
    cache: JudgeCache = field(default_factory=JudgeCache)
    usage: JudgeUsage = field(default_factory=JudgeUsage)
    on_call: OnCall = _noop
    concurrency: int = 4

    @property
    def kind(self) -> ScorerKind:
        return "judge"

    async def score(self, comparisons: Sequence[Comparison]) -> list[Score]:
        semaphore = asyncio.Semaphore(self.concurrency)

        async def one(c: Comparison) -> Score:
            async with semaphore:
                return await self.score_one(c)

        return list(await asyncio.gather(*(one(c) for c in comparisons)))

    async def score_one(self, c: Comparison) -> Score:
        request = render_request(c.request)
        student, teacher = answer_text(c.student)[:ANSWER_CHARS], answer_text(c.teacher)[:ANSWER_CHARS]
        if not student.strip():
            return Score(0.0, "no answer", {"orders": [], "consistent": True})
        teacher_first = await self._ask(request, teacher, student)
        student_first = await self._ask(request, student, teacher)
        outcomes = [_outcome(teacher_first[0], student_is="B"), _outcome(student_first[0], student_is="A")]
        value = sum(1.0 for o in outcomes if o in ("win", "tie")) / 2
        details = {"orders": [{"first": "teacher", "verdict": teacher_first[0], "student": outcomes[0]},
                              {"first": "student", "verdict": student_first[0], "student": outcomes[1]}],
                   "consistent": None not in outcomes and outcomes[0] == outcomes[1]}
        rationale = f"teacher first: {teacher_first[1]} | student first: {student_first[1]}"
        return Score(value, rationale[:1200], details)

    async def _ask(self, request: str, answer_a: str, answer_b: str) -> tuple[Verdict | None, str]:
        prompt = (self.prompt.replace("{{request}}", request).replace("{{answer_a}}", answer_a or "(empty)")
                  .replace("{{answer_b}}", answer_b or "(empty)"))
        key = hashlib.sha256(json.dumps([self.judge.model, prompt]).encode("utf-8")).hexdigest()
        reply = self.cache.get(key)
        if reply is not None:
            self.usage.cached += 1
            self.on_call("cached", 0.0)
            return parse_verdict(reply)
        body = {"model": self.judge.model, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
                "max_tokens": self.judge.max_tokens}
        try:
            completion = await self.judge.complete(body)
        except ProtegeError as exc:
            self.usage.failed += 1
            self.on_call("failed", None)
            return None, f"the judge failed: {exc.message}"[:300]
        cost = self._meter(completion)
        reply = answer_text(((completion.get("choices") or [{}])[0]).get("message"))
        verdict = parse_verdict(reply)
        if verdict[0] is None:
            self.usage.failed += 1
            self.on_call("failed", cost)
        else:
            self.cache.put(key, reply)  # only a usable verdict is kept: a bad reply is asked again next time
            self.on_call("called", cost)
        return verdict

    def _meter(self, completion: dict[str, Any]) -> float | None:
        usage = completion.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
        self.usage.calls += 1
        self.usage.prompt_tokens += prompt_tokens
        self.usage.completion_tokens += completion_tokens
        price = self.judge.price
        if price is None:
            self.usage.cost_usd = None
            return None
        cost = price.cost(prompt_tokens, completion_tokens)
        self.usage.price_source = price.source
        if self.usage.cost_usd is not None:
            self.usage.cost_usd += cost
        return cost


def _outcome(verdict: Verdict | None, *, student_is: Literal["A", "B"]) -> Outcome | None:
    if verdict is None:
        return None
    if verdict == "tie":
        return "tie"
    return "win" if verdict == student_is else "loss"
