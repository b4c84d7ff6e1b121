"""A lamp fleet on plain asyncio sockets: 100,000 MQTT connections from a few processes.

Each lamp is its own TCP connection with its own account (username = ``lamp_id``), as in the
field; frames are encoded by hand (``devtools/mqtt_frames.py``), QoS 1 publishes are tracked
until the broker's PUBACK (acknowledged vs sent), QoS 0 telemetry is fire and forget, and an
idle lamp sends PINGREQ once per keep-alive. What it plays is the simulator's fleet
(``devtools/simulator``): worker process ``k`` of ``n`` generates shard ``k`` of the
simulation (the lamps ``index % n == k``) and plays it on its own connections, at each
message's time.

Two limits shape it (docs/simulator.md, "100,000 lamps"):

- a process may hold only as many sockets as its ``RLIMIT_NOFILE`` (20,000 hard on the
  development VM, which cannot be raised there): lamps are spread over processes;
- a source address has 28,232 ephemeral ports towards one broker address
  (``net.ipv4.ip_local_port_range`` 32768-60999): connections are spread over several source
  addresses of 127.0.0.0/8 (127.0.0.2, .3, ...), bound with ``IP_BIND_ADDRESS_NO_PORT`` so
  the port is chosen per destination at connect time.

The parent (:class:`LoadFleet`) only orchestrates: each worker answers commands on a pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import random
import resource
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any

from devtools import mqtt_frames as frames
from devtools.simulator import Counts, GroundTruth, SimConfig, Simulation

log = logging.getLogger(__name__)

# Linux: bind() picks no port; connect() picks one unique for the 4-tuple (many destinations
# then share a source port range). Not exported by Python's socket module.
IP_BIND_ADDRESS_NO_PORT = 24
# A message is sent at most this late: messages due within a tick go out together.
TICK_S = 0.01
# File descriptors a worker keeps for itself (pipes, the event loop, imports).
RESERVED_FDS = 200
# Accepted CONNACK codes: 0 under both versions. Refusals worth retrying while a broker
# re-reads its password file after a reload: 3.1.1's 4/5, MQTT 5's 0x86/0x87.
RETRY_CODES = frozenset({4, 5, 0x86, 0x87})


def default_sources(count: int) -> tuple[str, ...]:
    """127.0.0.2, 127.0.0.3, ...: the loopback network answers on every address of /8."""
    return tuple(f"127.0.0.{2 + i}" for i in range(count))


@dataclass(frozen=True, slots=True)
class LampSpec:
    site_id: str
    lamp_id: str
    password: str
    host: str
    port: int
    source: str


@dataclass
class LoadCounters:
    """One worker's counts; summed over workers by :meth:`LoadCounters.total`."""

    connected: int = 0
    refused: int = 0
    failed: int = 0
    lost: int = 0  # connections the broker (or the network) closed
    reconnected: int = 0  # lost lamps back, as a lamp's firmware reconnects
    dropped: int = 0  # messages due while their lamp was disconnected (not sent)
    open_now: int = 0  # connections open when the counters were sent
    sent_qos0: int = 0
    sent_qos1: int = 0
    acked: int = 0
    ack_refused: int = 0  # PUBACK with a failure reason code (MQTT 5: not authorised...)
    pings: int = 0
    pongs: int = 0
    published: int = 0
    junk: int = 0
    max_lag_ms: float = 0.0
    lag_over_100ms: int = 0
    connect_s: float = 0.0
    prepare_late_s: float = 0.0  # the shard's generators were ready this late for the start
    play_s: float = 0.0
    drain_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def unacked(self) -> int:
        return self.sent_qos1 - self.acked - self.ack_refused

    @staticmethod
    def total(parts: Sequence[LoadCounters]) -> LoadCounters:
        out = LoadCounters()
        for part in parts:
            for name, value in asdict(part).items():
                if name == "errors":
                    out.errors += value[: max(0, 10 - len(out.errors))]
                elif name in ("max_lag_ms", "connect_s", "prepare_late_s", "play_s", "drain_s"):
                    setattr(out, name, max(getattr(out, name), value))
                else:
                    setattr(out, name, getattr(out, name) + value)
        return out


