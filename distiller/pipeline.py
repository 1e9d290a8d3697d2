"""`protege distill`: curate → train → evaluate → calibrate → register (→ promote), for one task.

Every run writes a folder (`runs/<task>/<timestamp>/`): the dataset, `run.json` (the version being trained and
what it is trained on), the trainer's run directory (with its job handle, `training/job.json`), the evaluation
and calibration reports. A distiller stopped mid-run leaves its training job going; the next `distill` of the
task finds that run (same dataset, trainer and trainer flags, version still free) and polls the job instead of
training again. A failed run leaves the task's active student untouched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from distiller.calibrate import Calibration, Observation, calibrate
from distiller.costs import RelativeCost, hosted_list_price, relative_student_cost, run_costs
from distiller.dataset import CurationConfig, curate_task, write_dataset
from distiller.evaluate import EvalExample, EvaluationReport, ModelAnswer, evaluate, load_split
from distiller.predictor import Outcome, fit_predictor
from distiller.registry import Gate, find_trained, next_version, register, served_name
from distiller.scorers import ScorerSetupError, run_scorer, scorer_lines
from distiller.sufficiency import Minimums, shortfall
from distiller.trainers import JobStatus, TrainingJob, TrainingResult, get_trainer
from distiller.trainers.base import JOB_FILE, read_json, write_json_atomic
from gateway import students as students_ops
from gateway.compute_price import ComputePricing, read_throughput
from gateway.config import CascadeConfig, ComputeConfig, EmbeddedConfig, Settings, TaskConfig
from gateway.embedded import EMBEDDED_MODEL_NAME, EmbeddedModelServer
from gateway.pricing import Price
from gateway.router import CONFIDENCE_METHODS, validate_output
from gateway.scoring import Score, ScorerChoice
from gateway.store import GateResult, ServingPrice, Store, StudentDetails, StudentVersion


class DistillError(RuntimeError):
    """The run stopped; the message says why. Nothing was registered or promoted."""


class NotEnoughDataError(DistillError):
    """Too little curated data to decide on: nothing was trained. `reasons` say what is missing and why traffic
    was dropped (`distiller.sufficiency`); the scheduler waits for more traffic."""

    def __init__(self, task: str, reasons: list[str], splits: dict[str, int]) -> None:
        super().__init__(f"not enough data for task {task!r}:\n  " + "\n  ".join(reasons))
        self.task, self.reasons, self.splits = task, reasons, splits


@dataclass(slots=True)
class DistillOptions:
    runs_dir: Path = Path("runs")
    trainer: str = "local"
    trainer_config: dict[str, Any] = field(default_factory=dict)
    curation: CurationConfig = field(default_factory=CurationConfig)
    tasks: Mapping[str, TaskConfig] = field(default_factory=dict)  # per-task settings (floor, scorer, judge)
    settings: Settings = field(default_factory=Settings)  # the teachers (scale, judge) and `scoring`
    scorer: ScorerChoice | None = None  # `--scorer`: outranks the task's setting
    base_model: str | None = None  # local folder; None: SmolLM2-135M-Instruct
    gate: Gate = field(default_factory=Gate)
    target_parity: float = 0.95
    promote: bool = False
    force: bool = False
    minimums: Minimums = field(default_factory=Minimums)
    compute: ComputeConfig = field(default_factory=ComputeConfig)  # prices the run's training and evaluation
    cascade: CascadeConfig = field(default_factory=CascadeConfig)  # how the gateway prices the student
    max_eval_tokens: int = 256
    poll_interval_s: float = 1.0

    def task(self, task: str) -> TaskConfig:
        return self.tasks.get(task) or TaskConfig()

    def curation_for(self, task: str) -> CurationConfig:
        """The curation options with the task's own settings applied."""
        settings = self.tasks.get(task)
        return self.curation if settings is None else dataclasses.replace(self.curation,
                                                                          min_rating=settings.min_rating)


