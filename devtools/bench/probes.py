"""What the bench (and ``devtools/bench/detection_throughput.py``) read from the running pipeline:
consumer-group offsets, the alerts arriving on ``alerts.v1``, the workers' readiness, the
machine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline import clients
from pipeline.settings import Settings
from pipeline.topics import ALERTS, topic_name

READY = re.compile(r"partitions ready: (\[.*\])")
REVOKED = re.compile(r"revoked (\[.*\])")


class Offsets:
    """Committed offsets of consumer groups and end offsets of a topic, by admin queries."""

    def __init__(self, settings: Settings, topic: str) -> None:
        from aiokafka import TopicPartition

        self.settings = settings
        self.tps = [TopicPartition(topic, p) for p in range(settings.kafka.topic_partitions)]
        self.admin = clients.admin_client(settings)
        self.consumer = clients.consumer(settings, group_id=None)

    async def __aenter__(self) -> Offsets:
        await self.admin.start()
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def end(self) -> int:
        ends = await self.consumer.end_offsets(self.tps)
        return int(sum(ends.values()))

    async def committed(self, group: str) -> int:
        try:
            offsets = await self.admin.list_consumer_group_offsets(group, partitions=self.tps)
        except Exception:  # noqa: BLE001 - the group may not exist yet
            return 0
        return int(sum(max(o.offset, 0) for o in offsets.values()))


class AlertTail:
    """Follows ``alerts.v1`` read_committed from its beginning; notes when the alerts of the
    lamps ``watch`` accepts arrived (wall clock of this process)."""

    def __init__(self, settings: Settings, watch: Callable[[bytes], bool]) -> None:
        self.settings = settings
        self.watch = watch
        self.arrivals: dict[str, list[tuple[str, str, float]]] = {}
        self.total = 0
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AlertTail:
        from aiokafka import TopicPartition

        topic = topic_name(self.settings, ALERTS)
        self.consumer = clients.consumer(
            self.settings, group_id=None, isolation_level="read_committed"
        )
        await self.consumer.start()
        tps = [TopicPartition(topic, p) for p in range(self.settings.kafka.topic_partitions)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_beginning(*tps)
        self.task = asyncio.create_task(self._follow())
        return self

    async def _follow(self) -> None:
        from schemas import decode

        while True:
            batch = await self.consumer.getmany(timeout_ms=100)
            now = time.time()
            for records in batch.values():
                self.total += len(records)
                for record in records:
                    if record.key and self.watch(record.key):
                        alert = decode(record.value)[1]
                        self.arrivals.setdefault(alert["lamp_id"], []).append(
                            (alert["kind"], alert["state"], now)
                        )

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.consumer.stop()

    def fall_arrival(self, lamp_id: str) -> float | None:
        return next(
            (
                t
                for kind, state, t in self.arrivals.get(lamp_id, [])
                if (kind, state) == ("fall", "raised")
            ),
            None,
        )


def log_entries(log: Path) -> list[dict[str, Any]]:
    """The JSON lines of a process's log."""
    out = []
    if log.exists():
        for line in log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    out.append(entry)
    return out


def ready_at(log: Path, partitions: int) -> float | None:
    """Wall time (from a worker's own JSON log) at which it had every partition ready."""
    ready: set[int] = set()
    for entry in log_entries(log):
        msg = str(entry.get("msg", ""))
        if match := READY.search(msg):
            ready |= set(json.loads(match.group(1)))
        elif match := REVOKED.search(msg):
            ready -= set(json.loads(match.group(1)))
        if len(ready) == partitions:
            return datetime.fromisoformat(entry["ts"]).timestamp()
    return None


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_gib() -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    return float("nan")


def machine() -> list[str]:
    load = os.getloadavg()
    return [
        f"{os.cpu_count()} CPUs (nproc), {memory_gib():.1f} GiB, {cpu_model()}",
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        f"load average at the start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min)",
    ]
