"""The cascade curve on the demo task, measured through the gateway: student share vs parity vs cost.

    python -m bench.cascade                      # runs `protege demo` first (~8-15 min on 2 cores), then measures
    python -m bench.cascade --from-run runs/demo/20261121-081442    # measures a finished demo run again

On a finished demo run (its store holds the captured traffic and the promoted, calibrated student) the
benchmark starts the model server and the gateway again and sends the run's held-out tickets through
the gateway three times (the openai SDK as the client; routes, confidences and answers from the
responses, costs from the captured rows — the gateway's own pricing):

1. rollout 0 %: the teacher's answers, the reference for parity and the teacher-only cost;
2. rollout 100 % with a threshold every answer reaches (validators only): the student's answer and confidence
   for every ticket, so the curve can be drawn for every threshold — a ticket is served by the student when its
   confidence reaches the threshold and its answer passes the validators, otherwise it falls back and
   pays the teacher's answer too;
3. rollout 100 % at the calibrated threshold (chosen by the distiller on the validation split, never on
   these tickets): the measured operating point, to check against the curve's prediction;
4. the same cascade four more times, the gateway restarted with early stop (`cascade.early_stop`) and the
   pre-generation predictor (`cascade.predictor`) each off and on: what a rejected request costs in student
   tokens and in latency (fallback p50/p99), the student's share, served parity and cost under each. The
   predictor acts only where the distiller turned it on for the version; the result says whether it did.

Parity is agreement with the reference (`gateway.scoring.agreement`, JSON field by field) with a 95 %
bootstrap interval; a fallback's answer is the teacher's own. Cost per request is relative to the
teacher-only pass (1.0). APGR is RouteLLM's average performance gap recovered over the curve (parity
normalised between student-only and teacher-only, averaged over student shares). The majority-answer
baseline (the most common value of each field among the captured answers) is reported beside it.
Output: bench/results/cascade/<time>/cascade.json, cascade.md and cascade.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from distiller.calibrate import CurvePoint, apgr
from distiller.demo.report import Answer, agree, student_message
from distiller.demo.run import DemoOptions, DemoRun, progress_display, run_demo, start_processes, wait_for_rows
from distiller.demo.workload import TASK, build_workload
from distiller.evaluate import EvalExample, bootstrap_ci, majority_answer
from gateway.store import Exchange, open_store

TARGET_PARITY = 0.95
TARGET_COST = 0.20  # of teacher-only
ACCEPT_ANY = -1e9  # a confidence threshold every answer reaches


@dataclass(frozen=True, slots=True)
class Sample:
    """One held-out ticket: what the teacher and the student answered and what each answer cost."""

    index: int
    teacher_cost: float
    student_cost: float
    confidence: float | None  # None: the student did not answer (error)
    valid: bool  # the student's answer passed the validators
    agreement: float  # the student's answer vs the teacher's (0 when it did not answer)


@dataclass(frozen=True, slots=True)
class Point:
    threshold: float | None  # None: validators only; inf: nothing served
    student_share: float
    parity: float
    cost: float  # per request, relative to teacher-only


def curve(samples: Sequence[Sample]) -> list[Point]:
    """The operating points of every threshold, from teacher-only (no student asked) to validators-only.

    The student is asked whenever the rollout includes a ticket, so every point but teacher-only pays
    its answers; a fallback pays the teacher's too and its answer agrees with the teacher (parity 1)."""
    n = len(samples)
    if n == 0:
        return []
    teacher_total = sum(s.teacher_cost for s in samples)
    student_total = sum(s.student_cost for s in samples)
    points = [Point(float("inf"), 0.0, 1.0, 1.0)]
    scores = sorted({s.confidence for s in samples if s.confidence is not None and s.valid}, reverse=True)
    for threshold in scores:
        served = [s for s in samples if s.valid and s.confidence is not None and s.confidence >= threshold]
        parity = (sum(s.agreement for s in served) + n - len(served)) / n
        paid = student_total + teacher_total - sum(s.teacher_cost for s in served)
        points.append(Point(threshold, len(served) / n, parity, paid / teacher_total if teacher_total else 0.0))
    return points


