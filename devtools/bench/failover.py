"""Failover at fleet scale: the state of ``--lamps`` lamps in ``--workers`` detection workers,
silent falls over every partition, one worker SIGKILLed (or all restarted one by one) shortly
before their deadlines.

Runs against the local Kafka (``veilleuse stack up``), on topics, a consumer group and
transactional ids of its own (a unique topic prefix, deleted at the end unless
``--keep-topics``). For each side (the working tree, and with ``--compare REF`` the code of a
git revision, extracted with ``git archive``: the checkout is not touched) and each
``--standby`` value, alternating the sides:

1. load: ``--workers`` workers start; every lamp sends ``--messages-per-lamp`` protocol-valid
   messages (heartbeat, posture, temperature, motion, ...) written to ``lamp.messages.v1`` as
   the connector would; the bench waits until the workers' committed offsets reach the end
   (lag 0). Each worker's RSS before and after, its CPU per message, the changelogs' size.
2. ``sigkill``: ``--falls`` lamps spread over every partition each send one
   ``fall_suspected`` (confidence 0.9) and then nothing; ``--kill-before-s`` seconds before
   their deadlines (the fall's ``ts`` + the rule's 30 s) one worker is SIGKILLed. Each fall's
   alert is read from ``alerts.v1`` read_committed: its lateness (when the bench read it, and
   its Kafka timestamp, minus the deadline), exactly-once (no fall missing, none twice). Then
   the killed worker restarts with the same instance id: its restart time (process start →
   its partitions recovered → its first committed batch) and restore rate.
3. ``rolling``: new falls, and from ``--kill-before-s`` before their deadlines each worker in
   turn gets SIGTERM and is started again with the same instance id, the next one stopping
   only once the group covers every partition again (a Kubernetes rollout).

Throughout, ``--background-rate`` heartbeats/s from the other lamps keep the partitions moving
(the "first batch" of a restarted worker is its first commit of them). The lamp-offline rule is
set to ``--offline-after-s`` (default one day): a fleet loaded once and then mostly quiet would
otherwise raise 100,000 ``lamp_offline`` alerts after 5 minutes.

    .venv/bin/python -m devtools.bench.failover [--lamps 100000] [--workers 2]
        [--falls 24] [--kill-before-s 15] [--standby 0,1] [--scenarios sigkill,rolling]
        [--compare 75390ce [--sides old,new|old|new]] [--partitions 12]
        [--background-rate 300] [--messages-per-lamp 4] [--wait-s 600]
        [--worker-env VEILLEUSE_DETECTION__X=Y ...] [--out devtools/bench/results/...json]

Figures and how to read them: BENCHMARKS.md, "Failover at fleet scale".

It prints what it measured and writes the raw results (JSON); nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import json
import math
import os
import platform
import random
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from devtools.bench.detection_ab import Code, extract, imported_from, worker_module
from devtools.bench.detection_ab import stop as stop_process
from devtools.bench.detection_throughput import (
    BatchSender,
    changelog_stats,
    code_fingerprint,
    cpu_seconds,
    delete_topics,
    log_problems,
    partition_of,
)
from devtools.bench.probes import READY, REVOKED, cpu_model, log_entries
from devtools.bench.stats import percentile
from pipeline import clients
from pipeline.settings import Settings, load_settings
from pipeline.topics import ALERTS, LAMP_MESSAGES, ensure_topics, topic_name

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "devtools" / "bench" / "results"
MODULE = "devtools.bench.failover"
FALL_CONFIRM_S = 30.0  # rule 1's default (VEILLEUSE_RULES__FALL__CONFIRM_S), left as it is
CHILDREN: list[subprocess.Popen[bytes]] = []
# faust's recovery log lines (faust/tables/recovery.py), with the tables of offsets it prints.
HIGHWATER = re.compile(r"Highwater for (active|standby) changelog partitions", re.IGNORECASE)
STARTS = re.compile(r"(active|standby) offsets at start of reading", re.IGNORECASE)
ROW = re.compile(r"[│|┃]\s*(\S+)\s*[│|┃]\s*(\d+)\s*[│|┃]\s*(-?\d+)\s*[│|┃]")
RESTORING = "Restoring state from changelog topics"
RESTORED = "Done reading from changelog topics"
LOGGED_RESTORE = "changelog records restored:"  # agents/runtime/faust_internals.py, issue #15
LOGGED_TOTAL = re.compile(r"\((\d+) in ([\d.]+) s\)\s*$")
# A restore rate counts only recoveries of at least this many records: below it the fixed costs
# (a fetch round trip, the quiet period of the recovery override) are what is measured.
MIN_RESTORE_RECORDS = 1_000


def kafka_pid() -> str:
    """The local stack's Kafka process id (a restart during a scenario voids its figures)."""
    try:
        return (REPO / ".stack" / "run" / "kafka.pid").read_text().strip()
    except OSError:
        return "?"


def echo(line: str = "") -> None:
    print(line, flush=True)  # noqa: T201 - a benchmark prints what it measures


# -- the fleet ---------------------------------------------------------------------------------


