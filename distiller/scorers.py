"""The scorer a distiller run judges a task with (`gateway.scoring`), set up for the run.

Chosen from the task's training answers unless the task's config (`tasks.<task>.scorer`) or `protege distill
--scorer` names one. For `similarity`, the scale is measured here: each of up to `reference_requests`
validation requests is sent to the teacher again (at `reference_temperature`, one priced call each), and the
cosine of its two answers is what parity 1 means; its answers to other requests are parity 0. For `judge`, the
configured teacher is asked through its provider, verdicts cached in the task's runs folder.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from distiller.evaluate import EvalExample, load_split, request_of, system_prompt_of
from distiller.scorer_check import DEFAULT_CHECK_SET, check_scorer, load_check_set
from gateway.chat.bodies import upstream_body
from gateway.config import EmbeddedConfig, JudgeConfig, ScoringConfig, Settings, TaskConfig, TeacherConfig
from gateway.embedded import EMBEDDED_MODEL_NAME, EmbeddedModelServer
from gateway.errors import ProtegeError
from gateway.pricing import Price, resolve_price
from gateway.providers import ChatProvider, build_provider
from gateway.providers.base import redactor
from gateway.scoring import (
    Comparison,
    JudgeScorer,
    Scorer,
    ScorerChoice,
    ScorerKind,
    ScorerSpec,
    SimilarityScale,
    SimilarityScorer,
    StructuralScorer,
    answer_text,
    infer_kind,
)
from gateway.scoring.judge import JudgeCache, JudgeModel, prompt_sha256, read_prompt
from gateway.scoring.similarity import Embedder, HttpEmbedder, fit_scale
from gateway.students import student_client

NO_TEACHER = ("the similarity scale is measured by asking the task's teacher again, and the config names no "
              "teacher that answered this task's traffic: pass the gateway's --config (or choose another scorer with "
              "--scorer)")


class ScorerSetupError(RuntimeError):
    """The task's scorer cannot be set up (no teacher to measure the scale with, no judge configured)."""


@dataclass(slots=True)
class Teacher:
    """A teacher as the distiller asks it: its provider, upstream model and price."""

    config: TeacherConfig
    provider: ChatProvider
    price: Price | None

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.provider.complete(upstream_body(body, self.config.upstream_model))


@dataclass(slots=True)
class ScorerSetup:
    scorer: Scorer
    spec: ScorerSpec
    reference: dict[str, Any] = field(default_factory=dict)  # how the similarity scale was measured, its cost
    judge: JudgeScorer | None = None
    check: dict[str, Any] | None = None  # `distiller.scorer_check.check_scorer` on the labelled set

    @property
    def cost_usd(self) -> float | None:
        """What scoring cost in teacher calls (the scale's second answers, the judge); None: some were unpriced."""
        parts = [self.reference.get("cost_usd", 0.0) if self.reference else 0.0,
                 self.judge.usage.cost_usd if self.judge is not None else 0.0]
        return None if any(p is None for p in parts) else float(sum(p or 0.0 for p in parts))

    def cost_source(self) -> str:
        if self.spec.kind == "similarity":
            return f"the teacher's second answers for the similarity scale, at {self.reference.get('price_source')}"
        if self.judge is not None:
            return f"{self.judge.usage.calls} judge calls ({self.judge.usage.cached} cached) at " \
                   f"{self.judge.usage.price_source}"
        return "no model calls: a structural scorer"

    def report(self) -> dict[str, Any]:
        """The scorer as the evaluation report records it."""
        data: dict[str, Any] = {**self.spec.to_json(), **({"reference": self.reference} if self.reference else {}),
                                **({"check": self.check} if self.check else {})}
        if self.judge is not None:
            data["judge_usage"] = self.judge.usage.to_json()
        return data


def embedded_teacher(api_base: str, api_key: str | None, embedded: EmbeddedConfig) -> TeacherConfig:
    """The embedded model as the teacher it is when no teacher is configured (served by the run's model server)."""
    return TeacherConfig(model=f"openai/{EMBEDDED_MODEL_NAME}", api_base=api_base,
                         api_key=SecretStr(api_key) if api_key else None,
                         input_cost_per_token=embedded.input_cost_per_token,
                         output_cost_per_token=embedded.output_cost_per_token)


def _teacher(config: TeacherConfig, settings: Settings) -> Teacher:
    redact = redactor([t.api_key.get_secret_value() for t in [*settings.teachers, config] if t.api_key])
    price = resolve_price(config.model, config.input_cost_per_token, config.output_cost_per_token,
                          config.cached_input_cost_per_token)
    return Teacher(config, build_provider(config, settings, redact), price)


def _names(config: TeacherConfig) -> tuple[str, ...]:
    return config.served_name, config.model, config.upstream_model, *config.aliases