def predicted(points: Sequence[Point], threshold: float | None) -> Point:
    """The curve's point for a threshold (None: validators only, the last point)."""
    if threshold is None:
        return points[-1]
    reached = [p for p in points if p.threshold is not None and p.threshold >= threshold]
    return min(reached, key=lambda p: p.threshold if p.threshold is not None else 0.0)


def area_and_apgr(points: Sequence[Point]) -> float:
    return apgr([CurvePoint(p.threshold or 0.0, p.student_share, p.parity, p.cost) for p in points])


# --- measuring a run -------------------------------------------------------------------------------------

def _cost(row: Exchange | None) -> float:
    return float(row.cost_usd or 0.0) if row is not None else 0.0


async def _active_student(run: DemoRun) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(f"{run.gateway_url}/admin/tasks",
                                    headers={"authorization": f"Bearer {run.admin_token}"})
    response.raise_for_status()
    active = [s for t in response.json()["tasks"] if t["task"] == TASK for s in t["students"]
              if s.get("status") == "active"]
    if not active:
        raise SystemExit(f"the run has no active student for {TASK}: nothing to measure (was it promoted?)")
    return dict(active[0])


async def measure(run: DemoRun, console: Console) -> dict[str, Any]:
    indices = run.workload.held_out_indices
    store = open_store(run.store_url)
    await store.open()
    try:
        with progress_display(console) as progress:
            student = await _active_student(run)
            calibrated = student.get("threshold")
            await run.set_rollout(0)
            reference = await run.send(indices, progress, "teacher-only: reference answers")
            # a threshold no answer misses: the student answers every ticket (a version without a threshold
            # serves no routed traffic at all)
            await run.admin("threshold", {"threshold": ACCEPT_ANY})
            await run.set_rollout(100)
            asked = await run.send(indices, progress, "student, validators only: every answer and confidence")
            if not any(a.route in ("student", "fallback") for a in asked):  # a curve of nothing: say so, loudly
                raise RuntimeError("at 100 % rollout the student answered none of the tickets: the model server "
                                   f"could not load it? ({run.run_dir}/model-server.log)")
            await run.admin("threshold", {"threshold": calibrated})
            served = await run.send(indices, progress, f"cascade at the calibrated threshold {calibrated}")
            variant_answers = await _variant_passes(run, indices, progress)
        ids = {a.request_id for a in (*reference, *asked, *served, *(a for v in variant_answers.values() for a in v))
               if a.request_id}
        rows = await wait_for_rows(store, ids)
        # the majority baseline learns from the train part only (the store also holds the demo's own
        # held-out passes)
        train = {run.workload.messages(t)[-1]["content"] for t in run.workload.train}
        captured = [e for e in await store.list_exchanges(task=TASK) if e.route == "teacher"
                    and (e.request.get("messages") or [{}])[-1].get("content") in train]
    finally:
        await store.close()
    result = summarise(run, student, reference, asked, served, rows, captured)
    result["variants"] = {name: variant(answers, reference, rows) for name, answers in variant_answers.items()}
    result["predictor"] = {k: (student.get("predictor") or {}).get(k) for k in ("enabled", "reason")}
    return result


VARIANTS = {"early stop off, predictor off": (False, False), "early stop on, predictor off": (True, False),
            "early stop off, predictor on": (False, True), "early stop on, predictor on": (True, True)}


async def _variant_passes(run: DemoRun, indices: range, progress: Any) -> dict[str, list[Answer]]:
    answers = {}
    for name, (early_stop, predictor) in VARIANTS.items():
        run.restart_gateway(early_stop=early_stop, predictor=predictor)  # the store keeps rollout and threshold
        answers[name] = await run.send(indices, progress, f"cascade, {name}")
    return answers


def _percentile(values: Sequence[float], q: float) -> float | None:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