class Fleet:
    """``lamps`` lamps, 100 per site, each with its partition and its own ``seq``."""

    def __init__(self, lamps: int, partitions: int, run_id: str) -> None:
        self.ids = [f"F{run_id}-{i:06d}" for i in range(lamps)]
        self.keys = [lamp.encode() for lamp in self.ids]
        self.partitions = partitions
        self.partition = [partition_of(key, partitions) for key in self.keys]
        self.seq = [0] * lamps
        self.topics = [
            (
                [("mqtt.topic", f"lamps/fo-{run_id}-{i // 100:04d}/{lamp}/events".encode())],
                [("mqtt.topic", f"lamps/fo-{run_id}-{i // 100:04d}/{lamp}/telemetry".encode())],
            )
            for i, lamp in enumerate(self.ids)
        ]
        self.reserved: set[int] = set()  # the fall lamps: silent after their fall

    def by_partition(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {p: [] for p in range(self.partitions)}
        for i, p in enumerate(self.partition):
            out[p].append(i)
        return out

    def pick_falls(self, count: int, rng: random.Random) -> list[int]:
        """``count`` lamps not used before, round-robin over the partitions."""
        pools = {
            p: [i for i in lamps if i not in self.reserved]
            for p, lamps in self.by_partition().items()
        }
        picked: list[int] = []
        while len(picked) < count:
            p = len(picked) % self.partitions
            if not pools[p]:
                raise SystemExit(f"partition {p} has no lamp left for a fall: more --lamps")
            picked.append(pools[p].pop(rng.randrange(len(pools[p]))))
        self.reserved.update(picked)
        return picked

    def message(self, i: int, kind: str, now_ms: int) -> tuple[bytes, list[tuple[str, bytes]]]:
        """One protocol-valid message of lamp ``i`` (lamp-protocol.md), and its headers."""
        payload: dict[str, Any] = {
            "v": 1,
            "lamp_id": self.ids[i],
            "seq": self.seq[i],
            "ts": now_ms,
            "type": kind,
        }
        self.seq[i] += 1
        events, telemetry = self.topics[i]
        headers = events
        if kind == "heartbeat":
            headers = telemetry
            payload.update(fw="2.4.1", uptime_s=3600 + self.seq[i] * 60, rssi=-60)
        elif kind == "temperature":
            headers = telemetry
            payload.update(celsius=21.5, humidity=45.0)
        elif kind == "posture":
            payload.update(posture="sitting", zone="room", confidence=0.9, persons=1)
        elif kind == "motion":
            payload.update(zone="room", level=30)
        elif kind == "fall_suspected":
            payload.update(confidence=0.9, zone="floor")
        else:
            raise ValueError(kind)
        return orjson.dumps(payload), headers


LOAD_KINDS = ("heartbeat", "posture", "temperature", "motion")


async def load_fleet(settings: Settings, fleet: Fleet, per_lamp: int) -> tuple[int, float]:
    """Every lamp's ``per_lamp`` messages, one lamp after the other: a lamp's messages fall in
    one batch of the worker, which writes its state once per batch, so the changelog holds
    about one record per lamp and table, as compacted as it can be (the best case for a
    recovery: a live changelog's uncompacted head holds every update of the last
    ``segment.ms``); (messages, seconds)."""
    producer = clients.producer(settings, linger_ms=5, max_batch_size=1 << 20)
    await producer.start()
    sender = BatchSender(producer, topic_name(settings, LAMP_MESSAGES))
    started, sent = time.monotonic(), 0
    try:
        for i in range(len(fleet.ids)):
            for round_ in range(per_lamp):
                kind = LOAD_KINDS[round_ % len(LOAD_KINDS)]
                now_ms = int(time.time() * 1000)
                value, headers = fleet.message(i, kind, now_ms)
                await sender.append(fleet.partition[i], fleet.keys[i], value, headers, now_ms)
                sent += 1
                if sent % 20_000 == 0:
                    await sender.flush(max_pending=50)
        await sender.flush()
    finally:
        await producer.stop()
    return sent, time.monotonic() - started


class Background:
    """Heartbeats from the lamps that are not falling, at ``rate`` per second, until stopped."""

    def __init__(self, settings: Settings, fleet: Fleet, rate: float) -> None:
        self.settings, self.fleet, self.rate = settings, fleet, rate
        self.sent = 0
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Background:
        if self.rate > 0:
            self.producer = clients.producer(self.settings, linger_ms=5)
            await self.producer.start()
            self.task = asyncio.create_task(self._play())
        return self

    async def _play(self) -> None:
        rng = random.Random(7)  # noqa: S311 - test data
        topic = topic_name(self.settings, LAMP_MESSAGES)
        started = time.monotonic()
        n = len(self.fleet.ids)
        while True:
            due = int((time.monotonic() - started) * self.rate) - self.sent
            sends = []
            for _ in range(max(due, 0)):
                i = rng.randrange(n)
                if i in self.fleet.reserved:
                    continue  # a falling lamp stays silent (rule 6)
                now_ms = int(time.time() * 1000)
                value, headers = self.fleet.message(i, "heartbeat", now_ms)
                sends.append(
                    await self.producer.send(
                        topic,
                        value,
                        key=self.fleet.keys[i],
                        partition=self.fleet.partition[i],
                        headers=headers,
                        timestamp_ms=now_ms,
                    )
                )
            self.sent += max(due, 0)
            if sends:
                await asyncio.gather(*sends)
            await asyncio.sleep(0.05)

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            await self.producer.stop()


# -- reading the pipeline: offsets, alerts -----------------------------------------------------


class Commits:
    """Polls the consumer group's committed offsets per partition (and the input's end)."""

    def __init__(self, settings: Settings, group: str) -> None:
        from aiokafka import TopicPartition

        topic = topic_name(settings, LAMP_MESSAGES)
        self.group = group
        self.tps = [TopicPartition(topic, p) for p in range(settings.kafka.topic_partitions)]
        self.admin = clients.admin_client(settings)
        self.consumer = clients.consumer(settings, group_id=None)
        # partition -> [(wall time first seen, committed offset)] at each change
        self.changes: dict[int, list[tuple[float, int]]] = {tp.partition: [] for tp in self.tps}
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Commits:
        await self.admin.start()
        await self.consumer.start()
        self.task = asyncio.create_task(self._poll())
        return self

    async def committed(self) -> dict[int, int]:
        try:
            got = await self.admin.list_consumer_group_offsets(self.group, partitions=self.tps)
        except Exception:  # noqa: BLE001 - the group may not exist yet, a coordinator may move
            return {}
        return {tp.partition: max(o.offset, 0) for tp, o in got.items()}

    async def end(self) -> int:
        ends = await self.consumer.end_offsets(self.tps)
        return int(sum(ends.values()))

    async def _poll(self) -> None:
        while True:
            now = time.time()
            for p, offset in (await self.committed()).items():
                seen = self.changes[p]
                if not seen or seen[-1][1] != offset:
                    seen.append((now, offset))
            await asyncio.sleep(0.25)

    def first_commit_after(self, partitions: Iterable[int], after: float) -> float | None:
        """When the committed offset of one of ``partitions`` first moved after ``after``."""
        times = []
        for p in partitions:
            seen = self.changes[p]
            for (_, before), (t, offset) in itertools.pairwise(seen):
                if t > after and offset > before:
                    times.append(t)
                    break
        return min(times, default=None)

    async def wait_caught_up(self, crew: Crew, timeout_s: float) -> tuple[int, float]:
        """Until the committed offsets reach the input's end; (end, seconds)."""
        started = time.monotonic()
        end = await self.end()
        while sum((await self.committed()).values()) < end:
            crew.revive()
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"lag not 0 after {timeout_s:.0f}s")
            await asyncio.sleep(0.25)
        return end, time.monotonic() - started

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.consumer.stop()
        await self.admin.close()


@dataclass
class Alert:
    lamp_id: str
    kind: str
    state: str
    kafka_ts: float  # the record's timestamp (s)
    read_at: float  # when this process read it, read_committed (s)


