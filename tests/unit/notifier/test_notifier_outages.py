"""The notifier while a store is down (in-memory stand-ins that fail like Redis and PostgreSQL
do): its loops wait and resume, records are retried before their offset is committed, and a
catch-up after an outage still records the escalation. The real restarts are in
tests/integration/notifier/test_notifier_outages.py."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import psycopg
import pytest
import redis.exceptions

from notifier.store import Claimed, Job, Journal, Step, store_failure
from tests.unit.notifier.test_notifier_service import (
    MIN,
    T0,
    MemoryJournal,
    MemoryTimers,
    alert_record,
    notifier,
)


@pytest.mark.parametrize(
    ("error", "store"),
    [
        (redis.exceptions.ConnectionError("Connection refused"), "redis"),
        (redis.exceptions.TimeoutError("Timeout reading from socket"), "redis"),
        (redis.exceptions.BusyLoadingError("LOADING"), "redis"),
        (redis.exceptions.ReadOnlyError("READONLY"), "redis"),
        (psycopg.OperationalError("server closed the connection"), "postgres"),
        (psycopg.InterfaceError("the connection is closed"), "postgres"),
        (ConnectionResetError("reset"), "network"),
        (redis.exceptions.ResponseError("ERR wrong number of arguments"), None),
        (psycopg.errors.UniqueViolation("duplicate"), None),
        (KeyError("alert_id"), None),
    ],
)
def test_only_a_store_that_is_down_is_waited_for(error: Exception, store: str | None) -> None:
    assert store_failure(error) == store


class Down:
    """Raises ``error`` on the next ``times`` calls of the methods it wraps (forever: -1)."""

    def __init__(self, error: Exception, times: int = -1) -> None:
        self.error = error
        self.times = times
        self.calls = 0

    def check(self) -> None:
        self.calls += 1
        if self.times != 0:
            self.times -= 1
            raise self.error


class FlakyTimers(MemoryTimers):
    def __init__(self) -> None:
        super().__init__()
        self.outage: Down | None = None

    def _maybe_fail(self) -> None:
        if self.outage is not None:
            self.outage.check()

    def raised(self, *args: Any) -> bool:
        self._maybe_fail()
        return super().raised(*args)

    def claim(self, now_ms: int, lease_ms: int, limit: int) -> list[Claimed]:
        self._maybe_fail()
        return super().claim(now_ms, lease_ms, limit)

    def complete(self, claimed: Claimed, following: tuple[Job, int] | None) -> bool:
        self._maybe_fail()
        return super().complete(claimed, following)


class FlakyJournal(MemoryJournal):
    def __init__(self, journal: MemoryJournal) -> None:
        super().__init__(journal.staff)
        self.outage: Down | None = None
        self.on_failure: Any = None
        self.lookups: Down | None = None  # has_step's outage

    async def has_step(self, alert_id: str, step: str, occurrence: int) -> bool:
        if self.lookups is not None:
            self.lookups.check()
        return await super().has_step(alert_id, step, occurrence)

    async def steps(self, *steps: Step) -> list[bool]:
        if self.outage is not None:
            try:
                self.outage.check()
            except Exception:
                if self.on_failure is not None:
                    self.on_failure()
                raise
        return await super().steps(*steps)


class PausableConsumer:
    def __init__(self) -> None:
        self.paused: list[str] = []
        self.events: list[str] = []

    def assignment(self) -> set[str]:
        return {"alerts.v1[0]"}

    def pause(self, *tps: str) -> None:
        self.events.append("pause")

    def resume(self, *tps: str) -> None:
        self.events.append("resume")

    async def getmany(self, timeout_ms: int = 0, **_: Any) -> dict[str, list[Any]]:
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    def seek(self, tp: str, offset: int) -> None:
        self.events.append(f"seek {offset}")


def flaky_notifier() -> tuple[Any, Any, FlakyJournal, Any, FlakyTimers]:
    service, clock, journal, channel, _ = notifier()
    timers = FlakyTimers()
    flaky = FlakyJournal(journal)
    service.timers = timers  # type: ignore[assignment]
    service.records_journal = flaky  # type: ignore[assignment]
    service.timers_journal = flaky  # type: ignore[assignment]
    service.config = service.config.model_copy(update={"poll_interval_s": 0.01})
    return service, clock, flaky, channel, timers


async def until(check: Any, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_the_timer_loop_waits_for_redis_and_resumes() -> None:
    service, _, _, channel, timers = flaky_notifier()
    timers.outage = Down(redis.exceptions.ConnectionError("Error 111 connecting"))
    stop = asyncio.Event()
    loop = asyncio.create_task(service.timer_loop(stop))
    await until(lambda: timers.outage is not None and timers.outage.calls >= 3)
    assert not loop.done()  # a store down never ends the loop
    assert "redis" in service.health.problems
    assert service.health.backlog() >= 1  # unknown while Redis is down: counted as waiting

    timers.outage = None
    await service.apply(alert_record("raised", T0))
    await until(lambda: [n.slot for _, n in channel.sent] == [1])
    assert "redis" not in service.health.problems
    stop.set()
    await asyncio.wait_for(loop, 5)


async def test_a_record_is_retried_while_redis_is_down_with_its_partitions_paused() -> None:
    service, _, journal, _, timers = flaky_notifier()
    timers.outage = Down(redis.exceptions.ConnectionError("Error 111 connecting"), times=3)
    consumer = PausableConsumer()
    progress_before = service.health.last_progress

    applied = await service._apply_until_done(alert_record("raised", T0), consumer, asyncio.Event())

    assert applied
    assert timers.outage.calls == 4
    assert "notify|a-1|1" in timers.due
    assert ("a-1", "raised", 1) in journal.events  # once, however many attempts
    assert consumer.events == ["pause", "resume"]
    assert service.health.last_progress > progress_before
    assert service.health.problems == {}


async def test_a_stop_while_a_store_is_down_leaves_the_record_unapplied() -> None:
    service, _, _, _, timers = flaky_notifier()
    timers.outage = Down(redis.exceptions.ConnectionError("Error 111 connecting"))
    consumer = PausableConsumer()
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.1, stop.set)

    applied = await service._apply_until_done(alert_record("raised", T0), consumer, stop)

    assert not applied  # the caller commits nothing: the record is read again
    assert timers.due == {}
    assert consumer.events == ["pause", "resume"]


async def test_a_bug_is_not_mistaken_for_a_store_down() -> None:
    service, _, _, _, timers = flaky_notifier()
    timers.outage = Down(redis.exceptions.ResponseError("ERR unknown command"))
    with pytest.raises(redis.exceptions.ResponseError):
        await service._apply_until_done(
            alert_record("raised", T0), PausableConsumer(), asyncio.Event()
        )


async def test_a_notification_sent_is_recorded_once_postgres_answers_not_sent_twice() -> None:
    service, _, journal, channel, timers = flaky_notifier()
    await service.apply(alert_record("raised", T0))
    journal.outage = Down(psycopg.OperationalError("the database system is shutting down"), 3)

    await service.run_due()

    assert [n.slot for _, n in channel.sent] == [1]
    assert ("a-1", "notified", 1) in journal.events
    assert timers.due == {"notify|a-1|2": T0 + 2 * MIN}


async def test_postgres_down_past_the_lease_gives_the_timer_back() -> None:
    service, clock, journal, channel, timers = flaky_notifier()
    await service.apply(alert_record("raised", T0))
    journal.outage = Down(psycopg.OperationalError("connection refused"))

    def time_passes() -> None:
        clock.now += 5_000

    journal.on_failure = time_passes
    with pytest.raises(psycopg.OperationalError):
        await service.run_due()  # the timer loop catches it and polls again
    assert [n.slot for _, n in channel.sent] == [1]
    assert ("a-1", "notified", 1) not in journal.events
    # Still claimed: due again after its lease (at least once, as docs/notifier.md says).
    assert list(timers.due) == ["notify|a-1|1"]


async def test_a_catch_up_past_the_escalation_slot_still_records_the_escalation() -> None:
    service, clock, journal, channel, _ = notifier()
    await service.apply(alert_record("raised", T0))
    await service.run_due()  # slot 1
    clock.now = T0 + 7 * MIN  # the notifier could not poll for 7 minutes (a store down)
    await service.run_due()  # slot 2's timer, late: the latest slot due (4, all staff) instead
    await service.run_due()

    assert [n.slot for _, n in channel.sent] == [1, 4]
    assert channel.sent[-1][1].escalated
    life = [(s, o) for s, o, _ in journal.life("a-1")]
    assert life.count(("escalated", 1)) == 1
    assert journal.events[("a-1", "escalated", 1)].details["slot"] == 4


async def test_a_silent_postgres_is_given_up_after_the_journals_timeout() -> None:
    """A server that accepts and never answers (a listening socket nobody accepts from: the
    kernel completes the handshake) costs a call `timeout_s`, then a store failure the loops
    know how to wait out, and the next call tries again."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        journal = Journal(
            f"host=127.0.0.1 port={port} dbname=x user=x connect_timeout=60", timeout_s=0.3
        )
        for _ in range(2):
            async with asyncio.timeout(5):  # not connect_timeout's 60 s
                with pytest.raises(psycopg.OperationalError, match=r"within 0\.3 s") as failed:
                    await journal.has_step("a-1", "notified", 1)
            assert store_failure(failed.value) == "postgres"
        await journal.close()


async def test_many_alerts_failing_together_cost_one_back_off_not_one_each() -> None:
    """PostgreSQL goes away while 20 alerts' first notifications run: each alert's task fails.
    The loop backs off once for all of them, and once their leases end they are all sent:
    not one back-off (capped at 2 s) per failed task before the next claim."""
    service, clock, journal, channel, _ = flaky_notifier()
    service.config = service.config.model_copy(update={"lease_s": 0.2})
    for k in range(20):
        await service.apply(alert_record("raised", T0, offset=k, alert_id=f"a-{k}"))
    journal.lookups = Down(psycopg.OperationalError("server closed the connection"), times=20)
    stop = asyncio.Event()
    loop = asyncio.create_task(service.timer_loop(stop))

    def all_sent() -> bool:
        clock.now += 50  # test time runs: the failed timers' leases end
        return len(channel.sent) == 20

    try:
        await until(all_sent, timeout_s=3)
    finally:
        stop.set()
        await asyncio.wait_for(loop, 5)
    assert journal.lookups.calls >= 40  # 20 failed, then 20 that went through
    assert sorted(n.alert_id for _, n in channel.sent) == sorted(f"a-{k}" for k in range(20))