def variant(answers: Sequence[Answer], reference: Sequence[Answer], rows: dict[str, Exchange]) -> dict[str, Any]:
    """One cascade pass: routes, what each rejected request cost in student tokens and time, parity, cost."""
    refs = {a.index: a for a in reference if a.error is None}
    teacher_total = sum(_cost(rows.get(a.request_id or "")) for a in refs.values())
    measured = [a for a in answers if a.index in refs]
    fallbacks = [a for a in measured if a.route == "fallback"]
    notes = [r.extra.student for a in fallbacks if (r := rows.get(a.request_id or "")) and r.extra.student]
    tokens = [n.completion_tokens for n in notes if n.completion_tokens is not None]
    # a self-hosted student is priced by compute (CPU-hour over the model server's measured throughput), so its
    # price per token moves from pass to pass: compare passes by tokens, or by cost at each pass's own price
    served = [r for a in measured if a.route == "student" and (r := rows.get(a.request_id or ""))]
    served_tokens = sum((r.prompt_tokens or 0) + (r.completion_tokens or 0) for r in served)
    scores = [agree(a.content if a.error is None else None, refs[a.index].content) for a in measured]
    parity = bootstrap_ci(scores)
    return {
        "requests": len(measured), "errors": sum(a.error is not None for a in answers),
        "routes": {route: sum(a.route == route for a in measured) for route in ("student", "fallback", "teacher")},
        "student_share": sum(a.route == "student" for a in measured) / len(measured) if measured else None,
        "served_parity": parity.mean, "served_parity_ci": [parity.ci_low, parity.ci_high],
        "cost": sum(_cost(rows.get(a.request_id or "")) for a in measured) / teacher_total if teacher_total else None,
        "fallback_latency_s": {"p50": _percentile([a.latency_s for a in fallbacks], 0.5),
                               "p99": _percentile([a.latency_s for a in fallbacks], 0.99), "n": len(fallbacks)},
        "student_tokens_per_rejected_request": sum(tokens) / len(tokens) if tokens else None,
        "student_cost_per_rejected_request_usd": (sum(n.cost_usd or 0.0 for n in notes) / len(notes)
                                                  if notes else None),
        "student_price_per_token_usd": sum(_cost(r) for r in served) / served_tokens if served_tokens else None,
    }


def summarise(run: DemoRun, student: dict[str, Any], reference: Sequence[Answer], asked: Sequence[Answer],
              served: Sequence[Answer], rows: dict[str, Exchange], captured: Sequence[Exchange]) -> dict[str, Any]:
    def row(answer: Answer) -> Exchange | None:
        return rows.get(answer.request_id or "")

    refs = {a.index: a for a in reference if a.error is None}
    samples = []
    for a in asked:
        ref = refs.get(a.index)
        if ref is None:
            continue  # the teacher failed on it: no reference
        r = row(a)
        if a.route == "student":
            content, student_cost, valid = a.content, _cost(r), True
        else:  # fallback: the validators (or an error) rejected the student's answer; the row keeps it
            content = student_message(r)
            note = r.extra.student if r is not None else None
            student_cost = float(note.cost_usd or 0.0) if note is not None else 0.0
            valid = False
        samples.append(Sample(a.index, _cost(row(ref)), student_cost, a.confidence, valid,
                              agree(content, ref.content) if content is not None else 0.0))
    points = curve(samples)
    threshold = student.get("threshold")
    teacher_total = sum(s.teacher_cost for s in samples)
    measured_rows = [(a, refs[a.index]) for a in served if a.index in refs]
    measured_scores = [agree(a.content if a.error is None else None, ref.content) for a, ref in measured_rows]
    measured_ci = bootstrap_ci(measured_scores)
    measured_cost = sum(_cost(row(a)) for a, _ in measured_rows)
    measured: dict[str, Any] = {
        "student_share": sum(a.route == "student" for a, _ in measured_rows) / len(measured_rows),
        "fallback_share": sum(a.route == "fallback" for a, _ in measured_rows) / len(measured_rows),
        "parity": measured_ci.mean, "parity_ci": [measured_ci.ci_low, measured_ci.ci_high],
        "cost": measured_cost / teacher_total if teacher_total else None,
        "errors": sum(a.error is not None for a in served),
    }
    alone = bootstrap_ci([s.agreement for s in samples])
    majority = majority_answer([EvalExample([], r.response["choices"][0]["message"]) for r in captured
                                if r.response and r.status == "ok"])
    majority_scores = [agree(str(majority.get("content") or ""), ref.content) for ref in refs.values()]
    teacher_rows = [row(a) for a in reference]
    return {
        "task": TASK, "run": str(run.run_dir), "student": student.get("version"), "held_out": len(samples),
        "confidence_method": student.get("confidence_method"), "calibrated_threshold": threshold,
        "teacher_cost_per_request_usd": teacher_total / len(samples) if samples else None,
        "teacher_input_tokens_per_request": _mean(r.prompt_tokens for r in teacher_rows if r),
        "student_input_tokens_per_request": _mean(row(a).prompt_tokens for a in asked  # type: ignore[union-attr]
                                                  if a.route == "student" and row(a)),
        "student_alone": {"parity": alone.mean, "parity_ci": [alone.ci_low, alone.ci_high],
                          "valid_share": sum(s.valid for s in samples) / len(samples) if samples else None},
        "majority_baseline": {"parity": bootstrap_ci(majority_scores).mean},
        "predicted": asdict(predicted(points, threshold)),
        "measured": measured,
        "apgr": area_and_apgr(points),
        "targets": {"parity": TARGET_PARITY, "cost": TARGET_COST,
                    "met": measured["parity"] >= TARGET_PARITY and (measured["cost"] or 1.0) <= TARGET_COST},
        "curve": [asdict(p) for p in points],
    }


