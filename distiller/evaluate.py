"""Student vs teacher on held-out traffic, with the baselines beside it.

The student is asked through its server — the same OpenAI-compatible API the gateway uses — and its
answers are scored against the teacher's captured answers with the task's scorer (`gateway.scoring`:
exact text, JSON fields, tool calls, embedding similarity or an LLM judge). The base model (the student
before training, with and without a distilled system prompt), the majority answer (the most common teacher
answer of the training split, field by field for JSON) and, for free text, a random answer (the teacher's
answer to another request) are scored the same way, so a parity figure never stands without its baselines.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from distiller.dataset import SYSTEM_PROMPT_FILE
from gateway.router import token_logprobs
from gateway.scoring import Comparison, Score, Scorer, agreement, normalise_text
from gateway.students import student_client


@dataclass(frozen=True, slots=True)
class EvalExample:
    """One held-out request: the input messages (as the student gets them) and the teacher's answer."""

    messages: list[dict[str, Any]]
    reference: dict[str, Any]  # the teacher's assistant message
    tools: list[dict[str, Any]] | None = None
    request_id: str | None = None  # the captured exchange it comes from
    stop: list[str] | None = None  # the app's stop sequences: every model is asked with them, as the teacher was


@dataclass(frozen=True, slots=True)
class ModelAnswer:
    message: dict[str, Any] | None
    latency_s: float
    prompt_tokens: int
    completion_tokens: int
    logprobs: tuple[float, ...] = ()
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ScoreSummary:
    mean: float
    ci_low: float
    ci_high: float
    n: int


@dataclass(slots=True)
class ModelReport:
    name: str
    score: ScoreSummary
    latency_p50_s: float | None = None
    prompt_tokens_mean: float | None = None
    completion_tokens_mean: float | None = None
    errors: int = 0


EXAMPLE_TEXT_CHARS = 2000  # of each side of a kept example: enough to judge, bounded in the registry


@dataclass(frozen=True, slots=True)
class ExampleResult:
    """One held-out request with the teacher's and the student's answers and their score, kept with the
    evaluation so a reviewer can see the answers behind the parity (the console lists them side by side)."""

    request_id: str | None
    request: str  # the last user message
    teacher: str
    student: str
    score: float
    error: str | None = None
    rationale: str | None = None  # the judge's words, when the scorer is a judge


