"""The console's inline SVG charts: tick choice, scaling, escaping and accessibility attributes."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import pytest

from gateway.console.charts import (
    Marker,
    Rule,
    Series,
    downsample,
    line_chart,
    nice_ticks,
    percent_format,
    time_format,
    time_ticks,
    usd_format,
)

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # well-formed XML, or this raises


def one(root: ET.Element, tag: str) -> ET.Element:
    found = root.find(f"{SVG}{tag}")
    assert found is not None, tag
    return found


@pytest.mark.parametrize(("lo", "hi", "expected"), [
    (0, 1, [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
    (0.83, 1.0, [0.8, 0.85, 0.9, 0.95, 1.0]),
    (-3, 7, [-4, -2, 0, 2, 4, 6, 8]),
    (0, 0.00004, [0, 0.00001, 0.00002, 0.00003, 0.00004]),
    (7, 7, [7]),
])
def test_nice_ticks_are_round_and_cover_the_range(lo: float, hi: float, expected: list[float]) -> None:
    ticks = nice_ticks(lo, hi)
    assert ticks == pytest.approx(expected)
    assert ticks[0] <= lo and ticks[-1] >= hi


def test_nice_ticks_hold_no_float_noise_and_refuse_infinity() -> None:
    assert 0.30000000000000004 not in nice_ticks(0, 0.7)
    assert nice_ticks(1, 0) == nice_ticks(0, 1)
    with pytest.raises(ValueError):
        nice_ticks(0, math.inf)


def test_time_ticks_fall_on_round_times_inside_the_range() -> None:
    lo, hi = 1_700_000_013.0, 1_700_000_013.0 + 3 * 3600
    ticks = time_ticks(lo, hi)
    assert 3 <= len(ticks) <= 6
    assert all(lo <= t <= hi for t in ticks)
    step = ticks[1] - ticks[0]
    assert step in (1800, 3600) and all(t % step == 0 for t in ticks)


def test_formats() -> None:
    assert percent_format()(0.43) == "43%"
    assert usd_format(10)(2.5) == "$2.50"
    assert usd_format(0.00004)(0.00002) == "$0.000020"
    assert usd_format(0.00004)(-0.00002) == "−$0.000020"
    assert time_format(60)(0) == "00:00:00"
    assert time_format(7200)(3600) == "01:00"
    assert time_format(5 * 86400)(86400 * 31) == "02-01"


def test_downsample_keeps_the_ends() -> None:
    points = [(float(i), float(i * i)) for i in range(1001)]
    picked = downsample(points, limit=100)
    assert len(picked) <= 101 and picked[0] == points[0] and picked[-1] == points[-1]
    assert downsample(points[:5], limit=100) == points[:5]


def test_an_empty_chart_says_so_and_stays_accessible() -> None:
    svg = line_chart([Series("savings", [])], title="Savings", description="nothing yet", x_label="x", y_label="y")
    root = parse(svg)
    assert root.get("role") == "img" and "No data yet" in svg
    assert one(root, "title").text == "Savings" and one(root, "desc").text == "nothing yet"
    assert root.get("aria-labelledby") == "chart-title chart-desc"


def test_line_chart_draws_each_series_rule_and_marker_inside_the_plot() -> None:
    svg = line_chart([Series("parity", [(0, 1.0), (0.5, 0.95), (1.0, 0.8)]),
                      Series("other", [(0, 0.9), (1, 0.9)], dashed=True)],
                     title="Calibration", description="d", x_label="share", y_label="parity", x_range=(0, 1),
                     x_format=percent_format(), rules=[Rule(0.9, "target 0.90")],
                     markers=[Marker(0.5, 0.95, "calibrated")], width=600, height=300, chart_id="cal")
    root = parse(svg)
    lines = root.findall(f"{SVG}polyline")
    assert [p.get("data-series") for p in lines] == ["parity", "other"]
    assert lines[1].get("stroke-dasharray") and not lines[0].get("stroke-dasharray")
    for line in lines:
        for pair in (line.get("points") or "").split():
            x, y = map(float, pair.split(","))
            assert 0 <= x <= 600 and 0 <= y <= 300
    assert "target 0.90" in svg and "calibrated" in svg and ">100%<" in svg
    [marker] = root.findall(f"{SVG}circle")
    first = (lines[0].get("points") or "").split()[1]
    assert (marker.get("cx"), marker.get("cy")) == tuple(first.split(","))  # the marker sits on its point
    assert root.get("aria-labelledby") == "cal-title cal-desc"


def test_step_series_hold_their_value_until_the_next_point() -> None:
    svg = line_chart([Series("cumulative", [(0, 0), (1, 1), (2, 3)], step=True)], title="t", description="d",
                     x_label="x", y_label="y")
    points = one(parse(svg), "polyline").get("points", "").split()
    assert len(points) == 5  # a horizontal then a vertical segment per step
    ys = [float(p.split(",")[1]) for p in points]
    assert ys[1] == ys[0] and ys[3] == ys[2]


def test_flat_and_single_point_series_still_render() -> None:
    for points in ([(5.0, 2.0)], [(0.0, 2.0), (1.0, 2.0)]):
        svg = line_chart([Series("s", points)], title="t", description="d", x_label="x", y_label="y")
        one(parse(svg), "polyline")
        assert "nan" not in svg.lower()


def test_text_is_escaped() -> None:
    evil = '<script>alert("x")</script>'
    svg = line_chart([Series(evil, [(0, 0), (1, 1)])], title=evil, description=evil, x_label=evil, y_label=evil,
                     rules=[Rule(0.5, evil)], markers=[Marker(0.5, 0.5, evil)], chart_id='a"b')
    assert "<script>" not in svg
    root = parse(svg)
    assert one(root, "title").text == evil and one(root, "desc").text == evil
    assert re.search(r'aria-labelledby="a&quot;b-title', svg)
