"""`protege demo`: the whole loop on a built-in workload (`distiller.demo.tasks`), with real processes.

    model server ──┐ (teacher when no hosted teacher is given, and always the student server)
    gateway ───────┘ ← the openai SDK sends the workload through it

1. start the model server (`python -m model_server.server`) and the gateway (`python -m
   protege serve`), both on 127.0.0.1, with a config file in the run folder that names the
   teacher (with its price), the student server and the student's price;
2. capture: the train part of the workload, with its long system prompt, goes to the teacher;
3. distil (in this process, `distiller.pipeline.distill`, promote when it passes the gate);
4. teacher answers: the held-out part at rollout 0% (the reference for parity; sent after distilling
   so that it is not training data);
5. replay: rollout 100% through the admin API, the held-out part again; routes come from the
   `x-protege-route` response headers;
6. the report (`distiller.demo.report`): parity on the scorer the student was registered with (JSON fields,
   or similarity on the run's scale for free text), baselines, cost, tokens, latency, charts; for a task
   with shadow scoring (`support-replies`), the live parity the gateway measured on the same scale.

One code path for both teachers: the model server is started here rather than by the gateway (as
`protege serve` does when no teacher is configured), because the pipeline needs its address to load
and evaluate the student, and a hosted teacher needs it as the student server anyway. Every child
process is stopped in `finally`, and a training process still running (the run was interrupted) is
cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import yaml
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from distiller.dataset import CurationConfig
from distiller.demo.processes import REPO, Child, DemoError, start_child
from distiller.demo.render import write_report
from distiller.demo.report import Answer, DemoReport, MetricsSnapshot, Prices, answer_pairs, build_report
from distiller.demo.scoring import answer_scores, shadow_summary, wait_for_shadow
from distiller.demo.tasks import DEFAULT_TASK, DemoTask, DemoWorkload, demo_task
from distiller.demo.workload import TASK
from distiller.pipeline import DistillOptions, DistillOutcome, distill
from distiller.registry import Gate
from distiller.sufficiency import Minimums
from distiller.trainers.base import TrainingJob
from distiller.trainers.local import LocalLoRATrainer, process_alive
from gateway.compute_price import ComputePricing, read_throughput
from gateway.config import ComputeConfig, Settings
from gateway.embedded import EMBEDDED_MODEL_NAME, free_port
from gateway.pricing import lookup_price
from gateway.store import Exchange, Store, open_store

__all__ = ["REPO", "Child", "DemoError", "DemoOptions", "DemoRun", "demo_options", "run_demo"]

HOST = "127.0.0.1"
# what the offline teacher costs: gpt-4o-mini's list price, standing in for the hosted teacher a real app pays
DEFAULT_TEACHER_PRICE = Prices.per_million(
    0.15, 0.60, "assumed for the simulation: gpt-4o-mini's list price; the local teacher runs on this machine")
PRICE_REFRESH_S = 10  # how often the gateway re-reads the student server's measured throughput


@dataclass(slots=True)
class DemoOptions:
    """The defaults are `support-extract`'s; `demo_options` applies another task's (`DemoTask.defaults`)."""

    task: str = DEFAULT_TASK  # a name in `distiller.demo.tasks.TASKS`
    requests: int = 240  # total tickets; `train_fraction` of them are captured, the rest held out
    train_fraction: float = 0.8
    epochs: int = 2
    learning_rate: float = 1e-3  # LoRA on a 135M model: the trainer's default 2e-4 leaves it half-trained in 2 epochs
    max_steps: int | None = None
    max_tokens: int = 48  # the teacher's one-line JSON answers are 20-37 tokens
    # the share of captured traffic the confidence threshold is calibrated on; the distiller's default 0.1 gives ~17
    # examples here, where one confident mistake moves served parity by 6 points (more than the margin to 0.95)
    validation_fraction: float = 0.2
    test_fraction: float = 0.1  # the share of captured traffic the gate evaluates the student on (the distiller's)
    minimums: Minimums = field(default_factory=Minimums)  # split sizes below which the distiller trains nothing
    concurrency: int = 8
    runs_dir: Path = Path("runs/demo")
    teacher: str | None = None  # litellm model string of a hosted teacher; None: the local model server
    teacher_api_base: str | None = None
    teacher_price: Prices | None = None  # None: the price map (hosted) or gpt-4o-mini's price (local)
    student_price: Prices | None = None  # None: priced by compute (cpu_hour_usd over the measured throughput)
    unusual_fraction: float = 0.25  # of the held-out tickets: unlike any training ticket (see the workload)
    base_model: str | None = None  # local model folder for the model server and the student; None: SmolLM2
    gate: float = 0.90
    target_parity: float = 0.95
    seed: int = 0
    stop: tuple[str, ...] | None = None  # None: the task's with the local teacher ("\n" for JSON), none for hosted
    threads: int | None = None  # model server torch threads; None: all cores
    startup_timeout_s: float = 300
    charts: bool = True

    @property
    def local_teacher(self) -> bool:
        return self.teacher is None

    @property
    def spec(self) -> DemoTask:
        return demo_task(self.task)

    def stop_sequences(self) -> list[str] | None:
        stop = self.stop if self.stop is not None else (self.spec.local_stop if self.local_teacher else ())
        return list(stop) or None

    def build_workload(self) -> DemoWorkload:
        return self.spec.build_workload(self.requests, train_fraction=self.train_fraction, seed=self.seed,
                                        unusual_fraction=self.unusual_fraction)


def demo_options(task: str = DEFAULT_TASK, **given: Any) -> DemoOptions:
    """The options of `task`: its own defaults, then every value given that is not None."""
    values = {**demo_task(task).defaults, **{k: v for k, v in given.items() if v is not None}}
    return DemoOptions(task=task, **values)


# --- the run ---------------------------------------------------------------------------------------------

@dataclass(slots=True)
class DemoRun:
    """The demo's processes and how to talk to them (also used by `bench/cascade` on a finished run)."""

    options: DemoOptions
    workload: DemoWorkload
    run_dir: Path  # config, logs and the store (unless `store_file` names another)
    store_file: Path | None = None
    children: list[Child] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    model_port: int = 0
    gateway_port: int = 0
    served_name: str = EMBEDDED_MODEL_NAME
    cascade: dict[str, Any] = field(default_factory=dict)  # the gateway's cascade settings beyond the demo's

    @property
    def task(self) -> str:
        return self.workload.task

    @property
    def model_api_base(self) -> str:
        return f"http://{HOST}:{self.model_port}/v1"

    @property
    def gateway_url(self) -> str:
        return f"http://{HOST}:{self.gateway_port}"

    @property
    def store_url(self) -> str:
        return f"sqlite:///{(self.store_file or self.run_dir / 'store.db').resolve()}"

    def teacher_model(self) -> str:
        return self.options.teacher or f"openai/{self.served_name}"

    def teacher_price(self) -> Prices:
        teacher = self.options.teacher_price
        if teacher is None and not self.options.local_teacher:
            known = lookup_price(self.teacher_model())
            teacher = Prices(known.input_per_token, known.output_per_token, "list price (litellm's price map)") \
                if known else None
        return teacher or DEFAULT_TEACHER_PRICE

    async def student_price(self) -> Prices:
        """The given price, else the one the gateway bills: compute time over the model server's throughput."""
        if self.options.student_price is not None:
            return self.options.student_price
        pricing = ComputePricing(self.model_api_base, ComputeConfig())
        async with httpx.AsyncClient(timeout=10) as client:
            measured = await read_throughput(client, pricing.server_root)
        price, source = pricing.price(measured)
        if price is None:
            return Prices(0.0, 0.0, source)
        return Prices(price.input_per_token, price.output_per_token,
                      f"{source}, as at the end of the replay (the gateway re-reads it every {PRICE_REFRESH_S} s)")

    def gateway_config(self) -> dict[str, Any]:
        teacher_price = self.teacher_price()
        teacher: dict[str, Any] = {"model": self.teacher_model(), "input_cost_per_token": teacher_price.input_per_token,
                                   "output_cost_per_token": teacher_price.output_per_token}
        settings: dict[str, Any] = {}
        if self.options.local_teacher:
            # an explicit dummy key: a real OPENAI_API_KEY in the environment is never sent to the local server
            teacher.update(api_base=self.model_api_base, api_key="local")
            # a CPU model server queues long prompts: on a busy 2-core machine the default 120 s is not enough
            settings["timeout_s"] = 600
        elif self.options.teacher_api_base:
            teacher["api_base"] = self.options.teacher_api_base
        given = self.options.student_price
        student_price = {} if given is None else {"input_cost_per_token": given.input_per_token,
                                                  "output_cost_per_token": given.output_per_token}
        return {
            "host": HOST, "port": self.gateway_port, "store": self.store_url, "teachers": [teacher], **settings,
            "student_api_base": self.model_api_base, "log_level": "warning",
            # shadow scoring: the teacher is asked too for this share of student answers, and the pair is scored
            # on the version's scorer (similarity through the model server's /v1/embeddings): live parity
            "cascade": {"refresh_s": 0.5, "shadow_rate": self.options.spec.shadow_rate, "timeout_s": 60,
                        **student_price, **self.cascade},
            "compute": {"price_refresh_s": PRICE_REFRESH_S},
        }

    # --- processes ---

    def start_model_server(self) -> None:
        self.model_port = free_port(HOST)
        cmd = [sys.executable, "-m", "model_server.server", "--host", HOST, "--port", str(self.model_port),
               "--log-level", "warning"]
        if self.options.base_model:
            self.served_name = Path(self.options.base_model).name
            cmd += ["--model", str(self.options.base_model)]
        cmd += ["--served-model-name", self.served_name]
        if self.options.threads:
            cmd += ["--threads", str(self.options.threads)]
        self.children.append(start_child("model server", cmd, self.run_dir / "model-server.log",
                                         f"http://{HOST}:{self.model_port}/healthz", self.options.startup_timeout_s))

    def start_gateway(self) -> None:
        self.gateway_port = free_port(HOST)
        config = self.run_dir / "protege.yaml"
        config.write_text(yaml.safe_dump(self.gateway_config(), sort_keys=False), encoding="utf-8")
        cmd = [sys.executable, "-m", "protege", "serve", "--config", str(config), "--port",
               str(self.gateway_port), "--store", self.store_url, "--log-level", "warning"]
        self.children.append(start_child("gateway", cmd, self.run_dir / "gateway.log", f"{self.gateway_url}/healthz",
                                         60, env={"PROTEGE_ADMIN_TOKEN": self.admin_token}))

    def restart_gateway(self, **cascade: Any) -> None:
        """The gateway again, with these cascade settings (`bench/cascade` compares early stop and the predictor
        on and off); the store keeps the rollout and the threshold."""
        gateways = [c for c in self.children if c.name == "gateway"]
        for child in gateways:
            child.stop()
            self.children.remove(child)
        self.cascade = dict(cascade)
        self.start_gateway()

    def stop_all(self) -> None:
        for job_dir in self.run_dir.glob("distill/*/*/training"):
            # an interrupted run leaves its detached training process behind: cancel it
            with contextlib.suppress(OSError, ValueError, KeyError):
                job = TrainingJob.load(job_dir)
                if process_alive(int(job.details["pid"])):
                    LocalLoRATrainer().cancel(job)
        for child in reversed(self.children):
            child.stop()
        self.children.clear()

    # --- traffic ---

    async def send(self, indices: Sequence[int], progress: Progress, label: str) -> list[Answer]:
        """Send these tickets (by workload index) through the gateway, `concurrency` at a time."""
        task_id = progress.add_task(label, total=len(indices))
        semaphore = asyncio.Semaphore(self.options.concurrency)
        stop = self.options.stop_sequences()
        model = self.teacher_model().split("/", 1)[-1]
        async with openai.AsyncOpenAI(base_url=f"{self.gateway_url}/v1", api_key="unused", max_retries=0,
                                      timeout=600) as client:

            response_format: Any = {"type": "json_object"} if self.options.spec.json_answers else openai.omit

            async def one(index: int, ticket: Any) -> Answer:
                messages: Any = self.workload.messages(ticket)
                async with semaphore:
                    started = time.perf_counter()
                    try:
                        raw = await client.chat.completions.with_raw_response.create(
                            model=model, messages=messages, temperature=0, max_tokens=self.options.max_tokens,
                            stop=stop or openai.omit, response_format=response_format,
                            extra_headers={"X-Protege-Task": self.task})
                        completion = raw.parse()
                        confidence = raw.headers.get("x-protege-confidence")
                        answer = Answer(index, raw.headers.get("x-request-id"), raw.headers.get("x-protege-route"),
                                        time.perf_counter() - started, completion.choices[0].message.content,
                                        confidence=float(confidence) if confidence is not None else None)
                    except openai.APIError as exc:
                        answer = Answer(index, None, None, time.perf_counter() - started, None,
                                        error=f"{type(exc).__name__}: {exc}"[:300])
                progress.advance(task_id)
                return answer

            tickets = self.workload.tickets
            return list(await asyncio.gather(*(one(i, tickets[i]) for i in indices)))

    async def metrics(self) -> MetricsSnapshot:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(f"{self.gateway_url}/metrics",
                                        headers={"authorization": f"Bearer {self.admin_token}"})
        response.raise_for_status()
        values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.labels.get("task", self.task) == self.task and sample.name.endswith("_total"):
                    values[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
        return MetricsSnapshot(values)

    async def admin(self, path: str, body: dict[str, Any]) -> None:
        """PUT an admin setting of the demo task, e.g. `rollout` or `threshold`."""
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.put(f"{self.gateway_url}/admin/tasks/{self.task}/{path}", json=body,
                                        headers={"authorization": f"Bearer {self.admin_token}"})
        if response.status_code != 200:
            raise DemoError(f"the gateway refused {path} {body}: {response.status_code} {response.text[:300]}")

    async def set_rollout(self, percent: float) -> None:
        await self.admin("rollout", {"percent": percent})


async def wait_for_rows(store: Store, request_ids: set[str], timeout_s: float = 60,
                        task: str = TASK) -> dict[str, Exchange]:
    """The captured rows of these requests (capture is asynchronous and batched: wait for all of them)."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = {e.request_id: e for e in await store.list_exchanges(task=task) if e.request_id in request_ids}
        if len(rows) == len(request_ids) or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.2)


def progress_display(console: Console) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)


class _Phase:
    """Times a phase into `timings`; one line when it ends (progress bars only show on a terminal)."""

    def __init__(self, timings: dict[str, float], name: str, console: Console) -> None:
        self.timings, self.name, self.console = timings, name, console

    def __enter__(self) -> None:
        self.started = time.monotonic()

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.timings[self.name] = round(time.monotonic() - self.started, 1)
        if kind is None:
            self.console.log(f"{self.name.removesuffix('_s')} done in {self.timings[self.name]:.0f} s")


def start_processes(run: DemoRun, progress: Progress) -> None:
    # from the main thread: the children's parent-death signal is tied to the thread that started them
    with _Phase(run.timings, "startup_s", progress.console):
        startup = progress.add_task("starting the model server and the gateway", total=2)
        run.start_model_server()
        progress.advance(startup)
        run.start_gateway()
        progress.advance(startup)


async def _run_phases(run: DemoRun, progress: Progress) -> DemoReport:
    options, workload, timings = run.options, run.workload, run.timings
    console = progress.console
    store = open_store(run.store_url)
    await store.open()
    try:
        before_capture = await run.metrics()
        with _Phase(timings, "capture_s", console):
            label = f"capture: {len(workload.train)} tickets → teacher"
            captured = await run.send(workload.train_indices, progress, label)
            failed = [a for a in captured if a.error is not None]
            if len(failed) == len(captured):
                raise DemoError(f"every capture request failed, e.g. {failed[0].error}; logs in {run.run_dir}")
            capture_rows = await wait_for_rows(store, {a.request_id for a in captured if a.request_id}, task=run.task)

        with _Phase(timings, "distill_s", console):
            outcome = await _distill(run, store, progress)

        with _Phase(timings, "teacher_pass_s", console):
            before_teacher = await run.metrics()
            reference = await run.send(workload.held_out_indices, progress,
                                       f"teacher answers: {len(workload.held_out)} held-out tickets, rollout 0%")
            after_teacher = await run.metrics()

        promoted = outcome.student.status == "active"
        if promoted:
            await run.set_rollout(100)
        shadow_rows: list[Exchange] = []
        with _Phase(timings, "replay_s", console):
            label = f"replay: {len(workload.held_out)} held-out tickets, rollout {100 if promoted else 0}%"
            replayed = await run.send(workload.held_out_indices, progress, label)
            after_replay = await run.metrics()
        shadow_rate = options.spec.shadow_rate
        if promoted and shadow_rate > 0:
            with _Phase(timings, "shadow_wait_s", console):
                progress.add_task("shadow scoring: waiting for the gateway's teacher calls", total=None)
                shadow_rows = await wait_for_shadow(store, run.task, replayed, rate=shadow_rate)
                after_replay = await run.metrics()
        ids = {a.request_id for a in (*reference, *replayed) if a.request_id}
        rows = {**capture_rows, **await wait_for_rows(store, ids, task=run.task)}
        teacher_price, student_price = run.teacher_price(), await run.student_price()
        with _Phase(timings, "scoring_s", console):
            score = await answer_scores(outcome, run.model_api_base, answer_pairs(captured, reference, replayed, rows))
    finally:
        await store.close()
    replay_metrics = after_teacher.delta(after_replay)
    shadow = shadow_summary(shadow_rows, replayed, outcome.student.version, shadow_rate, replay_metrics) \
        if promoted and shadow_rate > 0 else None
    return build_report(
        run_dir=run.run_dir, workload=workload, teacher=run.teacher_model(), outcome=outcome, promoted=promoted,
        captured=captured, reference=reference, replayed=replayed, rows=rows,
        metrics={"capture": before_capture.delta(before_teacher), "teacher_pass": before_teacher.delta(after_teacher),
                 "replay": replay_metrics},
        teacher_price=teacher_price, student_price=student_price, timings=dict(timings), score=score,
        json_fields=options.spec.json_answers, checks=options.spec.checks, shadow=shadow,
        settings={"task": options.task, "requests": options.requests, "train_fraction": options.train_fraction,
                  "epochs": options.epochs,
                  "learning_rate": options.learning_rate,
                  "max_steps": options.max_steps, "validation_fraction": options.validation_fraction,
                  "test_fraction": options.test_fraction,
                  "max_tokens": options.max_tokens, "concurrency": options.concurrency, "seed": options.seed,
                  "stop": options.stop_sequences(), "base_model": options.base_model or "SmolLM2-135M-Instruct",
                  "gate": options.gate, "target_parity": options.target_parity,
                  "unusual_fraction": options.unusual_fraction, "keep_truncated": options.spec.keep_truncated,
                  "shadow_rate": shadow_rate})


async def _distill(run: DemoRun, store: Store, progress: Progress) -> DistillOutcome:
    options = run.options
    trainer_config: dict[str, Any] = {"epochs": options.epochs, "learning_rate": options.learning_rate}
    if options.max_steps is not None:
        trainer_config["max_steps"] = options.max_steps
    # the gateway's settings: the distiller asks the same teacher (at its price) for the similarity scale
    settings = Settings.model_validate(run.gateway_config())
    distill_options = DistillOptions(
        runs_dir=run.run_dir / "distill", trainer="local", trainer_config=trainer_config,
        curation=CurationConfig(validation_fraction=options.validation_fraction, test_fraction=options.test_fraction,
                                keep_truncated=options.spec.keep_truncated),
        settings=settings, base_model=options.base_model, gate=Gate(options.gate),
        target_parity=options.target_parity, promote=True, minimums=options.minimums,
        max_eval_tokens=options.max_tokens, poll_interval_s=0.5)
    task_id = progress.add_task("distil: curate", total=1.0)

    def report(message: str, fraction: float | None) -> None:
        progress.update(task_id, description=f"distil: {message}",
                        completed=fraction if fraction is not None and message.startswith("training") else None)

    outcome = await distill(store, run.task, distill_options, student_api_base=run.model_api_base, progress=report)
    progress.update(task_id, completed=1.0, description=f"distil: version {outcome.student.version} "
                    f"{outcome.student.status} ({outcome.gate_message})")
    return outcome


def run_demo(options: DemoOptions, *, console: Console | None = None) -> DemoReport:
    """Run the demo end to end and write its report into a new folder under `options.runs_dir`."""
    console = console or Console(stderr=True)
    workload = options.build_workload()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = options.runs_dir / stamp
    for n in range(2, 100):
        if not run_dir.exists():
            break
        run_dir = options.runs_dir / f"{stamp}-{n}"  # two runs in the same second
    run_dir.mkdir(mode=0o700, parents=True)  # captured prompts and datasets: this user's only
    run = DemoRun(options, workload, run_dir.resolve())
    started = time.monotonic()
    try:
        with progress_display(console) as progress:
            start_processes(run, progress)
            report = asyncio.run(_run_phases(run, progress))
    finally:
        run.stop_all()
    report.timings_s["total_s"] = round(time.monotonic() - started, 1)
    write_report(report, charts=options.charts)
    return report


def _interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def cmd_demo(args: Any) -> int:
    """`protege demo` (flags defined in `distiller.cli.add_demo`)."""
    import orjson

    from distiller.demo.render import summary_table
    from distiller.pipeline import DistillError

    # flags left out (None) take the task's defaults
    options = demo_options(
        args.task, requests=args.requests, epochs=args.epochs, learning_rate=args.learning_rate,
        max_steps=args.max_steps, max_tokens=args.max_tokens, validation_fraction=args.validation_fraction,
        test_fraction=args.test_fraction,
        concurrency=args.concurrency, runs_dir=Path(args.runs_dir), teacher=args.teacher,
        teacher_api_base=args.teacher_api_base,
        teacher_price=Prices.per_million(*args.teacher_price) if args.teacher_price else None,
        student_price=Prices.per_million(*args.student_price) if args.student_price else None,
        unusual_fraction=args.unusual, base_model=args.model, gate=args.gate, target_parity=args.target_parity,
        seed=args.seed, threads=args.threads, charts=not args.no_charts)
    # SIGTERM (and SIGINT, which a shell ignores in background jobs) unwind through run_demo's cleanup
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _interrupted)
    try:
        report = run_demo(options)
    except (DemoError, DistillError) as exc:
        print(f"protege demo: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())
        return 0
    console = Console()
    console.print(summary_table(report))
    for note in report.notes:
        console.print(f"note: {note}")
    console.print(f"total {report.timings_s['total_s']:.0f} s; report: {report.run_dir}/report.md")
    return 0
