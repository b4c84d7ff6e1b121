"""Readiness and liveness: what the probes answer, from what a component reports."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from pipeline.health import WEDGED_EXIT_STATUS, Health


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def health(clock: Clock, backlog: int = 0) -> Health:
    h = Health("sink-postgres", stall_after_s=60, stuck_after_s=300, clock=clock)
    h.backlog = lambda: backlog
    return h


def test_not_ready_until_started() -> None:
    h = health(Clock())
    assert h.readiness().ok is False and h.readiness().reason == "starting"
    h.start()
    assert h.readiness().ok


def test_idle_is_ready_however_long_nothing_happens() -> None:
    clock = Clock()
    h = health(clock, backlog=0)
    h.start()
    clock.now += 3600
    h.beat()
    assert h.readiness().ok and h.liveness().ok


def test_work_waiting_without_progress_is_not_ready_with_the_reason() -> None:
    clock = Clock()
    h = health(clock, backlog=12)
    h.start()
    h.problem("postgres", "connection refused")
    clock.now += 59
    assert h.readiness().ok
    clock.now += 2
    verdict = h.readiness()
    assert not verdict.ok
    assert "no progress for 61 s" in verdict.reason and "postgres down: connection refused" in (
        verdict.reason
    )
    # Waiting for a store is not a reason to be restarted.
    clock.now += 1000
    h.beat()
    assert h.liveness().ok


def test_progress_makes_it_ready_again_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    h = health(clock, backlog=5)
    h.start()
    clock.now += 90
    assert not h.readiness().ok
    caplog.set_level(logging.INFO)
    h.progress()
    assert h.readiness().ok
    assert "progress resumed after 90.0 s" in caplog.text


def test_a_dependency_that_answers_again_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    h = health(clock)
    caplog.set_level(logging.INFO)
    h.problem("kafka", "down")
    clock.now += 5
    h.problem("kafka", "still down")
    clock.now += 10
    h.ok("kafka")
    h.ok("kafka")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["sink-postgres: kafka answers again after 15.0 s; resumed"]


def test_wedged_when_dependencies_answer_yet_nothing_moves() -> None:
    clock = Clock()
    h = health(clock, backlog=3)
    h.start()
    clock.now += 301
    h.beat()
    assert not h.liveness().ok and "wedged" in h.liveness().reason


def test_a_stuck_event_loop_is_not_alive_and_the_watchdog_exits() -> None:
    clock = Clock()
    h = health(clock)
    h.start()
    clock.now += 301  # no beat
    assert "event loop stuck" in h.liveness().reason
    exits: list[int] = []
    h.watch(interval_s=0.01, exit_process=exits.append).join(2)
    assert exits == [WEDGED_EXIT_STATUS]


def test_metrics_show_readiness_and_the_last_progress() -> None:
    registry = CollectorRegistry()
    h = Health("sink-postgres", registry=registry)
    h.start()
    assert registry.get_sample_value("veilleuse_sink_postgres_ready") == 1.0
    assert registry.get_sample_value("veilleuse_sink_postgres_last_progress_timestamp_seconds")


async def test_a_short_wait_is_noticed_and_its_end_logged(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    h = health(clock, backlog=4)
    h.start()
    clock.now += 20  # a 20 s Kafka restart: not a stall, yet worth one line when it ends
    h._notice_wait()
    caplog.set_level(logging.INFO)
    h.progress()
    h.progress()
    assert [r.getMessage() for r in caplog.records] == [
        "sink-postgres: progress resumed after 20.0 s"
    ]


def test_a_condition_of_the_component_makes_it_not_ready_with_its_reason() -> None:
    h = health(Clock())
    h.start()
    subscribed = {"local": False}
    h.conditions.append(lambda: None if subscribed["local"] else "not subscribed on local")
    assert h.readiness().reason == "not subscribed on local"
    subscribed["local"] = True
    assert h.readiness().ok
