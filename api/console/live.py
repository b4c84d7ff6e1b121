"""The board's live updates: one tail of ``alerts.v1`` per API process, fanned out, and one
poller of the alert's life in PostgreSQL for the steps ``alerts.v1`` does not carry.

The tail (``pipeline.alerts_tail.follow``: no consumer group, nothing committed, read_committed)
and the poller start with the first subscriber and stop after the last one leaves; each
subscriber gets the alerts of its own sites only, through a bounded queue (a stalled browser
loses events, never the process's memory: the page reloads its state on reconnection).

Notifications, escalations and acknowledgements are written to ``alert_events`` by the notifier
and by the API; the poller reads the rows recorded since its last look, once a second for every
open board of the process together (one indexed query, ``queries.NEW_STEPS``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.alerts_tail import TailedAlert, follow
from pipeline.settings import Settings
from schemas import alert_kind

log = logging.getLogger(__name__)

QUEUE_SIZE = 256
RETRY_S = 2.0
STEP_POLL_S = 1.0
STEP_PAGE = 1000
# recorded_at is now() of the writer's transaction, taken before it commits: a step committed
# just after a poll may carry an earlier time than that poll's. Each poll looks this far back
# and skips what it already sent.
STEP_OVERLAP = timedelta(seconds=10)

Fetch = Callable[[str, dict[str, Any]], Awaitable[list[dict[str, Any]]]]


@dataclass(eq=False)
class Subscriber:
    sites: frozenset[str] | None  # None: every site
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    dropped: int = 0

    def wants(self, site_id: str) -> bool:
        return self.sites is None or site_id in self.sites

    def offer(self, event: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1


def event_of(alert: dict[str, Any]) -> dict[str, Any]:
    """What a board needs of an alert: an ``alerts.v1`` record's fields, times in ISO UTC."""

    def iso(value: Any) -> str:
        moment = value if isinstance(value, datetime) else datetime.fromtimestamp(value / 1000, UTC)
        return moment.astimezone(UTC).isoformat()

    return {
        "alert_id": alert["alert_id"],
        "kind": alert_kind(alert),
        "severity": alert["severity"],
        "state": alert["state"],
        "site_id": alert["site_id"],
        "lamp_id": alert["lamp_id"],
        "incident_started_at": iso(alert["incident_started_at"]),
        "emitted_at": iso(alert["emitted_at"]),
    }


def step_event(row: dict[str, Any]) -> dict[str, Any]:
    """What a board needs of a step of the alert's life (``queries.NEW_STEPS``'s row): the
    alert's fields as :func:`event_of` gives them, the step, and who acknowledged."""
    step = row["step"]
    details = row["details"] if isinstance(row["details"], dict) else {}
    by = details.get("acknowledged_by")
    return {
        "event": "step",
        "alert_id": row["alert_id"],
        "kind": row["kind"],
        "severity": row["severity"],
        # A step never resolves (alerts.v1 does); an acknowledgement is the one that changes
        # the board's state column.
        "state": "acknowledged" if step == "acknowledged" else None,
        "site_id": row["site_id"],
        "lamp_id": row["lamp_id"],
        "incident_started_at": row["incident_started_at"].astimezone(UTC).isoformat(),
        "emitted_at": row["emitted_at"].astimezone(UTC).isoformat(),
        "step": step,
        "occurrence": row["occurrence"],
        "label": "renotified" if step == "notified" and row["occurrence"] > 1 else step,
        "acknowledged_by": by if isinstance(by, str) else None,
    }


class StepPoller:
    """The steps recorded since the last poll, each once (``STEP_OVERLAP``)."""

    def __init__(self, fetch: Fetch, query: str) -> None:
        self.fetch = fetch
        self.query = query
        self.since: datetime | None = None
        self.sent: dict[tuple[str, str, int], datetime] = {}

    async def poll(self, sites: frozenset[str] | None) -> list[dict[str, Any]]:
        params = {
            # The first poll looks back by the overlap too: a step recorded while the page
            # loaded shows (one the page had already is shown again, which changes nothing).
            "since": self.since,
            "overlap": STEP_OVERLAP,
            "all_sites": sites is None,
            "sites": sorted(sites or ()),
            "limit": STEP_PAGE,
        }
        rows = await self.fetch(self.query, params)
        polled_at: datetime = rows[0]["polled_at"]
        self.since = polled_at - STEP_OVERLAP
        if len(rows) >= STEP_PAGE:  # a burst: the next poll goes on from the last one read
            self.since = min(self.since, rows[-1]["recorded_at"])
        fresh = []
        for row in rows:
            if row["alert_id"] is None:  # the clock row of a poll that found nothing
                continue
            key = (row["alert_id"], row["step"], row["occurrence"])
            if key not in self.sent:
                self.sent[key] = row["recorded_at"]
                fresh.append(step_event(row))
        self.sent = {key: at for key, at in self.sent.items() if at >= self.since}
        return fresh


