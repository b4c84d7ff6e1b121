"""The lamp page's SVG charts: every bar readable (data-hour, data-value, a title), values
escaped, gaps left empty, and a scale that holds negative figures."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from xml.etree import ElementTree

import pytest

from api.console.charts import Bar, bar_chart, iso_hour, number

SVG = "{http://www.w3.org/2000/svg}"
START = datetime(2026, 12, 1, 22, tzinfo=UTC)


def parse(markup: str) -> ElementTree.Element:
    return ElementTree.fromstring(markup)  # noqa: S314 - our own output, under test


def bars_of(markup: str) -> list[ElementTree.Element]:
    return list(parse(markup).iter(f"{SVG}rect"))


def test_every_bar_carries_its_hour_value_and_title() -> None:
    bars = [Bar(START + timedelta(hours=i), v, f"{23 + i:02d}:00") for i, v in enumerate([3, 0])]
    svg = bar_chart("chart-messages-24h", "Messages", bars, unit="msg")
    root = parse(svg)
    assert root.get("data-testid") == "chart-messages-24h"
    assert root.get("role") == "img"
    rects = bars_of(svg)
    assert [(r.get("data-hour"), r.get("data-value")) for r in rects] == [
        ("2026-12-01T22:00:00Z", "3"),
        ("2026-12-01T23:00:00Z", "0"),
    ]
    assert [r.find(f"{SVG}title").text for r in rects] == ["23:00: 3 msg", "24:00: 0 msg"]  # type: ignore[union-attr]


def test_the_tallest_bar_fills_the_plot_and_heights_are_proportional() -> None:
    svg = bar_chart("c", "t", [Bar(START, 10, "a"), Bar(START + timedelta(hours=1), 5, "b")])
    tall, half = (float(r.get("height", "0")) for r in bars_of(svg))
    assert tall == pytest.approx(2 * half, rel=0.02)


def test_a_missing_figure_is_a_gap_not_a_zero() -> None:
    bars = [Bar(START, 1.5, "a"), Bar(START + timedelta(hours=1), None, "b")]
    rects = bars_of(bar_chart("c", "t", bars))
    assert [r.get("data-value") for r in rects] == ["1.5"]


def test_negative_temperatures_hang_below_the_axis() -> None:
    svg = bar_chart("c", "t", [Bar(START, -2.5, "a"), Bar(START + timedelta(hours=1), 5.0, "b")])
    root = parse(svg)
    axis_y = float(root.find(f"{SVG}line").get("y1", "0"))  # type: ignore[union-attr]
    below, above = bars_of(svg)
    assert float(below.get("y", "0")) == pytest.approx(axis_y, abs=0.1)
    assert float(above.get("y", "0")) + float(above.get("height", "0")) == pytest.approx(
        axis_y, abs=0.1
    )


def test_text_is_escaped() -> None:
    svg = bar_chart('x"><script>', "<b>title</b>", [Bar(START, 1, "<img onerror=x>")], unit="&")
    assert "<script>" not in svg and "<b>" not in svg and "<img" not in svg
    parse(svg)  # still well-formed


def test_an_empty_chart_says_so() -> None:
    svg = bar_chart("c", "t", [Bar(START, None, "a")], empty="No figures")
    assert bars_of(svg) == [] and "No figures" in svg


def test_numbers_are_written_as_the_api_writes_them() -> None:
    assert (number(3), number(20.0), number(19.375)) == ("3", "20.0", "19.375")
    with pytest.raises(TypeError):
        number(True)


def test_hours_are_utc_whatever_the_zone() -> None:
    paris = datetime(2026, 12, 2, 1, tzinfo=UTC).astimezone()
    assert iso_hour(paris) == "2026-12-02T01:00:00Z"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:00:00Z", iso_hour(START))
