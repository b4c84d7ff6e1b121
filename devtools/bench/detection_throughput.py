"""Throughput of one detection worker against faust's per-event path, and its deadline latency.

Runs against the local Kafka (``make stack``), on topics of its own (a unique topic prefix,
deleted at the end unless ``--keep-topics``). One topic of ``lamp.messages.v1`` is filled with
``--messages`` small JSON lamp messages (a mix over ``--lamps`` lamps: postures, motion,
heartbeats, temperatures, a few fall suspicions, about 1 % duplicates), then each mode reads
the whole topic with a fresh consumer group, in a process of its own:

- raw: an aiokafka ``getmany`` loop parsing each value with orjson (the ceiling);
- faust-stream: a minimal faust app, an agent doing ``orjson.loads(value)`` per event;
- faust-table: the same plus one table write per event (capped: ``--table-cap-s`` seconds or
  ``--table-cap-messages`` messages after its first message, whichever comes first);
- batch-path: the real worker (``python -m cli worker``), timed from its "partitions
  ready" log line until its committed offsets reach the end of the topic.

Then the latency phase: a fresh worker, caught up on fresh topics, while a producer process
writes live at ``--rate`` msg/s for ``--live-s`` seconds, among which every ``--silent-every``
seconds a silent lamp sends one ``fall_suspected`` (confidence 0.9) and nothing more; its
deadline is its send time + 30 s. ``alerts.v1`` is tailed read_committed, and the arrival of
each silent lamp's fall alert minus its deadline is reported.

    .venv/bin/python -m devtools.bench.detection_throughput [--messages 300000] [--lamps 2000]
        [--rate 20000] [--live-s 60] [--drain-s 120]
        [--profile]      # also run the batch path under cProfile and print where the time goes
        [--modes none]   # the latency phase alone (--live-s 0: the throughput modes alone)
        [--metrics-port 19199]  # live phase: serve the worker's metrics, print its histograms

After the batch path, its changelog is read back (records and bytes of state written). The
worker's code is fingerprinted at the start and the end: a change during the run is reported.

It prints what it measured; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import platform
import pstats
import random
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from devtools.bench.probes import AlertTail, Offsets, cpu_model, ready_at
from pipeline import clients
from pipeline.settings import Settings, load_settings
from pipeline.topics import LAMP_MESSAGES, ensure_topics, topic_name

REPO = Path(__file__).resolve().parents[2]
# This script's children: run as a module from the checkout (spawn's working folder), so that
# `devtools` imports without being installed.
CHILD = [sys.executable, "-m", "devtools.bench.detection_throughput"]
FALL_CONFIRM_MS = 30_000
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
CHILDREN: list[subprocess.Popen[bytes]] = []


def with_prefix(settings: Settings, prefix: str) -> Settings:
    kafka = settings.kafka.model_copy(update={"topic_prefix": prefix})
    return settings.model_copy(update={"kafka": kafka})


def partition_of(key: bytes, partitions: int) -> int:
    """The partition aiokafka's (and Java's) default partitioner gives ``key``."""
    from aiokafka.partitioner import murmur2

    return int((murmur2(key) & 0x7FFFFFFF) % partitions)


# -- the lamp messages -----------------------------------------------------------------------


@dataclass
class Lamp:
    lamp_id: str
    key: bytes
    partition: int
    events: list[tuple[str, bytes]]
    telemetry: list[tuple[str, bytes]]
    seq: int = 0
    last: tuple[bytes, list[tuple[str, bytes]]] | None = None


class Mix:
    """Protocol-shaped messages over ``lamps`` lamps (100 per site), in a realistic mix."""

    # cumulative weights: posture, motion, heartbeat, temperature, fall_suspected (0.2 %)
    KINDS = (("posture", 0.40), ("motion", 0.75), ("heartbeat", 0.874), ("temperature", 0.998))
    POSTURES = (
        ("lying", "bed", 0.30),
        ("sitting", "room", 0.60),
        ("standing", "room", 0.85),
        ("absent", "room", 0.99),
        ("lying", "room", 0.996),
        ("on_floor", "floor", 1.0),
    )
    ZONES = ("bed", "room", "bathroom", "entrance", "room", "room")
    DUPLICATES = 0.01

    def __init__(self, lamps: int, partitions: int, seed: int = 4) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - test data, not secrets
        self.lamps: list[Lamp] = []
        for i in range(lamps):
            site, lamp_id = f"bench-{i // 100:03d}", f"L-{i:06d}"
            key = lamp_id.encode()
            self.lamps.append(
                Lamp(
                    lamp_id,
                    key,
                    partition_of(key, partitions),
                    [("mqtt.topic", f"lamps/{site}/{lamp_id}/events".encode())],
                    [("mqtt.topic", f"lamps/{site}/{lamp_id}/telemetry".encode())],
                )
            )

    def next(self, now_ms: int) -> tuple[Lamp, bytes, list[tuple[str, bytes]]]:
        rng = self.rng
        lamp = self.lamps[rng.randrange(len(self.lamps))]
        if lamp.last is not None and rng.random() < self.DUPLICATES:
            return lamp, *lamp.last  # QoS 1 redelivery: the very same bytes
        r = rng.random()
        kind = next((k for k, bound in self.KINDS if r < bound), "fall_suspected")
        payload: dict[str, Any] = {
            "v": 1,
            "lamp_id": lamp.lamp_id,
            "seq": lamp.seq,
            "ts": now_ms,
            "type": kind,
        }
        lamp.seq += 1
        headers = lamp.events
        if kind == "posture":
            r = rng.random()
            posture, zone = next((p, z) for p, z, bound in self.POSTURES if r < bound)
            payload["posture"] = posture
            payload["zone"] = zone
            payload["confidence"] = round(rng.uniform(0.6, 0.99), 2)
            payload["persons"] = 0 if posture == "absent" else (2 if rng.random() < 0.05 else 1)
        elif kind == "motion":
            payload["zone"] = self.ZONES[rng.randrange(len(self.ZONES))]
            payload["level"] = rng.randrange(101)
        elif kind == "heartbeat":
            headers = lamp.telemetry
            payload["fw"] = "2.4.1"
            payload["uptime_s"] = 3600 + lamp.seq
            payload["rssi"] = -rng.randrange(40, 80)
        elif kind == "temperature":
            headers = lamp.telemetry
            payload["celsius"] = round(rng.gauss(22.0, 1.5), 1)
            payload["humidity"] = round(rng.uniform(30, 60), 1)
        else:
            payload["confidence"] = round(rng.uniform(0.3, 0.95), 2)
            payload["zone"] = "floor"
        value = orjson.dumps(payload)
        lamp.last = (value, headers)
        return lamp, value, headers


class BatchSender:
    """Appends records to one batch per partition and sends them with ``send_batch``."""

    def __init__(self, producer: Any, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self.batches: dict[int, Any] = {}
        self.pending: list[asyncio.Future[Any]] = []

    async def append(
        self, partition: int, key: bytes, value: bytes, headers: Any, ts_ms: int
    ) -> None:
        batch = self.batches.get(partition)
        if batch is None:
            batch = self.batches[partition] = self.producer.create_batch()
        if batch.append(key=key, value=value, timestamp=ts_ms, headers=headers) is None:
            await self._send(partition, batch)
            batch = self.batches[partition] = self.producer.create_batch()
            batch.append(key=key, value=value, timestamp=ts_ms, headers=headers)

    async def _send(self, partition: int, batch: Any) -> None:
        batch.close()
        self.pending.append(await self.producer.send_batch(batch, self.topic, partition=partition))

    async def flush(self, max_pending: int = 0) -> None:
        batches, self.batches = self.batches, {}
        for partition, batch in batches.items():
            await self._send(partition, batch)
        while len(self.pending) > max_pending:
            done, _ = await asyncio.wait(self.pending, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                future.result()  # raise a failed delivery
            self.pending = [f for f in self.pending if not f.done()]


async def prefill(settings: Settings, count: int, lamps: int) -> tuple[float, int]:
    """Write ``count`` messages as fast as the producer goes; returns (seconds, value bytes)."""
    topic = topic_name(settings, LAMP_MESSAGES)
    producer = clients.producer(settings, linger_ms=5, max_batch_size=1 << 20)
    await producer.start()
    started, size = time.monotonic(), 0
    try:
        mix = Mix(lamps, settings.kafka.topic_partitions)
        sender = BatchSender(producer, topic)
        for i in range(count):
            now_ms = int(time.time() * 1000)
            lamp, value, headers = mix.next(now_ms)
            size += len(value)
            await sender.append(lamp.partition, lamp.key, value, headers, now_ms)
            if i % 20_000 == 19_999:
                await sender.flush(max_pending=50)
        await sender.flush()
    finally:
        await producer.stop()
    return time.monotonic() - started, size


# -- the modes, each in a process of its own (``--child``) -----------------------------------


def write_result(path: str, result: dict[str, Any]) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(result))
    tmp.rename(path)


async def child_raw(spec: dict[str, Any]) -> None:
    settings = with_prefix(load_settings(), spec["prefix"])
    consumer = clients.consumer(
        settings, topic_name(settings, LAMP_MESSAGES), group_id=spec["group"]
    )
    await consumer.start()
    count, target, first, skip = 0, spec["count"], 0.0, 0
    loads = orjson.loads
    try:
        while count < target:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in batch.values():
                for record in records:
                    loads(record.value)
                count += len(records)
            if not first and count:
                # The clock starts when the first fetch is parsed: the rate counts what follows.
                first, skip = time.time(), count
        result = {"count": count, "skip": skip, "first": first, "last": time.time()}
        write_result(spec["result"], result)
    finally:
        await consumer.stop()


def child_faust(spec: dict[str, Any], with_table: bool) -> None:
    import faust

    settings = with_prefix(load_settings(), spec["prefix"])
    app = faust.App(
        spec["group"],
        broker=";".join(f"kafka://{s}" for s in settings.kafka.bootstrap_list),
        web_enabled=False,
        value_serializer="raw",
        key_serializer="raw",
        table_key_serializer="raw",
        table_value_serializer="raw",
        store="memory://",
        autodiscover=False,
        datadir=spec["datadir"],
        topic_partitions=settings.kafka.topic_partitions,
        consumer_auto_offset_reset="earliest",
    )
    topic = app.topic(topic_name(settings, LAMP_MESSAGES), key_type=bytes, value_type=bytes)
    target: int = spec["count"]
    cap_s: float = spec.get("cap_s") or float("inf")
    cap_n: int = spec.get("cap_messages") or target
    state: dict[str, Any] = {"count": 0, "first": 0.0, "done": False}

    def finish(now: float, reason: str) -> None:
        state["done"] = True
        result = {
            "count": state["count"],
            "skip": 1,  # the clock starts at the first message
            "first": state["first"],
            "last": now,
            "why": reason,
        }
        write_result(spec["result"], result)

    if with_table:
        table = app.Table(
            "lamps",
            key_type=bytes,
            value_type=bytes,
            partitions=settings.kafka.topic_partitions,
        )

        @app.agent(topic)
        async def with_writes(stream: Any) -> None:
            loads = orjson.loads
            async for key, value in stream.items():
                if state["done"]:
                    continue
                now = time.time()
                if not state["first"]:
                    state["first"] = now
                table[key] = loads(value)["type"].encode()
                state["count"] += 1
                if state["count"] >= target:
                    finish(now, "all messages")
                elif state["count"] >= cap_n:
                    finish(now, f"cap of {cap_n} messages")
                elif now - state["first"] >= cap_s:
                    finish(now, f"cap of {cap_s:g} s")

    else:

        @app.agent(topic)
        async def parse(stream: Any) -> None:
            loads = orjson.loads
            async for value in stream:
                if state["done"]:
                    continue
                if not state["first"]:
                    state["first"] = time.time()
                loads(value)
                state["count"] += 1
                if state["count"] >= target:
                    finish(time.time(), "all messages")

    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.execute_from_commandline()


async def child_live(spec: dict[str, Any]) -> None:
    """Produce the mix at ``rate`` msg/s for ``seconds``, with silent lamps among it."""
    settings = with_prefix(load_settings(), spec["prefix"])
    partitions = settings.kafka.topic_partitions
    producer = clients.producer(settings, linger_ms=5, max_batch_size=1 << 20)
    await producer.start()
    mix = Mix(spec["lamps"], partitions, seed=7)
    sender = BatchSender(producer, topic_name(settings, LAMP_MESSAGES))
    rate, seconds = spec["rate"], spec["seconds"]
    silent: list[tuple[str, int]] = []
    started = time.time()
    next_silent, silent_until = started + 1.0, started + spec["silent_until"]
    sent = 0
    try:
        while True:
            now = time.time()
            elapsed = now - started
            if elapsed >= seconds:
                break
            if now >= next_silent and now < silent_until:
                lamp_id = f"S-{len(silent):05d}"
                key, now_ms = lamp_id.encode(), int(now * 1000)
                payload = {
                    "v": 1,
                    "lamp_id": lamp_id,
                    "seq": 0,
                    "ts": now_ms,
                    "type": "fall_suspected",
                    "confidence": 0.9,
                    "zone": "floor",
                }
                headers = [("mqtt.topic", f"lamps/bench-silent/{lamp_id}/events".encode())]
                await sender.append(
                    partition_of(key, partitions), key, orjson.dumps(payload), headers, now_ms
                )
                await sender.flush(max_pending=10_000)
                silent.append((lamp_id, now_ms))
                sent += 1
                next_silent += spec["silent_every"]
            due = min(int(rate * elapsed) - sent, 10_000)
            if due > 0:
                now_ms = int(now * 1000)
                for _ in range(due):
                    lamp, value, headers = mix.next(now_ms)
                    await sender.append(lamp.partition, lamp.key, value, headers, now_ms)
                sent += due
                await sender.flush(max_pending=200)
            await asyncio.sleep(0.005)
        elapsed = time.time() - started
        await sender.flush()
    finally:
        await producer.stop()
    result = {"sent": sent, "seconds": elapsed, "silent": silent, "cpu": time.process_time()}
    write_result(spec["result"], result)


def child_main(mode: str, spec: dict[str, Any]) -> None:
    if mode == "raw":
        asyncio.run(child_raw(spec))
    elif mode in ("faust-stream", "faust-table"):
        child_faust(spec, with_table=mode == "faust-table")
    elif mode == "live":
        asyncio.run(child_live(spec))
    else:
        raise SystemExit(f"unknown child mode {mode}")


# -- the parent: processes, offsets, alerts --------------------------------------------------


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv, cwd=REPO, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT
        )
    CHILDREN.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 60, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc in CHILDREN:
        CHILDREN.remove(proc)


def tail(log: Path, lines: int = 20) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


async def wait_result(
    proc: subprocess.Popen[bytes], path: Path, log: Path, timeout_s: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proc.args!r} gave no result in {timeout_s:.0f}s:\n{tail(log)}")
        await asyncio.sleep(0.2)
    result: dict[str, Any] = json.loads(path.read_text())
    return result


async def run_child(
    mode: str, spec: dict[str, Any], workdir: Path, timeout_s: float
) -> dict[str, Any]:
    result = workdir / f"{mode}.json"
    log = workdir / f"{mode}.log"
    spec = {**spec, "result": str(result), "datadir": str(workdir / f"{mode}-data")}
    started = time.time()
    proc = spawn([*CHILD, "--child", mode, "--spec", json.dumps(spec)], log)
    try:
        out = await wait_result(proc, result, log, timeout_s)
    finally:
        stop(proc)
    out["started"] = started
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux), or NaN."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_env(prefix: str, app_id: str, metrics_port: int = 0) -> dict[str, str]:
    return {
        "VEILLEUSE_KAFKA__TOPIC_PREFIX": prefix,
        "VEILLEUSE_DETECTION__APP_ID": app_id,
        "VEILLEUSE_DETECTION__METRICS_PORT": str(metrics_port),
        "VEILLEUSE_DETECTION__LIVE_PORT": "0",
        "VEILLEUSE_LOG_FORMAT": "json",
        "VEILLEUSE_LOG_LEVEL": "INFO",
    }


def start_worker(
    prefix: str, app_id: str, log: Path, profile: Path | None = None, metrics_port: int = 0
) -> subprocess.Popen[bytes]:
    prefix_argv = (
        [sys.executable, "-m", "cProfile", "-o", str(profile)] if profile else [sys.executable]
    )
    argv = [*prefix_argv, "-m", "cli", "worker", "--instance-id", "bench"]
    print(f"starting the worker of {app_id}, code {code_fingerprint()}", flush=True)
    return spawn(argv, log, worker_env(prefix, app_id, metrics_port))


async def wait_ready(
    proc: subprocess.Popen[bytes], log: Path, partitions: int, timeout_s: float = 120
) -> float:
    """Wall time (from the worker's own log) at which it had every partition ready."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        at = ready_at(log, partitions)
        if at is not None:
            return at
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}:\n{tail(log)}")
        await asyncio.sleep(0.1)
    raise TimeoutError(f"worker not ready in {timeout_s:.0f}s:\n{tail(log)}")