@dataclass(slots=True)
class DistillOutcome:
    task: str
    run_dir: Path
    dataset_hash: str
    student: StudentVersion
    reused: bool = False  # the dataset was unchanged: the version trained on it before is returned
    passed: bool = False
    gate_message: str = ""
    evaluation: EvaluationReport | None = None
    calibration: Calibration | None = None
    training_s: float = 0.0


Progress = Callable[[str, float | None], None]
RUN_FILE = "run.json"


def _quiet(_: str, __: float | None) -> None:
    return None


async def distill(store: Store, task: str, options: DistillOptions, *, student_api_base: str | None = None,
                 student_api_key: str | None = None,
                  progress: Progress = _quiet) -> DistillOutcome:
    run_dir = options.runs_dir / task / time.strftime("%Y%m%d-%H%M%S")
    progress("curating captured traffic", None)
    dataset = await curate_task(store, task, options.curation_for(task))
    reasons = shortfall(dataset.report, options.minimums)
    if reasons:
        raise NotEnoughDataError(task, reasons, dataset.counts)
    trained = await find_trained(store, task, dataset.dataset_hash, options.trainer)
    if trained is not None and not options.force:
        return DistillOutcome(task, run_dir, dataset.dataset_hash, trained, reused=True,
                              passed=trained.status != "rejected", gate_message="dataset unchanged since "
                              f"version {trained.version}; pass --force to train again")
    key = _run_key(options, dataset.dataset_hash)
    unfinished = None if options.force else await _unfinished_run(store, options, task, key)
    job: TrainingJob | None = None
    if unfinished is not None:
        run_dir, version, job = unfinished
        progress(f"resuming training job {job.job_id} of {run_dir}", None)
    else:
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # the dataset holds captured prompts: this user's only
        write_dataset(dataset, run_dir / "dataset")
        version = await next_version(store, task)
        write_json_atomic(run_dir / RUN_FILE, {**key, "task": task, "version": version})
    dataset_dir = run_dir / "dataset"
    model = served_name(task, version)
    started = time.monotonic()
    job, result = await _train(options, dataset_dir, run_dir / "training", model, progress, job)
    training_s = time.monotonic() - started
    if options.trainer != "local":
        model = result.model_name  # a hosted job names its model (`ft:…`): evaluated and served under that name

    async with AsyncExitStack() as stack:
        api_base, api_key = student_api_base, student_api_key
        if api_base is None and options.trainer != "local":
            api_base, api_key = _hosted_endpoint(job)  # the service that trained it serves it
        if api_base is None:
            progress("starting a model server for evaluation", None)
            server = EmbeddedModelServer(EmbeddedConfig(model=options.base_model))
            await asyncio.to_thread(server.start)
            stack.callback(server.stop)
            api_base, api_key = server.api_base, server.api_key
        if options.trainer == "local":
            await students_ops.load_adapter(api_base, model, result.artifact, api_key=api_key)
        # the base model the student was trained from, asked the same way (a hosted one by its service's name)
        base = (await students_ops.base_model_name(api_base, api_key=api_key) if options.trainer == "local"
                else result.base_model)
        evaluation_started = time.monotonic()
        rows = {e.request_id: e for e in await store.list_exchanges(task=task, bodies=False)}  # costs only
        try:
            scoring = await run_scorer(options.settings, options.task(task), options.scorer, dataset_dir, stack,
                                       local=options.trainer == "local", api_base=api_base, api_key=api_key,
                                       base_model=options.base_model, models=[r.upstream_model for r in rows.values()],
                                       cache_file=options.runs_dir / task / "judge-cache.jsonl",
                                       max_tokens=options.max_eval_tokens, progress=progress)
        except ScorerSetupError as exc:
            raise DistillError(str(exc)) from exc
        progress(f"evaluating on the validation split (calibration; scorer: {scoring.spec.kind})", None)
        _, val_answers, val_scores = await evaluate(
            api_base, scorer=scoring.scorer, student_model=model, base_model=None, dataset_dir=dataset_dir,
            split="validation", max_tokens=options.max_eval_tokens, api_key=api_key)
        progress("evaluating on the test split", None)
        report, test_answers, _ = await evaluate(api_base, scorer=scoring.scorer, student_model=model,
                                      base_model=base or EMBEDDED_MODEL_NAME, dataset_dir=dataset_dir, split="test",
                                      max_tokens=options.max_eval_tokens, api_key=api_key)
        report.scorer = scoring.report()
        evaluation_s = time.monotonic() - evaluation_started
        student_price, price_source = await _student_price(options, api_base, api_key, result.base_model)

    relative = relative_student_cost(
        [(a.prompt_tokens, a.completion_tokens) for a in val_answers if a.error is None],
        [rows[e.request_id].cost_usd if e.request_id in rows else None for e in dataset.validation],
        student_price, price_source)
    calibration = _calibrate(val_answers, val_scores, dataset_dir, options.target_parity, relative)
    predictor = _predictor(calibration, dataset_dir, val_answers, test_answers)
    base_parity = report.baselines[0].score.mean if len(report.baselines) > 1 else None
    score = report.student.score
    passed, gate_message = options.gate.check(score.mean, score.ci_low, score.ci_high, base_parity)
    examples = {e.request_id for split in (dataset.train, dataset.validation, dataset.test) for e in split}
    costs = run_costs(trainer=options.trainer, metrics=result.metrics, training_s=training_s, evaluation_s=evaluation_s,
                      data_costs=[e.cost_usd for e in rows.values() if e.request_id in examples],
                      compute=options.compute)
    evaluation_usd, sources = costs.evaluation_usd, {**costs.sources, "scoring": scoring.cost_source()}
    if evaluation_usd is not None:
        scoring_usd = scoring.cost_usd
        evaluation_usd = None if scoring_usd is None else evaluation_usd + scoring_usd
    details = StudentDetails(
        evaluation=report.to_dict(), calibration=calibration.to_dict() if calibration else None,
        gate=GateResult(passed=passed, message=gate_message, min_parity=options.gate.min_parity),
        trainer_config=job.details.get("config", options.trainer_config), job=job.to_dict(),
        training_s=round(training_s, 1), metrics=result.metrics, run_dir=str(run_dir), curation=dataset.report,
        training_cost_usd=costs.training_usd, evaluation_cost_usd=evaluation_usd, data_cost_usd=costs.data_usd,
        cost_sources=sources, serving_price=_serving_price(options, result.base_model),
        scorer=scoring.spec.to_json(), predictor=predictor)
    student = await register(
        store, task=task, version=version, passed=passed, artifact=result.artifact, model=model,
        base_model=result.base_model, trainer=options.trainer, dataset_hash=dataset.dataset_hash,
        system_prompt_hash=dataset.system_prompt_hash,
        threshold=calibration.threshold if calibration else None,
        confidence_method=calibration.method if calibration else "mean_logprob", details=details)
    if passed and options.promote:
        await students_ops.promote(store, task, version, student_api_base=student_api_base,
                                   student_api_key=student_api_key)
        student.status = "active"
    outcome = DistillOutcome(task, run_dir, dataset.dataset_hash, student, passed=passed, gate_message=gate_message,
                             evaluation=report, calibration=calibration, training_s=training_s)
    write_reports(outcome)
    return outcome


