"""What a reviewer of the console found, pinned: a lamp silent longer than rule 8 allows is
offline whatever the stored flag says; every alert kind the installed rules raise, and every
severity, state and step, has a label in both languages (an unknown one shows its own name,
marked); the sign-in hint's command is code, not backticks; the board's step poller sends each
step once across its overlapping polls; the lamps list merges the messages index's lamps."""

from __future__ import annotations

import ast
import inspect
import textwrap
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from agents.rules import installed_rules, rule_settings
from agents.rules.lamp_offline import LampOfflineSettings
from api import queries
from api.app import create_app
from api.console import i18n
from api.console.live import STEP_OVERLAP, StepPoller
from api.console.web import labelled, presence
from pipeline.settings import Settings

NOW = datetime(2026, 12, 2, 14, 0, tzinfo=UTC)
OFFLINE_AFTER = timedelta(seconds=rule_settings(Settings(), LampOfflineSettings).offline_after_s)


def lamp(online: bool, seen_ago: timedelta | None) -> SimpleNamespace:
    return SimpleNamespace(online=online, last_seen_at=None if seen_ago is None else NOW - seen_ago)


@pytest.mark.parametrize(
    ("stored_online", "seen_ago", "online", "silent"),
    [
        (True, timedelta(seconds=10), True, False),
        (True, OFFLINE_AFTER, True, False),  # rule 8: offline *after* the silence
        (True, OFFLINE_AFTER + timedelta(seconds=1), False, True),
        (True, timedelta(hours=28), False, True),  # the screenshot: "online", 28 h ago
        (False, timedelta(seconds=10), False, False),  # an offline status or last will
        (True, None, False, True),  # never heard from
    ],
)
def test_online_is_rule_8s(
    stored_online: bool, seen_ago: timedelta | None, online: bool, silent: bool
) -> None:
    state = presence(lamp(stored_online, seen_ago), NOW, OFFLINE_AFTER)
    assert (state.online, state.silent) == (online, silent)


def test_the_offline_threshold_is_the_rules_setting() -> None:
    settings = Settings(rules={"lamp_offline": {"offline_after_s": 60}})
    assert rule_settings(settings, LampOfflineSettings).offline_after_s == 60
    assert timedelta(seconds=300) == OFFLINE_AFTER


def raised_kinds(rule: type) -> set[str]:
    """The kinds a rule passes to ``ctx.raise_alert`` (its second argument), read from its
    source; a kind that is not a literal cannot be checked and fails the test by name."""
    module = inspect.getmodule(rule)
    assert module is not None, rule
    tree = ast.parse(textwrap.dedent(inspect.getsource(module)))
    kinds = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "raise_alert"
        ):
            kind = node.args[1] if len(node.args) > 1 else None
            assert isinstance(kind, ast.Constant) and isinstance(kind.value, str), (
                f"rule {rule.__name__} raises an alert whose kind is not a literal string: "
                "the console cannot check it has a label"
            )
            kinds.add(kind.value)
    return kinds


def test_every_kind_the_installed_rules_raise_has_a_label_in_both_languages() -> None:
    kinds = {kind: rule.__name__ for rule in installed_rules() for kind in raised_kinds(rule)}
    assert {"fall", "fall_recovered", "help_requested", "lamp_offline"} <= set(kinds)
    missing = [
        f"{lang}: kind.{kind} (raised by {rule})"
        for lang in i18n.LANGUAGES
        for kind, rule in sorted(kinds.items())
        if f"kind.{kind}" not in i18n.CATALOGUE[lang]
    ]
    assert not missing, "add these labels to api/console/i18n.py: " + ", ".join(missing)


def test_every_severity_state_and_step_has_a_label_in_both_languages() -> None:
    names = {
        "severity": ("critical", "warning", "info"),
        "state": ("raised", "notified", "escalated", "acknowledged", "resolved"),
        "step": ("raised", "notified", "renotified", "escalated", "acknowledged", "resolved"),
    }
    missing = [
        f"{lang}: {prefix}.{value}"
        for lang in i18n.LANGUAGES
        for prefix, values in names.items()
        for value in values
        if not i18n.known(lang, prefix, value)
    ]
    assert not missing


def test_an_unknown_kind_shows_its_own_name_marked_and_escaped() -> None:
    assert str(labelled("fr", "kind", "fall")) == "Chute"
    assert str(labelled("en", "state", "acknowledged")) == "acknowledged"
    raw = str(labelled("en", "kind", "fall_confirmed"))
    assert raw.startswith('<code class="raw" title="Not translated') and "fall_confirmed" in raw
    hostile = str(labelled("en", "kind", "<b>x</b>"))
    assert "<b>" not in hostile and "&lt;b&gt;x&lt;/b&gt;" in hostile


async def test_the_sign_in_hint_shows_the_command_as_code() -> None:
    transport = httpx.ASGITransport(app=create_app(Settings()))
    async with httpx.AsyncClient(transport=transport, base_url="http://console.test") as client:
        for lang in i18n.LANGUAGES:
            page = (await client.get(f"/console/sign-in?lang={lang}")).text
            assert "<code>veilleuse token create</code>" in page, lang
            assert "`" not in page, lang


