"""Provisioning at fleet scale: the broker's password and ACL files for N lamps, and the reload.

Runs its own Mosquitto (the stack's configuration, a free port, a temporary folder), so the
shared stack is never stalled. Measures:

- hashing: N PBKDF2-SHA512 password hashes in Mosquitto's ``$7$`` format (what provisioning
  computes for every new lamp);
- provision: ``MosquittoCredentials.provision`` of N lamps at once (hashes, registry, passwd and
  ACL written atomically), and of one more lamp into the N (all files rewritten);
- start: Mosquitto started on those files until it answers;
- reload: SIGHUP with ``--connected`` lamps connected, while a probe client does QoS 1 round
  trips back to back: the longest round trip (the broker's stall) and the time until the lamp
  provisioned last can connect (the reload complete).

``--backend dynsec`` measures the alternative, Mosquitto's dynamic-security plugin (shipped in
Debian's package): its JSON configuration for N lamps (one role each: publish under its own
topics), the broker's start, and one lamp added at run time through its ``$CONTROL`` API
(createRole + createClient in one message) while the probe runs.

    .venv/bin/python -m devtools.bench.broker_provisioning [--lamps 100000] [--connected 200]
        [--backend acl_file|dynsec]

It prints what it measured; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from connectors.mqtt_asyncio import AsyncioMqtt
from devtools.fleet import Fleet, connect_fleet
from pipeline.lamps import ComponentAccount, MosquittoCredentials, hash_password
from pipeline.ports import free_port
from pipeline.settings import MqttBroker

PROBE = ComponentAccount("bench-probe", "bench-probe-password", ("bench/#",), ("bench/#",))


def mosquitto_conf(folder: Path, port: int, credentials: MosquittoCredentials) -> Path:
    conf = folder / "mosquitto.conf"
    lines = [
        "per_listener_settings false",
        f"listener {port} 127.0.0.1",
        "allow_anonymous false",
        f"password_file {credentials.password_file}",
        f"acl_file {credentials.acl_file}",
        "persistence false",
        "log_dest stdout",
        "max_queued_messages 1000000",
        "max_inflight_messages 1000",
    ]
    if os.geteuid() == 0:
        lines.insert(0, "user root")  # it would drop to `mosquitto` and lose its files
    conf.write_text("\n".join(lines) + "\n")
    return conf


async def wait_connects(broker: MqttBroker, username: str, password: str) -> float:
    """Seconds until this account can connect (the broker read its files)."""
    started = time.monotonic()
    while True:
        client = AsyncioMqtt(
            host=broker.host,
            port=broker.port,
            client_id=f"bench-{uuid.uuid4().hex[:8]}",
            username=username,
            password=password,
        )
        try:
            await client.connect(timeout_s=5)
            return time.monotonic() - started
        except ConnectionError:
            await asyncio.sleep(0.02)
        finally:
            await client.close()


async def probe_round_trips(broker: MqttBroker, stop: asyncio.Event) -> list[float]:
    """QoS 1 publish to itself and receive, back to back: each round trip's seconds."""
    client = AsyncioMqtt(
        host=broker.host,
        port=broker.port,
        client_id="bench-probe",
        username=PROBE.username,
        password=PROBE.password,
        keepalive_s=900,  # the probe must outlive a stall, to measure it
    )
    arrived = asyncio.Event()
    client.client.on_message = lambda *_: arrived.set()
    await client.connect()
    client.client.subscribe("bench/probe", qos=1)
    await asyncio.sleep(0.2)
    times: list[float] = []
    try:
        while not stop.is_set():
            arrived.clear()
            started = time.monotonic()
            client.client.publish("bench/probe", b"x", qos=1)
            await asyncio.wait_for(arrived.wait(), 900)
            times.append(time.monotonic() - started)
    finally:
        await client.close()
    return times


