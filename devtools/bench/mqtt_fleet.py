"""100,000 lamps over real MQTT: the socket load generator against the stack's Mosquitto setup.

Runs its own Mosquitto brokers (the stack's configuration, free ports, a temporary folder), each
provisioned with its share of the fleet through the stack's own provisioning code
(``MosquittoCredentials``: one account and password per lamp), so the shared stack is never
disturbed. Then, with ``devtools/mqtt_load.py``:

- connect: every lamp opens its own TCP connection with its own credentials, from several
  source addresses of 127.0.0.0/8; time to connect the fleet;
- hold: the fleet idles for ``--hold`` seconds (keep-alive pings only): RSS and CPU;
- play: ``--duration`` seconds of the simulated fleet (``devtools/simulator``, the protocol's
  mix at its rates), while a QoS 1 subscriber per broker on ``lamps/#`` takes every message
  (what the connector would): messages offered, acknowledged (PUBACK), delivered; CPU µs per
  message of the brokers, the generator's workers and the subscriber, from ``/proc``.

Several brokers because one process cannot hold 100,000 sockets here: the VM's hard
``RLIMIT_NOFILE`` is 20,000 and cannot be raised (no ``CAP_SYS_RESOURCE``); the connector reads
several brokers at once (``VEILLEUSE_MQTT__BROKERS``), and production's EMQX is a cluster.

    .venv/bin/python -m devtools.bench.mqtt_fleet [--lamps 100000] [--brokers 6] [--hold 30]
        [--duration 60] [--processes N] [--sources 4]

Prints what it measured and saves the raw results as JSON in ``devtools/bench/results/``;
nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from devtools.bench.broker_provisioning import mosquitto_conf, wait_connects
from devtools.mqtt_load import (
    LampSpec,
    LoadCounters,
    LoadFleet,
    Subscriber,
    cpu_seconds,
    default_sources,
    nofile_limit,
    processes_for,
    rss_bytes,
    start_margin_s,
)
from devtools.simulator import SimConfig
from devtools.stack.context import StackContext
from devtools.stack.mosquitto import build_lamp_acl_plugin
from pipeline.lamps import ComponentAccount, MosquittoCredentials
from pipeline.ports import free_port
from pipeline.settings import MqttBroker, load_settings

RESULTS = Path(__file__).parent / "results"
READER = ComponentAccount("bench-reader", "bench-reader-password", ("lamps/#",), ())
PROBE = ComponentAccount("bench-probe", "bench-probe-password", ("bench/#",), ("bench/#",))
PER_BROKER = 18_000  # below the 20,000 descriptors a process may hold here


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "?"


class Broker:
    def __init__(self, folder: Path, index: int) -> None:
        self.folder = folder / f"broker-{index}"
        self.folder.mkdir(parents=True)
        self.credentials = MosquittoCredentials(self.folder, (PROBE, READER))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, plugin: Path) -> None:
        """Start on a free port until it answers; another port if the one picked was taken
        meanwhile (other sessions start services on this machine too)."""
        for _ in range(5):
            self.port = free_port()
            conf = mosquitto_conf(self.folder, self.port, self.credentials, plugin)
            with (self.folder / "mosquitto.log").open("ab") as log_file:
                self.proc = subprocess.Popen(
                    ["mosquitto", "-c", str(conf)], stdout=log_file, stderr=log_file
                )
            broker = MqttBroker(name="b", host="127.0.0.1", port=self.port)
            answers = asyncio.ensure_future(wait_connects(broker, PROBE.username, PROBE.password))
            while not answers.done() and self.proc.poll() is None:
                await asyncio.wait([answers], timeout=0.2)
            if answers.done():
                return
            answers.cancel()
        raise RuntimeError(f"Mosquitto did not start: see {self.folder / 'mosquitto.log'}")

    @property
    def pid(self) -> int:
        assert self.proc is not None  # noqa: S101 - started
        return self.proc.pid

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Meter:
    """CPU seconds and RSS of named groups of processes, between two snapshots."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.cpu = self._cpu()
        self.wall = time.monotonic()

    def _cpu(self) -> dict[str, float]:
        return {name: sum(cpu_seconds(p) for p in pids) for name, pids in self.groups.items()}

    def since(self) -> dict[str, Any]:
        now = self._cpu()
        wall = time.monotonic() - self.wall
        return {
            "wall_s": round(wall, 2),
            "cpu_s": {name: round(now[name] - self.cpu[name], 2) for name in now},
            "rss_mib": {
                name: round(sum(rss_bytes(p) for p in pids) / 2**20, 1)
                for name, pids in self.groups.items()
            },
        }


