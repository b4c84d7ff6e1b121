"""The notifier process: a consumer of alerts.v1 and alerts.acks.v1, and a timer loop.

- **Records** (consumer group ``<topic_prefix><notifier.group_id>``, read_committed): each
  record's step is written to PostgreSQL, and its timers to Redis, both idempotently, before
  the offsets are committed (at least once, in effect once).
- **Timers**: every ``poll_interval_s`` each replica claims the due jobs in Redis
  (:class:`~notifier.store.Timers`), sends, records the step, and schedules what
  follows (:mod:`notifier.policy`).
- **Stores down** (Redis, PostgreSQL, Kafka restarted): neither loop dies. The timer loop polls
  again with a capped back-off; the record loop retries the record it holds (its offset is not
  committed meanwhile, its partitions are paused). Both report to :class:`~pipeline.health.Health`
  (``/readyz`` turns 503 once work waits without progress), and one line says when a store
  answers again. Timers fire late, never twice (the claims' leases, docs/notifier.md).

See docs/notifier.md for the guarantees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter

from notifier.channels import Channel, Delivery, Notification, channels_from_settings
from notifier.policy import (
    AlertState,
    Audience,
    Clock,
    SystemClock,
    Timings,
    after_notification,
    close_due_ms,
    first_notification,
    should_send,
    slot_to_send,
)
from notifier.store import (
    Claimed,
    Job,
    Journal,
    Step,
    Timers,
    alert_row,
    store_failure,
)
from pipeline import clients
from pipeline.health import Health
from pipeline.metrics import ConsumerLag, aiokafka_offsets, serve
from pipeline.records import KafkaRecord
from pipeline.retry import Backoff
from pipeline.settings import HealthSettings, Settings
from pipeline.topics import ALERT_ACKS, ALERTS, topic_name
from schemas import SchemaError, alert_kind, decode, millis

log = logging.getLogger(__name__)

COMPONENT = "notifier"
ALERT_SCHEMA = "alert.v1"
ACK_SCHEMA = "alert_ack.v1"
# Longest wait between two attempts while a store is down: a store back after a restart is
# used again within this (plus a claim's lease for a timer claimed as it went down).
STORE_RETRY_MAX_S = 2.0

T = TypeVar("T")


class NotifierMetrics:
    def __init__(self, health: HealthSettings | None = None) -> None:
        health = health or HealthSettings()
        self.registry = CollectorRegistry()
        r = self.registry
        self.records = Counter(
            "veilleuse_notifier_records", "Records consumed, by schema.", ["schema"], registry=r
        )
        self.deliveries = Counter(
            "veilleuse_notifier_deliveries",
            "Addresses notified, by channel and outcome (delivered, failed).",
            ["channel", "outcome"],
            registry=r,
        )
        self.steps = Counter(
            "veilleuse_notifier_steps", "Steps appended to alert_events.", ["step"], registry=r
        )
        self.lost_claims = Counter(
            "veilleuse_notifier_lost_claims",
            "Jobs whose lease ran out before they were completed (another replica took them).",
            registry=r,
        )
        self.alerts = Counter(
            "veilleuse_notifier_alerts",
            "Alert records read from alerts.v1, by kind, severity and state (raised, resolved).",
            ["kind", "severity", "state"],
            registry=r,
        )
        self.lag = ConsumerLag("notifier", r)
        self.health = Health(
            COMPONENT,
            stall_after_s=health.stall_after_s,
            stuck_after_s=health.stuck_after_s,
            registry=r,
        )

    def serve(self, port: int) -> None:
        serve(self.registry, port, self.health)


def _where(state: AlertState, record: KafkaRecord | None = None) -> dict[str, Any]:
    where: dict[str, Any] = {
        "component": COMPONENT,
        "site_id": state.site_id,
        "lamp_id": state.lamp_id,
        "alert_id": state.alert_id,
    }
    if record is not None:
        where.update(_at(record))
    return where


def _at(record: KafkaRecord) -> dict[str, Any]:
    return {"topic": record.topic, "partition": record.partition, "offset": record.offset}


async def _idle(consumer: Any, wait_s: float, stop: asyncio.Event) -> None:
    """Wait ``wait_s`` polling a paused consumer (it stays in its group). Records a newly
    assigned partition returns meanwhile are not applied: the consumer is sent back to them,
    so that no commit ever covers a record that was not applied."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while not stop.is_set():
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            return
        with contextlib.suppress(Exception):  # Kafka down too: its own loop reports it
            fetched = await consumer.getmany(timeout_ms=max(1, min(200, int(left * 1000))))
            for tp, messages in fetched.items():
                if messages:
                    consumer.seek(tp, messages[0].offset)


