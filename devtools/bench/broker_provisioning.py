"""Provisioning at fleet scale: the broker's password and ACL files for N lamps, and the reload.

Runs its own Mosquitto (a free port, a temporary folder), so the shared stack is never stalled.
``--backend plugin`` (the default) is the stack's configuration: ``password_file`` for every
account, the lamps' ACL plugin (devtools/stack/mosquitto_lamp_acl.c) reading ``lamp-sites``, an
``acl_file`` with the components' sections only. ``--backend acl_file`` is the previous one (a
``user`` section per lamp). Measures:

- hashing: N PBKDF2-SHA512 password hashes in Mosquitto's ``$7$`` format, at 101 iterations
  (the components') and at the lamps' iterations (``--hash-iterations``, default the stack's);
- provision: ``MosquittoCredentials.provision`` of N lamps at once (hashes, registry, passwd and
  ACL files written atomically), and of ``--batch`` more lamps into the N (all files rewritten);
- start: Mosquitto started on those files until it answers;
- reload: SIGHUP with ``--connected`` lamps connected, while a probe client does QoS 1 round
  trips back to back: the longest round trip (the broker's stall), the time until the lamps
  provisioned last can connect (the reload complete), and the connected lamps still connected;
  then, with the plugin, that a connected lamp may still publish under its own topic and not
  under another site (reason codes), and the broker's CPU time for the whole reload.

``--backend dynsec`` measures the alternative, Mosquitto's dynamic-security plugin (shipped in
Debian's package): its JSON configuration for N lamps (one role each: publish under its own
topics; its ACLs have no %u before Mosquitto 2.1), the broker's start, and ``--batch`` lamps
added at run time through its ``$CONTROL`` API (createRole + createClient each, in one message)
while the probe runs: it saves its whole JSON after every command.

    .venv/bin/python -m devtools.bench.broker_provisioning [--lamps 100000] [--connected 200]
        [--backend plugin|acl_file|dynsec] [--rounds 2] [--batch 1] [--hash-iterations N]

It prints what it measured, and saves it to
``devtools/bench/results/broker_provisioning-<backend>-<UTC time>.json``; nothing is asserted.
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from connectors.mqtt_asyncio import AsyncioMqtt
from devtools.fleet import Fleet, connect_fleet
from devtools.stack.context import StackContext
from devtools.stack.mosquitto import build_lamp_acl_plugin, security_config
from pipeline import lamps as lamps_module
from pipeline.lamps import ComponentAccount, Credential, MosquittoCredentials, hash_password
from pipeline.ports import free_port
from pipeline.settings import MqttBroker, load_settings

PROBE = ComponentAccount("bench-probe", "bench-probe-password", ("bench/#",), ("bench/#",))
RESULTS = Path(__file__).parent / "results"
NOT_AUTHORIZED = 135


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/<pid>/stat, clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def mosquitto_conf(
    folder: Path, port: int, credentials: MosquittoCredentials, plugin: Path | None
) -> Path:
    conf = folder / "mosquitto.conf"
    if plugin is None:  # the previous design: every lamp's section in the acl_file
        security = [
            "allow_anonymous false",
            f"password_file {credentials.password_file}",
            f"acl_file {credentials.acl_file}",
        ]
    else:
        security = security_config(credentials, plugin)
    lines = [
        "per_listener_settings false",
        f"listener {port} 127.0.0.1",
        *security,
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


async def publish_reason(broker: MqttBroker, credential: Credential, topic: str) -> int:
    """The reason code of the PUBACK the broker gives this lamp for one QoS 1 publish."""
    client = AsyncioMqtt(
        host=broker.host,
        port=broker.port,
        client_id=f"bench-check-{uuid.uuid4().hex[:8]}",
        username=credential.lamp_id,
        password=credential.password,
    )
    reasons: list[int] = []
    client.client.on_publish = lambda _c, _u, _m, reason, _p: reasons.append(reason.value)
    await client.connect()
    try:
        client.client.publish(topic, b"{}", qos=1)
        while not reasons:
            await asyncio.sleep(0.01)
        return reasons[0]
    finally:
        await client.close()


async def measure(args: argparse.Namespace, out: dict[str, Any]) -> None:
    lamps, connected, rounds, batch = args.lamps, args.connected, args.rounds, args.batch
    lamps_module.LAMP_HASH_ITERATIONS = args.hash_iterations
    plugin = None
    if args.backend == "plugin":
        plugin = build_lamp_acl_plugin(StackContext(load_settings()))
    folder = Path(tempfile.mkdtemp(prefix="veilleuse-provisioning-"))
    credentials = MosquittoCredentials(folder, (PROBE,), per_lamp_acl=plugin is None)
    try:
        for iterations in sorted({101, args.hash_iterations}):
            started = time.perf_counter()
            for i in range(2000):
                hash_password(f"password-{i}", iterations=iterations)
            per_hash = (time.perf_counter() - started) / 2000
            out.setdefault("hash_us", {})[str(iterations)] = per_hash * 1e6
            print(f"hashing: {per_hash * 1e6:.0f} µs per PBKDF2-SHA512 hash ({iterations} "
                  f"iterations, n=2000), {per_hash * lamps:.1f} s for {lamps:,}")  # fmt: skip

        pairs = [(f"site-{i // 100:04d}", f"L-{i:06d}") for i in range(lamps)]
        started = time.perf_counter()
        issued = credentials.provision(pairs)
        out["provision_all_s"] = time.perf_counter() - started
        sizes = {
            path.name: path.stat().st_size
            for path in (credentials.password_file, credentials.acl_file,
                         credentials.lamp_sites_file)
        }  # fmt: skip
        out["file_bytes"] = sizes
        print(f"provision {lamps:,} lamps at once: {out['provision_all_s']:.1f} s ("
              + ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in sizes.items())
              + ")")  # fmt: skip

        port = free_port()
        broker = MqttBroker(name="bench", host="127.0.0.1", port=port)
        conf = mosquitto_conf(folder, port, credentials, plugin)
        started = time.monotonic()
        with (folder / "mosquitto.log").open("ab") as log_file:
            proc = subprocess.Popen(
                ["mosquitto", "-c", str(conf)], stdout=log_file, stderr=log_file
            )
        try:
            await wait_connects(broker, PROBE.username, PROBE.password)
            out["start_s"] = time.monotonic() - started
            print(f"start: Mosquitto answers {out['start_s']:.1f} s after launch")
            started = time.monotonic()
            fleet: Fleet = await connect_fleet(broker, issued[:connected], timeout_s=600)
            print(f"{connected} lamps connected in {time.monotonic() - started:.1f} s")

            out["reloads"] = []
            for round_ in range(rounds):
                new_pairs = [("site-new", f"L-new-{round_}-{i}") for i in range(batch)]
                started = time.perf_counter()
                new = credentials.provision(new_pairs)
                written = time.perf_counter() - started
                # The probe starts after the files are written: writing them blocks this loop.
                stop = asyncio.Event()
                prober = asyncio.create_task(probe_round_trips(broker, stop))
                await asyncio.sleep(1.0)
                cpu_before = cpu_seconds(proc.pid)
                reloaded_at = time.monotonic()
                proc.send_signal(signal.SIGHUP)
                usable = await wait_connects(broker, new[-1].lamp_id, new[-1].password)
                await asyncio.sleep(1.0)
                stop.set()
                times = await prober
                after = time.monotonic() - reloaded_at
                cpu = cpu_seconds(proc.pid) - cpu_before
                still = sum(lamp.mqtt.connected.is_set() for lamp in fleet.lamps.values())
                result: dict[str, Any] = {
                    "lamps": lamps + (round_ + 1) * batch,
                    "batch": batch,
                    "files_written_s": written,
                    "new_lamp_accepted_s": usable,
                    "probe_round_trips": len(times),
                    "probe_median_ms": statistics.median(times) * 1000,
                    "probe_longest_ms": max(times) * 1000,
                    "broker_cpu_s": cpu,
                    "window_s": after,
                    "connected": connected,
                    "still_connected": still,
                    "load_average": load_average(),
                }
                print(
                    f"reload {round_ + 1}: {batch} lamp(s) added, files for "
                    f"{result['lamps']:,} lamps written in {written:.1f} s; SIGHUP -> new lamp "
                    f"accepted after {usable:.2f} s; probe round trips during {after:.1f} s: "
                    f"{len(times)}, median {result['probe_median_ms']:.1f} ms, longest "
                    f"{result['probe_longest_ms']:.0f} ms; broker CPU {cpu:.2f} s; {still} of "
                    f"{connected} lamps (keep-alive 30 s) still connected; load average "
                    f"{result['load_average']}"
                )
                if plugin is not None:
                    own = f"lamps/{new[-1].site_id}/{new[-1].lamp_id}/events"
                    result["own_topic_reason"] = await publish_reason(broker, new[-1], own)
                    result["other_site_reason"] = await publish_reason(
                        broker, new[-1], f"lamps/site-0000/{new[-1].lamp_id}/events"
                    )
                    print(
                        f"  the new lamp under its own topic: reason {result['own_topic_reason']}"
                        f", under another site: {result['other_site_reason']} "
                        f"({NOT_AUTHORIZED} = refused)"
                    )
                out["reloads"].append(result)
            await fleet.close()
        finally:
            proc.terminate()
            proc.wait(60)
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


async def measure_dynsec(args: argparse.Namespace, out: dict[str, Any]) -> None:
    lamps, rounds, batch = args.lamps, args.rounds, args.batch
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
        out["json_written_s"] = time.perf_counter() - started
        out["json_bytes"] = config_file.stat().st_size
        print(
            f"dynsec configuration for {lamps:,} lamps written in "
            f"{out['json_written_s']:.1f} s ({out['json_bytes'] / 2**20:.1f} MiB)"
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
            out["start_s"] = time.monotonic() - started
            print(f"start: Mosquitto answers {out['start_s']:.1f} s after launch")
            out["changes"] = []
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
                commands: list[dict[str, object]] = []
                for i in range(batch):
                    lamp_id, role = f"L-new-{round_}-{i}", f"lamp-L-new-{round_}-{i}"
                    commands += [
                        {"command": "createRole", **dynsec_role(role, f"lamps/new/{lamp_id}/#",
                                                                 "publishClientSend")},
                        {"command": "createClient", "username": lamp_id,
                         "password": "new-password", "roles": [{"rolename": role}]},
                    ]  # fmt: skip
                command = {"commands": commands}
                cpu_before = cpu_seconds(proc.pid)
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
                cpu = cpu_seconds(proc.pid) - cpu_before
                out["changes"].append(
                    {
                        "batch": batch,
                        "answered_s": answered,
                        "new_lamp_accepted_s": usable + answered,
                        "probe_median_ms": statistics.median(times) * 1000,
                        "probe_longest_ms": max(times) * 1000,
                        "broker_cpu_s": cpu,
                        "load_average": load_average(),
                    }
                )
                print(
                    f"change {round_ + 1}: {batch} lamp(s) added through $CONTROL "
                    f"({2 * batch} commands), answered in {answered:.2f} s "
                    f"({answers[-1][:60]!r}); new lamp accepted after {usable + answered:.2f} s; "
                    f"probe median {statistics.median(times) * 1000:.1f} ms, longest "
                    f"{max(times) * 1000:.0f} ms; broker CPU {cpu:.2f} s; load average "
                    f"{load_average()}"
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
    parser.add_argument("--backend", choices=("plugin", "acl_file", "dynsec"), default="plugin")
    parser.add_argument("--rounds", type=int, default=2, help="reloads (or dynsec changes)")
    parser.add_argument("--batch", type=int, default=1, help="lamps added per reload or change")
    parser.add_argument(
        "--hash-iterations",
        type=int,
        default=lamps_module.LAMP_HASH_ITERATIONS,
        help="PBKDF2 iterations of the lamps' password hashes",
    )
    args = parser.parse_args()
    version = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True, check=False)
    out: dict[str, Any] = {
        "benchmark": "broker_provisioning",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cores": os.cpu_count(),
        "mosquitto": version.stdout.splitlines()[0],
        "args": vars(args),
        "load_average_before": load_average(),
    }
    print(f"{platform.node()}: {os.cpu_count()} cores, {out['mosquitto']}, load average "
          f"{out['load_average_before']}")  # fmt: skip
    if args.backend == "dynsec":
        asyncio.run(measure_dynsec(args, out))
    else:
        asyncio.run(measure(args, out))
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"broker_provisioning-{args.backend}-{stamp}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"raw results: {path}")


if __name__ == "__main__":
    main()