class AlertHub:
    def __init__(
        self, settings: Settings, fetch: Fetch | None = None, steps_query: str = ""
    ) -> None:
        self.settings = settings
        self.subscribers: set[Subscriber] = set()
        self.ready = asyncio.Event()  # the tail's start positions are fixed
        self._task: asyncio.Task[None] | None = None
        self._steps_task: asyncio.Task[None] | None = None
        self.fetch = fetch
        self.steps_query = steps_query
        # What of the live updates is failing now: "alerts" (the tail), "steps" (the poller).
        self.down: set[str] = set()

    @contextlib.asynccontextmanager
    async def subscribe(self, sites: frozenset[str] | None) -> AsyncIterator[Subscriber]:
        subscriber = Subscriber(sites)
        self.subscribers.add(subscriber)
        if self._task is None or self._task.done():
            self.ready = asyncio.Event()
            self._task = asyncio.create_task(self._tail(), name="console-alerts-tail")
        if self.fetch is not None and (self._steps_task is None or self._steps_task.done()):
            self._steps_task = asyncio.create_task(self._steps(), name="console-steps-poller")
        try:
            yield subscriber
        finally:
            self.subscribers.discard(subscriber)
            if not self.subscribers:
                await self.close()

    async def close(self) -> None:
        tasks = [task for task in (self._task, self._steps_task) if task is not None]
        self._task = self._steps_task = None
        self.down.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _fan_out(self, event: dict[str, Any]) -> None:
        for subscriber in list(self.subscribers):
            if subscriber.wants(event["site_id"]):
                subscriber.offer(event)

    def _health(self, part: str, ok: bool) -> None:
        """Tell every open board when its live updates stop and when they come back: a board
        still saying "connected" while PostgreSQL or Kafka is away would show a stale page as
        if it were live (the browser's connection to us is fine all along)."""
        was_live = not self.down
        if ok:
            self.down.discard(part)
        else:
            self.down.add(part)
        if was_live != (not self.down):
            for subscriber in list(self.subscribers):
                subscriber.offer({"event": "status", "live": not self.down})

    def _sites(self) -> frozenset[str] | None:
        sites: set[str] = set()
        for subscriber in list(self.subscribers):
            if subscriber.sites is None:
                return None
            sites |= subscriber.sites
        return frozenset(sites)

    async def _steps(self) -> None:
        assert self.fetch is not None  # noqa: S101 - started only with one
        poller = StepPoller(self.fetch, self.steps_query)
        while self.subscribers:
            try:
                events = await poller.poll(self._sites())
                # Live again before the news it brings: a board hears "connected", then the step.
                self._health("steps", ok=True)
                for event in events:
                    self._fan_out(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - PostgreSQL away: the next poll retries
                log.warning("console: polling alert_events failed (%s); retrying", exc)
                self._health("steps", ok=False)
            await asyncio.sleep(STEP_POLL_S)

    def _tail_ready(self, _topic: str, _partitions: Any) -> None:
        self.ready.set()
        self._health("alerts", ok=True)

    async def _tail(self) -> None:
        while self.subscribers:
            try:
                items = follow(
                    self.settings,
                    on_ready=self._tail_ready,
                    on_health=lambda ok: self._health("alerts", ok),
                )
                async for item in items:
                    if not isinstance(item, TailedAlert):
                        log.warning("console: undecodable record on alerts.v1: %s", item.error)
                        continue
                    self._fan_out(event_of(item.alert))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Kafka away: the boards wait, the tail retries
                self.ready.clear()
                self._health("alerts", ok=False)
                log.warning("console: the alerts.v1 tail stopped (%s); retrying", exc)
                await asyncio.sleep(RETRY_S)