class Notifier:
    """Rule 10's I/O: applies records and runs due timers. ``clock`` is injected for tests."""

    def __init__(
        self,
        settings: Settings,
        *,
        timers: Timers,
        records_journal: Journal,
        timers_journal: Journal,
        channels: Sequence[Channel],
        clock: Clock,
        metrics: NotifierMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.config = settings.notifier
        self.timings = Timings.from_settings(settings.notifier)
        self.timers = timers
        self.records_journal = records_journal
        self.timers_journal = timers_journal
        self.channels = list(channels)
        self.clock = clock
        self.metrics = metrics or NotifierMetrics(settings.health)
        self.health = self.metrics.health
        # Work waiting, for the probes: the claimed timers not run yet (one more, unknown,
        # while Redis cannot be asked) and the records not applied yet.
        self._due_timers = 0
        self._poll_failing = False
        self.health.backlog = lambda: (
            self._due_timers + int(self._poll_failing) + self.metrics.lag.total()
        )

    # -- records ------------------------------------------------------------------------------

    async def apply(self, record: KafkaRecord) -> None:
        """One record of alerts.v1 or alerts.acks.v1 (replaying it changes nothing)."""
        try:
            writer, data = decode(record.value or b"")
        except SchemaError as exc:
            log.warning(
                "skipping undecodable record %s: %s",
                record.where(),
                exc,
                extra={"component": COMPONENT, **_at(record)},
            )
            self.metrics.records.labels("undecodable").inc()
            return
        self.metrics.records.labels(writer.name).inc()
        if writer.name == ALERT_SCHEMA:
            await self._alert(record, data)
        elif writer.name == ACK_SCHEMA:
            await self._ack(record, data)
        else:
            log.warning(
                "skipping a %s record on %s",
                writer.name,
                record.where(),
                extra={"component": COMPONENT, **_at(record)},
            )

    async def _alert(self, record: KafkaRecord, data: dict[str, Any]) -> None:
        emitted_ms = millis(data["emitted_at"])
        state = AlertState(
            alert_id=str(data["alert_id"]),
            kind=alert_kind(data),
            severity=str(data["severity"]),
            site_id=str(data["site_id"]),
            lamp_id=str(data["lamp_id"]),
            incident_started_ms=millis(data["incident_started_at"]),
            raised_ms=emitted_ms,
        )
        details = {str(k): str(v) for k, v in (data.get("details") or {}).items()}
        raised = data["state"] == "raised"
        self.metrics.alerts.labels(state.kind, state.severity, str(data["state"])).inc()
        step = Step(
            state.alert_id,
            "raised" if raised else "resolved",
            1,
            emitted_ms,
            details,
            record.topic,
            record.partition,
            record.offset,
        )
        row = alert_row(state, resolved_ms=None if raised else emitted_ms, details=details)
        if await self.records_journal.alert(row, step) == [True]:
            self.metrics.steps.labels(step.step).inc()
        if raised:
            first = first_notification(state, self.timings)
            job = (Job("notify", state.alert_id, first.slot), first.due_ms) if first else None
            new = await asyncio.to_thread(self.timers.raised, state, job)
            log.info(
                "alert %s raised (%s, %s)%s",
                state.alert_id,
                state.kind,
                state.severity,
                "" if new else ", known already",
                extra=_where(state, record),
            )
            # An acknowledgement read before its alert was recorded now has its row.
            _, fields = await asyncio.to_thread(self.timers.state, state.alert_id)
            if "ack_ms" in fields:
                await self._record_ack(state.alert_id, fields.get("ack_by", ""), fields["ack_ms"])
        else:
            due = close_due_ms(emitted_ms, self.timings)
            await asyncio.to_thread(self.timers.resolved, state.alert_id, emitted_ms, due)
            log.info(
                "alert %s resolved (%s); closes at %d",
                state.alert_id,
                details.get("reason", "?"),
                due,
                extra=_where(state, record),
            )

    async def _ack(self, record: KafkaRecord, data: dict[str, Any]) -> None:
        alert_id = str(data["alert_id"])
        by = str(data["acknowledged_by"])
        at_ms = millis(data["acknowledged_at"])
        await asyncio.to_thread(self.timers.acknowledged, alert_id, by, at_ms)
        # The first acknowledgement recorded in Redis wins: a replayed or second one is the same.
        _, fields = await asyncio.to_thread(self.timers.state, alert_id)
        recorded = await self._record_ack(alert_id, fields.get("ack_by", by), fields["ack_ms"])
        log.info(
            "alert %s acknowledged by %s%s",
            alert_id,
            by,
            "" if recorded else " (its alert is not recorded yet)",
            extra={
                "component": COMPONENT,
                "lamp_id": data.get("lamp_id"),
                "alert_id": alert_id,
                **_at(record),
            },
        )

    async def _record_ack(self, alert_id: str, by: str, at_ms: str) -> bool:
        step = Step(alert_id, "acknowledged", 1, int(at_ms), {"acknowledged_by": by})
        (new,) = await self.records_journal.steps(step)
        if new:
            self.metrics.steps.labels("acknowledged").inc()
            return True
        return await self.records_journal.has_step(alert_id, "acknowledged", 1)

    # -- timers -------------------------------------------------------------------------------

    async def run_due(self) -> int:
        """Claim the due timers and run them to their end; how many were claimed (one poll, as
        the tests step the clock; the running notifier's loop does not wait: timer_loop)."""
        groups = await self._claim(self.config.claim_batch)
        outcomes = await asyncio.gather(
            *(self._run_jobs(jobs) for jobs in groups), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome  # each alert ran its course; the first failure is the poll's
        return sum(len(jobs) for jobs in groups)

    async def _claim(self, limit: int) -> list[list[Claimed]]:
        """Claim up to ``limit`` due timers, grouped by alert in the order they were due."""
        claimed = await asyncio.to_thread(
            self.timers.claim, self.clock.now_ms(), self.config.ms(self.config.lease_s), limit
        )
        self.health.ok("redis")
        self._due_timers += len(claimed)
        by_alert: dict[str, list[Claimed]] = {}
        for job in claimed:
            by_alert.setdefault(job.job.alert_id, []).append(job)
        return list(by_alert.values())

    async def _run_jobs(self, jobs: list[Claimed]) -> None:
        """One alert's claimed timers, in the order they were due. Alerts run side by side: an
        endpoint that hangs (a nurse-call integration that accepts and never answers) holds
        its own alert for its timeout, not the other alerts' notifications."""
        left = len(jobs)
        try:
            for job in jobs:
                if job.job.kind == "notify":
                    await self._notify(job)
                else:
                    await self._close(job)
                self.health.ok("postgres")
                self.health.progress()
                left -= 1
                self._due_timers -= 1
        finally:
            self._due_timers -= left  # a failed job's timer comes back after its lease

    async def _finish(self, claimed: Claimed, following: tuple[Job, int] | None) -> None:
        # The step is recorded: completing the timer is retried until Redis answers (its token
        # stays valid until another claim, after the lease, takes it: then it is a lost claim,
        # and the new claimer finds the step and does not send again).
        complete = await self._until_stored(
            lambda: asyncio.to_thread(self.timers.complete, claimed, following),
            "timer completion",
        )
        if not complete:
            self.metrics.lost_claims.inc()
            log.warning(
                "lease of %s ran out before it was completed",
                claimed.job.member,
                extra={"component": COMPONENT},
            )

    async def _notify(self, claimed: Claimed) -> None:
        job = claimed.job
        state, _ = await asyncio.to_thread(self.timers.state, job.alert_id)
        if state is None or not should_send(state):
            await self._finish(claimed, None)
            return
        journal = self.timers_journal
        slot = slot_to_send(state, job.slot, self.clock.now_ms(), self.timings)
        if not await journal.has_step(job.alert_id, "notified", slot):
            sent = await self._send(state, slot, claimed.token)
            if not sent:
                retry = self.clock.now_ms() + self.config.ms(self.config.retry_s)
                await asyncio.to_thread(self.timers.reschedule, claimed, retry)
                return
        following = after_notification(state, slot, self.clock.now_ms(), self.timings)
        await self._finish(
            claimed,
            (Job("notify", job.alert_id, following.slot), following.due_ms) if following else None,
        )

    async def _send(self, state: AlertState, slot: int, lease_end_ms: int) -> bool:
        """Send slot ``slot`` and record it; False: nobody was reached, try again later.
        ``lease_end_ms``: when the claim of its timer runs out."""
        audience = self.timings.audience(slot)
        escalated = self.timings.escalates(slot)
        if not escalated and audience is Audience.ALL_STAFF:
            # Catching up after an outage may jump over the first all-staff slot: the first
            # all-staff notification sent is the escalation, whatever its slot.
            escalated = not await self.timers_journal.has_step(state.alert_id, "escalated", 1)
        recipients, nobody_on_duty = await self.timers_journal.recipients(state.site_id, audience)
        notification = Notification(
            alert_id=state.alert_id,
            slot=slot,
            audience=audience,
            escalated=escalated,
            kind=state.kind,
            severity=state.severity,
            site_id=state.site_id,
            lamp_id=state.lamp_id,
            incident_started_ms=state.incident_started_ms,
            raised_ms=state.raised_ms,
            recipients=tuple(recipients),
        )
        sent_ms = self.clock.now_ms()
        # Every channel at once: a hung webhook does not delay the e-mail, nor the reverse.
        deliveries: list[Delivery] = list(
            await asyncio.gather(*(channel.send(notification) for channel in self.channels))
        )
        for channel, delivery in zip(self.channels, deliveries, strict=True):
            self.metrics.deliveries.labels(channel.name, "delivered").inc(len(delivery.delivered))
            self.metrics.deliveries.labels(channel.name, "failed").inc(len(delivery.failed))
            for address, reason in delivery.failed.items():
                log.error(
                    "alert %s slot %d: %s to %s failed: %s",
                    state.alert_id,
                    slot,
                    channel.name,
                    address,
                    reason,
                    extra=_where(state),
                )
        attempted = any(d.attempted for d in deliveries)
        if attempted and not any(d.delivered for d in deliveries):
            return False
        details: dict[str, Any] = {
            "slot": slot,
            "audience": audience.value,
            "to": [r.name for r in recipients],
            "through": {d.channel: d.delivered for d in deliveries if d.delivered},
        }
        if any(d.failed for d in deliveries):
            details["failed"] = {d.channel: d.failed for d in deliveries if d.failed}
        if nobody_on_duty:
            details["nobody_on_duty"] = True
        if not attempted:
            details["reached_nobody"] = True
            log.error(
                "alert %s slot %d: no recipient and no channel for site %s",
                state.alert_id,
                slot,
                state.site_id,
                extra=_where(state),
            )
        steps = [Step(state.alert_id, "notified", slot, sent_ms, details)]
        if escalated:
            escalation = {"slot": slot, "to": details["to"]}
            steps.insert(0, Step(state.alert_id, "escalated", 1, sent_ms, escalation))
        # Sent: record it now, waiting for PostgreSQL while the claim is ours (if the lease ran
        # out first, the next claimer would not find the step and send again: at least once).
        margin_ms = min(1000, self.config.ms(self.config.lease_s) // 4)
        recorded = await self._until_stored(
            lambda: self.timers_journal.steps(*steps),
            "notification record",
            until_ms=lease_end_ms - margin_ms,
        )
        for step, new in zip(steps, recorded, strict=True):
            if new:
                self.metrics.steps.labels(step.step).inc()
        log.info(
            "alert %s notified (slot %d, %s) to %s",
            state.alert_id,
            slot,
            audience.value,
            ", ".join(details["to"]) or "nobody",
            extra=_where(state),
        )
        return True

    async def _close(self, claimed: Claimed) -> None:
        alert_id = claimed.job.alert_id
        _, fields = await asyncio.to_thread(self.timers.state, alert_id)
        resolved_ms = fields.get("resolved_ms")
        closed_ms = (
            close_due_ms(int(resolved_ms), self.timings) if resolved_ms else self.clock.now_ms()
        )
        step = Step(alert_id, "closed", 1, closed_ms, {"after_resolved_s": self.config.autoclose_s})
        if (await self.timers_journal.steps(step))[0]:
            self.metrics.steps.labels("closed").inc()
        await asyncio.to_thread(self.timers.closed, alert_id)
        await self._finish(claimed, None)
        log.info("alert %s closed", alert_id, extra={"component": COMPONENT, "alert_id": alert_id})

    # -- stores down ---------------------------------------------------------------------------

    def _store_down(
        self, dependency: str, exc: BaseException, what: str, wait_s: float, **where: Any
    ) -> None:
        # The first failure of an outage is an error (reported, e.g. to Sentry, once); the
        # repeats while the store stays down are warnings, and rate-limited.
        first = dependency not in self.health.problems
        self.health.problem(dependency, f"{type(exc).__name__}: {exc}")
        # One template per failing step and store, so that the rate limit (by template) keeps
        # the first line of each: "timer poll failed" is not hidden by "record failed".
        template = what + " failed, " + dependency + " unavailable (%s: %s); trying again in %.1f s"
        log.log(
            logging.ERROR if first else logging.WARNING,
            template,
            type(exc).__name__,
            exc,
            wait_s,
            exc_info=exc if first else None,
            extra={"component": COMPONENT, "dependency": dependency, "throttle": True, **where},
        )

    async def _until_stored(
        self,
        attempt: Callable[[], Awaitable[T]],
        what: str,
        *,
        until_ms: int | None = None,
    ) -> T:
        """``attempt()`` until it succeeds while its store is down (another error, or
        ``until_ms`` passed, raises: the caller's loop handles it)."""
        backoff = Backoff(self.config.poll_interval_s, STORE_RETRY_MAX_S)
        failed: set[str] = set()
        while True:
            try:
                result = await attempt()
            except Exception as exc:
                dependency = store_failure(exc)
                wait = backoff.next()
                if dependency is None or (
                    until_ms is not None and self.clock.now_ms() + wait * 1000 > until_ms
                ):
                    raise
                self._store_down(dependency, exc, what, wait)
                failed.add(dependency)
                await self.timers_journal.close()
                await asyncio.sleep(wait)
                continue
            for dependency in failed:
                self.health.ok(dependency)
            return result

    # -- loops --------------------------------------------------------------------------------

    async def timer_loop(self, stop: asyncio.Event) -> None:
        """Claim due timers every ``poll_interval_s`` and run each alert's as a task of its
        own: a poll does not wait for the sends of the previous ones (a hung endpoint would
        hold every alert due after it for its timeout). A task's failure is handled as the
        poll's own (a store down: back-off, the timer back after its lease)."""
        backoff = Backoff(
            self.config.poll_interval_s, max(STORE_RETRY_MAX_S, self.config.poll_interval_s)
        )
        running: set[asyncio.Task[None]] = set()
        failures: list[BaseException] = []

        def finished(task: asyncio.Task[None]) -> None:
            running.discard(task)
            if not task.cancelled() and task.exception() is not None:
                failures.append(task.exception())  # type: ignore[arg-type]

        try:
            while not stop.is_set():
                wait = self.config.poll_interval_s
                try:
                    if failures:
                        # One back-off for all of them: they failed together (a store down).
                        first = failures[0]
                        failures.clear()
                        raise first
                    room = self.config.claim_batch - self._due_timers
                    groups = await self._claim(room) if room > 0 else []
                    for jobs in groups:
                        task = asyncio.create_task(self._run_jobs(jobs))
                        running.add(task)
                        task.add_done_callback(finished)
                    claimed = sum(len(jobs) for jobs in groups)
                    busy = room > 0 and claimed >= room
                    self._poll_failing = False
                    backoff.reset()
                except Exception as exc:  # a store down must not stop the notifier: poll again
                    dependency = store_failure(exc)
                    wait = backoff.next()
                    self._poll_failing = True  # unknown: assume some are due
                    if dependency is not None:
                        self._store_down(dependency, exc, "timer poll", wait)
                    else:  # not a store: a bug; /livez reports it if it never heals
                        log.error(
                            "timer poll failed (%s); trying again in %.1f s",
                            type(exc).__name__,
                            wait,
                            exc_info=exc,
                            extra={"component": COMPONENT, "throttle": True},
                        )
                    if not running:  # others may be mid-transaction on it
                        await self.timers_journal.close()
                    busy = False
                if not busy:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), wait)
        finally:
            # Sends in flight end by their own timeouts; their steps are recorded.
            await asyncio.gather(*running, return_exceptions=True)

    async def _apply_until_done(
        self, record: KafkaRecord, consumer: Any, stop: asyncio.Event
    ) -> bool:
        """Apply ``record``, retrying while a store is down (True), or False if stopped first.

        Meanwhile the partitions are paused and the consumer is still polled (it stays in its
        group); the record's offset is committed only after it was applied."""
        backoff = Backoff(self.config.poll_interval_s, STORE_RETRY_MAX_S)
        paused = False
        try:
            while True:
                try:
                    await self.apply(record)
                    break
                except Exception as exc:
                    dependency = store_failure(exc)
                    if dependency is None:
                        raise  # not a store: a bug, which stops the notifier (restarted)
                    wait = backoff.next()
                    self._store_down(dependency, exc, "record", wait, **_at(record))
                    await self.records_journal.close()
                    if not paused:
                        consumer.pause(*consumer.assignment())
                        paused = True
                    await _idle(consumer, wait, stop)
                    if stop.is_set():
                        return False
        finally:
            if paused:
                consumer.resume(*consumer.assignment())
        if backoff.failures:
            self.health.ok("redis")
            self.health.ok("postgres")
            self.health.ok("network")
        self.health.progress()
        return True

    async def _start_consumer(self, new_consumer: Callable[[], Any], stop: asyncio.Event) -> Any:
        """A started consumer; while Kafka is down, a fresh one is tried again (a consumer
        whose start failed is stopped, and a stopped one does not start again). None: stopped
        first."""
        backoff = Backoff(0.5, STORE_RETRY_MAX_S * 5)
        while not stop.is_set():
            consumer = new_consumer()
            try:
                await consumer.start()
                self.health.ok("kafka")
                return consumer
            except Exception as exc:  # noqa: BLE001 - Kafka down at start: wait, the timers run
                wait = backoff.next()
                self._store_down("kafka", exc, "consumer start", wait)
                with contextlib.suppress(Exception):
                    await consumer.stop()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
        return None

    async def _apply_all(self, fetched: Any, consumer: Any, stop: asyncio.Event) -> bool:
        """Apply every fetched record in order (True), or False if stopped first."""
        for tp, messages in fetched.items():
            if messages:
                self.metrics.lag.taken(tp.topic, tp.partition, messages[0].offset)
        for messages in fetched.values():
            for m in messages:
                if not await self._apply_until_done(KafkaRecord.of(m), consumer, stop):
                    return False
        return True

    async def _commit(self, consumer: Any, backoff: Backoff) -> None:
        from aiokafka.errors import CommitFailedError, KafkaError

        try:
            await consumer.commit()
        except CommitFailedError as exc:  # a rebalance: the records come again
            log.warning(
                "commit failed (%s): the records will be applied again, idempotently",
                exc,
                extra={"component": COMPONENT},
            )
        except KafkaError as exc:
            # Kafka down or its coordinator moving: the records are applied, and the next
            # commit covers them (if the notifier stops first, they are applied again, which
            # changes nothing). Not waiting here: the next fetch waits for Kafka.
            self._store_down("kafka", exc, "offset commit", backoff.next())
        else:
            backoff.reset()
            self.health.ok("kafka")

    async def record_loop(self, stop: asyncio.Event) -> None:
        from aiokafka.abc import ConsumerRebalanceListener
        from aiokafka.errors import KafkaError

        topics = [topic_name(self.settings, ALERTS), topic_name(self.settings, ALERT_ACKS)]

        class _Log(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: Any) -> None:
                lag.forget((tp.topic, tp.partition) for tp in revoked)

            async def on_partitions_assigned(self, assigned: Any) -> None:
                names = sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned)
                log.info("notifier assigned %s", names, extra={"component": COMPONENT})

        lag = self.metrics.lag
        group = f"{self.settings.kafka.topic_prefix}{self.config.group_id}"

        def new_consumer() -> Any:
            consumer = clients.consumer(
                self.settings,
                group_id=group,
                isolation_level="read_committed",
                session_timeout_ms=self.config.ms(self.config.session_timeout_s),
                heartbeat_interval_ms=max(100, self.config.ms(self.config.session_timeout_s) // 3),
            )
            consumer.subscribe(topics, listener=_Log())
            return consumer

        consumer = await self._start_consumer(new_consumer, stop)
        if consumer is None:
            return
        log.info("notifier consuming %s as %s", topics, group, extra={"component": COMPONENT})
        watching = asyncio.create_task(lag.watch(aiokafka_offsets(consumer), stop))
        kafka_backoff = Backoff(0.5, STORE_RETRY_MAX_S * 5)
        try:
            while not stop.is_set():
                try:
                    fetched = await consumer.getmany(timeout_ms=200, max_records=500)
                except KafkaError as exc:  # fetched again from the same position
                    wait = kafka_backoff.next()
                    self._store_down("kafka", exc, "fetch", wait)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), wait)
                    continue
                if not fetched:
                    continue
                if not await self._apply_all(fetched, consumer, stop):
                    return  # stopped while a store was down: nothing committed, read again
                await self._commit(consumer, kafka_backoff)
                for tp in fetched:
                    lag.finished(tp.topic, tp.partition)
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
            await consumer.stop()

    async def run(self, stop: asyncio.Event) -> None:
        if self.config.metrics_port:
            self.metrics.serve(self.config.metrics_port)
        self.health.start()
        timers = asyncio.create_task(self.timer_loop(stop))
        records = asyncio.create_task(self.record_loop(stop))
        log.info("notifier timers running", extra={"component": COMPONENT})
        try:
            done, _ = await asyncio.wait({timers, records}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a failed loop stops the notifier (its supervisor restarts it)
        finally:
            stop.set()
            for task in (timers, records):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for channel in self.channels:
                close = getattr(channel, "close", None)
                if close is not None:
                    await close()
            await self.records_journal.close()
            await self.timers_journal.close()


def build(settings: Settings, clock: Clock | None = None) -> Notifier:
    clock = clock or SystemClock()
    conninfo = settings.postgres.conninfo()
    return Notifier(
        settings,
        timers=Timers(
            clients.redis(settings),
            settings.notifier.redis_key_prefix,
            settings.notifier.state_ttl_s,
        ),
        records_journal=Journal(conninfo, timeout_s=settings.notifier.postgres_timeout_s),
        timers_journal=Journal(conninfo, timeout_s=settings.notifier.postgres_timeout_s),
        channels=channels_from_settings(settings.notifier, clock),
        clock=clock,
    )


def run_notifier(settings: Settings) -> None:
    """Run one notifier replica until SIGTERM or SIGINT."""
    from pipeline import migrations
    from pipeline.process import run_until_stopped

    problem = migrations.status(settings.postgres.conninfo()).problem()
    if problem:
        raise migrations.MigrationError(problem)

    async def main(stop: asyncio.Event) -> None:
        notifier = build(settings)
        notifier.health.watch()  # exits the process if its loop is stuck (see pipeline.health)
        beating = asyncio.create_task(notifier.health.beat_forever())
        try:
            await notifier.run(stop)
        finally:
            beating.cancel()

    run_until_stopped(main)