class LampLink(asyncio.Protocol):
    """One lamp's connection: the CONNACK, its PUBACKs, its keep-alive."""

    def __init__(
        self,
        spec: LampSpec,
        counters: LoadCounters,
        version: int,
        on_lost: Callable[[LampLink], None] | None = None,
    ) -> None:
        self.spec, self.counters, self.version, self.on_lost = spec, counters, version, on_lost
        self.transport: asyncio.Transport | None = None
        self.reader = frames.FrameReader()
        self.connack: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.inflight: set[int] = set()
        self.next_id = 0
        self.last_sent = time.monotonic()
        self.open = False
        self.closing = False
        self.prefix = f"lamps/{spec.site_id}/{spec.lamp_id}/"
        self.topics: dict[tuple[str, int, bool], frames.TopicFrames] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 - a TCP transport
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for packet in self.reader.feed(data):
            if packet.kind == frames.PUBACK:
                packet_id, reason = frames.puback_of(packet)
                if packet_id in self.inflight:
                    self.inflight.discard(packet_id)
                    if reason >= 0x80:
                        self.counters.ack_refused += 1
                    else:
                        self.counters.acked += 1
            elif packet.kind == frames.PINGRESP:
                self.counters.pongs += 1
            elif packet.kind == frames.CONNACK and not self.connack.done():
                self.connack.set_result(frames.connack_code(packet))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.open and not self.closing:
            self.counters.lost += 1
            if len(self.counters.errors) < 10:
                self.counters.errors.append(f"{self.spec.lamp_id} lost: {exc}")
            if self.on_lost is not None:
                self.on_lost(self)
        self.open = False
        if not self.connack.done():
            self.connack.set_exception(ConnectionError(f"closed before CONNACK: {exc}"))

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if self.transport is None or not self.open:
            self.counters.dropped += 1
            return
        if not topic.startswith(self.prefix):
            raise ValueError(f"{topic} is not {self.spec.lamp_id}'s to publish")
        key = (topic[len(self.prefix) :], qos, retain)
        framer = self.topics.get(key)
        if framer is None:
            framer = self.topics[key] = frames.TopicFrames(topic, qos, retain, self.version)
        if qos:
            self.next_id = self.next_id % 0xFFFF + 1
            self.inflight.add(self.next_id)
            self.transport.write(framer.frame(payload, self.next_id))
            self.counters.sent_qos1 += 1
        else:
            self.transport.write(framer.frame(payload))
            self.counters.sent_qos0 += 1
        self.last_sent = time.monotonic()

    def ping(self) -> None:
        if self.transport is not None and self.open:
            self.transport.write(frames.PINGREQ_FRAME)
            self.counters.pings += 1
            self.last_sent = time.monotonic()

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            if self.open:
                self.transport.write(frames.DISCONNECT_FRAME)
            self.transport.close()