class Alerts:
    """Every record of ``alerts.v1``, read_committed from the beginning."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.seen: list[Alert] = []
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Alerts:
        from aiokafka import TopicPartition

        self.consumer = clients.consumer(
            self.settings, group_id=None, isolation_level="read_committed"
        )
        await self.consumer.start()
        topic = topic_name(self.settings, ALERTS)
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
                for record in records:
                    alert = decode(record.value)[1]
                    self.seen.append(
                        Alert(
                            alert["lamp_id"],
                            alert["kind"],
                            alert["state"],
                            record.timestamp / 1000,
                            now,
                        )
                    )

    def falls_raised(self, lamp_id: str) -> list[Alert]:
        return [
            a for a in self.seen if a.lamp_id == lamp_id and (a.kind, a.state) == ("fall", "raised")
        ]

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.consumer.stop()


# -- the workers -------------------------------------------------------------------------------


def log_time(entry: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(entry["ts"])).timestamp()


def offsets_table(text: str) -> dict[tuple[str, int], int]:
    """faust's log table of (changelog topic, partition) → offset; a ditto mark repeats the
    topic above."""
    out: dict[tuple[str, int], int] = {}
    topic = ""
    for match in ROW.finditer(text):
        name, partition, offset = match.groups()
        if name not in ("〃", '"'):
            topic = name
        if topic == "topic":
            continue  # the header
        out[(topic, int(partition))] = int(offset)
    return out


@dataclass
class Recovery:
    """One restore of a worker's active changelog partitions, from its log."""

    worker: str
    started: float
    done: float | None
    offsets: int  # changelog offsets to read: records and transaction markers
    partitions: int  # changelog partitions (of both tables)
    # (changelog topic, partition, last offset applied before, highwater): what it read
    ranges: list[tuple[str, int, int, int]] = field(default_factory=list)
    records: int | None = None  # committed records in those ranges (counted afterwards)
    # what the worker itself logged, where it does (the runtime since issue #15): records
    # applied to its active partitions, and seconds
    logged_records: int | None = None
    logged_s: float | None = None
    # a rebalance revoked the partitions while it read: faust then logs it done, read or not
    interrupted: bool = False

    @property
    def seconds(self) -> float | None:
        return None if self.done is None else self.done - self.started

    @property
    def records_per_s(self) -> float | None:
        s = self.seconds
        # The worker's own count where it logs one; else the records still in the changelog
        # at the end of the side's run, a lower bound once compaction ran (segment.ms 10 min).
        records = self.logged_records if self.logged_records is not None else self.records
        if s is None or s <= 0 or records is None or self.interrupted:
            return None
        return records / s

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": self.seconds, "records_per_s": self.records_per_s}


@dataclass
class Worker:
    """One incarnation of ``worker --instance-id <instance_id>``."""

    instance_id: str
    code: Code
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0

    def start(self) -> Worker:
        argv = [sys.executable, "-m", self.code.module, "worker", *self.code.options]
        env = {**os.environ, **self.env}
        env.pop("PYTHONPATH", None)
        if self.code.tree != REPO:
            env["PYTHONPATH"] = str(self.code.tree)  # ahead of the editable install's /work/main
        self.started = time.time()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*argv, "--instance-id", self.instance_id],
                cwd=self.code.tree,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        CHILDREN.append(self.proc)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None  # noqa: S101 - started
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        if not self.alive():
            code = None if self.proc is None else self.proc.returncode
            raise RuntimeError(f"worker {self.instance_id} exited with {code}:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        assert self.proc is not None  # noqa: S101 - started
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        CHILDREN.remove(self.proc)

    def terminate(self, timeout_s: float = 60) -> float:
        """SIGTERM, wait for the exit (SIGKILL after ``timeout_s``); seconds it took."""
        assert self.proc is not None  # noqa: S101 - started
        began = time.monotonic()
        stop(self.proc, timeout_s)
        return time.monotonic() - began

    def rss_mib(self) -> float:
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return math.nan

    def ready_history(self) -> list[tuple[float, frozenset[int]]]:
        """(wall time, partitions ready) after each ready/revoked line of its log."""
        ready: set[int] = set()
        out = []
        for entry in log_entries(self.log):
            msg = str(entry.get("msg", ""))
            if match := READY.search(msg):
                ready |= set(json.loads(match.group(1)))
            elif match := REVOKED.search(msg):
                ready -= set(json.loads(match.group(1)))
            else:
                continue
            out.append((log_time(entry), frozenset(ready)))
        return out

    def ready(self) -> frozenset[int]:
        history = self.ready_history()
        return history[-1][1] if history else frozenset()

    def first_ready(self) -> float | None:
        return next((t for t, parts in self.ready_history() if parts), None)

    def recoveries(self) -> tuple[list[Recovery], set[int]]:
        """The restores of active partitions in its log, and the standby partitions it was
        given last (faust's 'Highwater for standby changelog partitions' table)."""
        out: list[Recovery] = []
        highwater: dict[tuple[str, int], int] = {}
        starts: dict[tuple[str, int], int] = {}
        standby: set[int] = set()
        for entry in log_entries(self.log):
            msg = str(entry.get("msg", ""))
            if REVOKED.search(msg) and out and out[-1].done is None:
                out[-1].interrupted = True
            if match := HIGHWATER.search(msg):
                table = offsets_table(msg)
                if match.group(1).lower() == "active":
                    highwater = table
                else:
                    standby = {p for _, p in table}
            elif (match := STARTS.search(msg)) and match.group(1).lower() == "active":
                starts = offsets_table(msg)
            elif RESTORING in msg:
                ranges = [(t, p, starts.get((t, p), -1), hw) for (t, p), hw in highwater.items()]
                offsets = sum(max(hw - start, 0) for _, _, start, hw in ranges)
                out.append(
                    Recovery(self.instance_id, log_time(entry), None, offsets, len(ranges), ranges)
                )
            elif RESTORED in msg and out and out[-1].done is None:
                out[-1].done = log_time(entry)
            elif (
                msg.startswith(LOGGED_RESTORE)
                and (match := LOGGED_TOTAL.search(msg))
                and out
                and out[-1].logged_records is None
            ):
                out[-1].logged_records = int(match.group(1))
                out[-1].logged_s = float(match.group(2))
        return out, standby


async def changelog_offsets(settings: Settings, topic: str) -> dict[int, list[int]]:
    """The offsets of a changelog's committed records (read_committed), per partition."""
    from aiokafka import TopicPartition

    consumer = clients.consumer(settings, group_id=None, isolation_level="read_committed")
    await consumer.start()
    out: dict[int, list[int]] = {p: [] for p in range(settings.kafka.topic_partitions)}
    try:
        tps = [TopicPartition(topic, p) for p in out]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=50_000)
            for tp, records in batch.items():
                out[tp.partition].extend(r.offset for r in records)
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                break
    finally:
        await consumer.stop()
    return out