@dataclass(slots=True)
class EvaluationReport:
    split: str
    student: ModelReport
    baselines: list[ModelReport] = field(default_factory=list)
    examples: list[ExampleResult] = field(default_factory=list)  # the student's answers, split order
    scorer: dict[str, Any] | None = None  # `distiller.scorers.ScorerSetup.report`: kind, scale, judge usage

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        rows = ["| model | parity with teacher | 95% CI | n | latency p50 (s) | input tokens | output tokens |",
                "|---|---|---|---|---|---|---|"]
        for report in (self.student, *self.baselines):
            s = report.score
            rows.append(f"| {report.name} | {s.mean:.3f} | {s.ci_low:.3f}–{s.ci_high:.3f} | {s.n} | "
                        f"{_fmt(report.latency_p50_s)} | {_fmt(report.prompt_tokens_mean, 1)} | "
                        f"{_fmt(report.completion_tokens_mean, 1)} |")
        return "\n".join(rows) + "\n"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def load_split(dataset_dir: Path, split: str) -> list[EvalExample]:
    """Examples of a curated split; the last assistant message is the teacher's answer."""
    examples = []
    for line in (dataset_dir / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        messages = record["messages"]
        if not messages or messages[-1].get("role") != "assistant":
            continue
        metadata = record.get("metadata") or {}
        request_id, stop = metadata.get("request_id"), metadata.get("stop")
        examples.append(EvalExample(messages=messages[:-1], reference=messages[-1], tools=record.get("tools"),
                                    request_id=str(request_id) if request_id else None,
                                    stop=[str(s) for s in stop] if isinstance(stop, list) and stop else None))
    return examples


def answer_text(message: dict[str, Any] | None) -> str:
    """What an assistant message says: its text, else its tool calls as JSON (bounded)."""
    if not message:
        return ""
    content = message.get("content")
    text = content if isinstance(content, str) else json.dumps(message.get("tool_calls") or content or "")
    return text[:EXAMPLE_TEXT_CHARS]


def example_results(answers: Sequence[ModelAnswer], examples: Sequence[EvalExample],
                    scores: Sequence[Score]) -> list[ExampleResult]:
    results = []
    for answer, example, score in zip(answers, examples, scores, strict=True):
        user: dict[str, Any] = next((m for m in reversed(example.messages) if m.get("role") == "user"), {})
        request = user.get("content")
        results.append(ExampleResult(example.request_id, (request if isinstance(request, str) else json.dumps(
            request))[:EXAMPLE_TEXT_CHARS], answer_text(example.reference), answer_text(answer.message), score.value,
            answer.error, score.rationale))
    return results


def completion_of(message: dict[str, Any] | None) -> dict[str, Any]:
    return {"choices": [{"message": message or {}}]}


def request_of(example: EvalExample, system_prompt: str | None) -> list[dict[str, Any]]:
    """The request as the teacher got it (a prompt-distilled example lost its system prompt in curation)."""
    return [{"role": "system", "content": system_prompt}, *example.messages] if system_prompt else example.messages


async def score_answers(scorer: Scorer, answers: Sequence[ModelAnswer | dict[str, Any] | None],
                        examples: Sequence[EvalExample], system_prompt: str | None = None) -> list[Score]:
    """Each answer (a model's, or an assistant message) scored against its example's teacher answer."""
    messages = [a.message if isinstance(a, ModelAnswer) else a for a in answers]
    return await scorer.score([Comparison(request_of(e, system_prompt), m, e.reference)
                               for m, e in zip(messages, examples, strict=True)])


def bootstrap_ci(scores: Sequence[float], *, resamples: int = 1000, alpha: float = 0.05,
                 seed: int = 0) -> ScoreSummary:
    """Mean with a percentile bootstrap confidence interval."""
    if not scores:
        return ScoreSummary(0.0, 0.0, 0.0, 0)
    rng = random.Random(seed)
    n = len(scores)
    means = sorted(sum(rng.choices(scores, k=n)) / n for _ in range(resamples))
    low = means[int(alpha / 2 * resamples)]
    high = means[min(resamples - 1, int((1 - alpha / 2) * resamples))]
    return ScoreSummary(sum(scores) / n, low, high, n)


def _json_object(text: str) -> dict[str, Any] | None:
    """`text` as a JSON object, parsed as `gateway.scoring.agreement` parses it; None if it is not one."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _most_common(values: Sequence[Any], key: Callable[[Any], str]) -> Any:
    """The value whose class (values `key` maps together) is the largest; ties go to the class seen first.
    The class's first value is returned."""
    top = Counter(key(v) for v in values).most_common(1)[0][0]
    return next(v for v in values if key(v) == top)


def _field_key(value: Any) -> str:
    """Field values `agreement` counts as equal share a key (strings compare normalised)."""
    return orjson.dumps(normalise_text(value) if isinstance(value, str) else value,
                        option=orjson.OPT_SORT_KEYS).decode()


def _field_majority(objects: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Every field present in at least half of the objects, with its most common value."""
    majority = {}
    for key, count in Counter(k for o in objects for k in o).items():
        if count * 2 >= len(objects):
            majority[key] = _most_common([o[key] for o in objects if key in o], _field_key)
    return majority


def majority_answer(train: Sequence[EvalExample]) -> dict[str, Any]:
    """The majority-answer baseline: one constant answer for every request.

    The candidates are the field-by-field majority of the answers that are JSON objects (each field found in
    at least half of them, with its most common value) and the most common whole text (normalised as
    `agreement` normalises it). The JSON candidate is the answer unless the whole text agrees with more of the
    training answers — in practice, when (almost) none of them are JSON objects. A few answers that are not
    JSON (a refusal, a truncated object) therefore no longer turn a JSON task's baseline into a whole-text one.
    """
    contents = [str(e.reference.get("content") or "") for e in train]
    if not contents:
        return {"role": "assistant", "content": ""}
    objects = [o for text in contents if (o := _json_object(text)) is not None]
    candidates = [json.dumps(_field_majority(objects))] if objects else []
    candidates.append(_most_common(contents, normalise_text))
    references = [completion_of(e.reference) for e in train]

    def train_agreement(content: str) -> float:
        answer = completion_of({"role": "assistant", "content": content})
        return sum(agreement(answer, reference) for reference in references)

    return {"role": "assistant", "content": max(candidates, key=train_agreement)}  # first on ties: JSON


async def ask_model(api_base: str, model: str, examples: Sequence[EvalExample], *, max_tokens: int = 256,
                    concurrency: int = 4, timeout_s: float = 300, api_key: str | None = None) -> list[ModelAnswer]:
    """Greedy answers with logprobs, a few requests at a time (the server batches them)."""
    semaphore = asyncio.Semaphore(concurrency)
    async with student_client(api_base, api_key, timeout_s) as client:

        async def one(example: EvalExample) -> ModelAnswer:
            body: dict[str, Any] = {"model": model, "messages": example.messages, "temperature": 0,
                                    "max_tokens": max_tokens, "logprobs": True}
            if example.tools:
                body["tools"] = example.tools
            if example.stop:
                body["stop"] = example.stop
            async with semaphore:
                started = time.perf_counter()
                try:
                    response = await client.post("/chat/completions", json=body)
                    response.raise_for_status()
                except httpx.HTTPError as exc:
                    return ModelAnswer(None, time.perf_counter() - started, 0, 0, error=str(exc)[:300])
                elapsed = time.perf_counter() - started
            completion = response.json()
            usage = completion.get("usage") or {}
            return ModelAnswer(completion["choices"][0].get("message"), elapsed, int(usage.get("prompt_tokens", 0)),
                               int(usage.get("completion_tokens", 0)), tuple(token_logprobs(completion)))

        return list(await asyncio.gather(*(one(e) for e in examples)))


def model_report(name: str, answers: Sequence[ModelAnswer], scores: Sequence[Score]) -> ModelReport:
    ok = [a for a in answers if a.error is None]
    return ModelReport(
        name=name, score=bootstrap_ci([s.value for s in scores]),
        latency_p50_s=statistics.median(a.latency_s for a in ok) if ok else None,
        prompt_tokens_mean=statistics.fmean(a.prompt_tokens for a in ok) if ok else None,
        completion_tokens_mean=statistics.fmean(a.completion_tokens for a in ok) if ok else None,
        errors=len(answers) - len(ok))


async def majority_report(scorer: Scorer, train: Sequence[EvalExample], examples: Sequence[EvalExample],
                          system_prompt: str | None = None) -> ModelReport:
    answer = majority_answer(train)
    scores = await score_answers(scorer, [answer] * len(examples), examples, system_prompt)
    return ModelReport(name="majority answer", score=bootstrap_ci([s.value for s in scores]))


async def random_report(scorer: Scorer, examples: Sequence[EvalExample],
                        system_prompt: str | None = None) -> ModelReport:
    """The floor of a free-text scorer: each request answered with the teacher's answer to another request (a
    fluent, on-task reply that does not answer it)."""
    shifted = [examples[(i + 1) % len(examples)].reference for i in range(len(examples))]
    scores = await score_answers(scorer, shifted, examples, system_prompt)
    return ModelReport(name="random answer (the teacher's answer to another request)",
                       score=bootstrap_ci([s.value for s in scores]))


def system_prompt_of(dataset_dir: Path) -> str | None:
    """The system prompt a prompt-distilled task's examples were curated without, if any."""
    prompt_file = dataset_dir / SYSTEM_PROMPT_FILE
    return prompt_file.read_text(encoding="utf-8") if prompt_file.is_file() else None


async def evaluate(api_base: str, *, scorer: Scorer, student_model: str, base_model: str | None,
                   dataset_dir: Path, split: str = "test", max_tokens: int = 256,
                   api_key: str | None = None) -> tuple[EvaluationReport, list[ModelAnswer], list[Score]]:
    """Score the student (and the baselines, when `base_model` is given) on a held-out split; the student's raw
    answers and scores are returned too, for calibration."""
    examples = load_split(dataset_dir, split)
    system_prompt = system_prompt_of(dataset_dir)
    student_answers = await ask_model(api_base, student_model, examples, max_tokens=max_tokens, api_key=api_key)
    student_scores = await score_answers(scorer, student_answers, examples, system_prompt)
    report = EvaluationReport(split=split,
                              student=model_report(f"student ({student_model})", student_answers, student_scores),
                              examples=example_results(student_answers, examples, student_scores))
    if base_model is None:
        return report, student_answers, student_scores
    # first, as the student is asked (what training must beat: the gate compares with it) ...
    base_answers = await ask_model(api_base, base_model, examples, max_tokens=max_tokens, api_key=api_key)
    name = f"base model ({base_model})" + (" without the task's system prompt" if system_prompt else "")
    report.baselines.append(model_report(name, base_answers,
                                         await score_answers(scorer, base_answers, examples, system_prompt)))
    if system_prompt:  # ... then, for a prompt-distilled task, with the prompt it was trained without
        system = {"role": "system", "content": system_prompt}
        prompted = [dataclasses.replace(e, messages=[system, *e.messages]) for e in examples]
        answers = await ask_model(api_base, base_model, prompted, max_tokens=max_tokens, api_key=api_key)
        report.baselines.append(model_report(f"base model ({base_model}) with the task's system prompt", answers,
                                             await score_answers(scorer, answers, examples, system_prompt)))
    report.baselines.append(await majority_report(scorer, load_split(dataset_dir, "train"), examples, system_prompt))
    if scorer.kind in ("similarity", "judge") and len(examples) > 1:
        report.baselines.append(await random_report(scorer, examples, system_prompt))
    return report, student_answers, student_scores
