"""`protege report`: what each task cost, what the teacher alone would have cost, and when the
distillation pays for itself. The figures come from `gateway.savings` (shared with the admin console);
this module only renders them as a table, JSON, markdown or a PNG.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from gateway.savings import METHOD_NOTES, Report, Row, TaskReport


def _usd(value: float | None) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "$0"
    return f"${value:,.2f}" if abs(value) >= 100 else f"${value:,.4f}" if abs(value) >= 0.01 else f"${value:.6f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _day(ts: float | None) -> str:
    return "—" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")


COLUMNS = ("task", "requests", "actual", "teacher only", "savings", "upfront", "break-even (requests)",
           "break-even (days)", "parity (gate)", "live parity (n)", "scorer")


def _cells(t: TaskReport) -> list[str]:
    parity = "—" if t.parity is None else f"{t.parity:.3f}" + ("" if t.gate is None else f" ({t.gate:.2f})")
    live = "—" if t.live_parity is None else f"{t.live_parity:.3f} ({t.live_comparisons})"
    return [t.task if t.version is None else f"{t.task} (v{t.version})", f"{t.requests:,}", _usd(t.actual_usd),
            _usd(t.counterfactual_usd), _usd(t.savings_usd), _usd(t.upfront_usd), _num(t.breakeven_requests, 0),
            _num(t.breakeven_days), parity, live, t.scorer or "—"]


def _total_cells(report: Report) -> list[str]:
    total = report.total
    return ["total", f"{total['requests']:,}", _usd(total["actual_cost_usd"]), _usd(total["teacher_only_cost_usd"]),
            _usd(total["savings_usd"]), _usd(total["upfront_cost_usd"]), _num(total["breakeven_requests"], 0),
            _num(total["breakeven_days"]), "", ""]


def _notes(report: Report) -> list[str]:
    window = "all captured traffic" if report.since is None else f"traffic since {_day(report.since)}"
    lines = [f"window: {window}; report at {_day(report.generated_at)} (UTC)"]
    lines += [f"method — {note}" for note in METHOD_NOTES]
    for t in report.tasks:
        lines += [f"{t.task}: {note}" for note in t.notes]
        if t.student_since is not None:
            lines.append(f"{t.task}: student since {_day(t.student_since)}: {t.student_requests:,} requests over "
                         f"{_num(t.student_days, 2)} days, saving {_usd(t.savings_per_request)} per request and "
                         f"{_usd(t.savings_per_day)} per day")
        lines.append(f"{t.task}: cost per request {_usd(t.teacher_only_per_request)} teacher only → "
                     f"{_usd(t.actual_per_request)} actual; at the observed volume "
                     f"{_usd(t.monthly_savings)} saved a month, first-year net {_usd(t.first_year_net)}")
        if t.rows:
            lines.append(f"{t.task}: prices — " + "; ".join(f"{n:,} rows at {source}"
                                                           for source, n in t.price_sources.items()))
    return lines


def render_markdown(report: Report) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(t)) + " |" for t in report.tasks]
    lines.append("| " + " | ".join(f"**{c}**" if c else "" for c in _total_cells(report)) + " |")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {note}" for note in _notes(report)) + "\n"


def render_table(report: Report) -> tuple[Any, list[str]]:
    """A rich Table and the notes to print under it."""
    from rich.table import Table

    table = Table(*COLUMNS, title="Protégé cost report")
    for t in report.tasks:
        table.add_row(*_cells(t))
    table.add_section()
    table.add_row(*_total_cells(report))
    return table, _notes(report)


def plot_cumulative(report: Report, path: Path) -> None:
    """PNG of the cumulative cost with the student (actual; and with training costs, added when each version
    was created) and without it (teacher only), over the report's tasks together."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display here
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    # training costs as rows of their own, so each lands on the curve when it was paid
    rows = sorted([*(r for t in report.tasks for r in t.rows),
                   *(Row(at, "training", cost, 0.0) for t in report.tasks for at, cost in t.training)],
                  key=lambda r: r.at)
    times = mdates.date2num([dt.datetime.fromtimestamp(r.at, dt.UTC) for r in rows])  # type: ignore[no-untyped-call]
    actual, with_training, teacher_only = [], [], []
    a = u = c = 0.0
    for r in rows:
        if r.route == "training":
            u += r.cost_usd
        else:
            a += r.cost_usd
            c += r.counterfactual_usd or 0.0
        actual.append(a)
        with_training.append(a + u)
        teacher_only.append(c)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.step(times, teacher_only, where="post", label="teacher only", linestyle="--")
    ax.step(times, actual, where="post", label="with the student (actual)")
    if u:
        ax.step(times, with_training, where="post", label="with the student, training included", linestyle=":")
    tasks = ", ".join(t.task for t in report.tasks)
    ax.set_title(f"Cumulative cost — {tasks}" if len(tasks) < 60 else "Cumulative cost")
    ax.xaxis_date()
    ax.set_ylabel("USD")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
