"""The bench's lamp traffic: protocol-shaped, deterministic, in the protocol's proportions."""

from __future__ import annotations

from collections import Counter

import orjson
import pytest

from connectors.validation import Accepted, validate
from devtools.bench.load import KINDS, PER_LAMP_RATE, Mix, fall_message, fall_times


def test_the_mix_is_deterministic_for_a_seed() -> None:
    a, b, c = Mix(["L-1", "L-2"], seed=3), Mix(["L-1", "L-2"], seed=3), Mix(["L-1", "L-2"], seed=4)
    first = [a.next(1000) for _ in range(50)]
    assert first == [b.next(1000) for _ in range(50)]
    assert first != [c.next(1000) for _ in range(50)]


def test_the_mix_keeps_the_protocols_proportions_and_channels() -> None:
    mix = Mix([f"L-{i}" for i in range(50)], seed=1)
    messages = [mix.next(1_764_230_400_000) for _ in range(20_000)]
    kinds = Counter(orjson.loads(m.payload)["type"] for m in messages)
    for kind, _, rate in KINDS:
        assert kinds[kind] / len(messages) == pytest.approx(rate / PER_LAMP_RATE, abs=0.02)
    for m in messages[:200]:
        payload = orjson.loads(m.payload)
        expected = "telemetry" if payload["type"] in ("temperature", "heartbeat") else "events"
        assert m.channel == expected
        assert m.qos == (0 if expected == "telemetry" else 1)


def test_every_message_passes_the_connectors_validation() -> None:
    mix = Mix(["L-000001"], seed=2)
    for m in [*(mix.next(1_764_230_400_000) for _ in range(500)), fall_message("L-9", 1)]:
        topic = f"lamps/fr-lyon-12/{m.lamp_id}/{m.channel}"
        assert isinstance(validate(topic, m.payload), Accepted), m.payload


def test_seq_counts_per_lamp() -> None:
    mix = Mix(["L-1"], seed=2)
    assert [orjson.loads(mix.next(0).payload)["seq"] for _ in range(3)] == [0, 1, 2]


def test_falls_are_spread_so_every_deadline_falls_under_load() -> None:
    times = fall_times(40, 30, 5)
    assert times[0] == 1.0
    assert times[-1] == pytest.approx(8.0)  # + 30 s = 38 s, 2 s before the end
    assert fall_times(40, 30, 0) == []
    assert fall_times(10, 30, 3) == []  # the step is too short for a deadline
    assert fall_times(40, 30, 1) == [4.0]
