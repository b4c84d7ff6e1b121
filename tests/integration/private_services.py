"""A test's own instance of a stack service (Kafka, Redis, PostgreSQL), to stop, kill and start as
it likes: the shared stack's services are never touched (other test runs use them).

Each instance is the stack's own service class (the same configuration, binaries and jars) with
its folder under ``<stack home>/tests/`` (the service account the stack runs services as, when
we are root, reaches it; a pytest ``tmp_path`` it cannot) and ports of its own.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from devtools.stack.context import StackContext
from devtools.stack.kafka import Kafka
from devtools.stack.service import Service
from pipeline.ports import free_port
from pipeline.settings import Settings

START_TIMEOUT_S = 90.0

S = TypeVar("S", bound=Service)


def listening_port() -> int:
    """A free port below the kernel's ephemeral range. ``free_port()`` answers one inside it,
    which any outgoing connection of this busy, shared machine may take as its source port in
    the seconds a service needs before it listens, or while the test has it stopped."""
    low, _ = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    for _ in range(200):
        port = random.randrange(20_000, max(20_001, low))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    return free_port()


@contextlib.contextmanager
def private_service(
    settings: Settings,
    build: Callable[[StackContext], S],
    point: Callable[[Settings], Settings],
    keep_log: Path | None = None,
) -> Iterator[S]:
    """A running instance of the service ``build`` makes, on settings that ``point`` derives
    from ``settings`` and a fresh folder (ports: :func:`listening_port`); stopped and removed
    afterwards, its log copied to ``keep_log`` first."""
    home = settings.stack.home.resolve() / "tests" / f"{uuid.uuid4().hex[:10]}"
    own = point(
        settings.model_copy(update={"stack": settings.stack.model_copy(update={"home": home})})
    )
    ctx = StackContext(own)
    ctx.ensure_layout()
    service = build(ctx)
    try:
        start(service)
        service.after_start()
        yield service
    finally:
        service.stop()
        if keep_log is not None:
            with contextlib.suppress(OSError):
                shutil.copy(service.log_file, keep_log)
        shutil.rmtree(home, ignore_errors=True)


def start(service: Service) -> float:
    """Start ``service`` and wait until it answers; the seconds that took."""
    began = time.monotonic()
    service.start()
    service.wait_until_healthy(began + START_TIMEOUT_S)
    return time.monotonic() - began


class PrivateKafka(Kafka):
    """A single-node Kafka of one test: the stack's jars (no download), everything else (data,
    configuration, certificates, log, pid) in its own folder, on free ports."""

    def __init__(self, ctx: StackContext, jars: Path) -> None:
        super().__init__(ctx)
        self.jars = jars

    @property
    def libs(self) -> Path:
        return self.jars

    def server_properties(self) -> str:
        # After a crash the restarted node waits for its previous incarnation's broker session
        # to expire (9 s by default) before it serves: shortened, to keep the tests short. The
        # clients see the same outage, only briefer.
        return super().server_properties() + (
            "broker.session.timeout.ms=3000\nbroker.heartbeat.interval.ms=1000\n"
        )


def own_kafka(own: Settings) -> Settings:
    """``own`` pointed at a Kafka of its own (client, controller and secure ports)."""
    return own.model_copy(
        update={
            "kafka": own.kafka.model_copy(
                update={"bootstrap_servers": f"127.0.0.1:{listening_port()}"}
            ),
            "stack": own.stack.model_copy(
                update={
                    "kafka_controller_port": listening_port(),
                    "kafka_secure_port": listening_port(),
                    "kafka_heap": "384m",
                }
            ),
        }
    )


def crash(kafka: PrivateKafka) -> None:
    """SIGKILL the whole process group, as a machine failure would."""
    pid = kafka.pid()
    assert pid is not None, "the test's Kafka is not running"
    os.killpg(pid, signal.SIGKILL)
    kafka.stop()  # reaps it and forgets its pid