async def count_restored(settings: Settings, recoveries: Sequence[Recovery]) -> None:
    """Each recovery's committed records: those of its ranges (after the offset it started
    from, up to the highwater faust logged) still in the changelog now. The changelogs are
    compacted (``segment.ms`` 10 min): after a side's run longer than that, a lower bound."""
    topics = {topic for r in recoveries for topic, *_ in r.ranges}
    index = {topic: await changelog_offsets(settings, topic) for topic in topics}
    for r in recoveries:
        r.records = sum(
            bisect.bisect_right(index[topic][p], hw) - bisect.bisect_right(index[topic][p], start)
            for topic, p, start, hw in r.ranges
        )


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    """detection_ab's stop (SIGTERM, then SIGKILL after ``timeout_s``), forgetting the child."""
    stop_process(proc, timeout_s)
    if proc in CHILDREN:
        CHILDREN.remove(proc)


class Crew:
    """The workers of one side's run: the live ones and every incarnation. A worker that exits
    on its own is started again with its instance id, as its supervisor would (a pod
    restarted), and the crash is noted."""

    def __init__(self, code: Code, env: dict[str, str], workdir: Path, label: str) -> None:
        self.code, self.env, self.workdir, self.label = code, env, workdir, label
        self.live: list[Worker] = []
        self.every: list[Worker] = []
        self.crashes: list[str] = []
        self.incarnations: dict[str, int] = {}

    def start(self, instance_id: str) -> Worker:
        n = self.incarnations[instance_id] = self.incarnations.get(instance_id, 0) + 1
        log = self.workdir / f"{self.label}-{instance_id}-{n}.log"
        worker = Worker(instance_id, self.code, log, self.env).start()
        self.every.append(worker)
        return worker

    def revive(self) -> None:
        for i, w in enumerate(self.live):
            if w.alive():
                continue
            errors = [p for p in log_problems(w.log) if " error " in p or "critical" in p]
            code = None if w.proc is None else w.proc.returncode
            crash = (
                f"{datetime.now(UTC):%H:%M:%S} {w.instance_id} exited with {code} "
                f"({errors[-1][:200] if errors else 'no error logged'}); started again"
            )
            self.crashes.append(crash)
            echo(f"  CRASH: {crash}")
            if w.proc in CHILDREN:
                CHILDREN.remove(w.proc)
            self.live[i] = self.start(w.instance_id)

    def stop_all(self) -> None:
        for w in self.live:
            if w.proc is not None:
                stop(w.proc, 60)


async def wait_covered(crew: Crew, partitions: int, timeout_s: float) -> float:
    """Until the live workers together process every partition once, each some; the time
    (from their logs) at which that became true."""
    every = set(range(partitions))
    deadline = time.monotonic() + timeout_s
    while True:
        crew.revive()
        workers = crew.live
        owned = [w.ready() for w in workers]
        if all(owned) and set().union(*owned) == every and sum(map(len, owned)) == partitions:
            return max(w.ready_history()[-1][0] for w in workers)
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {w.instance_id}\n{w.tail(15)}" for w in workers)
            raise TimeoutError(f"partitions not covered by {len(workers)} workers:\n{tails}")
        await asyncio.sleep(0.2)


async def wait_serving(
    commits: Commits, crew: Crew, partitions: int, after: float, timeout_s: float
) -> tuple[float | None, list[int]]:
    """Until every partition's committed offset moved after ``after`` (the background load
    keeps each partition busy): (when, or None; the partitions that did not)."""
    deadline = time.monotonic() + timeout_s
    while True:
        crew.revive()
        times = [commits.first_commit_after([p], after) for p in range(partitions)]
        idle = [p for p, t in enumerate(times) if t is None]
        if not idle:
            return max(t for t in times if t is not None), []
        if time.monotonic() > deadline:
            return None, idle
        await asyncio.sleep(0.25)


# -- one side, one standby setting -------------------------------------------------------------


@dataclass
class Restart:
    """A worker incarnation's start: process start → partitions ready → first commit."""

    instance_id: str
    why: str  # "after sigkill", "rolling"
    started: float
    ready: float | None
    first_batch: float | None
    partitions: int
    recovery: Recovery | None

    @property
    def to_ready_s(self) -> float | None:
        return None if self.ready is None else self.ready - self.started

    @property
    def to_recovered_s(self) -> float | None:
        done = None if self.recovery is None else self.recovery.done
        return None if done is None else done - self.started

    @property
    def to_first_batch_s(self) -> float | None:
        return None if self.first_batch is None else self.first_batch - self.started


@dataclass
class FallResult:
    lamp_id: str
    partition: int
    deadline: float
    raised: int  # fall/raised alerts seen
    read_late_s: float | None  # first alert read (read_committed) - deadline
    kafka_late_s: float | None  # first alert's Kafka timestamp - deadline
    moved: bool  # its partition belonged to a worker that was stopped


@dataclass
class Scenario:
    name: str
    side: str
    standby: int
    started_utc: str
    load_before: tuple[float, float, float]
    stop_at: float  # first SIGKILL/SIGTERM (wall)
    falls: list[FallResult] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)
    other_alerts: dict[str, int] = field(default_factory=dict)
    # fall alerts raised again, during this scenario, for the lamps of an earlier scenario's
    # falls (silent since, their incidents open): duplicates
    raised_again: int = 0
    kafka_pids: list[str] = field(default_factory=lambda: [kafka_pid()])
    recoveries: list[Recovery] = field(default_factory=list)

    @property
    def missing(self) -> int:
        return sum(1 for f in self.falls if f.raised == 0)

    @property
    def duplicated(self) -> int:
        return sum(1 for f in self.falls if f.raised > 1)

    def lateness(self, which: str = "read", moved: bool | None = None) -> list[float]:
        out = []
        for f in self.falls:
            if moved is not None and f.moved != moved:
                continue
            value = f.read_late_s if which == "read" else f.kafka_late_s
            if value is not None:
                out.append(value)
        return sorted(out)


@dataclass
class SideRun:
    side: str
    revision: str
    standby: int
    lamps: int
    workers: int
    partitions: int
    prefix: str
    loaded_messages: int = 0
    load_s: float = 0.0
    caught_up_s: float = 0.0
    rss: list[dict[str, Any]] = field(default_factory=list)
    changelogs: dict[str, dict[str, int]] = field(default_factory=dict)
    scenarios: list[Scenario] = field(default_factory=list)
    restarts: list[Restart] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    recoveries: list[Recovery] = field(default_factory=list)  # every one measured
    problems: dict[str, list[str]] = field(default_factory=dict)
    error: str = ""