async def measure(lamps: int, connected: int, rounds: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="veilleuse-provisioning-"))
    credentials = MosquittoCredentials(folder, (PROBE,))
    try:
        started = time.perf_counter()
        for i in range(2000):
            hash_password(f"password-{i}")
        per_hash = (time.perf_counter() - started) / 2000
        print(f"hashing: {per_hash * 1e6:.0f} µs per PBKDF2-SHA512 hash (101 iterations), "
              f"{per_hash * lamps:.1f} s for {lamps:,}")  # fmt: skip

        pairs = [(f"site-{i // 100:04d}", f"L-{i:06d}") for i in range(lamps)]
        started = time.perf_counter()
        issued = credentials.provision(pairs)
        print(f"provision {lamps:,} lamps at once: {time.perf_counter() - started:.1f} s "
              f"(passwd {credentials.password_file.stat().st_size / 2**20:.1f} MiB, "
              f"acl {credentials.acl_file.stat().st_size / 2**20:.1f} MiB)")  # fmt: skip

        port = free_port()
        broker = MqttBroker(name="bench", host="127.0.0.1", port=port)
        conf = mosquitto_conf(folder, port, credentials)
        started = time.monotonic()
        with (folder / "mosquitto.log").open("ab") as log_file:
            proc = subprocess.Popen(
                ["mosquitto", "-c", str(conf)], stdout=log_file, stderr=log_file
            )
        try:
            await wait_connects(broker, PROBE.username, PROBE.password)
            print(f"start: Mosquitto answers {time.monotonic() - started:.1f} s after launch")
            fleet: Fleet = await connect_fleet(broker, issued[:connected], timeout_s=60)
            print(f"{connected} lamps connected")

            for round_ in range(rounds):
                stop = asyncio.Event()
                prober = asyncio.create_task(probe_round_trips(broker, stop))
                await asyncio.sleep(1.0)
                site, lamp_id = "site-new", f"L-new-{round_}"
                started = time.perf_counter()
                (new,) = credentials.provision([(site, lamp_id)])
                written = time.perf_counter() - started
                reloaded_at = time.monotonic()
                proc.send_signal(signal.SIGHUP)
                usable = await wait_connects(broker, new.lamp_id, new.password)
                await asyncio.sleep(1.0)
                stop.set()
                times = await prober
                after = time.monotonic() - reloaded_at
                still = sum(lamp.mqtt.connected.is_set() for lamp in fleet.lamps.values())
                print(
                    f"reload {round_ + 1}: files for {lamps + round_ + 1:,} lamps written in "
                    f"{written:.1f} s; SIGHUP -> new lamp accepted after {usable:.2f} s; "
                    f"probe round trips during {after:.1f} s: {len(times)}, median "
                    f"{statistics.median(times) * 1000:.1f} ms, "
                    f"longest {max(times) * 1000:.0f} ms; {still} of {connected} lamps (keep-alive "
                    "30 s) still connected"
                )
            await fleet.close()
        finally:
            proc.terminate()
            proc.wait(10)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


DYNSEC_PLUGIN = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"


def dynsec_entry(username: str, password_hash: str, role: str) -> dict[str, object]:
    """A dynsec client from a Mosquitto ``$7$`` hash (the same PBKDF2-SHA512 the plugin uses)."""
    _, _, iterations, salt, digest = password_hash.split("$")
    return {
        "username": username,
        "password": digest,
        "salt": salt,
        "iterations": int(iterations),
        "roles": [{"rolename": role}],
    }


def dynsec_role(role: str, topic: str, *types: str) -> dict[str, object]:
    return {
        "rolename": role,
        "acls": [{"acltype": kind, "topic": topic, "allow": True} for kind in types],
    }