def _hosted_endpoint(job: TrainingJob) -> tuple[str | None, str | None]:
    """A hosted job's OpenAI-compatible base URL and the key from the environment variable its config names."""
    base_url = job.details.get("base_url")
    key_env = (job.details.get("config") or {}).get("api_key_env")
    return (str(base_url) if base_url else None), (os.environ.get(str(key_env)) if key_env else None)


def _run_key(options: DistillOptions, dataset_hash: str) -> dict[str, Any]:
    """What a run trains on and with: a stopped run is resumed only when all of it is unchanged."""
    return {"dataset_hash": dataset_hash, "trainer": options.trainer, "trainer_config": options.trainer_config,
            "base_model": options.base_model}


async def _unfinished_run(store: Store, options: DistillOptions, task: str,
                          key: dict[str, Any]) -> tuple[Path, int, TrainingJob] | None:
    """The newest run folder of `task` with the same key whose training job was launched and has not failed,
    and whose version was never registered: a distiller stopped before registering it."""
    taken = {s.version for s in await store.list_students(task=task)}
    task_dir = options.runs_dir / task
    for run_dir in sorted(task_dir.iterdir(), reverse=True) if task_dir.is_dir() else []:
        record = read_json(run_dir / RUN_FILE)
        if (record is None or {k: record.get(k) for k in key} != key or record.get("version") in taken
                or not (run_dir / "training" / JOB_FILE).is_file()):
            continue
        try:
            job = TrainingJob.load(run_dir / "training")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        trainer = get_trainer(job.backend, options.trainer_config)
        status: JobStatus = await asyncio.to_thread(trainer.poll, job)
        if status.state in ("failed", "cancelled"):
            continue
        return run_dir, int(record["version"]), job
    return None


