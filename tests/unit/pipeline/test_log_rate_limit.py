"""Repeated log lines become one line, then one per window with a count."""

from __future__ import annotations

import logging

from pipeline.observability import RateLimit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(name: str, msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_a_client_storm_is_one_line_then_a_count_per_window() -> None:
    clock = Clock()
    limit = RateLimit(window_s=10, clock=clock)
    passed = []
    for i in range(10_000):
        clock.now = i * 0.002  # 500 lines/s for 20 s
        rec = record("aiokafka", "Unable connect to node with id %s: %s", 1, i)
        if limit.filter(rec):
            passed.append(rec.getMessage())
    assert len(passed) == 2
    assert passed[0] == "Unable connect to node with id 1: 0"
    assert passed[1].endswith("[4999 more like this in the last 10 s]")


def test_our_lines_are_limited_only_when_they_ask() -> None:
    limit = RateLimit(window_s=10, clock=Clock())
    ours = [limit.filter(record("agents.detection", "alert %s raised", i)) for i in range(5)]
    assert all(ours)
    throttled = [
        limit.filter(record("connectors.mqtt_source", "rejected %s", i, throttle=True))
        for i in range(5)
    ]
    assert throttled == [True, False, False, False, False]


def test_each_template_and_level_has_its_own_budget() -> None:
    limit = RateLimit(window_s=10, clock=Clock())
    assert limit.filter(record("aiokafka", "a %s", 1))
    assert limit.filter(record("aiokafka", "b %s", 1))
    assert limit.filter(record("aiokafka.consumer", "a %s", 1))
    assert not limit.filter(record("aiokafka", "a %s", 2))
