"""`protege report` on a real SQLite store holding known traffic: savings against the teacher alone,
upfront cost, break-even and parity, as the user runs it."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.savings import build_report, parse_duration, read_exchanges
from gateway.store import (
    NO_EXTRA,
    Exchange,
    ExchangeExtra,
    GateResult,
    ShadowNote,
    StudentDetails,
    StudentNote,
    StudentVersion,
    open_store,
)
from tests.cli import ok as protege
from tests.cli import run_cli

DAY = 86400.0
TEACHER = 0.002  # USD per teacher answer
STUDENT = 0.0001  # USD per student answer
LIST = "list price (gpt-4o-mini in litellm's bundled price map)"
COMPUTE = "compute: cpu_hour_usd 0.1 (configured) over 250 tokens/s (measured by the model server)"


def exchange(i: int, at: float, route: str, cost: float | None, *, task: str = "tickets",
             extra: ExchangeExtra = NO_EXTRA) -> Exchange:
    return Exchange(request_id=f"req_{task}_{i:04d}", created_at=at, task=task, task_source="header", route=route,
                    model="gpt-4o-mini", upstream_model="gpt-4o-mini", status="ok", http_status=200, stream=False,
                    request={"messages": [{"role": "user", "content": f"q{i}"}]},
                    response={"choices": [{"index": 0, "message": {"role": "assistant", "content": f"a{i}"}}]},
                    prompt_tokens=10, completion_tokens=5, cost_usd=cost, extra=extra)


def traffic(now: float) -> tuple[list[Exchange], list[StudentVersion]]:
    """Ten days of a task: teacher only for six, then a student (v1, trained for $1.50) for four."""
    start = now - 4 * DAY  # the first request routed to the student
    rows = [exchange(i, now - (10 - i * 0.5) * DAY, "teacher", TEACHER, extra=ExchangeExtra(price_source=LIST))
            for i in range(10)]  # days -10 to -5.5
    n = len(rows)
    # 30 student answers with the gateway's recorded teacher-only estimate
    rows += [exchange(n + i, start + i * 0.1 * DAY, "student", STUDENT,
                      extra=ExchangeExtra(StudentNote(version=1), counterfactual_cost_usd=TEACHER,
                                          price_source=COMPUTE)) for i in range(30)]
    n = len(rows)
    # 5 fallbacks: the teacher's answer plus the student's rejected attempt
    rows += [exchange(n + i, start + 0.05 * DAY + i * 0.1 * DAY, "fallback", TEACHER + STUDENT,
                      extra=ExchangeExtra(StudentNote(version=1, cost_usd=STUDENT))) for i in range(5)]
    n = len(rows)
    # 5 student answers captured before the gateway recorded its estimate: the teacher's mean is used
    rows += [exchange(n + i, start + 3.5 * DAY + i * 0.01 * DAY, "student", STUDENT,
                      extra=ExchangeExtra(StudentNote(version=1))) for i in range(5)]
    n = len(rows)
    # 3 shadow calls: a cost of the cascade, no request of a client
    rows += [exchange(n + i, start + (1 + i) * 0.5 * DAY, "shadow", TEACHER,
                      extra=ExchangeExtra(shadow=ShadowNote(1, agreement)))
             for i, agreement in enumerate((1.0, 0.5, 0.0))]
    # another task, teacher only
    rows += [exchange(i, now - 2 * DAY + i, "teacher", TEACHER, task="other") for i in range(4)]
    student = StudentVersion(
        task="tickets", version=1, status="active", model="tickets-v1", created_at=start - 3600,
        updated_at=start - 3600, trainer="local",
        details=StudentDetails(training_cost_usd=1.2, evaluation_cost_usd=0.3,  # upfront 1.5
                               cost_sources={"training": "measured 43200.0 s on cpu × cpu_hour_usd 0.1, configured",
                                             "evaluation": "measured 10800.0 s × cpu_hour_usd 0.1, configured"},
                               gate=GateResult(min_parity=0.9), evaluation={
            "split": "test", "student": {"name": "tickets-v1", "score": {"mean": 0.93}}}))
    rejected = StudentVersion(task="tickets", version=2, status="rejected", model="tickets-v2",
                              created_at=start, updated_at=start, trainer="local")  # no training cost recorded
    return rows, [student, rejected]


# actual: 10 teacher + 30 student + 5 fallbacks (teacher + attempt) + 5 student + 3 shadow
ACTUAL = 10 * TEACHER + 30 * STUDENT + 5 * (TEACHER + STUDENT) + 5 * STUDENT + 3 * TEACHER
# teacher only: every client request at the teacher's price; the shadow calls would not exist
TEACHER_ONLY = (10 + 30 + 5 + 5) * TEACHER
SAVINGS = TEACHER_ONLY - ACTUAL  # 0.06
STUDENT_REQUESTS = 30 + 5 + 5  # from the first request routed to the student on


def check_tickets(task: dict[str, Any], *, requests: int) -> None:
    assert task["requests"] == requests
    assert task["routes"]["student"] == 35 and task["routes"]["fallback"] == 5
    assert task["actual_cost_usd"] == pytest.approx(ACTUAL - (10 * TEACHER if requests == 40 else 0))
    assert task["savings_usd"] == pytest.approx(SAVINGS)
    assert task["upfront_cost_usd"] == pytest.approx(1.5)
    assert task["student_requests"] == STUDENT_REQUESTS
    assert task["savings_per_request_usd"] == pytest.approx(SAVINGS / STUDENT_REQUESTS)  # 0.0015
    assert task["breakeven_requests"] == pytest.approx(1.5 / (SAVINGS / STUDENT_REQUESTS))  # 1000
    assert task["savings_per_day_usd"] == pytest.approx(SAVINGS / 4, rel=1e-3)  # 0.015 over 4 days
    assert task["breakeven_days"] == pytest.approx(1.5 / (SAVINGS / 4), rel=1e-3)  # 100 days
    assert task["estimated_rows"] == 5
    assert (task["version"], task["parity"], task["gate"]) == (1, 0.93, 0.9)
    assert (task["live_parity"], task["live_comparisons"]) == (pytest.approx(0.5), 3)
    assert any("not recorded for v2" in note for note in task["notes"])
    assert "v1 upfront $1.500000: training measured 43200.0 s on cpu × cpu_hour_usd 0.1, configured; evaluation " \
           "measured 10800.0 s × cpu_hour_usd 0.1, configured" in task["notes"]  # each input with its source


def test_savings_and_breakeven_of_known_traffic() -> None:
    now = 1_800_000_000.0
    rows, students = traffic(now)
    report = build_report(rows, students, now=now).to_dict()
    other, tickets = report["tasks"]
    check_tickets(tickets, requests=50)
    assert tickets["savings_per_day_usd"] == pytest.approx(0.015) and tickets["breakeven_days"] == pytest.approx(100)
    assert tickets["breakeven_requests"] == pytest.approx(1000)
    # the source article's break-even: cost per request before and after, a month, the first year
    assert tickets["teacher_only_per_request_usd"] == pytest.approx(TEACHER_ONLY / 50)  # 0.002
    assert tickets["actual_per_request_usd"] == pytest.approx(ACTUAL / 50)
    assert tickets["monthly_savings_usd"] == pytest.approx(0.015 * 30)  # 0.45
    assert tickets["first_year_net_usd"] == pytest.approx(0.015 * 365 - 1.5)  # 3.975
    # every input with its source: the rows' prices (the rest were recorded without one)
    assert tickets["price_sources"] == {COMPUTE: 30, "no price recorded": 13, LIST: 10}
    assert other["task"] == "other" and other["savings_usd"] == 0 and other["breakeven_days"] is None
    assert other["notes"] == ["no student version: teacher only"]
    total = report["total"]
    assert total["requests"] == 54 and total["savings_usd"] == pytest.approx(SAVINGS)
    assert total["breakeven_days"] == pytest.approx(100)


def test_the_window_keeps_recent_traffic_only() -> None:
    now = 1_800_000_000.0
    rows, students = traffic(now)
    [tickets] = build_report([r for r in rows if r.task == "tickets"], students, now=now, since_s=5 * DAY).tasks
    # the teacher-only days fall out; the fallbacks' teacher part still prices the unestimated student rows
    assert tickets.requests == 40 and tickets.savings_usd == pytest.approx(SAVINGS)
    assert tickets.breakeven_days == pytest.approx(100)


def test_no_savings_never_break_even() -> None:
    rows = [exchange(i, 1000.0 + i, "fallback", TEACHER + STUDENT, extra=ExchangeExtra(StudentNote(cost_usd=STUDENT)))
            for i in range(4)]
    student = StudentVersion(task="tickets", version=1, status="active", model="m", created_at=0, updated_at=0,
                             details=StudentDetails(training_cost_usd=2.0))
    [task] = build_report(rows, [student],
                          now=2000.0).tasks
    assert task.savings_usd == pytest.approx(-4 * STUDENT)
    assert task.breakeven_requests is None and task.breakeven_days is None


def test_durations() -> None:
    assert parse_duration("30d") == 30 * DAY and parse_duration("12h") == 12 * 3600 and parse_duration("2w") == 14 * DAY
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration("soon")


def store_with_traffic(path: Path, now: float) -> str:
    url = f"sqlite:///{path}"

    async def fill() -> None:
        store = open_store(url)
        await store.open()
        rows, students = traffic(now)
        await store.insert_exchanges(rows)
        for student in students:
            await store.add_student(student)
        await store.close()

    asyncio.run(fill())
    return url


def test_reading_the_store_page_by_page(tmp_path: Path) -> None:
    now = time.time()
    url = store_with_traffic(tmp_path / "store.db", now)

    async def read() -> tuple[list[str], list[str], list[str]]:
        store = open_store(url)
        await store.open()
        try:
            every = [e.request_id for e in await store.list_exchanges()]
            paged = await read_exchanges(store, task=None, start=None, page_size=7)
            recent = await read_exchanges(store, task="tickets", start=now - 5 * DAY, page_size=7)
        finally:
            await store.close()
        assert all(e.request == {} and e.response is None for e in paged)  # bodies are not kept
        return every, [e.request_id for e in paged], [e.request_id for e in recent]

    every, paged, recent = asyncio.run(read())
    assert paged == every and len(every) == 57  # 53 of tickets, 4 of the other task
    assert len(recent) == 43  # 30 + 5 + 5 student-era requests and 3 shadow calls


def test_cli_report_formats_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = store_with_traffic(tmp_path / "store.db", time.time())
    report = json.loads(protege(capsys, "report", "--store", url, "--format", "json"))
    assert [t["task"] for t in report["tasks"]] == ["other", "tickets"]
    check_tickets(report["tasks"][1], requests=50)
    assert any("mean teacher cost" in line for line in report["method"])

    recent = json.loads(protege(capsys, "report", "--store", url, "--task", "tickets", "--since", "5d", "--format",
                                "json"))
    [tickets] = recent["tasks"]
    check_tickets(tickets, requests=40)

    markdown = protege(capsys, "report", "--store", url, "--task", "tickets", "--format", "markdown")
    assert "| tickets (v1) | 50 | $0.0400 | $0.1000 | $0.0600 | $1.5000 | 1,000 | 100.0 | 0.930 (0.90) | 0.500 (3) |" \
        in markdown
    assert "- method — break-even: upfront / savings" in markdown

    plot = tmp_path / "cost.png"
    table = protege(capsys, "report", "--store", url, "--plot", str(plot))
    assert "tickets (v1)" in table and "total" in table and "student since" in table
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_report_rejects_a_bad_duration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "report", "--store", f"sqlite:///{tmp_path}/s.db", "--since", "lately")
    assert code == 2 and "invalid duration" in err and "Traceback" not in err
