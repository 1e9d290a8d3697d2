"""A task's cost report over a window from the store's sums (`Store.exchange_groups`) rather than its rows: the
same figures as `gateway.savings.task_report` (a contract test holds them equal on both stores), from a few
hundred groups however long the window. What the console's pages read."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.parity import LiveParity
from gateway.savings import SHADOW, TEACHER_ROUTES, Row, TaskReport, report_from_rows
from gateway.store import ExchangeGroup, Store, StudentVersion


def _group_rows(groups: Sequence[ExchangeGroup]) -> tuple[list[Row], int]:
    """What `gateway.savings` makes of each exchange, made of each group: a `Row` per group, with the same
    counterfactual rules (shadow 0, a student's recorded estimate or the mean teacher cost, a failed call 0,
    the teacher's own charge otherwise), and how many answered exchanges had no price."""
    teacher = [g for g in groups if g.route in TEACHER_ROUTES and g.status == "ok" and g.priced]
    teacher_rows = sum(g.rows for g in teacher)
    teacher_mean = (sum(_group_teacher_cost(g) for g in teacher) / teacher_rows) if teacher_rows else None
    rows: list[Row] = []
    for g in groups:
        if g.route == SHADOW:
            rows.append(Row(g.first_at, g.route, g.cost_usd, 0.0, price_source=g.price_source, count=g.rows))
        elif g.route == "student":
            if g.has_counterfactual:
                rows.append(Row(g.first_at, g.route, g.cost_usd, g.counterfactual_usd, price_source=g.price_source,
                                count=g.rows))
            else:
                estimate = None if teacher_mean is None else teacher_mean * g.rows
                rows.append(Row(g.first_at, g.route, g.cost_usd, estimate, estimated=g.rows if estimate is not None
                                else 0, price_source=g.price_source, count=g.rows))
        elif not g.priced and g.status != "ok":
            rows.append(Row(g.first_at, g.route, g.cost_usd, 0.0, count=g.rows))
        else:
            rows.append(Row(g.first_at, g.route, g.cost_usd, _group_teacher_cost(g) if g.priced else None,
                            price_source=g.price_source, count=g.rows))
    rows.sort(key=lambda r: r.at)
    return rows, sum(g.rows for g in groups if not g.priced and g.status == "ok")


def _group_teacher_cost(g: ExchangeGroup) -> float:
    return g.cost_usd - g.student_cost_usd if g.route == "fallback" else g.cost_usd


def task_report_from_groups(task: str, groups: Sequence[ExchangeGroup], students: Sequence[StudentVersion], *,
                            now: float) -> TaskReport:
    """`task_report` from the store's sums (`Store.exchange_groups`) instead of the rows themselves. Its student
    share since the first student answer counts whole groups: `window_report` counts it exactly."""
    rows, unpriced = _group_rows(groups)

    def live(version: int) -> LiveParity:
        shadows = [g for g in groups if g.route == SHADOW and g.shadow_version == version]
        return LiveParity(sum(g.agreements for g in shadows), sum(g.agreement_sum for g in shadows))

    return report_from_rows(task, rows, unpriced, students, now=now, live=live)


async def window_report(store: Store, task: str, students: Sequence[StudentVersion], *, since: float | None,
                        now: float, buckets: int = 200) -> TaskReport | None:
    """A task's report over the window from `since` on, added up in the store (a few groups, never every row);
    None without traffic. `buckets` time buckets over the window give the savings curve its resolution."""
    start = since
    if start is None:  # all traffic: one bucket first, for where the window starts
        extent = await store.exchange_groups(task=task, since=None, bucket_s=1e12)
        if not extent:
            return None
        start = min(g.first_at for g in extent)
    groups = await store.exchange_groups(task=task, since=since, bucket_s=max(1.0, (now - start) / buckets))
    if not groups:
        return None
    report = task_report_from_groups(task, groups, students, now=now)
    if report.student_since is not None:  # exact: the client requests from the first student answer on
        later = await store.exchange_groups(task=task, since=report.student_since, bucket_s=1e12)
        report.student_requests = sum(g.rows for g in later if g.route != SHADOW)
    return report