class LoadWorker:
    """One process's share of the fleet, driven by commands from :class:`LoadFleet`."""

    def __init__(self, specs: Sequence[LampSpec], version: int, keepalive_s: int) -> None:
        self.specs, self.version, self.keepalive_s = specs, version, keepalive_s
        self.counters = LoadCounters()
        self.links: dict[str, LampLink] = {}
        self.closing = False
        self._reconnects: set[asyncio.Future[None]] = set()

    async def _open(self, spec: LampSpec, timeout_s: float) -> LampLink:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((spec.source, 0))
            await asyncio.wait_for(loop.sock_connect(sock, (spec.host, spec.port)), timeout_s)
            _, link = await loop.create_connection(
                lambda: LampLink(spec, self.counters, self.version, self._lost), sock=sock
            )
        except BaseException:
            sock.close()
            raise
        assert link.transport is not None  # noqa: S101 - set by connection_made
        link.transport.write(
            frames.connect(
                f"lamp-{spec.lamp_id}",
                username=spec.lamp_id,
                password=spec.password,
                keepalive_s=self.keepalive_s,
                version=self.version,
            )
        )
        return link

    async def connect(self, concurrency: int, timeout_s: float) -> LoadCounters:
        """Connect every lamp, ``concurrency`` handshakes at a time; retry refusals until
        ``timeout_s`` (a broker reads its password file asynchronously after a reload)."""
        started = time.monotonic()
        deadline = started + timeout_s
        gate = asyncio.Semaphore(concurrency)

        async def one(spec: LampSpec) -> None:
            while True:
                async with gate:
                    link: LampLink | None = None
                    try:
                        link = await self._open(spec, 10)
                        code = await asyncio.wait_for(link.connack, 10)
                    except (OSError, TimeoutError, ConnectionError) as exc:
                        code, error = -1, f"{type(exc).__name__}: {exc}"
                        if link is not None:
                            link.close()
                    else:
                        if code == 0:
                            link.open = True
                            self.links[spec.lamp_id] = link
                            self.counters.connected += 1
                            return
                        link.close()
                        error = f"CONNACK {code:#x}"
                if (code not in RETRY_CODES and code != -1) or time.monotonic() > deadline:
                    if code in RETRY_CODES:
                        self.counters.refused += 1
                    else:
                        self.counters.failed += 1
                    if len(self.counters.errors) < 10:
                        self.counters.errors.append(f"{spec.lamp_id}: {error}")
                    return
                await asyncio.sleep(0.5)

        await asyncio.gather(*(one(spec) for spec in self.specs))
        self.counters.connect_s = time.monotonic() - started
        return self.counters

    def _lost(self, link: LampLink) -> None:
        if not self.closing:
            task = asyncio.ensure_future(self._reconnect(link.spec))
            self._reconnects.add(task)
            task.add_done_callback(self._reconnects.discard)

    async def _reconnect(self, spec: LampSpec) -> None:
        """Back after 1 s, then 2, 4... up to 30 s between tries, as firmware retries."""
        delay = 1.0
        while not self.closing:
            await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311 - jitter only
            link: LampLink | None = None
            try:
                link = await self._open(spec, 10)
                code = await asyncio.wait_for(link.connack, 10)
            except (OSError, TimeoutError, ConnectionError):
                code = -1
            if link is not None and code == 0 and not self.closing:
                link.open = True
                self.links[spec.lamp_id] = link
                self.counters.reconnected += 1
                return
            if link is not None:
                link.close()
            delay = min(delay * 2, 30.0)

    def snapshot(self) -> LoadCounters:
        self.counters.open_now = sum(link.open for link in self.links.values())
        return self.counters

    async def keepalive(self) -> None:
        """PINGREQ from every lamp that sent nothing for a keep-alive (as paho does)."""
        while True:
            await asyncio.sleep(1.0)
            limit = time.monotonic() - self.keepalive_s
            for link in self.links.values():
                if link.last_sent < limit:
                    link.ping()

    async def play(
        self, config: SimConfig, progress: Callable[[LoadCounters], None]
    ) -> tuple[Counts, GroundTruth]:
        """Publish this shard of the simulation at its times; wait for the PUBACKs.

        Every lamp's generator is started (its first message made) before the start: for
        15,000 lamps that is over a second of CPU, which would otherwise be lag."""
        sim = Simulation(config)
        messages = sim.messages()
        first = next(messages, None)
        c = self.counters
        start_s = config.start_ms / 1000
        c.prepare_late_s = max(0.0, time.time() - start_s)
        next_progress = time.time() + 1.0
        links = self.links
        for m in itertools.chain([first] if first is not None else [], messages):
            due = start_s + m.at_ms / 1000
            now = time.time()
            if due > now:
                # Wake at most every TICK_S: at a worker's 2,000 messages/s, one wake-up per
                # message cost more CPU than the message itself.
                await asyncio.sleep(max(due - now, TICK_S))
                now = time.time()
            lag_ms = (now - due) * 1000
            c.max_lag_ms = max(c.max_lag_ms, lag_ms)
            c.lag_over_100ms += lag_ms > 100
            link = links.get(m.lamp_id)
            if link is not None:
                link.publish(m.topic, m.payload, m.qos, m.retain)
            c.published += 1
            c.junk += not m.valid
            if c.published % 256 == 0:
                if now >= next_progress:
                    progress(c)
                    next_progress = now + 1.0
                await asyncio.sleep(0)  # let the sockets drain and the PUBACKs in
        c.play_s = time.time() - start_s  # from the scheduled start to the last message
        drained = time.monotonic()
        while c.unacked > 0 and time.monotonic() - drained < 60:
            await asyncio.sleep(0.05)
        c.drain_s = time.monotonic() - drained
        return sim.counts, sim.truth

    async def close(self) -> None:
        self.closing = True
        for task in self._reconnects:
            task.cancel()
        for link in self.links.values():
            link.close()
        await asyncio.sleep(0.2)