def task_teacher(models: Sequence[str], settings: Settings, embedded: TeacherConfig | None) -> Teacher | None:
    """The teacher that answered the task's traffic (`models`: the upstream model of each captured request): the
    configured one most requests went to (the only one, when there is one); the embedded model when that is what
    answered them and no teacher is configured; None when the config does not say who the teacher was."""
    configs = list(settings.teachers)
    named = [name for name, _ in Counter(m for m in models if m).most_common()]
    if len(configs) == 1:
        return _teacher(configs[0], settings)
    for name in named:
        match = next((t for t in configs if name in _names(t)), None)
        if match is not None:
            return _teacher(match, settings)
    if not configs and embedded is not None and named and named[0] in _names(embedded):
        return _teacher(embedded, settings)
    return None


def teacher_named(name: str, settings: Settings, embedded: TeacherConfig | None) -> Teacher | None:
    """The configured teacher with this name (served name, model or alias); the embedded model by its name."""
    match = next((t for t in settings.teachers if name in _names(t)), None)
    if match is None and name == EMBEDDED_MODEL_NAME:
        match = embedded
    return None if match is None else _teacher(match, settings)


def choose_kind(references: Sequence[dict[str, Any]], task: TaskConfig,
                override: ScorerChoice | None) -> tuple[ScorerKind, str]:
    if override is not None and override != "auto":
        return override, "--scorer"
    if task.scorer != "auto":
        return task.scorer, "tasks.<task>.scorer"
    return infer_kind(references, judge_configured=task.judge is not None)


