"""The engine's per-lamp state in the changelog: round trip, unreadable state, restore."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from agents.detection import PartitionEngine
from agents.rules import build_rules
from agents.rules.base import Incident
from agents.testing import Trace, at
from pipeline.settings import DetectionSettings

LAMP = "L-000123"


def engine(partition: int = 0, stored: dict[str, bytes] | None = None) -> PartitionEngine:
    config = DetectionSettings()
    store = stored or {}
    return PartitionEngine(partition, build_rules(config), config, store.get, lambda: at(0))


def busy_lamp() -> Trace:
    """A lamp with something in every part of its state: clock, dedup, timers, incidents."""
    t = Trace(skew_s=30)
    t.feed(t.motion(0), *t.postures(1, 11, "standing"), t.button(12))
    t.feed(*[t.temperature(s, 16.0) for s in range(0, 600, 60)])
    t.feed(t.fall(610), t.posture(612, "on_floor", "floor"))
    return t


def header(data: bytes) -> dict[str, Any]:
    """The JSON part of a stored lamp state (the deduplicator's bytes follow a NUL)."""
    head: dict[str, Any] = orjson.loads(data.partition(b"\x00")[0])
    return head


def test_encode_decode_round_trip() -> None:
    """decode_state(encode_state(lamp)) is the same lamp, field for field."""
    t = busy_lamp()
    lamp = t.engine.lamps[LAMP]
    assert lamp.timers and lamp.dedup.seen
    assert lamp.rules["help_button"].incident is not None
    assert lamp.rules["environment"].incident is not None
    data = t.engine.encode_state(LAMP)
    decoded = engine().decode_state(data)
    assert decoded is not None
    assert decoded == lamp
    assert header(data)["v"] == 3


def test_decoded_state_carries_on_like_the_original() -> None:
    """A lamp restored from its record raises exactly what the live one raises."""
    live = busy_lamp()
    restored = busy_lamp()
    restored.restart()
    for t in (live, restored):
        t.feed(*t.postures(617, 700, "on_floor", zone="floor"), t.button(700, "cancel"))
        t.feed(t.posture(705, "standing"))
    assert restored.alerts == live.alerts


def test_incident_round_trip() -> None:
    """An open incident keeps its id, kind, severity and start."""
    t = busy_lamp()
    decoded = engine().decode_state(t.engine.encode_state(LAMP))
    assert decoded is not None
    incident = decoded.rules["help_button"].incident
    assert isinstance(incident, Incident)
    assert incident == t.rule_state("help_button").incident


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"",
        b"[]",
        b'"lamp"',
        b'{"v": 1}',
        b'{"v": 1, "lamp_id": "L-000123", "site_id": "fr-lyon-12", "partition": 0}',
    ],
)
def test_unreadable_state_starts_the_lamp_afresh(data: bytes) -> None:
    """A record that cannot be read is counted and the lamp starts with a new state: its
    messages are still processed."""
    t = Trace(store={LAMP: data})
    [alert] = t.feed(t.button(5))
    assert alert.kind == "help_requested"
    assert t.engine.counts["state_unreadable"] == 1
    assert t.engine.lamps[LAMP].timers  # fresh state, then used


def test_state_with_a_broken_part_is_unreadable() -> None:
    """Valid JSON with a wrong clock, dedup or rule part is unreadable too."""
    t = busy_lamp()
    data = t.engine.encode_state(LAMP)
    good, dedup = header(data), data.partition(b"\x00")[2]
    broken_parts = [
        ("clock", [1, 2]),
        ("clock", None),
        ("timers", []),
        ("rules", []),
        ("rules", {"fall": [1]}),
        ("v", 1),
    ]
    for part, value in broken_parts:
        broken = {**good, part: value}
        e = engine()
        assert e.decode_state(orjson.dumps(broken) + b"\x00" + dedup) is None
        assert e.counts["state_unreadable"] == 1
    e = engine()
    broken_rules = {**good, "rules": {"fall": {"incident": [1]}}}
    assert e.decode_state(orjson.dumps(broken_rules) + b"\x00" + dedup) is None
    e = engine()
    assert e.decode_state(orjson.dumps(good) + b"\x00" + dedup[:-3]) is None  # a cut pair


def test_state_of_an_unknown_rule_is_dropped() -> None:
    """A rule removed from the code: its state and timers are ignored, the rest kept."""
    t = busy_lamp()
    data = t.engine.encode_state(LAMP)
    good = header(data)
    good["rules"]["retired"] = {"incident": None, "closed_at": 5}
    good["timers"]["retired:tick"] = 1
    decoded = engine().decode_state(orjson.dumps(good) + b"\x00" + data.partition(b"\x00")[2])
    assert decoded is not None
    assert "retired" not in decoded.rules
    assert "retired:tick" not in decoded.timers
    assert decoded.rules["fall"] == t.rule_state("fall")


def stored_lamp(lamp_id: str, partition: int, with_timers: bool) -> bytes:
    t = Trace(lamp_id=lamp_id)
    t.feed(t.button(5))
    lamp = t.engine.lamps[lamp_id]
    lamp.partition = partition
    if not with_timers:
        lamp.timers.clear()
    return t.engine.encode_state(lamp_id)


def test_restore_loads_only_this_partitions_lamps_with_timers() -> None:
    """After recovery only lamps of this partition with deadlines are loaded (and scheduled);
    others, and unreadable records, are skipped."""
    stored = [
        stored_lamp("L-A", 0, with_timers=True),
        stored_lamp("L-B", 0, with_timers=False),
        stored_lamp("L-C", 1, with_timers=True),
        b"garbage",
    ]
    e = engine(partition=0)
    assert e.restore(stored) == 1
    assert set(e.lamps) == {"L-A"}
    assert e.next_due() == min(e.lamps["L-A"].timers.values())
    assert e.counts["state_unreadable"] == 1


def test_restored_lamp_fires_its_deadline() -> None:
    """A restored lamp's silence deadline fires on advance, without any message."""
    e = engine(partition=0)
    e.restore([stored_lamp("L-A", 0, with_timers=True)])
    due = e.next_due()
    assert due is not None
    e.advance(due)
    kinds = [(a.kind, a.state) for a in e.take_outputs().alerts]
    assert kinds == [("lamp_offline", "raised")]


def test_lamp_not_restored_is_loaded_on_its_next_message() -> None:
    """A lamp without deadlines is loaded from the store when it speaks again."""
    t = Trace()
    [raised] = t.feed(t.button(5))
    t.engine.lamps[LAMP].timers.clear()
    t.store[LAMP] = t.engine.encode_state(LAMP)
    t.restart()
    assert LAMP not in t.engine.lamps
    t.feed(t.button(10, "cancel"))
    assert [a.state for a in t.of("help_requested")] == ["raised", "resolved"]
    assert t.alerts[-1].alert_id == raised.alert_id
