"""The distiller's commands: `distill`, `scheduler`, `report`, `export-merged` and `demo`."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from rich.console import Console

from distiller.sufficiency import Minimums
from distiller.trainers import BACKENDS
from distiller.trainers.flags import TrainerFlagError, add_trainer_flags
from distiller.trainers.flags import trainer_config as trainer_config_of
from gateway.cli import json_flag, positive_int, settings_from, store_flags, with_store
from gateway.config import Settings
from gateway.scoring.base import SCORER_CHOICES
from gateway.store import Store

if TYPE_CHECKING:
    from gateway.cli import Subparsers


# --- export-merged -----------------------------------------------------------------------------

def add_export_merged(sub: Subparsers) -> None:
    p = sub.add_parser("export-merged", help="fold a student's LoRA adapter into its base model (no LoRA at run time)",
                       description="Write a plain transformers model folder (safetensors + tokenizer) with the "
                       "adapter merged in, for servers that should not load adapters (vLLM without --enable-lora, "
                       "`protege model-server --model OUT`). Serve it under the student's name, <task>-v<version>. "
                       "Needs the local extra (torch, peft).")
    p.add_argument("--adapter", required=True, metavar="DIR", help="the adapter folder (a student version's "
                   "artifact; see `protege students --json`)")
    p.add_argument("--out", required=True, metavar="DIR", help="where the merged model goes")
    p.add_argument("--base-model", metavar="DIR", help="the base model folder the adapter was trained on "
                   "(default: SmolLM2-135M-Instruct)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), help="weights dtype (default float32)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    def run(args: argparse.Namespace) -> int:
        from distiller.trainers.merge import MergeError, merge_adapter

        try:
            out = merge_adapter(args.base_model, args.adapter, args.out, dtype=args.dtype, overwrite=args.overwrite)
        except ImportError as exc:  # torch/peft are imported by the merge itself
            print(f"protege export-merged needs the local extra: pip install 'protege[local]' ({exc})",
                  file=sys.stderr)
            return 2
        except MergeError as exc:
            print(f"protege export-merged: {exc}", file=sys.stderr)
            return 1
        print(f"merged model written to {out}")
        return 0

    p.set_defaults(func=run)


# --- distill ---------------------------------------------------------------------------------

def _distill_options(args: argparse.Namespace, settings: Settings) -> Any:
    from distiller.dataset import CurationConfig
    from distiller.pipeline import DistillOptions
    from distiller.registry import Gate

    trainer_config = trainer_config_of(args, args.trainer, BACKENDS)
    tasks = dict(settings.tasks)
    if hasattr(args, "min_rating"):  # given on `protege distill`: it outranks the task's setting
        tasks[args.task] = settings.task(args.task).model_copy(update={"min_rating": args.min_rating})
    return DistillOptions(runs_dir=Path(args.runs_dir), trainer=args.trainer, trainer_config=trainer_config,
                          base_model=args.base_model or settings.embedded.model, gate=Gate(args.gate),
                          target_parity=args.target_parity, promote=args.promote,
                          curation=CurationConfig(keep_truncated=args.keep_truncated), tasks=tasks,
                          minimums=Minimums(args.min_train, args.min_validation, args.min_test),
                          compute=settings.compute, cascade=settings.cascade,
                          max_eval_tokens=args.max_eval_tokens, force=getattr(args, "force", False),
                          settings=settings, scorer=getattr(args, "scorer", None))


def _distill_flags(p: argparse.ArgumentParser) -> None:
    store_flags(p)
    p.add_argument("--trainer", choices=sorted(BACKENDS), default="local",
                   help="where the student is trained: local LoRA, or a hosted fine-tuning service (default local); "
                   "each trainer's options are listed below")
    p.add_argument("--base-model", metavar="PATH", help="local model folder (default SmolLM2-135M-Instruct)")
    p.add_argument("--gate", type=float, default=0.90, help="minimum parity with the teacher (default 0.90)")
    p.add_argument("--target-parity", type=float, default=0.95, help="served parity the threshold is "
                   "calibrated for (default 0.95)")
    p.add_argument("--max-eval-tokens", type=positive_int, default=256, metavar="N",
                   help="max_tokens of each evaluation answer, student and baselines alike (default 256)")
    p.add_argument("--promote", action="store_true", help="make a new version active if it passes the gate")
    p.add_argument("--scorer", choices=SCORER_CHOICES, default=None, help="how answers are compared with the "
                   "teacher's: exact, fields (JSON), tools, similarity (embeddings, on the teacher's own scale) or "
                   "judge (tasks.<task>.judge); default: tasks.<task>.scorer, else auto from the task's traffic")
    minimums = Minimums()
    p.add_argument("--min-train", type=positive_int, default=minimums.train, metavar="N",
                   help=f"curated training examples needed before anything is trained (default {minimums.train})")
    p.add_argument("--min-validation", type=positive_int, default=minimums.validation, metavar="N",
                   help=f"validation examples the threshold is calibrated on, at least (default {minimums.validation})")
    p.add_argument("--min-test", type=positive_int, default=minimums.test, metavar="N",
                   help=f"test examples the gate decides on, at least (default {minimums.test})")
    p.add_argument("--keep-truncated", action="store_true", help="keep teacher answers cut at their token limit "
                   "(dropped by default: they teach the student to stop mid-sentence)")
    p.add_argument("--runs-dir", default="runs", help="where run folders go (default ./runs)")
    p.add_argument("--student-api-base", metavar="URL", help="student server to evaluate through and load "
                   "promoted adapters into (default: start the embedded model server for the run)")
    add_trainer_flags(p, BACKENDS)


def cmd_distill(args: argparse.Namespace) -> int:
    from distiller.pipeline import DistillError, NotEnoughDataError, distill

    settings = settings_from(args, student_api_base=args.student_api_base)
    try:
        options = _distill_options(args, settings)
    except TrainerFlagError as exc:
        print(f"protege distill: {exc}", file=sys.stderr)
        return 2
    console = Console(stderr=True)

    def progress(message: str, fraction: float | None) -> None:
        console.print(f"[{args.task}] {message}" + ("" if fraction is None else f" {fraction:.0%}"))

    async def work(store: Store) -> int:
        try:
            outcome = await distill(store, args.task, options, student_api_base=settings.student_api_base,
                                    student_api_key=settings.student_key,
                                    progress=progress)
        except NotEnoughDataError as exc:
            if args.json:
                print(orjson.dumps({"task": args.task, "status": "not_enough_data", "reasons": exc.reasons,
                                    "splits": exc.splits}).decode())
            print(f"protege distill: {exc}", file=sys.stderr)
            return 3
        except DistillError as exc:
            print(f"protege distill: {exc}", file=sys.stderr)
            return 1
        s = outcome.student
        if args.json:
            print(orjson.dumps({"task": s.task, "version": s.version, "status": s.status, "reused": outcome.reused,
                                "passed": outcome.passed, "gate": outcome.gate_message,
                                "dataset_hash": outcome.dataset_hash, "threshold": s.threshold,
                                "run_dir": str(outcome.run_dir)}).decode())
            return 0
        if outcome.evaluation is not None:
            Console().print(outcome.evaluation.to_markdown())
        print(f"task {s.task}: version {s.version} {s.status} — {outcome.gate_message}"
              + ("" if outcome.reused else f"; report in {outcome.run_dir}/report.md"))
        return 0

    return with_store(settings, work)


def add_distill(sub: Subparsers) -> None:
    p = sub.add_parser("distill", help="curate a task's traffic, train a student, evaluate and register it",
                       description="Curate → train → evaluate (student vs teacher, base model and majority "
                       "answer) → calibrate → register as candidate (or rejected by the gate); --promote makes a "
                       "passing version active. Unchanged data reuses the version trained on it.")
    _distill_flags(p)
    json_flag(p)
    p.add_argument("--task", required=True)
    p.add_argument("--force", action="store_true", help="train even if the dataset is unchanged")
    p.add_argument("--min-rating", type=_rating_floor, default=argparse.SUPPRESS, metavar="R|none",
                   help="leave out exchanges the app rated below R (POST /v1/feedback), in the app's scale; a "
                   "boolean rating counts as 1 or 0; 'none': ratings drop nothing (default: the task's "
                   "tasks.<task>.min_rating setting, else 0.5, which drops a thumbs-down)")
    p.set_defaults(func=cmd_distill)


def _rating_floor(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', not {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError("expected a finite number")
    return value


def cmd_scheduler(args: argparse.Namespace) -> int:
    from distiller.scheduler import RetrainPolicy, apply_retention, run_forever, run_once

    settings = settings_from(args, student_api_base=args.student_api_base)
    try:
        options = _distill_options(args, settings)
    except TrainerFlagError as exc:
        print(f"protege scheduler: {exc}", file=sys.stderr)
        return 2
    policy = RetrainPolicy(min_new_examples=args.min_new_examples,
                           max_age_s=None if args.max_age_days is None else args.max_age_days * 86400,
                           parity_floor=args.parity_floor)

    retention_days = settings.capture.retention_days

    async def work(store: Store) -> int:
        if not args.once:
            await run_forever(store, policy, options, interval_s=args.interval,
                              student_api_base=settings.student_api_base, student_api_key=settings.student_key,
                              retention_days=retention_days)
            return 0
        if retention_days is not None:
            pruned = await apply_retention(store, retention_days)
            print(f"retention: deleted {pruned} exchanges older than {retention_days} days",
                  file=sys.stderr if args.json else sys.stdout)
        results = await run_once(store, policy, options, student_api_base=settings.student_api_base,
                                 student_api_key=settings.student_key,
                                 tasks=args.task or None)
        rows = [{"task": r.task, "reason": r.reason, "version": r.outcome.student.version if r.outcome else None,
                 "status": r.outcome.student.status if r.outcome else r.status, "detail": r.detail}
                for r in results]
        if args.json:
            print(orjson.dumps(rows).decode())
        else:
            for row in rows:
                if row["status"] == "not_enough_data":
                    print(f"{row['task']}: {row['reason']} → not enough data yet, waiting: {row['detail']}")
                elif row["version"] is None:
                    print(f"{row['task']}: {row['reason']} → failed: {row['detail']}")
                else:
                    print(f"{row['task']}: {row['reason']} → version {row['version']} {row['status']}")
            if not rows:
                print("no task is due for retraining")
        return 1 if any(r["status"] == "failed" for r in rows) else 0

    return with_store(settings, work)


def add_scheduler(sub: Subparsers) -> None:
    p = sub.add_parser("scheduler", help="retrain tasks when they are due (new data, age, live parity)",
                       description="Retrain a task when it has --min-new-examples new good examples since its "
                       "newest version, when its active version is older than --max-age-days, or when its live "
                       "parity fell below --parity-floor. One training at a time; a failed run leaves the "
                       "active student untouched. --once suits a cron job or Kubernetes CronJob. Each check first "
                       "deletes exchanges older than capture.retention_days, when the config sets it.")
    _distill_flags(p)
    json_flag(p)
    p.add_argument("--task", action="append", help="only these tasks (repeatable)")
    p.add_argument("--once", action="store_true", help="check once and exit")
    p.add_argument("--interval", type=float, default=600, help="seconds between checks (default 600)")
    p.add_argument("--min-new-examples", type=int, default=200)
    p.add_argument("--max-age-days", type=float, default=7.0)
    p.add_argument("--parity-floor", type=float, default=0.85)
    p.set_defaults(func=cmd_scheduler)


# --- report ------------------------------------------------------------------------------------

def cmd_report(args: argparse.Namespace) -> int:
    from distiller.report import plot_cumulative, render_markdown, render_table
    from gateway.savings import Report, parse_duration
    from gateway.window_report import window_report

    try:
        since_s = None if args.since is None else parse_duration(args.since)
    except ValueError as exc:
        print(f"protege report: {exc}", file=sys.stderr)
        return 2

    async def work(store: Store) -> int:
        now = time.time()
        start = None if since_s is None else now - since_s
        students = await store.list_students(task=args.task)
        names = [args.task] if args.task else [t.name for t in await store.list_tasks()]
        tasks = []
        for name in sorted(names):  # each added up in the store: a few groups, however long the window
            found = await window_report(store, name, [s for s in students if s.task == name], since=start, now=now)
            if found is not None:
                tasks.append(found)
        report = Report(generated_at=now, since=start, tasks=tasks)
        if args.plot:
            try:
                plot_cumulative(report, Path(args.plot))
            except ImportError:
                print("protege report --plot needs matplotlib: pip install 'protege[local]'", file=sys.stderr)
                return 2
        if args.format == "json":
            print(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())
        elif args.format == "markdown":
            print(render_markdown(report), end="")
        else:
            table, notes = render_table(report)
            # ten columns: piped output (no terminal width) gets room rather than rich's 80 columns
            console = Console() if sys.stdout.isatty() else Console(width=200)
            console.print(table if report.tasks else "no traffic captured in this window")
            for note in notes:
                console.print(note, markup=False, highlight=False)
        return 0

    return with_store(settings_from(args), work)


def add_report(sub: Subparsers) -> None:
    from gateway.savings import REPORT_FORMATS

    p = sub.add_parser("report", help="cost, savings against the teacher alone, break-even and parity per task",
                       description="Per task, from the store: requests, actual cost, what the teacher alone would "
                       "have cost, savings, upfront distillation cost, break-even in requests and days at the "
                       "observed volume, and the student's parity. The method is printed with the figures.")
    store_flags(p)
    p.add_argument("--task", help="only this task")
    p.add_argument("--since", metavar="DURATION", help="only traffic of the last DURATION, e.g. 30d, 12h, 2w "
                   "(default: all)")
    p.add_argument("--format", choices=REPORT_FORMATS, default="table", help="table (default), json or markdown")
    p.add_argument("--plot", metavar="FILE", help="also write a PNG of the cumulative cost with and without the "
                   "student (needs matplotlib)")
    p.set_defaults(func=cmd_report)


# --- demo --------------------------------------------------------------------------------------

def add_demo(sub: Subparsers) -> None:
    from distiller.demo.tasks import DEFAULT_TASK, TASKS

    p = sub.add_parser("demo", help="the whole loop on a built-in workload: capture → distil → cascade, with a report",
                       description="Start a model server and a gateway, send a built-in workload with a long system "
                       "prompt to the teacher, distil a prompt-distilled LoRA student, replay held-out requests at "
                       "rollout 100%% and report parity on the task's scorer (with the base model and majority-answer "
                       "baselines), cost, tokens and latency. Tasks: "
                       + "; ".join(f"{name}: {task.what}" for name, task in TASKS.items())
                       + ". Needs the local extra, openai and (for charts) matplotlib.")
    p.add_argument("--task", choices=list(TASKS), default=DEFAULT_TASK, help=f"the workload (default {DEFAULT_TASK}); "
                   "the sizes below default to the task's own")
    p.add_argument("--requests", type=int, help="requests in all; 80%% captured, 20%% held out (default 240 for "
                   "support-extract, 360 for support-replies)")
    p.add_argument("--epochs", type=int, help="LoRA epochs (default 2; 4 for support-replies)")
    p.add_argument("--learning-rate", type=float, help="LoRA learning rate (default 1e-3)")
    p.add_argument("--max-steps", type=int, help="stop training after this many optimizer steps")
    p.add_argument("--max-tokens", type=int, help="max_tokens of each request (default 48; 64 for support-replies)")
    p.add_argument("--validation-fraction", type=float, metavar="FRACTION", help="share of the captured traffic "
                   "the confidence threshold is calibrated on (default 0.2)")
    p.add_argument("--test-fraction", type=float, metavar="FRACTION", help="share of the captured traffic the gate "
                   "evaluates the student on (default 0.1; 0.2 for support-replies)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    p.add_argument("--teacher", metavar="MODEL", help="a hosted teacher, e.g. openai/gpt-4o-mini (key from the "
                   "provider's env var); default: the local model server (SmolLM2)")
    p.add_argument("--teacher-api-base", metavar="URL", help="the hosted teacher's base URL")
    p.add_argument("--teacher-price", type=float, nargs=2, metavar=("IN", "OUT"), help="teacher USD per million "
                   "input and output tokens (default: the price map, or gpt-4o-mini's 0.15 0.60 offline)")
    p.add_argument("--student-price", type=float, nargs=2, metavar=("IN", "OUT"), help="student USD per million "
                   "input and output tokens (default: priced by compute, compute.cpu_hour_usd's 0.10 USD an "
                   "hour over the throughput the model server measures)")
    p.add_argument("--unusual", type=float, metavar="FRACTION", help="share of held-out requests unlike any "
                   "training request (another language, no order, several orders or an out-of-policy request, "
                   "garbled): what the cascade should hand to the teacher (default 0.25)")
    p.add_argument("--model", metavar="PATH", help="local model folder for the model server and the student "
                   "(default SmolLM2-135M-Instruct)")
    p.add_argument("--runs-dir", default="runs/demo", help="where run folders go (default runs/demo)")
    p.add_argument("--gate", type=float, default=0.90, help="minimum student parity to promote (default 0.90)")
    p.add_argument("--target-parity", type=float, default=0.95, help="served parity the confidence threshold is "
                   "calibrated for (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="workload seed (default 0)")
    p.add_argument("--threads", type=int, help="model server torch threads (default: all cores)")
    p.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    json_flag(p)

    def run(args: argparse.Namespace) -> int:
        from distiller.demo.run import cmd_demo

        return cmd_demo(args)

    p.set_defaults(func=run)


def register(sub: Subparsers) -> None:
    for add in (add_export_merged, add_distill, add_scheduler, add_report, add_demo):
        add(sub)