def _mean(values: Any) -> float | None:
    data = [float(v) for v in values if v is not None]
    return round(sum(data) / len(data), 1) if data else None


# --- output ----------------------------------------------------------------------------------------------

def to_markdown(result: dict[str, Any]) -> str:
    m, p, alone = result["measured"], result["predicted"], result["student_alone"]
    lines = [
        f"### Cascade on the demo task ({result['held_out']} held-out tickets, student v{result['student']}, "
        f"{result['confidence_method']}, calibrated threshold {result['calibrated_threshold']})",
        "",
        "| point | student share | parity with the teacher | cost per request (teacher-only = 1) |",
        "| --- | --- | --- | --- |",
        "| teacher only | 0 % | 1.000 | 1.000 |",
        f"| calibrated, predicted by the curve | {p['student_share']:.0%} | {p['parity']:.3f} | {p['cost']:.3f} |",
        f"| calibrated, measured | {m['student_share']:.0%} (fallback {m['fallback_share']:.0%}) | "
        f"{m['parity']:.3f} [{m['parity_ci'][0]:.3f}–{m['parity_ci'][1]:.3f}] | {m['cost']:.3f} |",
        f"| student alone (validators only) | {alone['valid_share']:.0%} valid | {alone['parity']:.3f} "
        f"[{alone['parity_ci'][0]:.3f}–{alone['parity_ci'][1]:.3f}] | {result['curve'][-1]['cost']:.3f} |",
        f"| majority-answer baseline | – | {result['majority_baseline']['parity']:.3f} | – |",
        "",
        f"APGR {result['apgr']:.3f}; teacher cost per request ${result['teacher_cost_per_request_usd']:.7f}; input "
        f"tokens per request {result['teacher_input_tokens_per_request']} (teacher) → "
        f"{result['student_input_tokens_per_request']} (student). Target ≥ {TARGET_PARITY:.0%} parity at ≤ "
        f"{TARGET_COST:.0%} cost: {'met' if result['targets']['met'] else 'NOT met'}.",
        "",
        f"Early stop and the pre-generation predictor (the version's predictor: {result['predictor']['reason']}):",
        "",
        "| cascade | student / fallback / teacher | served parity | cost | fallback latency p50 / p99 (s) | "
        "student tokens / USD per rejected request | student price per token (USD, measured) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *(f"| {name} | {v['routes']['student']} / {v['routes']['fallback']} / {v['routes']['teacher']} | "
          f"{v['served_parity']:.3f} [{v['served_parity_ci'][0]:.3f}–{v['served_parity_ci'][1]:.3f}] | "
          f"{_fmt(v['cost'])} | {_fmt(v['fallback_latency_s']['p50'], 2)} / {_fmt(v['fallback_latency_s']['p99'], 2)} "
          f"| {_fmt(v['student_tokens_per_rejected_request'], 1)} / {_usd(v['student_cost_per_rejected_request_usd'])} "
          f"| {_usd(v['student_price_per_token_usd'])} |" for name, v in result["variants"].items()),
        "",
        "| threshold | student share | parity | cost |",
        "| --- | --- | --- | --- |",
    ]
    for point in result["curve"]:
        lines.append(f"| {point['threshold']:.4f} | {point['student_share']:.0%} | {point['parity']:.3f} "
                     f"| {point['cost']:.3f} |")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _usd(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def write_chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shares = [p["student_share"] for p in result["curve"]]
    fig, parity_axis = plt.subplots(figsize=(7, 4.5))
    parity_axis.plot(shares, [p["parity"] for p in result["curve"]], marker=".", label="parity with the teacher")
    m = result["measured"]
    parity_axis.scatter([m["student_share"]], [m["parity"]], color="red", zorder=3, label="calibrated, measured")
    parity_axis.axhline(TARGET_PARITY, color="grey", linestyle=":", label=f"target parity {TARGET_PARITY:.0%}")
    parity_axis.axhline(result["majority_baseline"]["parity"], color="black", linestyle="--",
                        label="majority-answer baseline")
    parity_axis.set_xlabel("share of traffic served by the student")
    parity_axis.set_ylabel("parity")
    parity_axis.set_ylim(0, 1.02)
    cost_axis = parity_axis.twinx()
    cost_axis.plot(shares, [p["cost"] for p in result["curve"]], color="green", linestyle="-.", label="cost")
    cost_axis.set_ylabel("cost per request (teacher-only = 1)")
    cost_axis.set_ylim(0, 1.1)
    handles = parity_axis.get_legend_handles_labels()[0] + cost_axis.get_legend_handles_labels()[0]
    parity_axis.legend(handles=handles, loc="lower left", fontsize=8)
    parity_axis.set_title(f"Cascade on {result['task']}: APGR {result['apgr']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- main ------------------------------------------------------------------------------------------------

def _demo_run(run_dir: Path, out: Path) -> DemoRun:
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    settings = report["settings"]
    options = DemoOptions(requests=settings["requests"], train_fraction=settings.get("train_fraction", 0.8),
                          seed=settings["seed"], max_tokens=settings["max_tokens"],
                          concurrency=settings["concurrency"], runs_dir=out)
    workload = build_workload(options.requests, train_fraction=options.train_fraction, seed=options.seed)
    return DemoRun(options, workload, out.resolve(), store_file=(run_dir / "store.db").resolve())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cascade", description=__doc__.splitlines()[0])
    parser.add_argument("--from-run", metavar="DIR", type=Path,
                        help="a finished `protege demo` run folder (default: run the demo first)")
    parser.add_argument("--requests", type=int, default=240, help="demo tickets when running the demo (default 240)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/cascade"), help="results folder")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    out = args.out / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    run_dir = args.from_run
    if run_dir is None:
        console.log("running `protege demo` first")
        run_dir = Path(run_demo(DemoOptions(requests=args.requests, runs_dir=out / "demo"), console=console).run_dir)
    run = _demo_run(run_dir, out)
    started = time.monotonic()
    try:
        with progress_display(console) as progress:
            start_processes(run, progress)
        result = asyncio.run(measure(run, console))
    finally:
        run.stop_all()
    result["measure_s"] = round(time.monotonic() - started, 1)
    (out / "cascade.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    (out / "cascade.md").write_text(to_markdown(result), encoding="utf-8")
    write_chart(result, out / "cascade.png")
    print(to_markdown(result))
    console.log(f"results in {out}")
    return 0 if result["targets"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