def log_problems(log: Path) -> list[str]:
    """Distinct warnings and errors of a worker's log (and any non-JSON output)."""
    seen: dict[str, int] = {}
    text = log.read_text(errors="replace") if log.exists() else ""
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if isinstance(entry, dict):
            if entry.get("level") not in ("warning", "error", "critical"):
                continue
            msg = f"{entry.get('level')} {entry.get('logger')}: {str(entry.get('msg'))[:160]}"
            if entry.get("exc"):
                msg += " | " + str(entry["exc"]).strip().splitlines()[-1][:160]
        else:
            text = ANSI.sub("", line).strip()
            if text in ("", "OK ^"):  # faust's start-up spinner
                continue
            msg = f"(not JSON) {text[:200]}"
        seen[msg] = seen.get(msg, 0) + 1
    return [f"{count} x {msg}" for msg, count in seen.items()]


async def batch_path(
    settings: Settings,
    offsets: Offsets,
    total: int,
    workdir: Path,
    *,
    name: str,
    profile: Path | None = None,
) -> dict[str, Any]:
    prefix = settings.kafka.topic_prefix
    app_id = f"{prefix}{name}"
    log = workdir / f"{name}.log"
    started = time.time()
    proc = start_worker(prefix, app_id, log, profile)
    try:
        ready = await wait_ready(proc, log, settings.kafka.topic_partitions)
        cpu_at_ready = cpu_seconds(proc.pid)
        series: list[tuple[float, int]] = []
        deadline = time.monotonic() + 900
        while True:
            done = await offsets.committed(app_id)
            now = time.time()
            series.append((now, done))
            if done >= total:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}:\n{tail(log)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker at {done}/{total} after 900s:\n{tail(log)}")
            await asyncio.sleep(0.1)
        cpu = cpu_seconds(proc.pid) - cpu_at_ready
    finally:
        # SIGINT: the profiler (if any) writes its file when the worker returns.
        stop(proc, sig=signal.SIGINT if profile else signal.SIGTERM)
    first_commit = next(t for t, n in series if n > 0)
    end = series[-1][0]
    return {
        "count": total,
        "started": started,
        "ready": ready,
        "first_commit": first_commit,
        "last": end,
        "cpu": cpu,
        "log": str(log),
        "problems": log_problems(log),
    }


async def changelog_stats(settings: Settings, topic: str, timeout_s: float = 60) -> dict[str, int]:
    """Records and value bytes of a changelog (read_committed), and its commit markers."""
    from aiokafka import TopicPartition

    consumer = clients.consumer(settings, group_id=None, isolation_level="read_committed")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.kafka.topic_partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records = size = 0
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for got in batch.values():
                records += len(got)
                size += sum(len(r.value or b"") for r in got)
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                break
        end = sum(ends.values())
        return {"records": records, "bytes": size, "end": end, "markers": end - records}
    finally:
        await consumer.stop()


async def latency_phase(base: Settings, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    prefix = f"bench{uuid.uuid4().hex[:6]}l."
    settings = with_prefix(base, prefix)
    await ensure_topics(settings)
    app_id = f"{prefix}detection"
    log = workdir / "latency-worker.log"
    proc = start_worker(prefix, app_id, log, metrics_port=args.metrics_port)
    out: dict[str, Any] = {"prefix": prefix, "log": str(log)}
    try:
        await wait_ready(proc, log, settings.kafka.topic_partitions)
        await asyncio.sleep(2)  # caught up on the empty topic, ticking
        async with (
            Offsets(settings, topic_name(settings, LAMP_MESSAGES)) as offsets,
            AlertTail(settings, lambda key: key.startswith(b"S-")) as alerts,
        ):
            spec = {
                "prefix": prefix,
                "lamps": args.lamps,
                "rate": args.rate,
                "seconds": args.live_s,
                "silent_every": args.silent_every,
                "silent_until": args.live_s - FALL_CONFIRM_MS / 1000 - 2,
                "result": str(workdir / "live.json"),
            }
            live_log = workdir / "live.log"
            load_started = time.time()
            worker_cpu = cpu_seconds(proc.pid)
            producer = spawn([*CHILD, "--child", "live", "--spec", json.dumps(spec)], live_log)
            series: list[tuple[float, int, int]] = []
            try:
                while producer.poll() is None:
                    series.append(
                        (time.time(), await offsets.end(), await offsets.committed(app_id))
                    )
                    if proc.poll() is not None:
                        raise RuntimeError(f"worker exited:\n{tail(log)}")
                    await asyncio.sleep(1.0)
                live = await wait_result(producer, Path(spec["result"]), live_log, 60)
            finally:
                stop(producer)
            load_ended = time.time()
            worker_cpu = cpu_seconds(proc.pid) - worker_cpu
            if args.metrics_port:
                out["metrics"] = worker_metrics(args.metrics_port)
            end = await offsets.end()
            lag_at_end = end - await offsets.committed(app_id)
            # Let the worker drain what the load left (at most --drain-s), and the last alerts
            # arrive: the silent lamps' deadlines all fell while the load ran.
            silent = [(lamp_id, ts / 1000) for lamp_id, ts in live["silent"]]
            drain_deadline = time.monotonic() + args.drain_s
            caught_up = None
            while time.monotonic() < drain_deadline and proc.poll() is None:
                done = await offsets.committed(app_id)
                if done >= end and caught_up is None:
                    caught_up = time.time()
                arrived = all(alerts.fall_arrival(lamp) is not None for lamp, _ in silent)
                if arrived and caught_up is not None:
                    break
                if caught_up is not None and time.time() - caught_up > 10:
                    break  # caught up 10 s ago: what has not arrived will not
                await asyncio.sleep(0.2)
            done = await offsets.committed(app_id)
            gave_up = time.time()
            latencies, missing = [], []
            for lamp_id, sent in silent:
                arrival = alerts.fall_arrival(lamp_id)
                deadline = sent + FALL_CONFIRM_MS / 1000
                if arrival is not None:
                    latencies.append(arrival - deadline)
                else:
                    missing.append(gave_up - deadline)  # a lower bound of its latency
            # Worker rate while the load ran: committed offsets from 5 s in to the load's end.
            window = [s for s in series if s[0] >= load_started + 5] or series
            first, last = window[0], window[-1]
            out.update(
                {
                    "sent": live["sent"],
                    "producer_cpu": live["cpu"],
                    "worker_cpu": worker_cpu / (load_ended - load_started),
                    "seconds": live["seconds"],
                    "expected": len(silent),
                    "received": len(latencies),
                    "latencies": latencies,
                    "missing": missing,
                    "worker_rate": (last[2] - first[2]) / max(last[0] - first[0], 1e-9),
                    "worker_window_s": last[0] - first[0],
                    "lag_at_end": lag_at_end,
                    "caught_up_after_s": None if caught_up is None else caught_up - load_ended,
                    "final_lag": end - done,
                    "series": series,
                    "alerts_total": alerts.total,
                }
            )
    finally:
        stop(proc)
    out["problems"] = log_problems(log)
    return out


def print_profile(path: Path, top: int) -> None:
    for order in ("tottime", "cumulative"):
        buffer = io.StringIO()
        stats = pstats.Stats(str(path), stream=buffer)
        stats.strip_dirs().sort_stats(order).print_stats(top)
        text = buffer.getvalue()
        start = text.find("   ncalls")
        print(f"\n-- cProfile of the batch-path worker, top {top} by {order} --")
        print(text[start:].rstrip() if start >= 0 else text)


WORKER_CODE = (
    "agents/runtime/streaming.py",
    "agents/runtime/worker.py",
    "agents/eventtime.py",
    "agents",
)


def code_fingerprint() -> str:
    """A short hash of the worker's code and the time of its newest file: the worker is
    measured as it was when it started (other work may be changing it)."""
    files = sorted(
        f
        for name in WORKER_CODE
        for f in ([REPO / name] if name.endswith(".py") else (REPO / name).rglob("*.py"))
    )
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.read_bytes())
    newest = max(f.stat().st_mtime for f in files)
    when = datetime.fromtimestamp(newest, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{digest.hexdigest()[:12]} (newest file {when} UTC)"


async def delete_topics(settings: Settings, prefixes: list[str]) -> None:
    admin = clients.admin_client(settings)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if any(t.startswith(p) for p in prefixes)]
        if names:
            await admin.delete_topics(names)
        print(f"deleted {len(names)} topics with the prefixes {', '.join(prefixes)}")
    finally:
        await admin.close()


Row = tuple[str, str, str, str, str]


def rate_row(label: str, count: int, seconds: float, note: str) -> Row:
    return (label, f"{count:,}", f"{seconds:.2f}", f"{count / seconds:,.0f}", note)


async def faust_and_raw(
    args: argparse.Namespace, prefix: str, total: int, workdir: Path, rows: list[Row]
) -> dict[str, float]:
    rates: dict[str, float] = {}
    for mode in ("raw", "faust-stream", "faust-table"):
        if mode not in args.modes:
            continue
        spec: dict[str, Any] = {"prefix": prefix, "group": f"{prefix}{mode}", "count": total}
        if mode == "faust-table":
            spec.update(cap_s=args.table_cap_s, cap_messages=args.table_cap_messages)
        r = await run_child(mode, spec, workdir, timeout_s=args.table_cap_s + 600)
        seconds = r["last"] - r["first"]
        rates[mode] = (r["count"] - r["skip"]) / seconds
        note = (
            f"clock from the first record parsed, {r['count'] - r['skip']:,} after it; "
            f"{r['last'] - r['started']:.1f}s incl. start-up"
        )
        if r.get("why") and r["why"] != "all messages":
            note += f"; stopped at the {r['why']}"
        rows.append((mode, f"{r['count']:,}", f"{seconds:.2f}", f"{rates[mode]:,.0f}", note))
        print(f"{mode}: {r['count']:,} in {seconds:.2f}s = {rates[mode]:,.0f} msg/s ({note})")
    return rates


async def batch_modes(
    args: argparse.Namespace,
    settings: Settings,
    offsets: Offsets,
    total: int,
    workdir: Path,
    *,
    rows: list[Row],
) -> dict[str, float]:
    rates: dict[str, float] = {}
    if "batch-path" in args.modes:
        r = await batch_path(settings, offsets, total, workdir, name="batch-path")
        seconds = r["last"] - r["ready"]
        rates["batch-path"] = total / seconds
        steady = total / (r["last"] - r["first_commit"])
        note = (
            f"from 'partitions ready' to all offsets committed; start-up "
            f"{r['ready'] - r['started']:.1f}s; from its first commit: {steady:,.0f}/s; "
            f"worker CPU {r['cpu']:.1f}s = {r['cpu'] / seconds:.2f} cores, "
            f"{r['cpu'] / total * 1e6:.0f} µs per event"
        )
        rows.append(rate_row("batch-path", total, seconds, note))
        print(
            f"batch-path: {total:,} in {seconds:.2f}s = {rates['batch-path']:,.0f} "
            f"events/s ({note})"
        )
        print(f"batch-path worker log: {r['log']}")
        for problem in r["problems"]:
            print(f"  log: {problem}")
        topic = f"{settings.kafka.topic_prefix}batch-path-lamp_state-changelog"
        c = await changelog_stats(settings, topic)
        print(
            f"batch-path changelog: {c['records']:,} state records, {c['bytes'] / 1e6:,.1f} MB "
            f"of values ({c['bytes'] / max(c['records'], 1):,.0f} B each) for {total:,} input "
            f"records of {args.input_bytes / 1e6:,.1f} MB; {c['markers']:,} transaction markers"
        )
        rows.append(
            (
                "batch-path changelog",
                f"{c['records']:,}",
                "",
                "",
                f"state records written ({c['bytes'] / 1e6:,.0f} MB; input "
                f"{args.input_bytes / 1e6:,.0f} MB); {c['markers']:,} commit markers",
            )
        )
    if args.profile:
        profile = workdir / "worker.prof"
        r = await batch_path(
            settings, offsets, total, workdir, name="batch-profiled", profile=profile
        )
        seconds = r["last"] - r["ready"]
        print(
            f"batch-path under cProfile: {total:,} in {seconds:.2f}s = "
            f"{total / seconds:,.0f} events/s (profile {profile})"
        )
        deadline = time.monotonic() + 30
        while not profile.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        if profile.exists():
            print_profile(profile, args.profile_top)
        else:
            print("no profile written (did the worker exit cleanly?)")
    return rates


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def report_latency(latency: dict[str, Any], args: argparse.Namespace, rows: list[Row]) -> None:
    achieved = latency["sent"] / latency["seconds"]
    print(
        f"live producer: {latency['sent']:,} messages in {latency['seconds']:.1f}s = "
        f"{achieved:,.0f} msg/s, using {latency['producer_cpu']:.1f} CPU-s; the worker used "
        f"{latency['worker_cpu']:.2f} cores during the load"
    )
    caught_up = latency["caught_up_after_s"]
    print(
        f"worker during the load: {latency['worker_rate']:,.0f} events/s "
        f"(committed offsets over {latency['worker_window_s']:.0f}s); lag when the load "
        f"stopped: {latency['lag_at_end']:,} records; caught up "
        + ("never" if caught_up is None else f"{caught_up:.1f}s after it")
        + f" (final lag {latency['final_lag']:,})"
    )
    t0 = latency["series"][0][0] if latency["series"] else 0.0
    for t, end, done in latency["series"][::5]:
        print(f"  t+{t - t0:5.1f}s produced {end:>9,} committed {done:>9,} lag {end - done:>8,}")
    summary = latency_summary(latency)
    print(f"deadline→alert: {summary}")
    if latency.get("metrics"):
        print_metrics(latency["metrics"])
    print(f"latency worker log: {latency['log']}")
    for problem in latency["problems"]:
        print(f"  log: {problem}")
    rows.append(
        (
            "live producer",
            f"{latency['sent']:,}",
            f"{latency['seconds']:.1f}",
            f"{achieved:,.0f}",
            f"messages written per second (target {args.rate:,})",
        )
    )
    rows.append(
        (
            "batch-path under live load",
            "",
            f"{latency['worker_window_s']:.0f}",
            f"{latency['worker_rate']:,.0f}",
            f"committed offsets; lag {latency['lag_at_end']:,} when the load stopped",
        )
    )
    rows.append(("deadline→alert under load", "", "", "", summary))


def worker_metrics(port: int) -> dict[str, list[tuple[float, float]] | float]:
    """The worker's histograms (cumulative buckets) and counters, by metric name."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                le = float(sample.labels["le"])
                out.setdefault(sample.name[: -len("_bucket")], []).append((le, sample.value))
            elif sample.name.endswith(("_sum", "_count")):
                out[sample.name] = sample.value
    return out


def print_metrics(metrics: dict[str, Any]) -> None:
    def bound(name: str, q: float) -> str:
        buckets = sorted(metrics[name])
        total = buckets[-1][1]
        le = next(le for le, count in buckets if count >= q * total)
        return f"≤ {le:g}"

    print("worker metrics at the end of the load (histogram buckets):")
    for name, unit in (
        ("veilleuse_worker_batch_records", "records"),
        ("veilleuse_worker_batch_seconds", "s"),
        ("veilleuse_worker_commit_seconds", "s"),
        ("veilleuse_worker_deadline_to_alert_seconds", "s"),
    ):
        count = metrics.get(f"{name}_count", 0.0)
        if not count:
            continue
        mean = metrics[f"{name}_sum"] / count
        print(
            f"  {name}: {count:,.0f} observations, mean {mean:,.3f} {unit}, "
            f"p50 {bound(name, 0.5)}, p99 {bound(name, 0.99)}"
        )


def latency_summary(latency: dict[str, Any]) -> str:
    """p50/p99/max over every silent lamp; one whose alert never came counts as a lower bound
    (the time waited), shown with ≥."""
    values = sorted(
        [(v, False) for v in latency["latencies"]] + [(v, True) for v in latency["missing"]]
    )
    if not values:
        return "no silent lamp"

    def pick(q: float) -> str:
        value, bound = values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]
        return ("≥ " if bound else "") + ms(value)

    return (
        f"{latency['received']} of {latency['expected']} silent-lamp falls arrived; "
        f"p50 {pick(0.5)}, p99 {pick(0.99)}, max {pick(1.0)}, min {pick(0.0)}"
    )


async def run(args: argparse.Namespace, workdir: Path, prefixes: list[str]) -> None:
    base = load_settings()
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    prefixes.append(prefix)
    settings = with_prefix(base, prefix)
    await ensure_topics(settings)
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    print(
        f"machine: {platform.node()}, {os.cpu_count()} cores ({cpu_model()}), "
        f"Python {platform.python_version()}, {platform.platform()}"
    )
    print(f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; command: {command}")
    fingerprint = code_fingerprint()
    print(f"worker code: {fingerprint}")
    print(
        f"topics: prefix {prefix!r}, {settings.kafka.topic_partitions} partitions; "
        f"work files in {workdir}"
    )
    rows: list[Row] = []
    rates: dict[str, float] = {}
    if args.modes or args.profile:
        fill_s, args.input_bytes = await prefill(settings, args.messages, args.lamps)
        print(
            f"prefill: {args.messages:,} messages ({args.input_bytes / 1e6:,.1f} MB of values) "
            f"over {args.lamps} lamps in {fill_s:.1f}s ({args.messages / fill_s:,.0f} msg/s)"
        )
        topic = topic_name(settings, LAMP_MESSAGES)
        async with Offsets(settings, topic) as offsets:
            total = await offsets.end()
            print(f"topic {topic}: {total:,} records")
            rates = await faust_and_raw(args, prefix, total, workdir, rows)
            rates.update(await batch_modes(args, settings, offsets, total, workdir, rows=rows))

    if args.live_s > 0:
        print(
            f"\nlatency phase: {args.rate:,} msg/s wanted for {args.live_s:g}s, a silent lamp "
            f"every {args.silent_every:g}s during the first {args.live_s - 32:g}s"
        )
        latency = await latency_phase(base, args, workdir)
        prefixes.append(latency["prefix"])
        report_latency(latency, args, rows)

    print("\n## summary")
    print(f"date {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores, {cpu_model()}")
    print(f"command: {command}")
    print(f"worker code: {fingerprint}")
    if code_fingerprint() != fingerprint:
        print(f"WARNING: the worker's code changed during the run (now {code_fingerprint()})")
    print("| mode | messages | seconds | per second | how |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if "batch-path" in rates and "faust-stream" in rates:
        print(f"batch-path / faust-stream: {rates['batch-path'] / rates['faust-stream']:.2f} x")
    if "batch-path" in rates and "raw" in rates:
        print(f"batch-path / raw: {rates['batch-path'] / rates['raw']:.2f} x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--lamps", type=int, default=2_000)
    parser.add_argument(
        "--modes", default="raw,faust-stream,faust-table,batch-path", help="comma-separated"
    )
    parser.add_argument("--table-cap-s", type=float, default=60.0)
    parser.add_argument("--table-cap-messages", type=int, default=100_000)
    parser.add_argument("--rate", type=int, default=20_000, help="live phase: msg/s wanted")
    parser.add_argument("--live-s", type=float, default=60.0, help="live phase length (0: none)")
    parser.add_argument("--silent-every", type=float, default=1.0)
    parser.add_argument(
        "--drain-s", type=float, default=120.0, help="live phase: wait this long after the load"
    )
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="live phase: serve the worker's metrics on this port and print its histograms",
    )
    parser.add_argument("--profile-top", type=int, default=30)
    parser.add_argument("--keep-topics", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.modes = {m.strip() for m in args.modes.split(",") if m.strip() and m.strip() != "none"}
    if args.child:
        child_main(args.child, json.loads(args.spec))
        return
    if args.live_s and args.live_s < FALL_CONFIRM_MS / 1000 + 5:
        parser.error("--live-s must leave room for a 30 s deadline (at least 35)")

    def on_term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    workdir = Path(tempfile.mkdtemp(prefix="detection-bench-"))
    prefixes: list[str] = []
    interrupted = False
    try:
        asyncio.run(run(args, workdir, prefixes))
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: stopping the processes, deleting the topics", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for proc in list(CHILDREN):
            stop(proc, timeout_s=30)
        if prefixes and not args.keep_topics:
            asyncio.run(delete_topics(load_settings(), prefixes))
    if interrupted:
        sys.exit(130)


if __name__ == "__main__":
    main()
