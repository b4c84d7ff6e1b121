"""The board's live updates: one tail of ``alerts.v1`` per API process, fanned out.

The tail (``pipeline.alerts_tail.follow``: no consumer group, nothing committed, read_committed)
starts with the first subscriber and stops after the last one leaves; each subscriber gets the
alerts of its own sites only, through a bounded queue (a stalled browser loses events, never
the process's memory: the page reloads its state on reconnection)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.alerts_tail import TailedAlert, follow
from pipeline.settings import Settings
from schemas import alert_kind

log = logging.getLogger(__name__)

QUEUE_SIZE = 256
RETRY_S = 2.0


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


class AlertHub:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.subscribers: set[Subscriber] = set()
        self.ready = asyncio.Event()  # the tail's start positions are fixed
        self._task: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def subscribe(self, sites: frozenset[str] | None) -> AsyncIterator[Subscriber]:
        subscriber = Subscriber(sites)
        self.subscribers.add(subscriber)
        if self._task is None or self._task.done():
            self.ready = asyncio.Event()
            self._task = asyncio.create_task(self._tail(), name="console-alerts-tail")
        try:
            yield subscriber
        finally:
            self.subscribers.discard(subscriber)
            if not self.subscribers:
                await self.close()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _tail(self) -> None:
        while self.subscribers:
            try:
                async for item in follow(
                    self.settings, on_ready=lambda _topic, _partitions: self.ready.set()
                ):
                    if not isinstance(item, TailedAlert):
                        log.warning("console: undecodable record on alerts.v1: %s", item.error)
                        continue
                    event = event_of(item.alert)
                    for subscriber in list(self.subscribers):
                        if subscriber.wants(event["site_id"]):
                            subscriber.offer(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Kafka away: the boards wait, the tail retries
                self.ready.clear()
                log.warning("console: the alerts.v1 tail stopped (%s); retrying", exc)
                await asyncio.sleep(RETRY_S)
