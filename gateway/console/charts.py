"""Inline SVG line charts for the admin console: rendered on the server, no JavaScript, no external assets.

A chart is an `<svg role="img">` with a `<title>` and a `<desc>` (what a screen reader announces), axes
with round tick values, one polyline per series, optional horizontal reference rules (a target, a
break-even line) and labelled markers (an operating point). Every text is escaped; colours are
presentation attributes, so a strict Content-Security-Policy (no inline styles) does not affect them.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

Formatter = Callable[[float], str]

# dark enough for 4.5:1 or more on white, and told apart by dash pattern too (not by colour alone)
PALETTE = ("#1d4ed8", "#b91c1c", "#047857", "#7c2d92")
AXIS = "#4b5563"
GRID = "#e5e7eb"


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]
    dashed: bool = False
    step: bool = False  # hold each value until the next point (cumulative sums)


@dataclass(frozen=True, slots=True)
class Rule:
    """A horizontal reference line at `y`."""

    y: float
    label: str


@dataclass(frozen=True, slots=True)
class Marker:
    x: float
    y: float
    label: str


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("tick bounds must be finite")
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        return [lo]
    raw = (hi - lo) / max(1, count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 5, 10)), key=lambda c: abs(math.log(c / raw)))  # the nearest round step
    first = math.floor(lo / step + 1e-9) * step
    count_steps = math.ceil((hi - first) / step - 1e-9)
    digits = max(0, -math.floor(math.log10(step))) + 3  # rounds away float noise such as 0.30000000000000004
    return [round(first + i * step, digits) + 0.0 for i in range(count_steps + 1)]  # + 0.0: no -0.0


def number_format(digits: int = 2) -> Formatter:
    return lambda v: f"{v:,.{digits}f}"


def percent_format(digits: int = 0) -> Formatter:
    """Fractions (0–1) as percentages."""
    return lambda v: f"{v * 100:.{digits}f}%"


def usd_format(span: float) -> Formatter:
    """Dollars with as many decimals as a tick spacing of about `span` / 4 needs."""
    step = span / 4 if span > 0 else 1.0
    digits = 2 if step >= 0.01 else min(8, 1 - math.floor(math.log10(step)))
    return lambda v: f"${v:,.{digits}f}" if v >= 0 else f"−${-v:,.{digits}f}"


def time_format(span_s: float) -> Formatter:
    """UTC times: dates over spans of two days or more, clock times under."""
    pattern = "%m-%d" if span_s >= 2 * 86400 else "%H:%M:%S" if span_s < 600 else "%H:%M"
    return lambda v: dt.datetime.fromtimestamp(v, dt.UTC).strftime(pattern)


def time_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round times (a whole number of seconds, minutes, hours or days apart) covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, count - 1)
    steps = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 3 * 3600, 6 * 3600, 12 * 3600, 86400,
             2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400)
    step = next((s for s in steps if s >= raw), steps[-1] * math.ceil(raw / steps[-1]))
    first = math.ceil(lo / step) * step
    return [float(first + i * step) for i in range(int((hi - first) // step) + 1)] or [lo]


def downsample(points: Sequence[tuple[float, float]], limit: int = 400) -> list[tuple[float, float]]:
    """At most about `limit` points, evenly picked, always keeping the first and the last."""
    if len(points) <= limit:
        return list(points)
    stride = math.ceil(len(points) / limit)
    picked = list(points[::stride])
    if picked[-1] != points[-1]:
        picked.append(points[-1])
    return picked


def _extent(values: Sequence[float], fixed: tuple[float, float] | None) -> tuple[float, float]:
    if fixed is not None:
        return fixed
    lo, hi = min(values), max(values)
    if lo == hi:  # a flat line: give it some room
        pad = abs(lo) * 0.1 or 1.0
        return lo - pad, hi + pad
    return lo, hi


def _attr(value: str) -> str:
    return escape(value, quote=True)


def line_chart(series: Sequence[Series], *, title: str, description: str, x_label: str, y_label: str,
               x_format: Formatter | None = None, y_format: Formatter | None = None,
               x_range: tuple[float, float] | None = None, y_range: tuple[float, float] | None = None,
               x_time: bool = False, rules: Sequence[Rule] = (), markers: Sequence[Marker] = (),
               width: int = 640, height: int = 300, chart_id: str = "chart") -> Markup:
    """An accessible SVG line chart; an empty one says so instead of drawing axes."""
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" role="img" aria-labelledby="{_attr(chart_id)}-title '
            f'{_attr(chart_id)}-desc"><title id="{_attr(chart_id)}-title">{escape(title)}</title>'
            f'<desc id="{_attr(chart_id)}-desc">{escape(description)}</desc>')
    xs = [x for s in series for x, _ in s.points] + [m.x for m in markers]
    ys = [y for s in series for _, y in s.points] + [m.y for m in markers] + [r.y for r in rules]
    if not any(s.points for s in series):
        return Markup(f'{head}<text x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle" '
                      f'fill="{AXIS}" font-size="14">No data yet</text></svg>')
    x_lo, x_hi = _extent(xs, x_range)
    x_ticks = time_ticks(x_lo, x_hi) if x_time else nice_ticks(x_lo, x_hi)
    y_ticks = nice_ticks(*_extent(ys, y_range))
    if x_range is None and not x_time:
        x_lo, x_hi = min(x_lo, x_ticks[0]), max(x_hi, x_ticks[-1])
    y_lo, y_hi = (y_range if y_range is not None else (min(y_ticks[0], min(ys)), max(y_ticks[-1], max(ys))))
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    if y_hi == y_lo:
        y_lo, y_hi = y_lo - 1, y_hi + 1
    fx = x_format or (time_format(x_hi - x_lo) if x_time else number_format())
    fy = y_format or number_format()
    y_labels = {t: fy(t) for t in y_ticks if y_lo - 1e-12 <= t <= y_hi + 1e-12}
    # room for the longest tick label (about 6.5 px a character at 11 px) and the rotated axis title
    left = 34 + round(6.5 * max((len(label) for label in y_labels.values()), default=4))
    right, top, bottom = 16, 16 + 18 * math.ceil(len(series) / 3), 48
    plot_w, plot_h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * plot_w

    def sy(y: float) -> float:
        return top + (1 - (y - y_lo) / (y_hi - y_lo)) * plot_h

    parts = [head]
    for i, s in enumerate(series):  # legend, above the plot
        color = PALETTE[i % len(PALETTE)]
        lx, ly = left + (i % 3) * 190, 14 + 18 * (i // 3)
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        parts.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 24}" y2="{ly - 4}" stroke="{color}" '
                     f'stroke-width="2.5"{dash}/><text x="{lx + 30}" y="{ly}" font-size="12" fill="#111827">'
                     f'{escape(s.name)}</text>')
    for t, label in y_labels.items():
        y = sy(t)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="{GRID}"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="{AXIS}">'
                     f'{escape(label)}</text>')
    for t in x_ticks:
        if x_lo - 1e-12 <= t <= x_hi + 1e-12:
            x = sx(t)
            parts.append(f'<line x1="{x:.1f}" y1="{top + plot_h}" x2="{x:.1f}" y2="{top + plot_h + 4}" '
                         f'stroke="{AXIS}"/><text x="{x:.1f}" y="{top + plot_h + 17}" text-anchor="middle" '
                         f'font-size="11" fill="{AXIS}">{escape(fx(t))}</text>')
    parts.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="{AXIS}"/>'
                 f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="{AXIS}"/>'
                 f'<text x="{left + plot_w / 2:.0f}" y="{height - 8}" text-anchor="middle" font-size="12" '
                 f'fill="#111827">{escape(x_label)}</text>'
                 f'<text transform="translate(14 {top + plot_h / 2:.0f}) rotate(-90)" text-anchor="middle" '
                 f'font-size="12" fill="#111827">{escape(y_label)}</text>')
    for rule in rules:
        if y_lo <= rule.y <= y_hi:
            y = sy(rule.y)
            parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="{AXIS}" '
                         f'stroke-dasharray="2 3"/><text x="{left + plot_w - 4}" y="{y - 4:.1f}" text-anchor="end" '
                         f'font-size="11" fill="{AXIS}">{escape(rule.label)}</text>')
    for i, s in enumerate(series):
        if not s.points:
            continue
        color = PALETTE[i % len(PALETTE)]
        coords: list[tuple[float, float]] = []
        for j, (x, y) in enumerate(s.points):
            if s.step and j:
                coords.append((sx(x), coords[-1][1]))
            coords.append((sx(x), sy(y)))
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        parts.append(f'<polyline class="series" data-series="{_attr(s.name)}" points="{path}" fill="none" '
                     f'stroke="{color}" stroke-width="2"{dash}/>')
    for m in markers:
        x, y = sx(m.x), sy(m.y)
        anchor = "end" if x > left + plot_w * 0.6 else "start"
        dx = -8 if anchor == "end" else 8
        parts.append(f'<circle class="marker" cx="{x:.1f}" cy="{y:.1f}" r="5" fill="#111827"/>'
                     f'<text x="{x + dx:.1f}" y="{y + 16:.1f}" text-anchor="{anchor}" font-size="11" '
                     f'fill="#111827">{escape(m.label)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
