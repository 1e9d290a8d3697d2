"""The demo's figures, from what the client saw, what the store holds and what `/metrics` counted.

Parity is agreement with the teacher's answers (`gateway.scoring.agreement`: JSON field by field)
on the held-out part, which the teacher answered once at rollout 0% (the reference) before it was
replayed at rollout 100%. Costs are the store rows' `cost_usd` — the gateway's own pricing of each
exchange — and are checked against the `protege_cost_usd_total` deltas of the same phases.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from distiller.calibrate import deferral_curve
from distiller.demo.workload import Workload, expected_fields
from distiller.evaluate import EvalExample, ScoreSummary, bootstrap_ci, completion_of, majority_answer
from distiller.pipeline import DistillOutcome
from gateway.scoring import agreement
from gateway.store import Exchange

ROUTES = ("student", "fallback", "teacher")


@dataclass(frozen=True, slots=True)
class Prices:
    """USD per token, and where the price comes from (given, a list price, or assumed for a simulation)."""

    input_per_token: float
    output_per_token: float
    source: str = "given"

    @classmethod
    def per_million(cls, input_usd: float, output_usd: float, source: str = "given") -> Prices:
        return cls(input_usd / 1e6, output_usd / 1e6, source)

    def scaled(self, factor: float, source: str) -> Prices:
        return Prices(self.input_per_token * factor, self.output_per_token * factor, source)

    def to_dict(self) -> dict[str, Any]:
        return {"input_usd_per_m": round(self.input_per_token * 1e6, 6),
                "output_usd_per_m": round(self.output_per_token * 1e6, 6), "source": self.source}


@dataclass(frozen=True, slots=True)
class Answer:
    """One request sent through the gateway, as the client saw it."""

    index: int  # the ticket's index in the workload
    request_id: str | None
    route: str | None  # x-protege-route
    latency_s: float
    content: str | None
    error: str | None = None
    confidence: float | None = None  # x-protege-confidence: the student's score when it was asked


MetricKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """The demo task's counters (`*_total` samples) from one scrape of `/metrics`."""

    values: dict[MetricKey, float]

    def delta(self, later: MetricsSnapshot) -> MetricsSnapshot:
        keys = set(self.values) | set(later.values)
        return MetricsSnapshot({k: later.values.get(k, 0.0) - self.values.get(k, 0.0) for k in keys})

    def total(self, name: str, **labels: str) -> float:
        return sum(v for (n, lbl), v in self.values.items()
                   if n == name and all(dict(lbl).get(k) == want for k, want in labels.items()))

    def by_label(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for (n, lbl), v in self.values.items():
            if n == name and v:
                key = dict(lbl).get(label, "")
                out[key] = out.get(key, 0.0) + v
        return out


@dataclass(slots=True)
class DemoReport:
    run_dir: str
    task: str
    teacher: str
    student: str | None
    student_status: str
    gate: str
    promoted: bool
    settings: dict[str, Any]
    sizes: dict[str, int]
    prices: dict[str, dict[str, Any]]
    timings_s: dict[str, float]
    curation: dict[str, Any]
    distill_evaluation: dict[str, Any] | None
    calibration: dict[str, Any] | None
    held_out: dict[str, Any]
    parity: dict[str, dict[str, float] | None]
    tokens: dict[str, float | None]
    cost: dict[str, Any]
    latency_p50_s: dict[str, float | None]
    consistency: dict[str, Any]
    field_accuracy: dict[str, float | None]
    charts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _curve: list[dict[str, float]] = field(default_factory=list, repr=False)  # the validation split's (calibration)
    _held_out_curve: list[dict[str, Any]] = field(default_factory=list, repr=False)  # the replay's, not calibrated on
    _cumulative: dict[str, list[float]] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["curve"] = data.pop("_curve")
        data["held_out_curve"] = data.pop("_held_out_curve")
        data["cumulative_cost_usd"] = data.pop("_cumulative")
        return data


# --- scoring ---------------------------------------------------------------------------------------------

def agree(answer: str | None, reference: str | None) -> float:
    return agreement(completion_of({"role": "assistant", "content": answer or ""}),
                     completion_of({"role": "assistant", "content": reference or ""}))


def _summary(scores: Sequence[float]) -> dict[str, float] | None:
    if not scores:
        return None
    s: ScoreSummary = bootstrap_ci(scores)
    return {"mean": round(s.mean, 4), "ci_low": round(s.ci_low, 4), "ci_high": round(s.ci_high, 4), "n": s.n}


def field_accuracy(content: str | None, message: str) -> float:
    """Share of the four fields right (for information: a perfect extraction scores 1)."""
    expected = expected_fields(message)
    try:
        value = json.loads(content or "")
    except ValueError:
        return 0.0
    if not isinstance(value, dict):
        return 0.0
    return sum(1 for k, v in expected.items() if value.get(k) == v) / len(expected)


def _p50(values: Iterable[float]) -> float | None:
    data = list(values)
    return round(statistics.median(data), 3) if data else None


def _mean(values: Iterable[float | int | None]) -> float | None:
    data = [float(v) for v in values if v is not None]
    return round(statistics.fmean(data), 2) if data else None


def _cost(rows: Iterable[Exchange]) -> float:
    return sum(r.cost_usd or 0.0 for r in rows)


def student_message(row: Exchange | None) -> str | None:
    """The student's own answer on a fallback row (what the cascade rejected)."""
    student = row.extra.student if row else None
    message = (student.message if student else None) or {}
    content = message.get("content") if isinstance(message, dict) else None
    return str(content) if content is not None else None


def _by_kind(workload: Workload, pairs: Sequence[tuple[Answer, Answer]],
             row: Callable[[Answer], Exchange | None]) -> dict[str, dict[str, Any]]:
    """Per ticket kind (regular, or an unusual one): routes, and parity served and of the student alone."""
    out: dict[str, dict[str, Any]] = {}
    for kind in dict.fromkeys(workload.tickets[a.index].kind for _, a in pairs):
        mine = [(r, a) for r, a in pairs if workload.tickets[a.index].kind == kind]
        routed = [(r, a) for r, a in mine if a.route in ("student", "fallback")]
        alone = [agree(a.content if a.route == "student" else student_message(row(a)), r.content) for r, a in routed]
        out[kind] = {"n": len(mine), "routes": dict(Counter(a.route or "error" for _, a in mine)),
                     "served_parity": _mean(agree(a.content, r.content) for r, a in mine),
                     "student_alone_parity": _mean(alone)}
    return out


# --- the report ------------------------------------------------------------------------------------------

def build_report(*, run_dir: Path, workload: Workload, teacher: str, outcome: DistillOutcome, promoted: bool,
                 captured: Sequence[Answer], reference: Sequence[Answer], replayed: Sequence[Answer],
                 rows: dict[str, Exchange], metrics: dict[str, MetricsSnapshot], teacher_price: Prices,
                 student_price: Prices, timings: dict[str, float], settings: dict[str, Any]) -> DemoReport:
    def row(answer: Answer) -> Exchange | None:
        return rows.get(answer.request_id) if answer.request_id else None

    refs = {a.index: a for a in reference}
    pairs = [(refs[a.index], a) for a in replayed if a.index in refs and refs[a.index].error is None]
    served = [agree(a.content if a.error is None else None, r.content) for r, a in pairs]
    routed_pairs = [(r, a) for r, a in pairs if a.route in ("student", "fallback")]
    alone = [agree(a.content if a.route == "student" else student_message(row(a)), r.content) for r, a in routed_pairs]
    # the deferral curve measured on the replay: held-out traffic, which calibration never saw
    held_out_curve = deferral_curve([a.confidence if a.confidence is not None else -math.inf for _, a in routed_pairs],
                                    alone)
    majority = majority_answer([EvalExample([], {"role": "assistant", "content": text})
                                for text in [a.content for a in captured if a.error is None and a.content is not None]])
    majority_scores = [agree(str(majority.get("content") or ""), r.content) for r, _ in pairs]

    routes = Counter(a.route or "error" for a in replayed)
    replay_rows = [r for a in replayed if (r := row(a)) is not None]
    teacher_rows = [r for a in reference if (r := row(a)) is not None]
    store_routes = Counter(r.route for r in replay_rows)
    reasons = Counter(str(r.extra.student.reason if r.extra.student else None)
                      for r in replay_rows if r.route == "fallback")
    routed = routes["student"] + routes["fallback"]
    n = len(replayed)

    teacher_cost, protege_cost = _cost(teacher_rows), _cost(replay_rows)
    student_rows = [r for r in replay_rows if r.route == "student"]
    # the student answering everything routed to it: its served answers and its rejected attempts
    attempts = [r.extra.student.cost_usd or 0.0 for r in replay_rows if r.route == "fallback" and r.extra.student]
    student_only_cost = _cost(student_rows) + sum(attempts)
    student_only_n = len(student_rows) + len(attempts)
    student_cost_each = _cost(student_rows) / len(student_rows) if student_rows else 0.0
    teacher_cost_each = teacher_cost / len(teacher_rows) if teacher_rows else 0.0
    m_teacher = metrics["teacher_pass"].total("protege_cost_usd_total")
    m_replay = metrics["replay"].total("protege_cost_usd_total")
    metric_routes = {k: int(v) for k, v in metrics["replay"].by_label("protege_requests_total", "route").items()}

    cumulative: dict[str, list[float]] = {"teacher_only": [], "protege": []}
    total_t = total_p = 0.0
    for ref, answer in pairs:
        total_t += _cost(x for x in (row(ref),) if x is not None)
        total_p += _cost(x for x in (row(answer),) if x is not None)
        cumulative["teacher_only"].append(total_t)
        cumulative["protege"].append(total_p)

    messages = {i: workload.messages(t)[-1]["content"] for i, t in enumerate(workload.tickets)}
    calibration = outcome.calibration
    curation = outcome.student.details.curation or {}
    notes = []
    capture_errors = [a.error for a in captured if a.error is not None]
    if capture_errors:
        notes.append(f"{len(capture_errors)} of {len(captured)} capture requests failed (first: {capture_errors[0]}); "
                     "the gateway recorded them as failed and curation left them out")
    if not promoted:
        notes.append(f"the student was not promoted ({outcome.gate_message}): the replay went to the teacher")
    if routes["fallback"]:
        notes.append(f"{routes['fallback']} fallbacks: each pays the teacher's answer and the student's rejected "
                     "attempt (both in the costs above)")
    report = DemoReport(
        run_dir=str(run_dir), task=workload.task, teacher=teacher,
        student=f"{outcome.student.model}@v{outcome.student.version}", student_status=outcome.student.status,
        gate=outcome.gate_message, promoted=promoted, settings=settings,
        sizes={"requests": len(workload.tickets), "train": workload.train_count,
               "held_out": len(workload.tickets) - workload.train_count,
               "captured_ok": sum(1 for a in captured if a.error is None)},
        prices={"teacher": teacher_price.to_dict(), "student": student_price.to_dict()},
        timings_s={**timings, "training_s": round(outcome.training_s, 1)},
        curation={"input": curation.get("input"), "kept": curation.get("kept"), "splits": curation.get("splits"),
                  "dropped": {k: v for k, v in (curation.get("dropped") or {}).items() if v},
                  "languages": curation.get("languages"),
                  "prompt_distilled": (curation.get("prompt_distillation") or {}).get("applied")},
        distill_evaluation=outcome.evaluation.to_dict() if outcome.evaluation else None,
        calibration=None if calibration is None else {
            "method": calibration.method, "threshold": calibration.threshold,
            "target_parity": calibration.target_parity, "student_share": round(calibration.point.student_share, 4),
            "parity": round(calibration.point.parity, 4), "apgr": round(calibration.apgr, 4)},
        held_out={"n": n, "routes": dict(routes), "fallback_reasons": dict(reasons),
                  "by_kind": _by_kind(workload, pairs, row),
                  "errors": sum(1 for a in replayed if a.error is not None),
                  "reference_errors": sum(1 for a in reference if a.error is not None),
                  "student_share": round(routes["student"] / n, 4) if n else 0.0,
                  "fallback_rate": round(routes["fallback"] / routed, 4) if routed else None},
        parity={"served": _summary(served), "student_alone": _summary(alone),
                "majority_answer": _summary(majority_scores)},
        tokens={"teacher_only_input_per_request": _mean(r.prompt_tokens for r in teacher_rows),
                "protege_input_per_request": _mean(r.prompt_tokens for r in replay_rows),
                "student_input_per_request": _mean(r.prompt_tokens for r in student_rows),
                "teacher_only_output_per_request": _mean(r.completion_tokens for r in teacher_rows),
                "protege_output_per_request": _mean(r.completion_tokens for r in replay_rows)},
        cost={"teacher_only_usd": teacher_cost, "protege_usd": protege_cost,
              "teacher_only_per_request_usd": teacher_cost / len(teacher_rows) if teacher_rows else None,
              "protege_per_request_usd": protege_cost / len(replay_rows) if replay_rows else None,
              "student_only_per_request_usd": student_only_cost / student_only_n if student_only_n else None,
              "saving": round(1 - protege_cost / teacher_cost, 4) if teacher_cost else None,
              "student_to_teacher_cost_ratio": round(student_cost_each / teacher_cost_each, 4)
              if teacher_cost_each and student_rows else None,
              "metrics_teacher_only_usd": m_teacher, "metrics_protege_usd": m_replay},
        latency_p50_s={"teacher_only": _p50(a.latency_s for a in reference if a.error is None),
                       **{route: _p50(a.latency_s for a in replayed if a.route == route) for route in ROUTES}},
        consistency={"routes_from_headers": dict(routes), "routes_in_store": dict(store_routes),
                     "routes_in_metrics": metric_routes,
                     "store_rows": {"capture": sum(1 for a in captured if row(a)), "teacher_pass": len(teacher_rows),
                                    "replay": len(replay_rows)},
                     "cost_store_matches_metrics": abs(teacher_cost - m_teacher) < 1e-9
                     and abs(protege_cost - m_replay) < 1e-9},
        field_accuracy={"teacher": _mean(field_accuracy(r.content, messages[r.index]) for r, _ in pairs),
                        "protege": _mean(field_accuracy(a.content, messages[a.index]) for _, a in pairs)},
        notes=notes,
        _curve=[{"student_share": p.student_share, "parity": p.parity, "threshold": p.threshold}
                for p in (calibration.curve if calibration else [])],
        _held_out_curve=[{"student_share": p.student_share, "parity": p.parity,
                          "threshold": p.threshold if math.isfinite(p.threshold) else None} for p in held_out_curve],
        _cumulative=cumulative)
    return report


# --- rendering -------------------------------------------------------------------------------------------

def _usd(value: float | None, digits: int = 8) -> str:
    return "—" if value is None else f"${value:.{digits}f}"


def _score(s: dict[str, float] | None) -> str:
    return "—" if s is None else f"{s['mean']:.3f} [{s['ci_low']:.3f}–{s['ci_high']:.3f}] (n={int(s['n'])})"


def _num(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def summary_rows(report: DemoReport) -> list[tuple[str, str, str, str]]:
    """(metric, teacher only, student alone, Protégé) rows for the final table and report.md. *Student alone* is
    the student answering every request routed to it, its rejected answers included; Protégé is the cascade."""
    c, t, h, lat = report.cost, report.tokens, report.held_out, report.latency_p50_s
    evaluation = report.distill_evaluation or {}
    base = next((b for b in evaluation.get("baselines", []) if str(b.get("name", "")).startswith("base")), None)
    student_eval = evaluation.get("student")
    saving = c.get("saving")
    routed = h["routes"].get("student", 0) + h["routes"].get("fallback", 0)
    rows = [
        ("cost per request", _usd(c["teacher_only_per_request_usd"]), _usd(c.get("student_only_per_request_usd")),
         _usd(c["protege_per_request_usd"]) + ("" if saving is None else f" ({saving:.0%} less)")),
        ("input tokens per request", _num(t["teacher_only_input_per_request"]), _num(t["student_input_per_request"]),
         _num(t["protege_input_per_request"])),
        ("latency p50 (s)", _num(lat["teacher_only"], 2), "",
         " / ".join(f"{r} {_num(lat[r], 2)}" for r in ROUTES if lat.get(r) is not None) or "—"),
        ("parity with the teacher (held-out, 95% CI)", "1 (reference)", _score(report.parity["student_alone"]),
         _score(report.parity["served"])),
        ("majority-answer baseline", "", "", _score(report.parity["majority_answer"])),
        ("student share / fallback rate", "0% / —", "100% / 0%" if routed else "—",
         f"{h['student_share']:.0%} / " + ("—" if h["fallback_rate"] is None else f"{h['fallback_rate']:.0%}")),
        ("fields right (vs the ticket)", _num(report.field_accuracy["teacher"], 3), "",
         _num(report.field_accuracy["protege"], 3)),
    ]
    if student_eval is not None:
        s = student_eval["score"]
        rows.append(("distiller test split: student parity", "", f"{s['mean']:.3f} [{s['ci_low']:.3f}–"
                     f"{s['ci_high']:.3f}] (n={s['n']})", ""))
    if base is not None:
        s = base["score"]
        rows.append(("distiller test split: base model parity", "", f"{s['mean']:.3f} (n={s['n']})", ""))
    return rows


def summary_table(report: DemoReport) -> Table:
    table = Table(title=f"Protégé demo — task {report.task}: teacher {report.teacher} → student {report.student} "
                  f"({report.student_status})")
    for column in ("metric", "teacher only", "student alone", "Protégé (cascade)"):
        table.add_column(column)
    for row in summary_rows(report):
        table.add_row(*row)
    return table


def kind_rows(report: DemoReport) -> list[str]:
    """report.md's lines on each ticket kind: where the cascade sent it and what that did to parity."""
    lines = ["| tickets | n | routes | student alone | served (cascade) |", "|---|---|---|---|---|"]
    for kind, k in (report.held_out.get("by_kind") or {}).items():
        routes = ", ".join(f"{route} {count}" for route, count in k["routes"].items())
        lines.append(f"| {kind} | {k['n']} | {routes} | {_num(k['student_alone_parity'], 2)} | "
                     f"{_num(k['served_parity'], 2)} |")
    return lines


def to_markdown(report: DemoReport) -> str:
    s = report.sizes
    lines = [f"# Protégé demo — task `{report.task}`", "",
             f"Teacher `{report.teacher}`; student `{report.student}` — **{report.student_status}** ({report.gate}).",
             f"{s['requests']} tickets: {s['train']} captured for training, {s['held_out']} held out "
             f"(answered by the teacher at rollout 0%, then replayed at rollout "
             f"{100 if report.promoted else 0}%). Prices (USD per million tokens, input/output): teacher "
             f"{report.prices['teacher']['input_usd_per_m']}/{report.prices['teacher']['output_usd_per_m']} "
             f"({report.prices['teacher'].get('source', 'given')}), student "
             f"{report.prices['student']['input_usd_per_m']}/{report.prices['student']['output_usd_per_m']} "
             f"({report.prices['student'].get('source', 'given')}). Token counts are measured; costs are those "
             "tokens at these prices.",
             "", "| metric | teacher only | student alone | Protégé (cascade) |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in summary_rows(report)]
    lines += ["", "Parity is agreement with the teacher's answer to the same held-out request (JSON field by field); "
              "the majority-answer baseline answers every request with the field-by-field majority of the teacher's "
              "JSON answers in the train part. *Student alone* scores (and prices) the student's own answers on the "
              "requests routed to it, including those the cascade rejected: what serving it without a threshold "
              "would give.", "", "### By kind of ticket", "",
              f"A share of the held-out tickets ({report.settings.get('unusual_fraction', 0):.0%}) is unlike any "
              "training ticket; the cascade should hand those to the teacher.", "", *kind_rows(report), ""]
    c = report.curation
    if c.get("splits"):
        lines.append(f"Curated from {c.get('input')} captured exchanges: {c['splits']} "
                     f"(dropped: {c.get('dropped') or 0}; prompt-distilled: {c.get('prompt_distilled')}).")
    lines += ["", "## Held-out replay", "",
              f"- routes (response headers): {report.held_out['routes']}; fallback reasons: "
              f"{report.held_out['fallback_reasons'] or '—'}; errors: {report.held_out['errors']}",
              f"- consistency: store {report.consistency['routes_in_store']}, /metrics "
              f"{report.consistency['routes_in_metrics']}; costs in the store match /metrics: "
              f"{report.consistency['cost_store_matches_metrics']}",
              f"- cost: teacher only {_usd(report.cost['teacher_only_usd'], 6)}, Protégé "
              f"{_usd(report.cost['protege_usd'], 6)} (store rows; /metrics says "
              f"{_usd(report.cost['metrics_teacher_only_usd'], 6)} and {_usd(report.cost['metrics_protege_usd'], 6)})"]
    if report.calibration:
        c, served = report.calibration, report.parity["served"] or {}
        lines.append(f"- calibration (validation split): {c['method']}, threshold {c['threshold']}, expected student "
                     f"share {c['student_share']:.2f} at parity {c['parity']:.3f} (target {c['target_parity']}); "
                     "measured on the held-out replay, which calibration never saw: student share "
                     f"{report.held_out['student_share']:.2f} at parity {_num(served.get('mean'), 3)}")
    lines += ["", "## Time", "", "| phase | seconds |", "|---|---|"]
    lines += [f"| {k.removesuffix('_s')} | {v} |" for k, v in report.timings_s.items()]
    if report.distill_evaluation:
        lines += ["", "## Distiller evaluation (curated test split)", "",
                  "| model | parity | 95% CI | n |", "|---|---|---|---|"]
        for m in (report.distill_evaluation["student"], *report.distill_evaluation["baselines"]):
            sc = m["score"]
            lines.append(f"| {m['name']} | {sc['mean']:.3f} | {sc['ci_low']:.3f}–{sc['ci_high']:.3f} | {sc['n']} |")
    if report.charts:
        lines += ["", "## Charts", ""] + [f"![{Path(c).stem}]({Path(c).name})" for c in report.charts]
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    lines += ["", f"Settings: `{json.dumps(report.settings)}`"]
    return "\n".join(lines) + "\n"


def write_charts(report: DemoReport) -> list[str]:
    """cascade.png (the calibration's deferral curve with cost) and cumulative_cost.png; [] without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        report.notes.append("charts skipped: matplotlib is not installed")
        return []
    out = Path(report.run_dir)
    written = []
    ratio = report.cost.get("student_to_teacher_cost_ratio") or 0.1
    if report._curve:
        shares = [p["student_share"] for p in report._curve]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.plot(shares, [p["parity"] for p in report._curve], marker=".",
                label="served parity (validation: calibrated on)")
        if report._held_out_curve:
            ax.plot([p["student_share"] for p in report._held_out_curve],
                    [p["parity"] for p in report._held_out_curve], marker=".", color="tab:purple",
                    label="served parity (held-out replay: not calibrated on)")
        ax.set_xlabel("student share")
        ax.set_ylabel("parity with the teacher")
        ax.set_ylim(0, 1.05)
        cost_ax = ax.twinx()
        cost_ax.plot(shares, [ratio + 1 - s for s in shares], color="tab:orange", linestyle="--",
                     label=f"cost × teacher-only (student = {ratio:.2f}× teacher, from the replay's rows)")
        cost_ax.set_ylabel("cost relative to teacher only")
        cost_ax.set_ylim(0, 1.2)
        if report.calibration:
            ax.scatter([report.calibration["student_share"]], [report.calibration["parity"]], color="tab:red",
                       zorder=5, label="calibrated threshold")
        served = report.parity["served"]
        if served is not None:
            ax.scatter([report.held_out["student_share"]], [served["mean"]], color="tab:green", marker="*", s=150,
                       zorder=5, label="measured on the held-out replay")
        handles = ax.get_legend_handles_labels()[0] + cost_ax.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="lower left", fontsize=8)
        ax.set_title("Cascade: student share vs parity vs cost")
        fig.tight_layout()
        fig.savefig(out / "cascade.png", dpi=110)
        plt.close(fig)
        written.append(str(out / "cascade.png"))
    if report._cumulative.get("teacher_only"):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        xs = range(1, len(report._cumulative["teacher_only"]) + 1)
        ax.plot(xs, report._cumulative["teacher_only"], label="teacher only")
        ax.plot(xs, report._cumulative["protege"], label="Protégé (student, fallback to teacher)")
        ax.set_xlabel("held-out requests")
        ax.set_ylabel("cumulative cost (USD)")
        ax.legend()
        ax.set_title("Cumulative cost over the replay")
        fig.tight_layout()
        fig.savefig(out / "cumulative_cost.png", dpi=110)
        plt.close(fig)
        written.append(str(out / "cumulative_cost.png"))
    return written


def write_report(report: DemoReport, *, charts: bool = True) -> None:
    out = Path(report.run_dir)
    if charts:
        report.charts = write_charts(report)
    (out / "report.md").write_text(to_markdown(report), encoding="utf-8")
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2, default=str), encoding="utf-8")