def _loadavg() -> str:
    return _read("/proc/loadavg").rsplit(" ", 2)[0]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "args": vars(args),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    result["machine"] = {
        "node": platform.node(),
        "cores": os.cpu_count(),
        "loadavg_before": _loadavg(),
        "nofile_soft_hard": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "ip_local_port_range": _read("/proc/sys/net/ipv4/ip_local_port_range"),
        "somaxconn": _read("/proc/sys/net/core/somaxconn"),
        "mosquitto": subprocess.run(
            ["mosquitto", "-h"], capture_output=True, text=True, check=False
        ).stdout.splitlines()[0],
    }  # fmt: skip
    print(f"{result['machine']}")
    folder = Path(tempfile.mkdtemp(prefix="veilleuse-mqtt-fleet-"))
    brokers = [Broker(folder, k) for k in range(args.brokers)]
    config = SimConfig(
        lamps=args.lamps, sites=max(1, args.lamps // 100), seed=args.seed,
        duration_s=args.duration, incident_rate=args.incident_rate,
        site_prefix="fleet", lamp_prefix="F",
    )  # fmt: skip
    fleet: LoadFleet | None = None
    try:
        pairs = config.lamp_ids()
        started = time.perf_counter()
        specs: list[LampSpec] = []
        sources = default_sources(args.sources)
        issued: dict[str, str] = {}
        for k, broker in enumerate(brokers):
            for cred in broker.credentials.provision(pairs[k :: args.brokers]):
                issued[cred.lamp_id] = cred.password
        result["provision_s"] = round(time.perf_counter() - started, 1)
        print(f"provisioned {args.lamps:,} lamps (own password each) over {args.brokers} brokers "
              f"in {result['provision_s']} s")  # fmt: skip

        # The stack's own security configuration: password_file, the lamps' ACL plugin.
        plugin = build_lamp_acl_plugin(StackContext(load_settings()))
        started = time.monotonic()
        for broker in brokers:
            await broker.start(plugin)
        for i, (site_id, lamp_id) in enumerate(pairs):
            broker = brokers[i % args.brokers]
            source = sources[(i // args.brokers) % len(sources)]
            specs.append(
                LampSpec(site_id, lamp_id, issued[lamp_id], "127.0.0.1", broker.port, source)
            )
        result["brokers_start_s"] = round(time.monotonic() - started, 1)
        result["broker_nofile"] = [nofile_limit(b.pid) for b in brokers]
        print(f"{args.brokers} brokers answer after {result['brokers_start_s']} s "
              f"(open-files limit {result['broker_nofile'][0]:,} each)")  # fmt: skip

        fleet = LoadFleet(specs, args.processes, keepalive_s=args.keepalive)
        fleet.start()
        await asyncio.sleep(0)
        groups = {
            "brokers": [b.pid for b in brokers],
            "generator": fleet.pids,
            "subscriber_and_parent": [os.getpid()],
        }
        meter = Meter(groups)
        counters = await fleet.connect(concurrency=args.concurrency, timeout_s=600)
        connect = meter.since()
        fds = [b.open_fds() for b in brokers]
        result["connect"] = {**connect, "connected": counters.connected,
                             "refused": counters.refused,
                             "failed": counters.failed, "errors": counters.errors,
                             "connect_s": round(counters.connect_s, 1),
                             "broker_open_fds": fds}  # fmt: skip
        print(f"connect: {counters.connected:,} of {args.lamps:,} lamps connected in "
              f"{counters.connect_s:.1f} s by {fleet.processes} processes from {len(sources)} "
              f"source addresses (refused {counters.refused}, failed {counters.failed}); "
              f"brokers' open descriptors {sum(fds):,}; CPU s {connect['cpu_s']}; "
              f"RSS MiB {connect['rss_mib']}")  # fmt: skip
        if counters.errors:
            print(f"  first errors: {counters.errors[:5]}")

        meter = Meter(groups)
        await asyncio.sleep(args.hold)
        hold_counters = await fleet.stats()
        hold = meter.since()
        result["hold"] = {**hold, "pings": hold_counters.pings, "pongs": hold_counters.pongs,
                          "lost": hold_counters.lost, "reconnected": hold_counters.reconnected,
                          "connected": hold_counters.open_now}  # fmt: skip
        print(f"hold {args.hold:.0f} s: {result['hold']['connected']:,} connections held, "
              f"{hold_counters.pings:,} PINGREQ / {hold_counters.pongs:,} PINGRESP, lost "
              f"{hold_counters.lost} (back {hold_counters.reconnected}); CPU s {hold['cpu_s']}; "
              f"RSS MiB {hold['rss_mib']} "
              f"(load {_loadavg()})")  # fmt: skip

        subscribers = [
            await Subscriber.open("127.0.0.1", b.port, READER.username, READER.password, "lamps/#")
            for b in brokers
        ]
        before = hold_counters
        meter = Meter(groups)
        start_ms = int((time.time() + start_margin_s(args.lamps)) * 1000)

        def progress(c: LoadCounters) -> None:
            print(f"  t={time.time() - start_ms / 1000:5.0f} s  published {c.published:,}  "
                  f"acked {c.acked:,}  delivered {sum(s.received for s in subscribers):,}  "
                  f"lag max {c.max_lag_ms:.0f} ms", flush=True)  # fmt: skip

        last_progress = [0.0]

        def every_10s(c: LoadCounters) -> None:
            if time.monotonic() - last_progress[0] >= 10:
                last_progress[0] = time.monotonic()
                progress(c)

        played = await fleet.play(replace(config, start_ms=start_ms), every_10s)
        deadline = time.monotonic() + 30
        c = played.counters
        expected = c.sent_qos1 - before.sent_qos1 + c.sent_qos0 - before.sent_qos0
        while sum(s.received for s in subscribers) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        play = meter.since()
        delivered = sum(s.received for s in subscribers)
        messages = c.published
        # CPU per message actually sent: a message due while its lamp was reconnecting is not.
        sent = (c.sent_qos1 - before.sent_qos1) + (c.sent_qos0 - before.sent_qos0)
        per_message = {
            name: round(cpu / sent * 1e6, 1) if sent else None
            for name, cpu in play["cpu_s"].items()
        }
        result["play"] = {
            **play, "published": messages, "sent_qos1": c.sent_qos1 - before.sent_qos1,
            "sent_qos0": c.sent_qos0 - before.sent_qos0, "acked": c.acked - before.acked,
            "ack_refused": c.ack_refused, "unacked": c.unacked, "delivered": delivered,
            "lost": c.lost - before.lost, "reconnected": c.reconnected - before.reconnected,
            "dropped": c.dropped, "open_at_end": c.open_now, "errors": c.errors,
            "max_lag_ms": round(c.max_lag_ms), "lag_over_100ms": c.lag_over_100ms,
            "play_s": round(c.play_s, 1), "drain_s": round(c.drain_s, 2),
            "prepare_late_s": round(c.prepare_late_s, 1),
            "offered_per_s": round(messages / c.play_s) if c.play_s else None,
            "acked_per_s": round((c.acked - before.acked) / (c.play_s + c.drain_s))
            if c.play_s else None,
            "cpu_us_per_message": per_message, "counts": played.counts.as_dict(),
            "loadavg_after": _loadavg(),
        }  # fmt: skip
        p = result["play"]
        print(f"play {args.duration:.0f} s of the simulated fleet: {messages:,} messages offered "
              f"({p['offered_per_s']:,}/s; QoS 1 {p['sent_qos1']:,}, QoS 0 {p['sent_qos0']:,}), "
              f"{p['acked']:,} acknowledged ({p['acked_per_s']:,}/s, {p['ack_refused']} refused, "
              f"{p['unacked']} without PUBACK), {delivered:,} delivered to the subscribers; "
              f"player lag max {p['max_lag_ms']} ms ({p['lag_over_100ms']:,} messages over 100 ms; "
              f"generators ready {p['prepare_late_s']} s after the start); "
              f"connections lost {c.lost - before.lost} "
              f"(back {c.reconnected - before.reconnected}, "
              f"{c.open_now:,} open at the end; {c.dropped:,} messages due while their lamp was "
              "disconnected, not sent)")  # fmt: skip
        print(f"  CPU s {play['cpu_s']} over {play['wall_s']} s; CPU µs per message sent "
              f"{per_message}; RSS MiB {play['rss_mib']}; load {p['loadavg_after']}")  # fmt: skip
        for sub in subscribers:
            sub.close()
        started = time.monotonic()
        await fleet.close()
        fleet = None
        result["close_s"] = round(time.monotonic() - started, 1)
    finally:
        if fleet is not None:
            with contextlib.suppress(Exception):
                await fleet.close()
        for broker in brokers:
            broker.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return result


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lamps", type=int, default=100_000)
    parser.add_argument("--brokers", type=int, default=0, help="default: one per 18,000 lamps")
    parser.add_argument("--processes", type=int, default=0, help="default: one per 15,000 lamps")
    parser.add_argument("--sources", type=int, default=4, help="source addresses 127.0.0.2...")
    parser.add_argument("--concurrency", type=int, default=32, help="handshakes per process")
    parser.add_argument("--keepalive", type=int, default=60, help="seconds (paho's default)")
    parser.add_argument("--hold", type=float, default=30.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--incident-rate", type=float, default=0.05, help="per lamp and hour")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    args.brokers = args.brokers or -(-args.lamps // PER_BROKER)
    args.processes = args.processes or processes_for(args.lamps)
    signal.signal(signal.SIGTERM, _interrupt)  # stop the brokers and workers on the way out
    result = asyncio.run(run(args))
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"mqtt_fleet-{time.strftime('%Y%m%dT%H%MZ', time.gmtime())}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"raw results: {path}")


if __name__ == "__main__":
    main()