class Bench:
    def __init__(self, args: argparse.Namespace, base: Settings, workdir: Path) -> None:
        self.args = args
        self.base = base
        self.workdir = workdir
        self.prefixes: list[str] = []

    def side_settings(self, prefix: str) -> Settings:
        kafka = self.base.kafka.model_copy(
            update={"topic_prefix": prefix, "topic_partitions": self.args.partitions}
        )
        return self.base.model_copy(update={"kafka": kafka})

    def worker_env(self, prefix: str, standby: int) -> dict[str, str]:
        args = self.args
        env = {
            "VEILLEUSE_KAFKA__TOPIC_PREFIX": prefix,
            "VEILLEUSE_KAFKA__TOPIC_PARTITIONS": str(args.partitions),
            "VEILLEUSE_DETECTION__APP_ID": f"{prefix}detection",
            "VEILLEUSE_DETECTION__METRICS_PORT": "0",
            "VEILLEUSE_DETECTION__LIVE_PORT": "0",
            "VEILLEUSE_DETECTION__STANDBY_REPLICAS": str(standby),
            "VEILLEUSE_RULES__LAMP_OFFLINE__OFFLINE_AFTER_S": str(args.offline_after_s),
            "VEILLEUSE_LOG_FORMAT": "json",
            "VEILLEUSE_LOG_LEVEL": "INFO",
        }
        if args.session_timeout_s is not None:
            env["VEILLEUSE_DETECTION__SESSION_TIMEOUT_S"] = str(args.session_timeout_s)
        for pair in args.worker_env:
            name, _, value = pair.partition("=")
            env[name] = value
        return env

    async def side_run(self, code: Code, standby: int) -> SideRun:  # noqa: PLR0915 - one story
        args = self.args
        run_id = uuid.uuid4().hex[:6]
        prefix = f"failover{run_id}."
        self.prefixes.append(prefix)
        settings = self.side_settings(prefix)
        await ensure_topics(settings)
        await asyncio.sleep(2)  # the new partitions' leaders, before anyone fetches
        result = SideRun(
            code.label, code.revision, standby, args.lamps, args.workers, args.partitions, prefix
        )
        fleet = Fleet(args.lamps, args.partitions, run_id)
        rng = random.Random(run_id)  # noqa: S311 - test data
        env = self.worker_env(prefix, standby)
        crew = Crew(code, env, self.workdir, f"{code.label}-s{standby}")
        crew.live = [crew.start(f"fo{run_id}-{i}") for i in range(args.workers)]
        workers = crew.live
        app_id = env["VEILLEUSE_DETECTION__APP_ID"]
        echo(
            f"\n== {code.label} ({code.revision}), standby {standby}: {args.lamps:,} lamps, "
            f"{args.workers} workers, {args.partitions} partitions, prefix {prefix}"
        )
        try:
            async with Commits(settings, app_id) as commits, Alerts(settings) as alerts:
                await wait_covered(crew, args.partitions, 180)
                await asyncio.sleep(3)  # idle, caught up on the empty topics
                rss_before = {w.instance_id: w.rss_mib() for w in workers}
                cpu_before = {w.instance_id: cpu_seconds(w.pid) for w in workers}
                result.loaded_messages, result.load_s = await load_fleet(
                    settings, fleet, args.messages_per_lamp
                )
                _, result.caught_up_s = await commits.wait_caught_up(crew, 1800)
                echo(
                    f"load: {result.loaded_messages:,} messages written in {result.load_s:.1f}s; "
                    f"the workers at lag 0 {result.caught_up_s:.1f}s after the last write"
                )
                await asyncio.sleep(3)  # the last commits' mirrors, the standbys catching up
                per_partition = {p: len(ls) for p, ls in fleet.by_partition().items()}
                for w in workers:
                    active = w.ready()
                    _, standby_parts = w.recoveries()
                    held = active | standby_parts if standby else active
                    rss_after = w.rss_mib()
                    cpu = cpu_seconds(w.pid) - cpu_before[w.instance_id]
                    lamps_active = sum(per_partition[p] for p in active)
                    lamps_held = sum(per_partition[p] for p in held)
                    grown = rss_after - rss_before[w.instance_id]
                    row = {
                        "instance_id": w.instance_id,
                        "rss_before_mib": rss_before[w.instance_id],
                        "rss_after_mib": rss_after,
                        "active_partitions": sorted(active),
                        "standby_partitions": sorted(standby_parts),
                        "lamps_active": lamps_active,
                        "lamps_held": lamps_held,
                        "bytes_per_lamp_active": grown * 2**20 / max(lamps_active, 1),
                        "bytes_per_lamp_held": grown * 2**20 / max(lamps_held, 1),
                        "cpu_s_load": cpu,
                    }
                    result.rss.append(row)
                    echo(
                        f"  {w.instance_id}: RSS {row['rss_before_mib']:,.0f} → {rss_after:,.0f} "
                        f"MiB for {lamps_active:,} lamps active ({len(active)} partitions)"
                        + (f", {lamps_held:,} held with standbys" if standby else "")
                        + f": {row['bytes_per_lamp_active']:,.0f} B per active lamp, "
                        f"{row['bytes_per_lamp_held']:,.0f} B per lamp held; "
                        f"CPU {cpu:.1f}s during the load"
                    )
                for table in ("lamp_state", "night_state"):
                    topic = f"{app_id}-{table}-changelog"
                    with contextlib.suppress(Exception):
                        c = await changelog_stats(settings, topic)
                        result.changelogs[table] = c
                        echo(
                            f"  changelog {table}: {c['records']:,} records, "
                            f"{c['bytes'] / 1e6:,.1f} MB of values "
                            f"({c['bytes'] / max(args.lamps, 1):,.0f} B per lamp), "
                            f"{c['markers']:,} transaction markers"
                        )
                async with Background(settings, fleet, args.background_rate):
                    for name in args.scenarios:
                        if name == "sigkill":
                            await self.sigkill(result, fleet, rng, crew, alerts, commits)
                        else:
                            await self.rolling(result, fleet, rng, crew, alerts, commits)
                await count_restored(settings, result.recoveries)
        except Exception as exc:  # noqa: BLE001 - reported, the next side still runs
            result.error = f"{type(exc).__name__}: {exc}"
            echo(f"ERROR in {code.label} standby {standby}: {result.error}")
        finally:
            crew.stop_all()
            result.crashes = crew.crashes
            for w in crew.every:
                result.problems[w.log.name] = log_problems(w.log)
        return result

    async def send_falls(
        self, settings: Settings, fleet: Fleet, lamps: list[int]
    ) -> dict[int, float]:
        """One fall_suspected per lamp, now; each lamp's deadline (wall, s)."""
        producer = clients.producer(settings)
        await producer.start()
        topic = topic_name(settings, LAMP_MESSAGES)
        out = {}
        try:
            sends = []
            for i in lamps:
                now_ms = int(time.time() * 1000)
                value, headers = fleet.message(i, "fall_suspected", now_ms)
                out[i] = now_ms / 1000 + FALL_CONFIRM_S
                sends.append(
                    await producer.send(
                        topic,
                        value,
                        key=fleet.keys[i],
                        partition=fleet.partition[i],
                        headers=headers,
                        timestamp_ms=now_ms,
                    )
                )
            await asyncio.gather(*sends)
        finally:
            await producer.stop()
        return out

    async def collect(  # noqa: PLR0917 - two call sites, every argument named by its type
        self,
        scenario: Scenario,
        fleet: Fleet,
        deadlines: dict[int, float],
        moved_partitions: set[int],
        alerts: Alerts,
        seen_before: int,
        crew: Crew,
    ) -> None:
        """Wait for every fall's alert (up to ``--wait-s`` after the last deadline), then
        ``--settle-s`` more for duplicates; fill ``scenario.falls``, and count every other
        alert read since ``alerts.seen[seen_before]`` (the scenario's start)."""
        args = self.args
        give_up = max(deadlines.values()) + args.wait_s
        while time.time() < give_up:
            crew.revive()
            if all(alerts.falls_raised(fleet.ids[i]) for i in deadlines):
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(args.settle_s)
        scenario.kafka_pids.append(kafka_pid())
        if len(set(scenario.kafka_pids)) > 1:
            scenario.timeline.append(
                "WARNING: Kafka restarted during this scenario (pid "
                f"{' → '.join(scenario.kafka_pids)}): its figures are void"
            )
        for i, deadline in deadlines.items():
            raised = alerts.falls_raised(fleet.ids[i])
            first = min(raised, key=lambda a: a.read_at) if raised else None
            scenario.falls.append(
                FallResult(
                    fleet.ids[i],
                    fleet.partition[i],
                    deadline,
                    len(raised),
                    None if first is None else first.read_at - deadline,
                    None if first is None else first.kafka_ts - deadline,
                    fleet.partition[i] in moved_partitions,
                )
            )
        falling = {fleet.ids[i] for i in deadlines}
        earlier = {fleet.ids[i] for i in fleet.reserved} - falling
        for a in alerts.seen[seen_before:]:
            if a.lamp_id in falling and (a.kind, a.state) == ("fall", "raised"):
                continue
            key = f"{a.kind}/{a.state}" + (
                " (a lamp of this scenario's falls)"
                if a.lamp_id in falling
                else " (a lamp of an earlier scenario's falls)"
                if a.lamp_id in earlier
                else ""
            )
            scenario.other_alerts[key] = scenario.other_alerts.get(key, 0) + 1
            if a.lamp_id in earlier and (a.kind, a.state) == ("fall", "raised"):
                scenario.raised_again += 1

    async def sigkill(  # noqa: PLR0917 - one call site
        self,
        result: SideRun,
        fleet: Fleet,
        rng: random.Random,
        crew: Crew,
        alerts: Alerts,
        commits: Commits,
    ) -> None:
        args = self.args
        settings = self.side_settings(result.prefix)
        await commits.wait_caught_up(crew, 600)
        victim = crew.live[0]
        scenario = Scenario(
            "sigkill",
            result.side,
            result.standby,
            datetime.now(UTC).strftime("%H:%M:%S"),
            os.getloadavg(),
            0.0,
        )
        seen_before = len(alerts.seen)
        lamps = fleet.pick_falls(args.falls, rng)
        deadlines = await self.send_falls(settings, fleet, lamps)
        kill_at = min(deadlines.values()) - args.kill_before_s
        await asyncio.sleep(max(kill_at - time.time(), 0))
        moved = set(victim.ready())
        scenario.stop_at = time.time()
        crew.live.remove(victim)
        victim.kill()
        scenario.timeline.append(
            f"SIGKILL {victim.instance_id} (partitions {sorted(moved)}) at t=0, "
            f"{min(deadlines.values()) - scenario.stop_at:.1f}s before the first deadline"
        )
        try:
            covered = await wait_covered(crew, args.partitions, args.wait_s)
            scenario.timeline.append(
                f"survivors process every partition at t={covered - scenario.stop_at:+.1f}s "
                "(their logs)"
            )
            await self.serving(scenario, commits, crew, covered)
        except TimeoutError as exc:
            scenario.timeline.append(f"survivors never covered every partition: {exc}")
        await self.collect(scenario, fleet, deadlines, moved, alerts, seen_before, crew)
        for w in crew.every:
            for r in w.recoveries()[0]:
                if r.started >= scenario.stop_at and r not in result.recoveries:
                    scenario.recoveries.append(r)
                    result.recoveries.append(r)
        result.scenarios.append(scenario)
        self.print_scenario(scenario)
        # The killed worker comes back with its instance id (its pod restarted).
        back = crew.start(victim.instance_id)
        crew.live.append(back)
        await self.restarted(result, back, "after sigkill", crew, commits)

    async def restarted(
        self,
        result: SideRun,
        worker: Worker,
        why: str,
        crew: Crew,
        commits: Commits,
    ) -> None:
        """Wait until the crew covers every partition and ``worker`` committed a batch; note
        its restart."""
        args = self.args
        await wait_covered(crew, args.partitions, args.wait_s + 300)
        ready = worker.first_ready()
        first_batch = None
        deadline = time.monotonic() + 60
        while first_batch is None and time.monotonic() < deadline and ready is not None:
            first_batch = commits.first_commit_after(worker.ready(), ready)
            await asyncio.sleep(0.25)
        recoveries = [r for r in worker.recoveries()[0] if r.started >= worker.started]
        first = recoveries[0] if recoveries else None
        restart = Restart(
            worker.instance_id, why, worker.started, ready, first_batch, len(worker.ready()), first
        )
        result.restarts.append(restart)
        if first is not None:
            result.recoveries.append(first)
        echo(
            f"  restart of {worker.instance_id} ({why}): after the process start, recovered "
            f"{fmt_s(restart.to_recovered_s)}, ready {fmt_s(restart.to_ready_s)}, first batch "
            f"{fmt_s(restart.to_first_batch_s)}; its first recovery: "
            + ("none" if first is None else recovery_line(first))
            + f"; {restart.partitions} partitions"
        )

    async def rolling(  # noqa: PLR0917 - one call site
        self,
        result: SideRun,
        fleet: Fleet,
        rng: random.Random,
        crew: Crew,
        alerts: Alerts,
        commits: Commits,
    ) -> None:
        args = self.args
        settings = self.side_settings(result.prefix)
        await commits.wait_caught_up(crew, 600)
        scenario = Scenario(
            "rolling",
            result.side,
            result.standby,
            datetime.now(UTC).strftime("%H:%M:%S"),
            os.getloadavg(),
            0.0,
        )
        seen_before = len(alerts.seen)
        lamps = fleet.pick_falls(args.falls, rng)
        deadlines = await self.send_falls(settings, fleet, lamps)
        stop_at = min(deadlines.values()) - args.kill_before_s
        await asyncio.sleep(max(stop_at - time.time(), 0))
        scenario.stop_at = time.time()
        # Every worker restarts: "moved" are the partitions of the first one stopped, the
        # others' falls show whether their partitions were blinded meanwhile.
        moved = set(crew.live[0].ready())
        for i in range(len(crew.live)):
            old = crew.live[i]
            t = time.time()
            took = old.terminate()
            scenario.timeline.append(
                f"SIGTERM {old.instance_id} (partitions {sorted(old.ready())}) at "
                f"t={t - scenario.stop_at:+.1f}s, exited in {took:.1f}s"
            )
            fresh = crew.start(old.instance_id)
            crew.live[i] = fresh
            await self.restarted(result, fresh, "rolling", crew, commits)
            covered = time.time()
            scenario.timeline.append(
                f"{fresh.instance_id} back, the group covering every partition at "
                f"t={covered - scenario.stop_at:+.1f}s (their logs)"
            )
            await self.serving(scenario, commits, crew, covered)
        await self.collect(scenario, fleet, deadlines, moved, alerts, seen_before, crew)
        for w in crew.every:
            for r in w.recoveries()[0]:
                if r.started >= scenario.stop_at and r not in result.recoveries:
                    scenario.recoveries.append(r)
                    result.recoveries.append(r)
        result.scenarios.append(scenario)
        self.print_scenario(scenario)

    async def serving(self, scenario: Scenario, commits: Commits, crew: Crew, after: float) -> None:
        """Note when every partition committed a batch again (what the logs cannot show: a
        partition said ready but stuck in a new recovery)."""
        if self.args.background_rate <= 0:
            return
        when, idle = await wait_serving(commits, crew, self.args.partitions, after, 120)
        scenario.timeline.append(
            f"every partition committing again at t={when - scenario.stop_at:+.1f}s"
            if when is not None
            else f"partitions {idle} committed nothing for 120 s after that"
        )

    def print_scenario(self, s: Scenario) -> None:
        echo(
            f"-- {s.name} ({s.side}, standby {s.standby}, {s.started_utc} UTC, load average "
            f"{s.load_before[0]:.2f})"
        )
        for line in s.timeline:
            echo(f"  {line}")
        echo(f"  {lateness_line(s)}")
        if s.other_alerts:
            echo(f"  other alerts of the fleet meanwhile: {s.other_alerts}")
        for r in s.recoveries:
            echo(f"  recovery on {r.worker}: {recovery_line(r)}")