async def _train(options: DistillOptions, dataset_dir: Path, run_dir: Path, model: str, progress: Progress,
                 job: TrainingJob | None = None) -> tuple[TrainingJob, TrainingResult]:
    """Launch a training job (or take over `job`, launched by an earlier distiller) and poll it to the end."""
    config = dict(options.trainer_config)
    if options.trainer == "local":
        config.setdefault("model_name", model)
        if options.base_model:
            config.setdefault("base_model", options.base_model)
    trainer = get_trainer(options.trainer, config)
    if job is None:
        job = await asyncio.to_thread(trainer.launch, dataset_dir, run_dir)
    status: JobStatus = await asyncio.to_thread(trainer.poll, job)
    while not status.done:
        progress(f"training ({status.message or status.state})", status.progress)
        await asyncio.sleep(options.poll_interval_s)
        status = await asyncio.to_thread(trainer.poll, job)
    if status.state != "succeeded" or status.result is None:
        raise DistillError(f"training {status.state}: {status.error or status.message}")
    progress("training done", 1.0)
    return job, status.result


def _serving_price(options: DistillOptions, base_model: str) -> ServingPrice | None:
    """A hosted version's list price at its provider, recorded with it: the gateway bills its answers at it
    (unless a price is configured)."""
    listed = hosted_list_price(options.trainer, base_model) if options.trainer != "local" else None
    return None if listed is None else ServingPrice(listed.input_per_token, listed.output_per_token, listed.source)


async def _student_price(options: DistillOptions, api_base: str, api_key: str | None,
                         base_model: str) -> tuple[Price | None, str]:
    """The student's price per token as the gateway will bill it: the configured per-token price, else a hosted
    student's list price at its provider, else (a local student) compute time over the student server's
    throughput."""
    cascade = options.cascade
    if cascade.input_cost_per_token is not None and cascade.output_cost_per_token is not None:
        return (Price(cascade.input_cost_per_token, cascade.output_cost_per_token),
                "the configured per-token price (cascade.input_cost_per_token, output_cost_per_token)")
    if options.trainer != "local":
        listed = hosted_list_price(options.trainer, base_model)
        if listed is None:
            return None, (f"unpriced: no list price of {options.trainer}'s {base_model} in litellm's map (configure "
                          "cascade.input_cost_per_token and output_cost_per_token)")
        return listed, listed.source
    pricing = ComputePricing(api_base, options.compute, cascade.hardware, cascade.tokens_per_s, api_key)
    measured = None
    if pricing.needs_measurement:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else None
        async with httpx.AsyncClient(timeout=10, headers=headers) as client:
            measured = await read_throughput(client, pricing.server_root)
    return pricing.price(measured)


def _calibrate(answers: list[ModelAnswer], scores: list[Score], dataset_dir: Path, target: float,
               relative: RelativeCost) -> Calibration | None:
    """The threshold from the validation split. Every request counts, the failed ones (an error, no logprobs,
    an answer the cascade's validators reject) as deferred; None when no answer can be calibrated on."""
    examples = load_split(dataset_dir, "validation")
    observations = [Observation(a.logprobs, s.value, failed=_failed(a, e))
                    for a, e, s in zip(answers, examples, scores, strict=True)]
    if not any(o.usable for o in observations):
        return None
    return calibrate(observations, target_parity=target, student_cost=relative.fraction,
                     student_cost_source=relative.source)