def step_row(
    alert_id: str, step: str, recorded_at: datetime, occurrence: int = 1
) -> dict[str, Any]:
    return {
        "polled_at": None,
        "alert_id": alert_id,
        "step": step,
        "occurrence": occurrence,
        "emitted_at": recorded_at,
        "recorded_at": recorded_at,
        "details": {"acknowledged_by": "Nadia"} if step == "acknowledged" else {},
        "kind": "fall",
        "severity": "critical",
        "site_id": "site-a",
        "lamp_id": "L-1",
        "incident_started_at": NOW - timedelta(minutes=5),
    }


async def test_the_step_poller_sends_each_step_once_and_moves_on() -> None:
    answers: list[list[dict[str, Any]]] = []
    asked: list[dict[str, Any]] = []

    async def fetch(_query: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        asked.append(params)
        rows = answers.pop(0)
        return rows

    def polled(at: datetime, *rows: dict[str, Any]) -> list[dict[str, Any]]:
        if not rows:  # the LEFT JOIN's lone clock row
            return [{"polled_at": at, "alert_id": None}]
        return [{**row, "polled_at": at} for row in rows]

    escalated = step_row("a-1", "escalated", NOW)
    acked = step_row("a-1", "acknowledged", NOW + timedelta(seconds=1))
    renotified = step_row("a-2", "notified", NOW + timedelta(seconds=2), occurrence=2)
    answers = [
        polled(NOW, escalated),
        polled(NOW + timedelta(seconds=1), escalated, acked),  # the overlap reads it again
        polled(NOW + timedelta(seconds=3)),
        polled(NOW + timedelta(seconds=4), acked, renotified),  # committed late: still shown
    ]
    poller = StepPoller(fetch, "query")
    sent = [[(e["alert_id"], e["label"]) for e in await poller.poll(frozenset({"site-a"}))]]
    for _ in range(3):
        sent.append([(e["alert_id"], e["label"]) for e in await poller.poll(None)])
    assert sent == [[("a-1", "escalated")], [("a-1", "acknowledged")], [], [("a-2", "renotified")]]
    assert asked[0]["since"] is None and asked[0]["sites"] == ["site-a"]
    assert not asked[0]["all_sites"] and asked[1]["all_sites"]
    assert asked[1]["since"] == NOW - STEP_OVERLAP
    assert asked[3]["since"] == NOW + timedelta(seconds=3) - STEP_OVERLAP


def test_an_acknowledgement_step_carries_the_state_and_who() -> None:
    from api.console.live import step_event

    event = step_event(step_row("a-1", "acknowledged", NOW))
    assert (event["event"], event["state"], event["acknowledged_by"]) == (
        "step",
        "acknowledged",
        "Nadia",
    )
    assert step_event(step_row("a-1", "escalated", NOW))["state"] is None


def test_the_lamps_list_merges_the_messages_index() -> None:
    seen = NOW - timedelta(minutes=1)
    result = {
        "aggregations": {
            "lamps": {
                "buckets": [
                    {
                        "key": key,
                        "last": {"value": last},
                        "site": {"buckets": [{"key": site}] if site else []},
                    }
                    for key, site, last in (
                        ("L-1", "site-a", seen.timestamp() * 1000),
                        ("L-new", "site-a", seen.timestamp() * 1000),
                        ("L-0", "site-a", seen.timestamp() * 1000),
                        ("L-junk", None, 1.0),
                        ("L-empty", "site-a", None),
                    )
                ]
            }
        }
    }
    recent = queries.recent_lamps(result)
    assert set(recent) == {"L-0", "L-1", "L-new"}
    stored = [
        {"lamp_id": "L-1", "site_id": "site-a", "last_seen_at": NOW - timedelta(days=1),
         "firmware": "2.1", "online": True},
        {"lamp_id": "L-2", "site_id": "site-a", "last_seen_at": NOW,
         "firmware": "2.1", "online": False},
    ]  # fmt: skip
    merged = queries.merge_recent_lamps(stored, recent, after="L-0")
    assert [row["lamp_id"] for row in merged] == ["L-1", "L-2", "L-new"]
    assert merged[0]["last_seen_at"] == seen and merged[0]["firmware"] == "2.1"
    assert merged[1]["last_seen_at"] == NOW and merged[1]["online"] is False
    assert merged[2] == {"lamp_id": "L-new", "site_id": "site-a", "last_seen_at": seen,
                         "firmware": None, "online": True}  # fmt: skip


def test_the_recent_lamps_query_is_scoped_and_bounded() -> None:
    from api.tokens import Principal

    staff = Principal(name="n", role="staff", sites=("site-a",))
    body = queries.recent_lamps_body(staff, None, 1000)
    filters = body["query"]["bool"]["filter"]
    assert {"terms": {"site_id": ["site-a"]}} in filters
    assert {"range": {"event_time": {"gte": 1000, "format": "epoch_millis"}}} in filters
    assert body["size"] == 0