# -- figures -----------------------------------------------------------------------------------


def recovery_line(r: Recovery) -> str:
    records = "" if r.records is None else f"{r.records:,} records, "
    if r.logged_records is not None:
        records += f"(the worker logged {r.logged_records:,} in {r.logged_s:.1f}s), "
    rate = "" if r.records_per_s is None else f" = {r.records_per_s:,.0f} records/s"
    if r.interrupted:
        rate += " (interrupted by a rebalance: no rate)"
    return (
        f"{records}{r.offsets:,} changelog offsets (records and markers) of {r.partitions} "
        f"changelog partitions read in {fmt_s(r.seconds)}{rate}"
    )


def fmt_s(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1f}s"


def pct(values: Sequence[float], q: float) -> str:
    return "-" if not values else f"{percentile(values, q):+.1f}s"


def lateness_line(s: Scenario) -> str:
    read, kafka = s.lateness("read"), s.lateness("kafka")
    moved, stayed = s.lateness("read", True), s.lateness("read", False)
    once = sum(1 for f in s.falls if f.raised == 1)
    return (
        f"{len(s.falls)} falls: {once} alerted exactly once, {s.missing} missing, "
        f"{s.duplicated} twice or more, {s.raised_again} falls of earlier scenarios raised "
        f"again; lateness after the deadline (read read_committed, "
        f"n={len(read)}): worst {pct(read, 100)}, p50 {pct(read, 50)}, p95 {pct(read, 95)}; "
        f"by the alert's Kafka timestamp: worst {pct(kafka, 100)}, p50 {pct(kafka, 50)}; "
        f"partitions that moved (n={len(moved)}): worst {pct(moved, 100)}, "
        f"stayed (n={len(stayed)}): worst {pct(stayed, 100)}"
    )


