"""Savings against the teacher-only counterfactual, per task, from the store's exchanges and student
versions: the computation behind `protege report` and the admin console (rendering lives with each).

How each figure is made:

- actual cost: the sum of the rows' `cost_usd`, as the gateway priced them (a fallback row holds the
  teacher's answer and the student's rejected attempt; shadow rows, the background teacher calls that
  measure live parity, are a cost too).
- counterfactual (teacher only): teacher and fallback rows, the teacher's part of their cost; student
  rows, the estimate the gateway recorded (`extra.counterfactual_cost_usd`: the teacher's price on the
  student's tokens, a distilled system prompt added back) or, for rows without one, the task's mean
  teacher cost per request; shadow rows, 0 (the teacher-only world makes no such call). The same
  definition as `protege_counterfactual_cost_usd_total`, so savings agree with the dashboard.
- upfront: the teacher's answers used as training data were paid for when they were served, so they
  add nothing (the lineage shows what they cost, `data_cost_usd`); each version's training and evaluation
  cost from its lineage (`details.upfront_cost_usd`: measured compute time × the configured or default
  compute price, or a hosted job's billed tokens; `details.cost_sources` says which), 0 with a note where a
  version recorded none (registered by hand, or by a distiller before costs were recorded).
- break-even: upfront / savings per request and per day, both measured from the first request routed
  to a student (before it, savings are 0 by construction and would dilute the rate); a month's saving
  (30 days) and the first year's net (365 days of saving minus upfront) at that observed daily rate.
- sources: each priced row records where its price came from (`extra.price_source`: configured, a list
  price, compute over measured throughput, or simulated); the report counts the rows of each.
"""


from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.parity import LiveParity, live_parity
from gateway.store import Exchange, Store, StudentVersion

ReportFormat = Literal["table", "json", "markdown"]
REPORT_FORMATS: tuple[ReportFormat, ...] = ("table", "json", "markdown")

STUDENT_ROUTES = ("student", "fallback")
TEACHER_ROUTES = ("teacher", "fallback")
SHADOW = "shadow"
DAY_S = 86400.0

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY_S, "w": 7 * DAY_S}

METHOD_NOTES = (
    "actual: the rows' cost_usd as the gateway priced them (fallbacks include the student's rejected attempt; "
    "shadow calls count)",
    "teacher only: teacher/fallback rows at the teacher's price; student rows at the gateway's recorded estimate "
    "(teacher price on the student's tokens, a distilled system prompt added back), else the task's mean teacher "
    "cost per request; shadow calls 0",
    "upfront: each version's training and evaluation cost from its lineage (details.upfront_cost_usd, with its "
    "sources); teacher data was already paid as served traffic",
    "break-even: upfront / savings per request and per day, measured from the first request routed to a student; "
    "monthly saving = 30 days and first-year net = 365 days of saving − upfront, at the observed daily rate",
)
MONTH_DAYS = 30
YEAR_DAYS = 365


