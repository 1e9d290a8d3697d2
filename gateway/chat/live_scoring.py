"""The scorer of each student version, as shadow scoring uses it: the one the version was registered with
(`StudentDetails.scorer`), so live parity is on the scale the gate used. Built once per version; a version
registered before scorers existed is scored structurally, as it was evaluated."""

from __future__ import annotations

import logging
from typing import Any

import httpx

from gateway.chat.bodies import upstream_body
from gateway.chat.types import TeacherSet
from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.scoring import Scorer, ScorerSpec, ScorerUnavailableError, build_scorer
from gateway.scoring.judge import JudgeModel, JudgeScorer, read_prompt
from gateway.scoring.similarity import HttpEmbedder
from gateway.store import StudentVersion
from gateway.students import student_client

log = logging.getLogger("protege.service")


class LiveScorers:
    def __init__(self, settings: Settings, teachers: TeacherSet, metrics: Metrics) -> None:
        self.settings, self.teachers, self.metrics = settings, teachers, metrics
        self._scorers: dict[tuple[str, int], Scorer | ScorerUnavailableError] = {}
        self._client: httpx.AsyncClient | None = None

    def for_student(self, student: StudentVersion) -> Scorer:
        """The version's scorer; raises `ScorerUnavailableError` (remembered) when this gateway cannot build it."""
        key = (student.task, student.version)
        if key not in self._scorers:
            try:
                self._scorers[key] = self._build(student)
            except ScorerUnavailableError as exc:
                log.warning("shadow comparisons of %s v%d are not scored: %s", student.task, student.version, exc)
                self._scorers[key] = exc
        found = self._scorers[key]
        if isinstance(found, ScorerUnavailableError):
            raise found
        return found

    def _build(self, student: StudentVersion) -> Scorer:
        spec = ScorerSpec.from_json(student.details.scorer)
        embedder = judge = None
        if spec is not None and spec.kind == "similarity":
            embedder = HttpEmbedder(self._embeddings_client(), spec.embeddings_model or
                                    self.settings.scoring.embeddings_model)
        if spec is not None and spec.kind == "judge":
            judge = self._judge(student.task, spec)
        return build_scorer(spec, embedder=embedder, judge=judge)

    def _embeddings_client(self) -> httpx.AsyncClient:
        base = self.settings.scoring.embeddings_api_base or self.settings.student_api_base
        if base is None:
            raise ScorerUnavailableError("no embeddings endpoint (scoring.embeddings_api_base or student_api_base)")
        if self._client is None:
            self._client = student_client(base, self.settings.student_key, self.settings.cascade.timeout_s)
        return self._client

    def _judge(self, task: str, spec: ScorerSpec) -> JudgeScorer:
        config = self.settings.task(task).judge
        teacher = self.teachers.named(spec.judge or "") if spec.judge else None
        if config is None or teacher is None:
            raise ScorerUnavailableError(f"the judge {spec.judge!r} is not configured on this gateway")
        upstream = teacher.config.upstream_model

        async def complete(body: dict[str, Any]) -> dict[str, Any]:
            return await teacher.breaker.call(lambda: teacher.provider.complete(upstream_body(body, upstream)))

        label = self.metrics.task_label(task)

        def on_call(outcome: str, cost: float | None) -> None:
            self.metrics.judge_calls.labels(label, outcome).inc()
            if cost:
                self.metrics.judge_cost.labels(label).inc(cost)

        try:
            prompt = read_prompt(config.prompt_file)
        except (OSError, ValueError) as exc:
            raise ScorerUnavailableError(f"the judge prompt cannot be read: {exc}") from exc
        model = JudgeModel(teacher.config.served_name, complete, upstream, teacher.price, config.max_tokens)
        return JudgeScorer(model, prompt=prompt, on_call=on_call)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
