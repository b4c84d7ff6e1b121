"""Keyboard and contrast, measured in the browser: every piece of text on each page has a WCAG
AA contrast with the background it is drawn on (computed from the styles Chromium applied),
and a keyboard alone reaches the content and acknowledges an alert."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
from playwright.async_api import Page

from tests.integration.api.conftest import SITE_A
from tests.integration.console.conftest import CHART_LAMP, Browsing, ConsoleRun

# For each element holding visible text of its own: its colour, the first opaque background
# behind it (walking up), and its font size and weight (large text needs 3:1, the rest 4.5:1).
CONTRASTS_JS = """
() => {
  const parse = (value) => {
    const m = value.match(/rgba?\\(([^)]+)\\)/);
    if (!m) return null;
    const p = m[1].split(',').map((x) => parseFloat(x));
    return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1};
  };
  const background = (element) => {
    for (let e = element; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c && c.a >= 0.99) return c;
    }
    return {r: 255, g: 255, b: 255, a: 1};
  };
  const found = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const element = node.parentElement;
    if (!node.textContent.trim() || !element) continue;
    const style = getComputedStyle(element);
    const box = element.getBoundingClientRect();
    if (style.visibility === 'hidden' || style.display === 'none') continue;
    if (box.width === 0 || box.height === 0 || box.right < 0 || box.bottom < 0) continue;
    const fill = element.closest('svg') ? style.fill : style.color;
    found.push({
      text: node.textContent.trim().slice(0, 40),
      tag: element.tagName.toLowerCase(),
      color: parse(fill) || parse(style.color),
      background: background(element),
      size: parseFloat(style.fontSize),
      weight: parseInt(style.fontWeight, 10) || 400,
    });
  }
  return found;
}
"""


def luminance(colour: dict[str, float]) -> float:
    def channel(value: float) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    return (
        0.2126 * channel(colour["r"])
        + 0.7152 * channel(colour["g"])
        + 0.0722 * channel(colour["b"])
    )


def contrast(a: dict[str, float], b: dict[str, float]) -> float:
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_the_contrast_formula_is_wcags() -> None:
    black, white = {"r": 0, "g": 0, "b": 0}, {"r": 255, "g": 255, "b": 255}
    assert round(contrast(black, white), 1) == 21.0
    assert round(contrast({"r": 118, "g": 118, "b": 118}, white), 2) == 4.54  # AA's grey


async def too_faint(page: Page) -> list[str]:
    faint = []
    items: list[dict[str, Any]] = await page.evaluate(CONTRASTS_JS)
    assert items, f"no text found on {page.url}"
    for item in items:
        large = item["size"] >= 24 or (item["size"] >= 18.66 and item["weight"] >= 700)
        needed = 3.0 if large else 4.5
        ratio = contrast(item["color"], item["background"])
        if ratio < needed:
            faint.append(f"{item['tag']} {item['text']!r}: {ratio:.2f} < {needed}")
    return faint


async def test_faint_text_is_found(browsing: Browsing) -> None:
    page = await browsing.new_page()
    await page.set_content(
        '<p style="color:#1b1f24">readable</p><p style="color:#aaaaaa">faint</p>'
        '<div style="background:#a50e0e"><span style="color:#ffffff">on red</span></div>'
        '<h1 style="color:#888888;font-size:32px">large grey</h1>'
    )
    assert [line.split(":")[0] for line in await too_faint(page)] == ["p 'faint'"]


async def test_every_page_has_aa_contrast(console: ConsoleRun, browsing: Browsing) -> None:
    page = await browsing.new_page()
    await browsing.visit(page, "/console/sign-in", "contrast-sign-in")
    problems = {"sign-in": await too_faint(page)}
    page = await browsing.sign_in(console.api.tokens["staff_a"])
    for name, path in {
        "board": f"/console/sites/{SITE_A}",
        "alert": "/console/alerts/a-open",
        "lamp": f"/console/lamps/{CHART_LAMP}",
        "search": f"/console/messages?site={SITE_A}",
        "history": "/console/alerts",
    }.items():
        assert await browsing.visit(page, path, f"contrast-{name}") == 200, path
        problems[name] = await too_faint(page)
    assert not any(problems.values()), problems


async def focused(page: Page) -> str:
    return str(
        await page.evaluate(
            "() => { const e = document.activeElement;"
            " return e ? (e.getAttribute('data-testid') || e.className || e.tagName) : ''; }"
        )
    )


async def test_the_keyboard_alone_skips_to_the_content_and_acknowledges(
    console: ConsoleRun, browsing: Browsing
) -> None:
    with psycopg.connect(console.conninfo) as conn:  # its own alert: the others stay raised
        conn.execute(
            "INSERT INTO alerts (alert_id, kind, severity, site_id, lamp_id, "
            "incident_started_at, state, raised_at, details) VALUES ('a-keys', "
            "'help_requested', 'critical', %s, 'L-A2', %s, 'raised', %s, '{}')",
            (SITE_A, datetime.now(UTC), datetime.now(UTC)),
        )
    page = await browsing.sign_in(console.api.tokens["staff_a"])
    assert await browsing.visit(page, "/console/alerts/a-keys", "keyboard-alert") == 200
    await page.keyboard.press("Tab")
    assert await focused(page) == "skip", "the first Tab stop is not the skip link"
    await page.keyboard.press("Enter")
    assert await page.evaluate("() => location.hash") == "#main"
    # From the content, Tab reaches the Acknowledge button without passing the navigation.
    for _ in range(30):
        await page.keyboard.press("Tab")
        if await focused(page) == "ack-button":
            break
    else:
        raise AssertionError("Tab never reached the Acknowledge button")
    ring = await page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert ring != "none", "the focused button shows no focus ring"
    async with page.expect_navigation():
        await page.keyboard.press("Enter")
    await page.wait_for_load_state("load")
    await browsing.screens.shot(page, "keyboard-acknowledged")
    assert await page.get_by_test_id("acknowledged-by").count() == 1, page.url