def _predictor(calibration: Calibration | None, dataset_dir: Path, validation: list[ModelAnswer],
               test: list[ModelAnswer]) -> dict[str, Any] | None:
    """The version's pre-generation predictor (`distiller.predictor`), fitted on the validation split's cascade
    outcomes at the calibrated threshold and judged on the test split's; None without a threshold."""
    if calibration is None or calibration.threshold is None:
        return None
    threshold, confidence = calibration.threshold, CONFIDENCE_METHODS[calibration.method]

    def outcomes(split: str, answers: list[ModelAnswer]) -> list[Outcome]:
        return [(e.messages, not _failed(a, e) and confidence(a.logprobs) >= threshold)
                for a, e in zip(answers, load_split(dataset_dir, split), strict=True)]

    train = [e.messages for e in load_split(dataset_dir, "train")]
    model, report = fit_predictor(train, outcomes("validation", validation), outcomes("test", test))
    return {**report, **(model.to_json() if model is not None else {})}


def _failed(answer: ModelAnswer, example: EvalExample) -> bool:
    if answer.error is not None or answer.message is None or not answer.logprobs:
        return True
    return bool(validate_output({"tools": example.tools or []}, {"choices": [{"message": answer.message}]}))


def write_reports(outcome: DistillOutcome) -> None:
    outcome.run_dir.mkdir(parents=True, exist_ok=True)
    student = outcome.student
    lines = [f"# Distillation of task `{outcome.task}` — version {student.version}", "",
             f"- status: **{student.status}** ({outcome.gate_message})",
             f"- dataset hash: `{outcome.dataset_hash}`; prompt-distilled: {student.prompt_distilled}",
             f"- training time: {outcome.training_s:.1f} s", ""]
    if outcome.evaluation is not None:
        lines += ["## Parity with the teacher (test split)", "", *scorer_lines(outcome.evaluation.scorer),
                  outcome.evaluation.to_markdown()]
    if outcome.calibration is not None:
        c = outcome.calibration
        lines += ["## Calibration (validation split)", "",
                  f"- method: {c.method}; threshold: "
                  + (f"{c.threshold}" if c.threshold is not None else "none (the version serves no routed traffic)")
                  + f"; target served parity: {c.target_parity}",
                  f"- at the threshold: student share {c.point.student_share:.2f}, parity {c.point.parity:.3f}, "
                  f"cost {c.point.cost_per_request:.3f}× teacher-only; APGR {c.apgr:.3f}",
                  f"- area under the deferral curve: {c.area_under_deferral_curve}",
                  f"- cost column: relative to teacher-only, a student request costing {c.student_cost:.4g} of a "
                  f"teacher's ({c.student_cost_source})", "",
                  "| threshold | student share | parity | cost (× teacher-only) |",
                  "|---|---|---|---|"]
        lines += [f"| {p.threshold:.4f} | {p.student_share:.2f} | {p.parity:.3f} | {p.cost_per_request:.3f} |"
                  for p in c.curve[1:]]
    predictor = student.details.predictor
    if predictor is not None:
        lines += ["", "## Pre-generation predictor", "", f"- {predictor.get('reason')}"]
    (outcome.run_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (outcome.run_dir / "report.json").write_text(json.dumps({
        "task": outcome.task, "version": student.version, "status": student.status, "passed": outcome.passed,
        "gate": outcome.gate_message, "dataset_hash": outcome.dataset_hash, "training_s": outcome.training_s,
        "evaluation": outcome.evaluation.to_dict() if outcome.evaluation else None,
        "calibration": outcome.calibration.to_dict() if outcome.calibration else None,
        "predictor": {k: v for k, v in (predictor or {}).items() if k != "vocabulary"} or None,
    }, indent=2, default=str), encoding="utf-8")