async def measure_dynsec(lamps: int, rounds: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="veilleuse-dynsec-"))
    try:
        both = ("publishClientSend", "publishClientReceive", "subscribePattern")
        clients = [
            dynsec_entry("admin", hash_password("admin-password"), "admin"),
            dynsec_entry(PROBE.username, hash_password(PROBE.password), "probe"),
        ]
        roles = [
            dynsec_role("admin", "$CONTROL/dynamic-security/#", *both),
            dynsec_role("probe", "bench/#", *both),
        ]
        shared_hash = hash_password("lamp-password")  # the loading cost does not depend on it
        started = time.perf_counter()
        for i in range(lamps):
            lamp_id, role = f"L-{i:06d}", f"lamp-L-{i:06d}"
            clients.append(dynsec_entry(lamp_id, shared_hash, role))
            roles.append(
                dynsec_role(role, f"lamps/site-{i // 100:04d}/{lamp_id}/#", "publishClientSend")
            )
        config = {
            "defaultACLAccess": {
                "publishClientSend": False,
                "publishClientReceive": False,
                "subscribe": False,
                "unsubscribe": True,
            },
            "clients": clients,
            "groups": [],
            "roles": roles,
        }
        config_file = folder / "dynamic-security.json"
        config_file.write_text(json.dumps(config))
        print(
            f"dynsec configuration for {lamps:,} lamps written in "
            f"{time.perf_counter() - started:.1f} s ({config_file.stat().st_size / 2**20:.1f} MiB)"
        )
        port = free_port()
        conf = folder / "mosquitto.conf"
        lines = [
            "per_listener_settings false",
            f"listener {port} 127.0.0.1",
            "allow_anonymous false",
            f"plugin {DYNSEC_PLUGIN}",
            f"plugin_opt_config_file {config_file}",
            "persistence false",
        ]
        if os.geteuid() == 0:
            lines.insert(0, "user root")
        conf.write_text("\n".join(lines) + "\n")
        broker = MqttBroker(name="bench", host="127.0.0.1", port=port)
        started = time.monotonic()
        with (folder / "mosquitto.log").open("ab") as log_file:
            proc = subprocess.Popen(
                ["mosquitto", "-c", str(conf)], stdout=log_file, stderr=log_file
            )
        try:
            await wait_connects(broker, PROBE.username, PROBE.password)
            print(f"start: Mosquitto answers {time.monotonic() - started:.1f} s after launch")
            admin = AsyncioMqtt(
                host=broker.host,
                port=port,
                client_id="bench-admin",
                username="admin",
                password="admin-password",  # noqa: S106 - the throw-away broker's own admin
            )
            answers: list[bytes] = []
            admin.client.on_message = lambda _c, _u, message: answers.append(bytes(message.payload))
            await admin.connect()
            admin.client.subscribe("$CONTROL/dynamic-security/v1/response", qos=1)
            await asyncio.sleep(0.3)
            for round_ in range(rounds):
                stop = asyncio.Event()
                prober = asyncio.create_task(probe_round_trips(broker, stop))
                await asyncio.sleep(1.0)
                lamp_id, role = f"L-new-{round_}", f"lamp-L-new-{round_}"
                command = {
                    "commands": [
                        {"command": "createRole", **dynsec_role(role, f"lamps/new/{lamp_id}/#",
                                                                 "publishClientSend")},
                        {"command": "createClient", "username": lamp_id,
                         "password": "new-password", "roles": [{"rolename": role}]},
                    ]
                }  # fmt: skip
                before = len(answers)
                sent_at = time.monotonic()
                admin.client.publish("$CONTROL/dynamic-security/v1", json.dumps(command), qos=1)
                while len(answers) == before:
                    await asyncio.sleep(0.01)
                answered = time.monotonic() - sent_at
                usable = await wait_connects(broker, lamp_id, "new-password")
                await asyncio.sleep(1.0)
                stop.set()
                times = await prober
                print(
                    f"change {round_ + 1}: one lamp added through $CONTROL, answered in "
                    f"{answered:.2f} s ({answers[-1][:60]!r}); new lamp accepted after "
                    f"{usable + answered:.2f} s; probe median "
                    f"{statistics.median(times) * 1000:.1f} ms, longest {max(times) * 1000:.0f} ms"
                )
            await admin.close()
        finally:
            proc.terminate()
            proc.wait(10)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lamps", type=int, default=100_000)
    parser.add_argument("--connected", type=int, default=200)
    parser.add_argument("--backend", choices=("acl_file", "dynsec"), default="acl_file")
    parser.add_argument("--rounds", type=int, default=2, help="reloads (or dynsec changes)")
    args = parser.parse_args()
    version = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, check=False)
    print(f"{platform.node()}: {os.cpu_count()} cores, {version.stdout.splitlines()[0]}")
    if args.backend == "dynsec":
        asyncio.run(measure_dynsec(args.lamps, args.rounds))
    else:
        asyncio.run(measure(args.lamps, args.connected, args.rounds))


if __name__ == "__main__":
    main()
