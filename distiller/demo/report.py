"""The demo's figures, from what the client saw, what the store holds and what `/metrics` counted.

Parity is agreement with the teacher's answers on the held-out part, which the teacher answered once at
rollout 0% (the reference) before it was replayed at rollout 100%, on the scorer the student was registered
with: JSON field by field (`gateway.scoring.agreement`) for the JSON task, similarity on the run's scale for
free text (scored up front by `distiller.demo.scoring`, passed in as `score`). Costs are the store rows'
`cost_usd` — the gateway's own pricing of each exchange — and are checked against the
`protege_cost_usd_total` deltas of the same phases (shadow calls apart: they are the monitoring's cost).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distiller.calibrate import deferral_curve
from distiller.demo.workload import expected_fields
from distiller.evaluate import EvalExample, ScoreSummary, bootstrap_ci, completion_of, majority_answer
from distiller.pipeline import DistillOutcome
from gateway.scoring import agreement
from gateway.store import Exchange

if TYPE_CHECKING:
    from distiller.demo.tasks import DemoWorkload

ROUTES = ("student", "fallback", "teacher")
Score = Callable[[str | None, str | None], float]  # (answer, the teacher's reference) → agreement in [0, 1]
Checks = Callable[[str | None, Any], dict[str, bool]]  # (answer, ticket) → which of the prompt's rules it follows


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
    scorer: dict[str, Any] | None = None  # the version's scorer as the distiller recorded it (scale, check set)
    shadow: dict[str, Any] | None = None  # live parity from shadow scoring during the replay
    rule_checks: dict[str, dict[str, float | None]] | None = None  # free text: share of answers following each rule
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


def _by_kind(workload: DemoWorkload, pairs: Sequence[tuple[Answer, Answer]],
             row: Callable[[Answer], Exchange | None], score: Score = agree) -> dict[str, dict[str, Any]]:
    """Per ticket kind (regular, or an unusual one): routes, and parity served and of the student alone."""
    out: dict[str, dict[str, Any]] = {}
    for kind in dict.fromkeys(workload.tickets[a.index].kind for _, a in pairs):
        mine = [(r, a) for r, a in pairs if workload.tickets[a.index].kind == kind]
        routed = [(r, a) for r, a in mine if a.route in ("student", "fallback")]
        alone = [score(_student_answer(a, row(a)), r.content) for r, a in routed]
        out[kind] = {"n": len(mine), "routes": dict(Counter(a.route or "error" for _, a in mine)),
                     "served_parity": _mean(score(a.content, r.content) for r, a in mine),
                     "student_alone_parity": _mean(alone)}
    return out


# --- the report ------------------------------------------------------------------------------------------

def _majority(captured: Sequence[Answer]) -> str:
    """The majority-answer baseline's one answer, from the teacher's answers to the train part."""
    answer = majority_answer([EvalExample([], {"role": "assistant", "content": text}) for text in
                              [a.content for a in captured if a.error is None and a.content is not None]])
    return str(answer.get("content") or "")


def _paired(reference: Sequence[Answer], replayed: Sequence[Answer]) -> list[tuple[Answer, Answer]]:
    """(the teacher's reference, the replayed answer) for each held-out request the teacher answered."""
    refs = {a.index: a for a in reference}
    return [(refs[a.index], a) for a in replayed if a.index in refs and refs[a.index].error is None]


def _student_answer(answer: Answer, row: Exchange | None) -> str | None:
    """What the student said to a routed request: its served answer, or the one the cascade rejected."""
    return answer.content if answer.route == "student" else student_message(row)


def answer_pairs(captured: Sequence[Answer], reference: Sequence[Answer], replayed: Sequence[Answer],
                 rows: dict[str, Exchange]) -> list[tuple[str | None, str | None]]:
    """Every (answer, reference) pair `build_report` scores: served, the student's own, the majority answer."""
    majority, out = _majority(captured), []
    for ref, answer in _paired(reference, replayed):
        out += [(answer.content if answer.error is None else None, ref.content), (majority, ref.content)]
        if answer.route in ("student", "fallback"):
            out.append((_student_answer(answer, rows.get(answer.request_id or "")), ref.content))
    return out


def _rule_checks(checks: Checks, workload: DemoWorkload,
                 pairs: Sequence[tuple[Answer, Answer]]) -> dict[str, dict[str, float | None]]:
    """Per rule of the system prompt: the share of the teacher's and of the served answers that follow it."""
    tickets = workload.tickets
    teacher = [checks(r.content, tickets[r.index]) for r, _ in pairs]
    served = [checks(a.content, tickets[a.index]) for _, a in pairs]
    rules = list(dict.fromkeys(rule for found in teacher + served for rule in found))
    return {rule: {"teacher": _mean(float(c[rule]) for c in teacher),
                   "protege": _mean(float(c[rule]) for c in served)} for rule in rules}


def build_report(*, run_dir: Path, workload: DemoWorkload, teacher: str, outcome: DistillOutcome, promoted: bool,
                 captured: Sequence[Answer], reference: Sequence[Answer], replayed: Sequence[Answer],
                 rows: dict[str, Exchange], metrics: dict[str, MetricsSnapshot], teacher_price: Prices,
                 student_price: Prices, timings: dict[str, float], settings: dict[str, Any], score: Score = agree,
                 json_fields: bool = True, checks: Checks | None = None,
                 shadow: dict[str, Any] | None = None) -> DemoReport:
    """`score` measures agreement with the teacher (JSON fields by default); `json_fields`: report the fields a
    perfect extraction gets right; `checks`: the share of answers that follow each rule of the system prompt."""
    def row(answer: Answer) -> Exchange | None:
        return rows.get(answer.request_id) if answer.request_id else None

    pairs = _paired(reference, replayed)
    served = [score(a.content if a.error is None else None, r.content) for r, a in pairs]
    routed_pairs = [(r, a) for r, a in pairs if a.route in ("student", "fallback")]
    alone = [score(_student_answer(a, row(a)), r.content) for r, a in routed_pairs]
    # the deferral curve measured on the replay: held-out traffic, which calibration never saw
    held_out_curve = deferral_curve([a.confidence if a.confidence is not None else -math.inf for _, a in routed_pairs],
                                    alone)
    majority = _majority(captured)
    majority_scores = [score(majority, r.content) for r, _ in pairs]

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
    # shadow calls (the teacher asked again for live parity) are counted apart, in `shadow`
    m_replay = metrics["replay"].total("protege_cost_usd_total") - metrics["replay"].total(
        "protege_cost_usd_total", route="shadow")
    metric_routes = {k: int(v) for k, v in metrics["replay"].by_label("protege_requests_total", "route").items()
                     if k != "shadow"}

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
                  "by_kind": _by_kind(workload, pairs, row, score),
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
                        "protege": _mean(field_accuracy(a.content, messages[a.index]) for _, a in pairs)}
        if json_fields else {"teacher": None, "protege": None},
        scorer=outcome.evaluation.scorer if outcome.evaluation else None, shadow=shadow,
        rule_checks=_rule_checks(checks, workload, pairs) if checks is not None else None,
        notes=notes,
        _curve=[{"student_share": p.student_share, "parity": p.parity, "threshold": p.threshold}
                for p in (calibration.curve if calibration else [])],
        _held_out_curve=[{"student_share": p.student_share, "parity": p.parity,
                          "threshold": p.threshold if math.isfinite(p.threshold) else None} for p in held_out_curve],
        _cumulative=cumulative)
    return report