def parse_duration(text: str) -> float:
    """'30d', '12h', '2w', '90m', '45s' → seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"invalid duration {text!r}: use a number and s, m, h, d or w (e.g. 30d)")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


@dataclass(slots=True)
class Row:
    """One exchange as the report sees it — or `count` alike ones added up by the store (`ExchangeGroup`), with
    the sums of their costs: when, how served, what it cost, and the teacher-only estimate."""

    at: float  # the (first) exchange's time
    route: str
    cost_usd: float  # 0 when unpriced
    counterfactual_usd: float | None  # None: unknown (unpriced teacher, or no teacher row to estimate from)
    estimated: int = 0  # how many of its exchanges' counterfactuals are the task's mean teacher cost
    price_source: str | None = None  # where the row's price came from (None: unpriced, or recorded before)
    count: int = 1


@dataclass(slots=True)
class TaskReport:
    task: str
    requests: int  # client requests (shadow calls excluded)
    routes: dict[str, int]
    actual_usd: float
    counterfactual_usd: float
    upfront_usd: float
    student_since: float | None  # first request routed to a student
    student_requests: int  # client requests from then on
    period_end: float
    estimated_rows: int = 0
    unpriced_rows: int = 0
    version: int | None = None
    parity: float | None = None  # offline evaluation of the active version
    scorer: str | None = None  # the scorer parity (offline and live) is measured with
    gate: float | None = None
    live_parity: float | None = None  # shadowed traffic in the window
    live_comparisons: int = 0
    notes: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list, repr=False)
    training: list[tuple[float, float]] = field(default_factory=list, repr=False)  # (version created at, USD)

    @property
    def savings_usd(self) -> float:
        return self.counterfactual_usd - self.actual_usd

    @property
    def student_days(self) -> float | None:
        return None if self.student_since is None else max(0.0, self.period_end - self.student_since) / DAY_S

    @property
    def savings_per_request(self) -> float | None:
        return self.savings_usd / self.student_requests if self.student_requests else None

    @property
    def savings_per_day(self) -> float | None:
        days = self.student_days
        return self.savings_usd / days if days else None

    @property
    def breakeven_requests(self) -> float | None:
        return _breakeven(self.upfront_usd, self.savings_per_request)

    @property
    def breakeven_days(self) -> float | None:
        return _breakeven(self.upfront_usd, self.savings_per_day)

    @property
    def teacher_only_per_request(self) -> float | None:
        return self.counterfactual_usd / self.requests if self.requests else None

    @property
    def actual_per_request(self) -> float | None:
        return self.actual_usd / self.requests if self.requests else None

    @property
    def monthly_savings(self) -> float | None:
        return None if self.savings_per_day is None else self.savings_per_day * MONTH_DAYS

    @property
    def first_year_net(self) -> float | None:
        return None if self.savings_per_day is None else self.savings_per_day * YEAR_DAYS - self.upfront_usd

    @property
    def price_sources(self) -> dict[str, int]:
        """Rows by where their price came from ("unrecorded": unpriced, or captured before sources were kept)."""
        counts: dict[str, int] = {}
        for r in self.rows:
            key = r.price_source or "no price recorded"
            counts[key] = counts.get(key, 0) + r.count
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task, "requests": self.requests, "routes": self.routes,
            "actual_cost_usd": self.actual_usd, "teacher_only_cost_usd": self.counterfactual_usd,
            "savings_usd": self.savings_usd, "upfront_cost_usd": self.upfront_usd,
            "student_since": self.student_since, "student_requests": self.student_requests,
            "student_days": self.student_days, "savings_per_request_usd": self.savings_per_request,
            "savings_per_day_usd": self.savings_per_day, "breakeven_requests": self.breakeven_requests,
            "breakeven_days": self.breakeven_days, "teacher_only_per_request_usd": self.teacher_only_per_request,
            "actual_per_request_usd": self.actual_per_request, "monthly_savings_usd": self.monthly_savings,
            "first_year_net_usd": self.first_year_net, "price_sources": self.price_sources,
            "estimated_rows": self.estimated_rows,
            "unpriced_rows": self.unpriced_rows, "version": self.version, "parity": self.parity,
            "scorer": self.scorer, "gate": self.gate, "live_parity": self.live_parity,
            "live_comparisons": self.live_comparisons,
            "notes": self.notes,
        }


def _breakeven(upfront: float, savings_rate: float | None) -> float | None:
    """How many units (requests, days) of savings pay back `upfront`; None when nothing is saved."""
    if savings_rate is None or savings_rate <= 0:
        return None
    return max(0.0, upfront) / savings_rate


@dataclass(slots=True)
class Report:
    generated_at: float
    since: float | None
    tasks: list[TaskReport]

    @property
    def total(self) -> dict[str, Any]:
        actual = sum(t.actual_usd for t in self.tasks)
        counterfactual = sum(t.counterfactual_usd for t in self.tasks)
        upfront = sum(t.upfront_usd for t in self.tasks)
        student_requests = sum(t.student_requests for t in self.tasks)
        savings = counterfactual - actual
        per_request = savings / student_requests if student_requests else None
        rates = [t.savings_per_day for t in self.tasks if t.savings_per_day is not None]
        per_day = sum(rates) if rates else None  # the tasks save side by side
        return {"requests": sum(t.requests for t in self.tasks), "actual_cost_usd": actual,
                "teacher_only_cost_usd": counterfactual, "savings_usd": savings, "upfront_cost_usd": upfront,
                "savings_per_request_usd": per_request, "savings_per_day_usd": per_day,
                "breakeven_requests": _breakeven(upfront, per_request), "breakeven_days": _breakeven(upfront, per_day)}

    def to_dict(self) -> dict[str, Any]:
        return {"generated_at": self.generated_at, "since": self.since, "method": list(METHOD_NOTES),
                "tasks": [t.to_dict() for t in self.tasks], "total": self.total}


# --- building ----------------------------------------------------------------------------------

PAGE = 5000


async def read_exchanges(store: Store, *, task: str | None, start: float | None, page_size: int = PAGE,
                         ) -> list[Exchange]:
    """The exchanges created from `start` on, a page at a time, without their message bodies (the report needs
    none, and the store does not send them): the input of the row-by-row report (`build_report`)."""
    found: list[Exchange] = []
    after = None if start is None else (start, "")  # the store filters by time: older rows are never read
    while True:
        page = await store.list_exchanges(task=task, limit=page_size, after=after, bodies=False)
        found += page
        if len(page) < page_size:
            return found
        after = (page[-1].created_at, page[-1].request_id)


def _student_attempt_cost(ex: Exchange) -> float:
    student = ex.extra.student
    return student.cost_usd if student is not None and student.cost_usd is not None else 0.0


def _teacher_cost(ex: Exchange) -> float | None:
    """The teacher's charge on a teacher or fallback row (the row's cost minus a rejected student attempt)."""
    if ex.cost_usd is None:
        return None
    return ex.cost_usd - _student_attempt_cost(ex) if ex.route == "fallback" else ex.cost_usd


def _rows(exchanges: Sequence[Exchange]) -> tuple[list[Row], int]:
    """Rows with their counterfactual; and how many answered rows had no known price."""
    teacher_costs = [c for ex in exchanges if ex.route in TEACHER_ROUTES and ex.status == "ok"
                     and (c := _teacher_cost(ex)) is not None]
    teacher_mean = statistics.fmean(teacher_costs) if teacher_costs else None
    rows: list[Row] = []
    unpriced = 0
    for ex in exchanges:
        if ex.cost_usd is None and ex.status == "ok":
            unpriced += 1
        cost = ex.cost_usd or 0.0
        source = ex.extra.price_source
        if ex.route == SHADOW:
            rows.append(Row(ex.created_at, ex.route, cost, 0.0, price_source=source))
        elif ex.route == "student":
            recorded = ex.extra.counterfactual_cost_usd
            if recorded is not None:
                rows.append(Row(ex.created_at, ex.route, cost, recorded, price_source=source))
            else:  # captured before the gateway recorded its estimate
                rows.append(Row(ex.created_at, ex.route, cost, teacher_mean, estimated=int(teacher_mean is not None),
                                price_source=source))
        elif ex.cost_usd is None and ex.status != "ok":
            rows.append(Row(ex.created_at, ex.route, cost, 0.0))  # a failed call: the teacher alone fails too
        else:  # teacher or fallback: what the teacher charged (an interrupted stream too)
            rows.append(Row(ex.created_at, ex.route, cost, _teacher_cost(ex), price_source=source))
    return rows, unpriced


def _training_costs(students: Sequence[StudentVersion]) -> tuple[list[tuple[float, float]], list[str]]:
    """(created at, USD) of each version whose lineage records its run cost; a note for the others."""
    costs, missing, sourced = [], [], []
    for s in students:
        cost = s.details.upfront_cost_usd
        if cost is not None:
            costs.append((s.created_at, cost))
            sources = s.details.cost_sources or {}
            parts = [f"{what} {sources[what]}" for what in ("training", "evaluation") if sources.get(what)]
            if parts:
                sourced.append(f"v{s.version} upfront ${cost:.6f}: " + "; ".join(parts))
        else:
            missing.append(f"v{s.version}")
    notes = [f"training cost not recorded for {', '.join(missing)} (counted as 0)"] if missing else []
    return costs, notes + sourced


def task_report(task: str, exchanges: Sequence[Exchange], students: Sequence[StudentVersion], *,
                now: float) -> TaskReport:
    rows, unpriced = _rows(exchanges)
    return report_from_rows(task, rows, unpriced, students, now=now,
                            live=lambda version: live_parity(exchanges, version))


def report_from_rows(task: str, rows: list[Row], unpriced: int, students: Sequence[StudentVersion], *, now: float,
            live: Callable[[int], LiveParity]) -> TaskReport:
    clients = [r for r in rows if r.route != SHADOW]
    routes: dict[str, int] = {}
    for r in clients:
        routes[r.route] = routes.get(r.route, 0) + r.count
    student_since = min((r.at for r in clients if r.route in STUDENT_ROUTES), default=None)
    training, notes = _training_costs(students)
    report = TaskReport(
        task=task, requests=sum(r.count for r in clients), routes=routes, actual_usd=sum(r.cost_usd for r in rows),
        counterfactual_usd=sum(r.counterfactual_usd or 0.0 for r in rows), upfront_usd=sum(c for _, c in training),
        student_since=student_since,
        student_requests=0 if student_since is None else sum(r.count for r in clients if r.at >= student_since),
        period_end=now, estimated_rows=sum(r.estimated for r in rows), unpriced_rows=unpriced, notes=notes, rows=rows,
        training=training)
    if report.estimated_rows:
        notes.append(f"{report.estimated_rows} student rows estimated at the task's mean teacher cost per request")
    missing = sum(r.count for r in rows if r.counterfactual_usd is None)
    if missing:
        notes.append(f"{missing} rows without a teacher-only estimate (unpriced, or no teacher row to estimate from)")
    if unpriced:
        notes.append(f"{unpriced} answered rows have no price: set the teacher's or cascade's cost_per_token")
    if not students:
        notes.append("no student version: teacher only")
    active = next((s for s in reversed(students) if s.status == "active"), None)
    shown = active or next((s for s in reversed(students) if s.status != "rejected"), None)
    if shown is not None:
        report.version = shown.version
        report.parity, report.gate = shown.details.offline_parity, shown.details.min_parity
        report.scorer = shown.details.scorer_kind
        tally = live(shown.version)
        report.live_comparisons, report.live_parity = tally.comparisons, tally.mean
    return report


def build_report(exchanges: Iterable[Exchange], students: Iterable[StudentVersion], *, now: float,
                 since_s: float | None = None) -> Report:
    """Per task, over the exchanges created in the last `since_s` seconds (all when None), row by row: the
    reference the store's sums (`gateway.window_report`, what the console and `protege report` read) are held
    to in the tests and `bench/console_report`."""
    start = None if since_s is None else now - since_s
    by_task: dict[str, list[Exchange]] = {}
    for ex in exchanges:
        if start is None or ex.created_at >= start:
            by_task.setdefault(ex.task, []).append(ex)
    versions: dict[str, list[StudentVersion]] = {}
    for s in students:
        versions.setdefault(s.task, []).append(s)
    tasks = [task_report(task, sorted(rows, key=lambda e: e.created_at),
                         sorted(versions.get(task, []), key=lambda s: s.version), now=now)
             for task, rows in sorted(by_task.items())]
    return Report(generated_at=now, since=start, tasks=tasks)
