"""The task page's two charts, as inline SVG: the cumulative savings of a window's cost report and a version's
calibration curve with its calibrated and current thresholds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from markupsafe import Markup

from gateway.console.charts import Marker, Rule, Series, downsample, line_chart, percent_format, usd_format
from gateway.console.pages import usd
from gateway.savings import TaskReport
from gateway.store import StudentVersion


def savings_chart(report: TaskReport | None) -> Markup:
    points: list[tuple[float, float]] = []
    total = 0.0
    for r in report.rows if report else []:
        total += (r.counterfactual_usd or 0.0) - r.cost_usd
        points.append((r.at, total))
    upfront = report.upfront_usd if report else 0.0
    span = max([abs(y) for _, y in points] + [upfront, 1e-9])
    rules = [Rule(upfront, f"training cost {usd(upfront)}: break-even")] if upfront > 0 else []
    requests = report.requests if report else 0
    description = (f"Cumulative savings against the teacher alone: {usd(total)} over {requests} requests."
                   if points else "No traffic in this window.")
    return line_chart([Series("cumulative savings", downsample(points), step=True)], title="Cumulative savings",
                      description=description, x_label="time (UTC)", y_label="USD saved", x_time=True,
                      y_format=usd_format(span), rules=rules, chart_id="savings-chart")


def _curve_points(calibration: dict[str, Any]) -> list[tuple[float | None, float, float]]:
    """(threshold, student share, parity) of the stored deferral curve (an infinite threshold is stored as null)."""
    points = []
    for p in calibration.get("curve") or []:
        share, parity = p.get("student_share"), p.get("parity")
        if isinstance(share, int | float) and isinstance(parity, int | float):
            threshold = p.get("threshold")
            points.append((float(threshold) if isinstance(threshold, int | float) else None, float(share),
                           float(parity)))
    return sorted(points, key=lambda p: p[1])


def operating_point(curve: Sequence[tuple[float | None, float, float]],
                    threshold: float) -> tuple[float | None, float, float] | None:
    """The curve point a threshold serves at: the largest student share whose threshold it does not exceed."""
    served = [p for p in curve if p[0] is not None and p[0] >= threshold]
    return max(served, key=lambda p: p[1], default=None)


def calibration_chart(student: StudentVersion) -> Markup | None:
    calibration = student.details.calibration
    if calibration is None:
        return None
    curve = _curve_points(calibration)
    target = calibration.get("target_parity")
    rules = [Rule(float(target), f"target parity {target:.2f}")] if isinstance(target, int | float) else []
    markers = []
    point = calibration.get("point") or {}
    calibrated = calibration.get("threshold")
    if isinstance(calibrated, int | float) and isinstance(point.get("student_share"), int | float):
        markers.append(Marker(point["student_share"], point["parity"],
                              f"calibrated {calibrated:.3f}: {point['student_share']:.0%} student"))
    current = student.threshold
    if current is not None and current != calibrated and (at := operating_point(curve, current)) is not None:
        markers.append(Marker(at[1], at[2], f"current {current:.3f}: {at[1]:.0%} student"))
    description = (f"Parity with the teacher against the share of traffic the student keeps, over {len(curve)} "
                   f"thresholds of the {calibration.get('method', 'confidence')} score on the validation split.")
    return line_chart([Series("parity with the teacher", [(s, p) for _, s, p in curve])], title="Calibration curve",
                      description=description, x_label="share of traffic served by the student",
                      y_label="parity", x_range=(0.0, 1.0), x_format=percent_format(), rules=rules, markers=markers,
                      chart_id="calibration-chart")
