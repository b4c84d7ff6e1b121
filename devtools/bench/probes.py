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


# -- CPU time of process trees, from /proc ------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_table(proc: Path = Path("/proc")) -> dict[int, tuple[int, int]]:
    """Every process's ``(ppid, ticks)``, where ticks is utime + stime + cutime + cstime: its own
    CPU and that of the children it reaped (a PostgreSQL backend that ended is in its
    postmaster's cutime/cstime), in clock ticks."""
    table: dict[int, tuple[int, int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            data = (entry / "stat").read_bytes()
            # The command name may hold spaces and parentheses: fields start after the last ")".
            fields = data[data.rindex(b")") + 2 :].split()
            ticks = sum(int(f) for f in fields[11:15])
            table[int(entry.name)] = (int(fields[1]), ticks)
    return table


def tree_pids(table: dict[int, tuple[int, int]], roots: set[int]) -> set[int]:
    """``roots`` and every live descendant, from a :func:`process_table`."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    seen: set[int] = set()
    todo = [pid for pid in roots if pid in table]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(children.get(pid, ()))
    return seen


def tree_ticks(table: dict[int, tuple[int, int]], roots: set[int]) -> int:
    """Clock ticks of ``roots`` and of every live descendant (with what each reaped)."""
    return sum(table[pid][1] for pid in tree_pids(table, roots))


class CpuMeter:
    """CPU seconds of named process trees between two readings.

    ``roots`` maps a name (``kafka``, ``connector``…) to a callable giving its root pids now
    (a process may be restarted between readings: the pids are looked up at each reading)."""

    def __init__(self, roots: dict[str, Callable[[], set[int]]]) -> None:
        self.roots = roots

    def read(self) -> tuple[float, dict[str, float]]:
        """(monotonic time, CPU seconds so far per name)."""
        table = process_table()
        now = time.monotonic()
        return now, {
            name: tree_ticks(table, pids()) / CLOCK_TICKS for name, pids in self.roots.items()
        }

    @staticmethod
    def delta(
        first: tuple[float, dict[str, float]], last: tuple[float, dict[str, float]]
    ) -> tuple[float, dict[str, float]]:
        """(seconds between the readings, CPU seconds used per name meanwhile)."""
        (t0, a), (t1, b) = first, last
        return t1 - t0, {name: max(b.get(name, 0.0) - a.get(name, 0.0), 0.0) for name in b}


def stack_pids(settings: Settings) -> dict[str, Callable[[], set[int]]]:
    """The local stack's services (``veilleuse stack``), by their recorded pids: each one's
    tree is the service (Elasticsearch's launcher and its JVM, the postmaster and every
    backend)."""
    from devtools.stack.manager import services

    out: dict[str, Callable[[], set[int]]] = {}
    for service in services(settings):
        if service.name == "chromium":
            continue

        def pids(service: Any = service) -> set[int]:
            pid = service.pid()
            return {pid} if pid is not None else set()

        out[service.name] = pids
    return out


def session_present(settings: Settings, client_id: str, timeout_s: float = 10.0) -> bool:
    """Whether the broker holds a persistent session for ``client_id`` (on the first broker of
    the settings), asked the MQTT 5 way: connect without clean start and read the CONNACK's
    session-present flag. The connection asks for a session expiry of 0, so a session found is
    also ended (what it had queued is dropped)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    broker = settings.mqtt.brokers[0]
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.username_pw_set(settings.mqtt.username, settings.mqtt.password.get_secret_value())
    if broker.tls:
        client.tls_set(ca_certs=str(broker.ca_file) if broker.ca_file else None)
    answer: list[bool] = []

    def on_connect(_c: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        answer.append(bool(flags.session_present) if not reason.is_failure else False)

    client.on_connect = on_connect
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 0
    client.connect(broker.host, broker.port, clean_start=False, properties=properties)
    deadline = time.monotonic() + timeout_s
    try:
        while not answer and time.monotonic() < deadline:
            client.loop(timeout=0.1)
    finally:
        client.disconnect()
    if not answer:
        raise TimeoutError(f"no CONNACK from {broker.host}:{broker.port} in {timeout_s:.0f} s")
    return answer[0]
