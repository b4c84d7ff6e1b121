"""The lamp page's charts as server-side SVG: pure functions of the figures, no JavaScript.

Every bar carries ``data-hour`` (the ISO UTC start of its hour or day), ``data-value`` (the
figure as the API returns it) and a ``<title>`` (read by screen readers and shown on hover), so
that a test and a person read the same number the chart draws. Every value is escaped here;
the result is markup the templates insert as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from markupsafe import Markup, escape

WIDTH = 720
HEIGHT = 180
TOP = 16
BOTTOM = 28  # room for the time labels
LEFT = 44  # room for the scale
RIGHT = 8


@dataclass(frozen=True)
class Bar:
    start: datetime  # the hour's or the day's start
    value: float | int | None  # None: no figure (drawn as a gap)
    label: str  # the bar's time as the reader reads it (site's zone)


def iso_hour(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def number(value: float | int) -> str:
    """As the API's JSON writes it: ints bare, floats with their decimals."""
    if isinstance(value, bool):  # a bool is an int to Python, never a figure here
        raise TypeError("a figure is a number")
    return str(value) if isinstance(value, int) else repr(float(value))


def bar_chart(
    testid: str,
    title: str,
    bars: Sequence[Bar],
    *,
    unit: str = "",
    empty: str = "",
    slots: int | None = None,
) -> Markup:
    """A bar per figure in time order; ``slots`` (default: one per bar) fixes the width of
    each bar, so that 24 hours with a gap keep their place. Bars without a value are left out."""
    count = max(slots or len(bars), 1)
    values = [bar.value for bar in bars if bar.value is not None]
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    low = min([0.0, *values])
    high = max([0.0, *values])
    span = (high - low) or 1.0

    def y(value: float) -> float:
        return TOP + plot_h * (high - value) / span

    slot_w = plot_w / count
    parts = [
        f'<svg class="chart" data-testid="{escape(testid)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-labelledby="{escape(testid)}-title" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{escape(testid)}-title">{escape(title)}</title>',
        f'<line class="axis" x1="{LEFT}" y1="{y(0):.1f}" x2="{WIDTH - RIGHT}" y2="{y(0):.1f}"/>',
        f'<text class="scale" x="{LEFT - 4}" y="{TOP + 4}">{escape(number(high))}</text>',
    ]
    if low < 0:
        parts.append(f'<text class="scale" x="{LEFT - 4}" y="{TOP + plot_h}">{number(low)}</text>')
    if not values and empty:
        parts.append(f'<text class="empty" x="{WIDTH / 2}" y="{TOP + plot_h / 2}">')
        parts.append(f"{escape(empty)}</text>")
    for index, bar in enumerate(bars):
        x = LEFT + index * slot_w
        if bar.value is not None:
            top, bottom = sorted((y(bar.value), y(0)))
            text = f"{bar.label}: {number(bar.value)}{(' ' + unit) if unit else ''}"
            parts.append(
                f'<rect class="bar" data-hour="{iso_hour(bar.start)}" '
                f'data-value="{escape(number(bar.value))}" x="{x + slot_w * 0.1:.1f}" '
                f'y="{top:.1f}" width="{slot_w * 0.8:.1f}" height="{max(bottom - top, 0.5):.1f}">'
                f"<title>{escape(text)}</title></rect>"
            )
        if index in (0, len(bars) - 1) or (len(bars) > 12 and index % 6 == 0):
            parts.append(
                f'<text class="time" x="{x + slot_w / 2:.1f}" y="{HEIGHT - 8}">'
                f"{escape(bar.label)}</text>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every value above went through escape()
