"""The engine's per-lamp state in the changelog: round trip, unreadable state, restore."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from agents.detection import PartitionEngine, stored_head
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
    assert lamp.timers and len(lamp.dedup)
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


def test_restore_schedules_only_this_partitions_lamps_with_timers_without_decoding() -> None:
    """After recovery only lamps of this partition with deadlines are scheduled, still encoded
    (lazy restore: decoded when heard from or when their deadline fires); others, and
    unreadable records, are skipped."""
    stored = [
        stored_lamp("L-A", 0, with_timers=True),
        stored_lamp("L-B", 0, with_timers=False),
        stored_lamp("L-C", 1, with_timers=True),
        b"garbage",
    ]
    e = engine(partition=0)
    assert e.restore(stored) == 1
    assert e.lamps == {}
    assert set(e.pending) == {"L-A"}
    eager = engine(partition=0).decode_state(stored[0])
    assert eager is not None
    assert e.next_due() == eager.clock.wall_at(min(eager.timers.values()))
    assert e.counts["state_unreadable"] == 1
    assert e.peek("L-A") == eager  # decoded on first use, equal to an eager decode
    assert e.pending == {}


def skewed_lamps(count: int) -> list[bytes]:
    """Stored states of ``count`` lamps with clock offsets and deadlines of every kind (a
    fall's confirmation, a help request's escalation, silence), each at its own time."""
    states = []
    for i in range(count):
        t = Trace(lamp_id=f"L-{i:03d}", skew_s=(i % 7) * 20 - 60)
        t.feed(t.motion(i), *t.postures(i + 1, i + 6, "standing"))
        if i % 3 == 0:
            t.feed(t.fall(i + 7))
        elif i % 3 == 1:
            t.feed(t.button(i + 7))
        states.append(t.engine.encode_state(t.lamp_id))
    return states


def eager_restore(e: PartitionEngine, stored: list[bytes]) -> None:
    """What restore did before it was lazy: decode every lamp with deadlines, schedule it."""
    for data in stored:
        state = e.decode_state(data)
        if state is not None and state.partition == e.partition and state.timers:
            e.lamps[state.lamp_id] = state
            e._schedule(state)


def test_lazy_restore_fires_the_same_alerts_as_an_eager_one_for_lamps_never_touched() -> None:
    """Lamps restored and never heard from again: every deadline fires at the same wall time
    with the same alerts and leaves the same state as when every lamp was decoded at once."""
    stored = skewed_lamps(30)
    lazy, eager = engine(), engine()
    assert lazy.restore(stored) == 30
    eager_restore(eager, stored)
    assert lazy.lamps == {} and len(eager.lamps) == 30
    assert lazy.next_due() == eager.next_due()
    fired = 0
    for wall in range(at(0), at(3 * 3600), 5_000):
        lazy.advance(wall)
        eager.advance(wall)
        a, b = lazy.take_outputs(), eager.take_outputs()
        assert a.alerts == b.alerts
        assert a.changed == b.changed
        fired += len(a.alerts)
    assert fired >= 30  # a fall, an escalation or a lamp offline for each of them
    assert set(lazy.lamps) == set(eager.lamps)
    assert all(lazy.lamps[k] == eager.lamps[k] for k in eager.lamps)
    assert lazy.pending == {}


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


def test_the_stored_head_is_the_state_without_its_rules_whatever_the_strings_hold() -> None:
    """stored_head reads a state's JSON head up to its rules, even when a string of the state
    holds the very bytes it looks for."""
    t = busy_lamp()
    lamp = t.engine.lamps[LAMP]
    lamp.site_id = 'home,"rules":{"x":1}'
    data = t.engine.encode_state(LAMP)
    full = header(data)
    head = stored_head(data)
    assert head == {k: v for k, v in full.items() if k != "rules"}
    assert head is not None and head["site_id"] == lamp.site_id
    assert stored_head(b"garbage") is None
    assert stored_head(b"[1, 2]\x00") is None