# -- the worker process ---------------------------------------------------------------------


def _raise_nofile(wanted: int) -> int:
    """Soft RLIMIT_NOFILE up to the hard one (raising the hard one needs CAP_SYS_RESOURCE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _worker_main(
    pipe: Connection, specs: list[LampSpec], version: int, keepalive_s: int
) -> None:  # pragma: no cover - runs in a child process, exercised by the integration test
    _raise_nofile(len(specs) + RESERVED_FDS)
    asyncio.run(_serve(pipe, LoadWorker(specs, version, keepalive_s)))


async def _serve(pipe: Connection, worker: LoadWorker) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

    def read() -> None:
        try:
            inbox.put_nowait(pipe.recv())
        except (EOFError, OSError):  # the parent is gone: so are we
            loop.remove_reader(pipe.fileno())
            inbox.put_nowait(("close", None))

    loop.add_reader(pipe.fileno(), read)
    pinger: asyncio.Task[None] | None = None
    try:
        while True:
            command = await inbox.get()
            if command[0] == "connect":
                await worker.connect(command[1], command[2])
                pinger = pinger or asyncio.create_task(worker.keepalive())
                pipe.send(("connected", worker.snapshot()))
            elif command[0] == "play":
                counts, truth = await worker.play(command[1], lambda c: pipe.send(("progress", c)))
                pipe.send(("played", worker.snapshot(), counts, truth))
            elif command[0] == "stats":
                pipe.send(("stats", worker.snapshot()))
            elif command[0] == "close":
                await worker.close()
                with contextlib.suppress(OSError):
                    pipe.send(("closed", worker.counters))
                return
    finally:
        if pinger is not None:
            pinger.cancel()
        loop.remove_reader(pipe.fileno())


# -- the parent -----------------------------------------------------------------------------


@dataclass
class PlayResult:
    counters: LoadCounters
    counts: Counts
    truth: GroundTruth


class LoadFleet:
    """Lamps spread over ``processes`` workers: lamp ``i`` goes to worker ``i % processes``,
    which is shard ``i % processes`` of the simulation (``SimConfig(shard=, shards=)``)."""

    def __init__(
        self,
        lamps: Sequence[LampSpec],
        processes: int,
        *,
        version: int = frames.MQTT5,
        keepalive_s: int = 30,
    ) -> None:
        self.lamps, self.processes = lamps, max(1, min(processes, len(lamps)))
        self.version, self.keepalive_s = version, keepalive_s
        self._pipes: list[Connection] = []
        self._procs: list[multiprocessing.process.BaseProcess] = []
        self._inboxes: list[asyncio.Queue[tuple[Any, ...]]] = []
        self.last: list[LoadCounters] = [LoadCounters() for _ in range(self.processes)]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a running event loop
        loop = asyncio.get_running_loop()
        for k in range(self.processes):
            ours, theirs = context.Pipe()
            proc = context.Process(
                target=_worker_main,
                args=(
                    theirs,
                    list(self.lamps[k :: self.processes]),
                    self.version,
                    self.keepalive_s,
                ),
                name=f"mqtt-load-{k}",
                daemon=True,
            )
            proc.start()
            theirs.close()
            inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
            loop.add_reader(ours.fileno(), self._reader(ours, inbox, proc))
            self._pipes.append(ours)
            self._procs.append(proc)
            self._inboxes.append(inbox)

    @staticmethod
    def _reader(
        pipe: Connection, inbox: asyncio.Queue[tuple[Any, ...]], proc: Any
    ) -> Callable[[], None]:
        def read() -> None:
            try:
                inbox.put_nowait(pipe.recv())
            except (EOFError, OSError):
                asyncio.get_running_loop().remove_reader(pipe.fileno())
                inbox.put_nowait(("died", proc.exitcode))

        return read

    async def _answers(
        self, kind: str, on_progress: Callable[[int, LoadCounters], None] | None = None
    ) -> list[tuple[Any, ...]]:
        async def one(k: int) -> tuple[Any, ...]:
            while True:
                message = await self._inboxes[k].get()
                if message[0] == "died":
                    raise ConnectionError(f"load worker {k} died (exit code {message[1]})")
                if message[0] in ("progress", "connected", "played", "stats", "closed"):
                    self.last[k] = message[1]
                if message[0] == kind:
                    return message
                if message[0] == "progress" and on_progress is not None:
                    on_progress(k, message[1])

        return list(await asyncio.gather(*(one(k) for k in range(self.processes))))

    def _send(self, *command: Any) -> None:
        for pipe in self._pipes:
            pipe.send(command)

    async def connect(self, concurrency: int = 32, timeout_s: float = 120.0) -> LoadCounters:
        """Every lamp connected (``concurrency`` handshakes per worker at a time)."""
        self._send("connect", concurrency, timeout_s)
        return LoadCounters.total([m[1] for m in await self._answers("connected")])

    async def play(
        self, config: SimConfig, on_progress: Callable[[LoadCounters], None] | None = None
    ) -> PlayResult:
        """Play ``config`` (its ``start_ms`` is the wall time of its start) across the workers."""
        for k, pipe in enumerate(self._pipes):
            pipe.send(("play", replace(config, shard=k, shards=self.processes)))

        def progress(_k: int, _c: LoadCounters) -> None:
            if on_progress is not None:
                on_progress(LoadCounters.total(self.last))

        answers = await self._answers("played", progress)
        counts, truth = Counts(), GroundTruth()
        for _, _, part, part_truth in answers:
            _add_counts(counts, part)
            truth.expected += part_truth.expected
            truth.non_incidents += part_truth.non_incidents
            truth.scenarios += part_truth.scenarios
        truth.expected.sort(key=lambda e: (e.due_ms, e.lamp_id))
        truth.scenarios.sort(key=lambda s: (s[1], s[0]))
        return PlayResult(LoadCounters.total([a[1] for a in answers]), counts, truth)

    async def stats(self) -> LoadCounters:
        self._send("stats")
        return LoadCounters.total([m[1] for m in await self._answers("stats")])

    async def close(self) -> LoadCounters | None:
        """Disconnect every lamp and end the workers."""
        result: LoadCounters | None = None
        with contextlib.suppress(ConnectionError, OSError, BrokenPipeError):
            self._send("close")
            result = LoadCounters.total(
                [m[1] for m in await asyncio.wait_for(self._answers("closed"), 60)]
            )
        loop = asyncio.get_running_loop()
        for pipe, proc in zip(self._pipes, self._procs, strict=True):
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(pipe.fileno())
            pipe.close()
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        self._pipes.clear()
        self._procs.clear()
        return result


def _add_counts(total: Counts, part: Counts) -> None:
    for name in ("published", "valid", "junk", "duplicates", "delayed"):
        setattr(total, name, getattr(total, name) + getattr(part, name))
    for mapping, other in (
        (total.by_type, part.by_type),
        (total.junk_by_reason, part.junk_by_reason),
    ):
        for key, value in other.items():
            mapping[key] = mapping.get(key, 0) + value


def start_margin_s(lamps: int) -> float:
    """How far ahead to set a play's start so every worker has started its lamps' generators
    before it: about 110 µs of CPU per lamp, on the cores left by the machine's other work
    (the load average: at 15 on two cores, 100,000 lamps took 43 s)."""
    cores = os.cpu_count() or 1
    busy = max(1.0, os.getloadavg()[0] / cores)
    return 2.0 + lamps * 150e-6 * busy * 2 / cores


def processes_for(lamps: int, per_process: int = 15_000) -> int:
    """Workers needed so that each stays well inside a 20,000-descriptor limit, and at least
    two so the frames and the simulation's generation are not one core's work."""
    return max(2 if lamps > 2_000 else 1, -(-lamps // per_process))


def nofile_limit(pid: int | None = None) -> int:
    """The soft open-files limit of a process (``/proc/<pid>/limits``), ours by default."""
    if pid is None:
        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    with open(f"/proc/{pid}/limits") as handle:
        for line in handle:
            if line.startswith("Max open files"):
                value = line.split()[3]
                return 2**62 if value == "unlimited" else int(value)
    raise ValueError(f"no open-files limit in /proc/{pid}/limits")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (children not included)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class Subscriber(asyncio.Protocol):
    """A QoS 1 subscriber on raw frames (what the connector's share of a broker receives):
    counts the PUBLISHes delivered and acknowledges each, without paho's cost per message."""

    def __init__(self, version: int = frames.MQTT5) -> None:
        self.version = version
        self.reader = frames.FrameReader()
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.received = 0
        self.by_topic: dict[str, int] = {}
        self.keep_topics = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # noqa: S101 - a TCP transport
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None  # noqa: S101 - connected
        acks = []
        for packet in self.reader.feed(data):
            if packet.kind == frames.PUBLISH:
                self.received += 1
                qos = (packet.flags >> 1) & 0x03
                if qos or self.keep_topics:
                    message = frames.publish_of(packet, self.version)
                    if qos:
                        acks.append(frames.puback(message.packet_id))
                    if self.keep_topics:
                        self.by_topic[message.topic] = self.by_topic.get(message.topic, 0) + 1
            elif packet.kind == frames.CONNACK and frames.connack_code(packet) != 0:
                self.ready.set_exception(
                    ConnectionError(f"CONNACK {frames.connack_code(packet):#x}")
                )
            elif packet.kind == frames.SUBACK and not self.ready.done():
                self.ready.set_result(packet.body[-1])
        if acks:
            self.transport.write(b"".join(acks))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed: {exc}"))

    @classmethod
    async def open(  # noqa: PLR0917 - an address, an account, a topic
        cls, host: str, port: int, username: str, password: str, topic: str,
        version: int = frames.MQTT5, client_id: str | None = None,
    ) -> Subscriber:  # fmt: skip
        loop = asyncio.get_running_loop()
        _, sub = await loop.create_connection(lambda: cls(version), host, port)
        assert sub.transport is not None  # noqa: S101 - set by connection_made
        sub.transport.write(
            frames.connect(
                client_id or f"load-reader-{os.getpid()}-{port}",
                username=username,
                password=password,
                keepalive_s=600,
                version=version,
            )
            + frames.subscribe(1, topic, 1, version)
        )
        granted = await asyncio.wait_for(sub.ready, 30)
        if granted >= 0x80:
            raise ConnectionError(f"subscription to {topic} refused ({granted:#x})")
        return sub

    def close(self) -> None:
        if self.transport is not None:
            self.transport.write(frames.DISCONNECT_FRAME)
            self.transport.close()