def summary_lines(runs: Sequence[SideRun]) -> list[str]:
    lines = [
        "| code | standby | scenario | falls | exactly once | missing | twice | worst late "
        "| p50 | p95 | worst (Kafka ts) | moved partitions: worst (n) | stayed: worst (n) "
        "| earlier falls raised again | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for s in run.scenarios:
            read, kafka = s.lateness("read"), s.lateness("kafka")
            moved, stayed = s.lateness("read", True), s.lateness("read", False)
            once = sum(1 for f in s.falls if f.raised == 1)
            lines.append(
                f"| {run.side} | {run.standby} | {s.name} | {len(s.falls)} | {once} "
                f"| {s.missing} | {s.duplicated} | {pct(read, 100)} | {pct(read, 50)} "
                f"| {pct(read, 95)} | {pct(kafka, 100)} | {pct(moved, 100)} ({len(moved)}) "
                f"| {pct(stayed, 100)} ({len(stayed)}) | {s.raised_again} "
                f"| {s.load_before[0]:.2f} |"
            )
    lines += [
        "",
        "| code | standby | lamps | RSS before → after (MiB, per worker) | B per active lamp "
        "| B per lamp held | changelog records (MB) | restarts: to recovered, ready, first batch "
        "(median, n) | restore records/s (median, min-max, n) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        rss = ", ".join(f"{r['rss_before_mib']:,.0f}→{r['rss_after_mib']:,.0f}" for r in run.rss)
        per_active = [r["bytes_per_lamp_active"] for r in run.rss]
        per_held = [r["bytes_per_lamp_held"] for r in run.rss]
        logs = run.changelogs.get("lamp_state", {})
        nights = run.changelogs.get("night_state", {})
        records = (
            f"{logs.get('records', 0):,} ({logs.get('bytes', 0) / 1e6:,.1f}) + nights "
            f"{nights.get('records', 0):,} ({nights.get('bytes', 0) / 1e6:,.1f})"
        )
        recovered = [r.to_recovered_s for r in run.restarts if r.to_recovered_s is not None]
        ready = [r.to_ready_s for r in run.restarts if r.to_ready_s is not None]
        batch = [r.to_first_batch_s for r in run.restarts if r.to_first_batch_s is not None]
        rates = [
            rate
            for r in run.recoveries
            if (rate := r.records_per_s) is not None and (r.records or 0) >= MIN_RESTORE_RECORDS
        ]
        lines.append(
            f"| {run.side} | {run.standby} | {run.lamps:,} | {rss} "
            f"| {median(per_active, '{:,.0f}')} | {median(per_held, '{:,.0f}')} | {records} "
            f"| {median(recovered, '{:.1f}s')}, {median(ready, '{:.1f}s')}, "
            f"{median(batch, '{:.1f}s')} (n={len(recovered)}, {len(ready)}, {len(batch)}) "
            f"| {spread(rates)} |"
        )
    return lines


def median(values: Sequence[float], form: str) -> str:
    return "-" if not values else form.format(statistics.median(values))


def spread(values: Sequence[float]) -> str:
    if not values:
        return "- (n=0)"
    return (
        f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f}, n={len(values)})"
    )