async def measure_scale(embedder: Embedder, teacher: Teacher, examples: Sequence[EvalExample], *,
                        system_prompt: str | None, scoring: ScoringConfig,
                        max_tokens: int) -> tuple[SimilarityScale, dict[str, Any]]:
    """The similarity scale: each captured answer against a second teacher answer to the same request."""
    chosen = [e for e in examples if answer_text(e.reference).strip()][:scoring.reference_requests]
    semaphore = asyncio.Semaphore(4)
    cost: float | None = 0.0

    async def again(example: EvalExample) -> str | None:
        nonlocal cost
        body: dict[str, Any] = {"messages": request_of(example, system_prompt), "max_tokens": max_tokens,
                                "temperature": scoring.reference_temperature,
                                **({"stop": example.stop} if example.stop else {})}  # asked as the app asked
        async with semaphore:
            try:
                completion = await teacher.complete(body)
            except ProtegeError:
                return None
        usage = completion.get("usage") or {}
        if teacher.price is None:
            cost = None
        elif cost is not None:
            cost += teacher.price.cost(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
        return answer_text(((completion.get("choices") or [{}])[0]).get("message")).strip() or None

    second = await asyncio.gather(*(again(e) for e in chosen))
    pairs = [(answer_text(e.reference), s) for e, s in zip(chosen, second, strict=True) if s]
    if len(pairs) < 2:
        raise ScorerSetupError(f"the teacher ({teacher.config.served_name}) gave {len(pairs)} second answers of "
                               f"{len(chosen)} asked: too few to measure how much it varies")
    source = (f"{len(pairs)} validation requests answered again by {teacher.config.served_name} at temperature "
              f"{scoring.reference_temperature}")
    scale = await fit_scale(embedder, pairs, [answer_text(e.reference) for e in examples], source=source)
    self_scores = await SimilarityScorer(embedder, scale).score(
        [Comparison([], {"content": s}, {"content": a}) for a, s in pairs])
    reference = {"teacher": teacher.config.served_name, "asked": len(chosen), "answered": len(pairs),
                 "temperature": scoring.reference_temperature,
                 "teacher_self_parity": round(sum(s.value for s in self_scores) / len(self_scores), 4),
                 "cost_usd": None if cost is None else round(cost, 8),
                 "price_source": teacher.price.source if teacher.price else "unpriced"}
    return scale, reference


def judge_scorer(config: JudgeConfig, teacher: Teacher, cache_file: Path | None) -> JudgeScorer:
    prompt = read_prompt(config.prompt_file)
    model = JudgeModel(name=teacher.config.served_name, complete=teacher.complete,
                       model=teacher.config.upstream_model, price=teacher.price, max_tokens=config.max_tokens)
    return JudgeScorer(model, prompt=prompt, cache=JudgeCache(cache_file))


async def set_up(kind: ScorerKind, chosen_by: str, *, task: TaskConfig, settings: Settings,
                 validation: Sequence[EvalExample], system_prompt: str | None, embedder: Embedder | None,
                 teacher: Teacher | None, judge_teacher: Teacher | None, cache_file: Path | None,
                 max_tokens: int) -> ScorerSetup:
    if kind in ("exact", "fields", "tools"):
        return ScorerSetup(StructuralScorer(kind), ScorerSpec(kind, chosen_by))
    if kind == "judge":
        if task.judge is None:
            raise ScorerSetupError("the judge scorer needs tasks.<task>.judge.teacher in the config")
        if judge_teacher is None:
            raise ScorerSetupError(f"the judge {task.judge.teacher!r} is not a configured teacher")
        judge = judge_scorer(task.judge, judge_teacher, cache_file)
        spec = ScorerSpec("judge", chosen_by, judge=judge_teacher.config.served_name,
                          judge_prompt_sha256=prompt_sha256(judge.prompt))
        return ScorerSetup(judge, spec, judge=judge)
    if embedder is None:
        raise ScorerSetupError("the similarity scorer needs an embeddings endpoint (scoring.embeddings_api_base, "
                               "or a model server)")
    if teacher is None:
        raise ScorerSetupError(NO_TEACHER)
    scale, reference = await measure_scale(embedder, teacher, validation, system_prompt=system_prompt,
                                           scoring=settings.scoring, max_tokens=max_tokens)
    if not scale.usable:
        raise ScorerSetupError(f"the teacher's answers to one request are no closer to each other (cosine "
                               f"{scale.same:.3f}) than to other requests' ({scale.other:.3f}): similarity cannot "
                               "tell answers apart on this task; configure a judge")
    spec = ScorerSpec("similarity", chosen_by, scale=scale, embeddings_model=settings.scoring.embeddings_model)
    return ScorerSetup(SimilarityScorer(embedder, scale), spec, reference=reference)


async def run_scorer(settings: Settings, config: TaskConfig, override: ScorerChoice | None, dataset_dir: Path,
                     stack: AsyncExitStack, *, local: bool, api_base: str, api_key: str | None, base_model: str | None,
                     models: Sequence[str], cache_file: Path, max_tokens: int,
                     progress: Callable[[str, float | None], None]) -> ScorerSetup:
    """The task's scorer for a distiller run over `dataset_dir`. Embeddings come from
    `scoring.embeddings_api_base`, else the run's model server (`api_base`, for a local student), else a model
    server started for them; whatever is opened is closed with `stack`."""
    kind, chosen_by = choose_kind([e.reference for e in load_split(dataset_dir, "train")], config, override)
    embedded = embedded_teacher(api_base, api_key, settings.embedded) if local else None
    teacher = task_teacher(models, settings, embedded) if kind == "similarity" else None
    if kind == "similarity" and teacher is None:  # before any model server is started for its embeddings
        raise ScorerSetupError(f"scorer similarity ({chosen_by}): {NO_TEACHER}")
    embedder = None
    if kind == "similarity":
        base, key = settings.scoring.embeddings_api_base, settings.student_key
        if base is None and local:
            base, key = api_base, api_key
        if base is None:
            progress("starting a model server for embeddings", None)
            server = EmbeddedModelServer(EmbeddedConfig(model=base_model))
            await asyncio.to_thread(server.start)
            stack.callback(server.stop)
            base, key = server.api_base, server.api_key
        client = await stack.enter_async_context(student_client(base, key, 120))
        embedder = HttpEmbedder(client, settings.scoring.embeddings_model)
        progress("measuring how much the teacher's own answers vary (the similarity scale)", None)
    judge = teacher_named(config.judge.teacher, settings, embedded) if config.judge and kind == "judge" else None
    for opened in (teacher, judge):
        if opened is not None:
            stack.push_async_callback(opened.provider.aclose)
    try:
        setup = await set_up(kind, chosen_by, task=config, settings=settings,
                             validation=load_split(dataset_dir, "validation"),
                             system_prompt=system_prompt_of(dataset_dir), embedder=embedder, teacher=teacher,
                             judge_teacher=judge, cache_file=cache_file, max_tokens=max_tokens)
        if kind in ("similarity", "judge"):  # the check set is free text: structural scorers are exact by design
            progress("checking the scorer on its labelled check set", None)
            setup.check = await check_scorer(setup.scorer, load_check_set(config.scorer_check),
                                             source=str(config.scorer_check or DEFAULT_CHECK_SET.name))
        return setup
    except (ScorerSetupError, ValueError, OSError) as exc:
        raise ScorerSetupError(f"scorer {kind} ({chosen_by}): {exc}") from exc
    except ProtegeError as exc:  # the embeddings endpoint or the teacher failed while the scale was measured
        raise ScorerSetupError(f"scorer {kind} ({chosen_by}): {exc.message}") from exc


def scorer_lines(report: dict[str, Any] | None) -> list[str]:
    """The scorer as the run's report.md states it (`ScorerSetup.report`)."""
    if not report:
        return []
    lines = [f"- scorer: **{report.get('kind')}** ({report.get('chosen_by')})"]
    scale, reference = report.get("scale"), report.get("reference") or {}
    if scale:
        lines.append(f"- similarity scale: cosine {scale['same']:.3f} → parity 1 (the teacher against itself: "
                     f"{scale['source']}), {scale['other']:.3f} → 0 (answers to other requests); the teacher's "
                     f"second answers score {reference.get('teacher_self_parity')}")
    usage = report.get("judge_usage")
    if usage:
        lines.append(f"- judge {report.get('judge')}: {usage['calls']} calls, {usage['cached']} cached, "
                     f"{usage['failed']} failed, cost {usage['cost_usd']} USD ({usage['price_source']})")
    check = report.get("check")
    if check:
        lines.append(f"- accuracy on the labelled check set ({check['items']} items): {check['accuracy']:.3f} "
                     f"(rejecting everything: {check['reject_all_accuracy']:.3f})"
                     + (f"; judge agrees with itself with the order swapped on {check['swap_consistency']:.3f}"
                        if check.get("swap_consistency") is not None else ""))
    return [*lines, ""]
