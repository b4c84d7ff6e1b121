"""The console bench's data: the messages it loads are valid lamp messages, documented by the
sink's own code, where the plan says; the pages it asks for stay within the loaded data."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

from connectors.sinks.elasticsearch import IndexNames, message_action
from connectors.validation import Accepted, validate
from devtools.bench.console_pages import (
    BOARD_SITE,
    TYPES,
    Plan,
    pages,
    record_of,
    site_of,
)

DAY_MS = 86_400_000
PLAN = Plan(messages=300_000, lamps=1000, start_ms=1_796_000_000_000 - 30 * DAY_MS,
            end_ms=1_796_000_000_000)  # fmt: skip


def test_every_message_passes_the_connectors_validation() -> None:
    for n in range(0, 3000, 7):
        record = record_of(n, PLAN, "lamp.messages.v1")
        topic = dict(record.headers)["mqtt.topic"].decode()
        assert isinstance(validate(topic, record.value or b""), Accepted), (n, record.value)


def test_the_sink_documents_them_under_their_identity_in_the_day_of_their_time() -> None:
    names = IndexNames("p")
    action = message_action(record_of(123_456, PLAN, "lamp.messages.v1"), names, 1)
    lamp, seq = 123_456 % 1000, 123_456 // 1000
    ts = PLAN.ts(123_456)
    assert action.doc_id == f"L-{lamp:06d}:{seq}:{ts}"
    day = datetime.fromtimestamp(ts / 1000, tz=UTC)
    assert action.index == f"p-g1-{day:%Y.%m.%d}"
    assert action.source["site_id"] == site_of(lamp) == "home-04"
    assert action.source["event_time"] == ts


def test_times_spread_evenly_over_the_plan_in_order() -> None:
    times = [PLAN.ts(n) for n in range(PLAN.messages)]
    assert times == sorted(times)
    assert times[0] == PLAN.start_ms and PLAN.end_ms - DAY_MS // 1000 < times[-1] < PLAN.end_ms


def test_the_type_mix_follows_its_shares() -> None:
    kinds = Counter(
        message_action(record_of(n, PLAN, "t"), IndexNames("p"), 1).source["type"]
        for n in range(20_000)
    )
    for kind, share, _ in TYPES:
        assert abs(kinds[kind] / 20_000 - share / 1000) < 0.01, (kind, kinds[kind])


def test_the_pages_ask_for_the_board_sites_lamps_and_windows_within_the_data() -> None:
    urls = pages(PLAN, PLAN.lamps)
    assert urls["board"](0) == f"/console/sites/{BOARD_SITE}"
    assert {urls["lamp"](i) for i in range(200)} == {
        f"/console/lamps/L-{n:06d}" for n in range(100)
    }
    for i in range(300):
        query = parse_qs(urlsplit(urls["search_lamp_range"](i)).query)
        start = datetime.fromisoformat(query["from"][0]).replace(tzinfo=UTC).timestamp() * 1000
        end = datetime.fromisoformat(query["to"][0]).replace(tzinfo=UTC).timestamp() * 1000
        assert PLAN.start_ms - 60_000 <= start < end <= PLAN.end_ms
        assert end - start == DAY_MS