# -- main --------------------------------------------------------------------------------------


def sides(args: argparse.Namespace, workdir: Path) -> list[Code]:
    out = []
    if "old" in args.sides:
        commit, tree = extract(args.compare, workdir / "old")
        out.append(Code("old", tree, commit, worker_module(tree)))
    if "new" in args.sides:
        out.append(Code("new", REPO, "working tree", "cli"))
    for code in out:
        modules = imported_from(code)
        if any(not Path(path).is_relative_to(code.tree) for path in modules.values()):
            raise SystemExit(f"the {code.label} side would not run its own code: {modules}")
        echo(
            f"{code.label}: {code.revision} from {code.tree}; imports "
            + ", ".join(f"{name} from {path}" for name, path in modules.items())
        )
    return out


async def bench(args: argparse.Namespace, workdir: Path, runs: list[SideRun], b: Bench) -> None:
    codes = sides(args, workdir)
    for standby in args.standby:
        for code in codes:
            runs.append(await b.side_run(code, standby))


def main() -> None:  # noqa: PLR0912, PLR0915 - the options and the report
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lamps", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2, choices=(2, 3))
    parser.add_argument("--partitions", type=int, default=12, help="as the manifests' topics")
    parser.add_argument("--falls", type=int, default=24)
    parser.add_argument("--kill-before-s", type=float, default=15.0)
    parser.add_argument("--messages-per-lamp", type=int, default=4)
    parser.add_argument(
        "--standby", default="0", help="comma-separated standby replica counts to run, e.g. 0,1"
    )
    parser.add_argument("--scenarios", default="sigkill,rolling")
    parser.add_argument("--compare", help="git revision of the old code, run alternately")
    parser.add_argument(
        "--sides", help="old,new (the default with --compare), new (without), or old alone"
    )
    parser.add_argument("--background-rate", type=float, default=300.0, help="heartbeats/s")
    parser.add_argument("--session-timeout-s", type=float, help="the workers' (default: theirs)")
    parser.add_argument("--offline-after-s", type=float, default=86_400.0)
    parser.add_argument(
        "--worker-env", action="append", default=[], help="NAME=VALUE for every worker"
    )
    parser.add_argument(
        "--wait-s",
        type=float,
        default=600.0,
        help="for the alerts after the last deadline, for the survivors to cover the partitions",
    )
    parser.add_argument("--settle-s", type=float, default=10.0, help="for duplicates")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--keep-topics", action="store_true")
    args = parser.parse_args()
    args.standby = [int(s) for s in args.standby.split(",") if s.strip()]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if set(args.scenarios) - {"sigkill", "rolling"}:
        parser.error("--scenarios: sigkill, rolling")
    args.sides = (args.sides or ("old,new" if args.compare else "new")).split(",")
    if set(args.sides) - {"old", "new"} or ("old" in args.sides and not args.compare):
        parser.error("--sides: old and/or new; old needs --compare REF")
    if args.kill_before_s >= FALL_CONFIRM_S:
        parser.error("--kill-before-s must be under the 30 s confirmation")

    def on_term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    now = datetime.now(UTC)
    out_path: Path = args.out or RESULTS / f"failover-{now:%Y%m%dT%H%M}Z.json"
    workdir = Path(tempfile.mkdtemp(prefix="failover-bench-"))
    command = shlex.join([os.path.relpath(sys.executable), "-m", MODULE, *sys.argv[1:]])
    load = os.getloadavg()
    header = [
        f"machine: {platform.node()}, {os.cpu_count()} cores ({cpu_model()}), Python "
        f"{platform.python_version()}, {platform.platform()}",
        f"date: {now:%Y-%m-%d %H:%M} UTC; command: {command}",
        f"load average at the start: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min)",
        f"working tree's worker code: {code_fingerprint()}; work files in {workdir}",
    ]
    for line in header:
        echo(line)
    base = load_settings()
    runs: list[SideRun] = []
    b = Bench(args, base, workdir)
    interrupted = False
    started = time.monotonic()
    try:
        asyncio.run(bench(args, workdir, runs, b))
    except KeyboardInterrupt:
        interrupted = True
        echo("interrupted: stopping the workers, deleting the topics")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for proc in list(CHILDREN):
            stop(proc, 30)
        if b.prefixes and not args.keep_topics:
            asyncio.run(delete_topics(base, b.prefixes))
    load = os.getloadavg()
    lines = [
        "",
        "## summary",
        *header,
        f"load average at the end: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}; "
        f"{time.monotonic() - started:.0f}s in all",
    ]
    if runs:
        lines += summary_lines(runs)
    for run in runs:
        if run.error:
            lines.append(f"ERROR {run.side} standby {run.standby}: {run.error}")
        for crash in run.crashes:
            lines.append(f"crash ({run.side}, standby {run.standby}): {crash}")
        for log, problems in run.problems.items():
            for problem in problems[:8]:
                lines.append(f"log {log}: {problem}")
    echo("\n".join(lines))
    if runs:
        raw = {
            "command": command,
            "date_utc": f"{now:%Y-%m-%d %H:%M}",
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "interrupted": interrupted,
            "sides": {r.side: {"revision": r.revision, "code": fingerprint_of(r)} for r in runs},
            "runs": [run_json(r) for r in runs],
            "summary": lines,
        }
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(raw, indent=1, ensure_ascii=False) + "\n")
        echo(f"raw results: {os.path.relpath(out_path, Path.cwd())}")
    if interrupted:
        sys.exit(130)


def fingerprint_of(run: SideRun) -> str:
    return code_fingerprint() if run.revision == "working tree" else run.revision[:12]


def run_json(run: SideRun) -> dict[str, Any]:
    out = asdict(run)
    out["recoveries"] = [r.as_json() for r in run.recoveries]
    out["restarts"] = [
        {
            **asdict(r),
            "to_recovered_s": r.to_recovered_s,
            "to_ready_s": r.to_ready_s,
            "to_first_batch_s": r.to_first_batch_s,
        }
        for r in run.restarts
    ]
    return out


if __name__ == "__main__":
    main()
