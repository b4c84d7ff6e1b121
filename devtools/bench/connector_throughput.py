"""Throughput of one connector process: QoS 1 messages/s, acknowledged after the Kafka write.

Runs against the local stack (``veilleuse stack up``). Two measurements:

- backlog: the broker holds a backlog for the connector's persistent session (published while
  it was stopped); the connector is started and timed until it has written all of it. This is
  the connector's own ceiling, the publisher not competing for the two cores.
- live: a publisher process and the connector run at once for ``--seconds``; the connector's
  rate and its MQTT-to-Kafka acknowledgement latency are read from its metrics.

    .venv/bin/python -m devtools.bench.connector_throughput [--backlog 200000] [--seconds 20]
        [--profile]   # also run the backlog under cProfile and print where the time goes

It prints what it measured; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import pstats
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from connectors.mqtt_asyncio import discard_session
from devtools.fleet import Fleet
from devtools.stack.context import StackContext
from devtools.stack.mosquitto import Mosquitto
from pipeline.lamps import Credential
from pipeline.settings import Settings, load_settings

METRICS_PORT = 19191


def metrics() -> dict[str, float]:
    url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name + json.dumps(sample.labels, sort_keys=True)] = sample.value
    return out


def produced(m: dict[str, float]) -> float:
    return sum(v for k, v in m.items() if k.startswith("veilleuse_connector_produced_total"))


def start_connector(group: str, profile: Path | None) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "VEILLEUSE_MQTT__SHARE_GROUP": group,
        "VEILLEUSE_MQTT__CLIENT_ID": group,
        "VEILLEUSE_MQTT__SESSION_EXPIRY_S": "600",
        "VEILLEUSE_CONNECTOR__METRICS_PORT": str(METRICS_PORT),
        "VEILLEUSE_LOG_LEVEL": "WARNING",
    }
    prefix = [sys.executable, "-m", "cProfile", "-o", str(profile)] if profile else [sys.executable]
    proc = subprocess.Popen([*prefix, "-m", "cli", "connector"], env=env)
    deadline = time.monotonic() + 30
    while True:
        try:
            if metrics().get('veilleuse_connector_subscribed{"broker": "local"}') == 1:
                return proc
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("connector did not subscribe")
        time.sleep(0.2)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)


def payload(lamp_id: str, seq: int) -> bytes:
    return json.dumps(
        {
            "v": 1,
            "lamp_id": lamp_id,
            "seq": seq,
            "ts": int(time.time() * 1000),
            "type": "motion",
            "zone": "room",
            "level": seq % 101,
        }
    ).encode()


async def publish(settings: Settings, creds: list[Credential], count: int, seconds: float) -> int:
    """Publish round-robin, as fast as the broker acknowledges, until ``count`` or ``seconds``."""
    fleet = Fleet(settings.mqtt.brokers[0], creds, max_inflight=100)
    await fleet.connect()
    started, sent, seq = time.monotonic(), 0, 0
    try:
        while sent < count and time.monotonic() - started < seconds:
            for cred in creds:
                fleet.publish(cred.lamp_id, "events", payload(cred.lamp_id, seq))
            sent += len(creds)
            seq += 1
            while fleet.unacked > 20_000:
                await asyncio.sleep(0.005)
            await asyncio.sleep(0)
        await fleet.wait_acked(300)
    finally:
        await fleet.close()
    return sent


def publisher_process(
    creds: list[Credential], seconds: float, result: multiprocessing.Queue[int]
) -> None:
    result.put(asyncio.run(publish(load_settings(), creds, 10**9, seconds)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lamps", type=int, default=500)
    parser.add_argument("--backlog", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    settings = load_settings()
    broker = Mosquitto(StackContext(settings))
    site = f"bench-{uuid.uuid4().hex[:6]}"
    creds = broker.credentials().provision([(site, f"{site}-{i:05d}") for i in range(args.lamps)])
    broker.reload()
    time.sleep(1)
    group = f"bench{uuid.uuid4().hex[:6]}"
    print(f"machine: {platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"lamps: {args.lamps}, share group {group}")
    try:
        # 1. backlog: create the session, stop, publish, then time the drain.
        stop(start_connector(group, None))
        t0 = time.monotonic()
        sent = asyncio.run(publish(settings, creds, args.backlog, 3600))
        print(
            f"backlog: published {sent} QoS 1 messages in {time.monotonic() - t0:.1f}s "
            f"while the connector was stopped"
        )
        for profiled in [False, True] if args.profile else [False]:
            profile = Path(tempfile.mkdtemp()) / "connector.prof" if profiled else None
            t0 = time.monotonic()
            proc = start_connector(group, profile)
            base = 0.0
            while produced(metrics()) < sent:
                time.sleep(0.05)
            elapsed = time.monotonic() - t0
            m = metrics()
            stop(proc)
            label = "backlog under cProfile" if profiled else "backlog"
            print(
                f"{label}: {produced(m) - base:.0f} messages written to Kafka and acked "
                f"in {elapsed:.2f}s = {sent / elapsed:,.0f} msg/s (incl. ~1s start-up)"
            )
            if profiled and profile is not None:
                stats = pstats.Stats(str(profile))
                stats.sort_stats("tottime").print_stats(18)
            if not profiled and args.profile:
                sent = asyncio.run(publish(settings, creds, args.backlog, 3600))

        # 2. live: publisher process and connector together.
        proc = start_connector(group, None)
        before, t0 = metrics(), time.monotonic()
        result: multiprocessing.Queue[int] = multiprocessing.Queue()
        pub = multiprocessing.Process(target=publisher_process, args=(creds, args.seconds, result))
        pub.start()
        pub.join()
        published = result.get()
        while produced(metrics()) - produced(before) < published:
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
        after = metrics()
        stop(proc)
        buckets = sorted(
            (float(json.loads(k[k.index("{") :])["le"]), v - before.get(k, 0.0))
            for k, v in after.items()
            if k.startswith("veilleuse_connector_ack_latency_seconds_bucket")
        )
        total = buckets[-1][1]

        def quantile(q: float) -> str:
            bound = next(le for le, count in buckets if count >= q * total)
            return f"≤ {bound * 1000:g} ms"

        print(
            f"live: {published} messages published and written in {elapsed:.1f}s = "
            f"{published / elapsed:,.0f} msg/s end to end (publisher on the same 2 cores)"
        )
        print(
            f"live ack latency (MQTT receive → Kafka ack): p50 {quantile(0.5)}, "
            f"p99 {quantile(0.99)}"
        )
    finally:
        broker.credentials().revoke([c.lamp_id for c in creds])
        broker.reload()
        mqtt = settings.mqtt
        asyncio.run(
            discard_session(
                host=mqtt.brokers[0].host,
                port=mqtt.brokers[0].port,
                client_id=f"{group}-{mqtt.brokers[0].name}",
                username=mqtt.username,
                password=mqtt.password.get_secret_value(),
            )
        )


if __name__ == "__main__":
    main()
