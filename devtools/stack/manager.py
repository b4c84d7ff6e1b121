"""``veilleuse stack up | down | status | logs``: the local stack as a whole."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum

from devtools.stack.context import StackContext
from devtools.stack.elasticsearch import Elasticsearch
from devtools.stack.kafka import Kafka
from devtools.stack.mosquitto import Mosquitto
from devtools.stack.postgres import Postgres
from devtools.stack.redis import Redis
from devtools.stack.service import Service
from pipeline.errors import StackError
from pipeline.settings import Settings

SERVICE_TYPES: tuple[type[Service], ...] = (Kafka, Elasticsearch, Postgres, Redis, Mosquitto)
SERVICE_NAMES = tuple(cls.name for cls in SERVICE_TYPES)


class State(StrEnum):
    UP = "up"  # ours, running and answering
    STARTED = "started"  # ours, started by this very command
    EXTERNAL = "external"  # answering, but not started by us: left alone by `down`
    STARTING = "starting"  # ours, running, not answering yet
    DOWN = "down"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Report:
    service: str
    state: State
    url: str
    detail: str = ""
    pid: int | None = None

    def line(self) -> str:
        pid = f" pid={self.pid}" if self.pid else ""
        detail = f"  ({self.detail})" if self.detail else ""
        return f"{self.service:<14}{self.state.value:<9}{self.url}{pid}{detail}"


def services(settings: Settings, only: tuple[str, ...] = ()) -> list[Service]:
    unknown = set(only) - set(SERVICE_NAMES)
    if unknown:
        raise StackError(", ".join(sorted(unknown)), f"unknown service; known: {SERVICE_NAMES}")
    ctx = StackContext(settings)
    return [cls(ctx) for cls in SERVICE_TYPES if not only or cls.name in only]


def status(settings: Settings, only: tuple[str, ...] = ()) -> list[Report]:
    """What is really there: the pid files are checked against /proc, and every service probed."""

    def one(service: Service) -> Report:
        pid = service.pid()
        ok, detail = service.healthy()
        if pid is not None:
            return Report(
                service.name,
                State.UP if ok else State.STARTING,
                service.url,
                "" if ok else detail,
                pid,
            )
        if ok:
            return Report(service.name, State.EXTERNAL, service.url, "not started by veilleuse")
        return Report(service.name, State.DOWN, service.url, detail)

    with ThreadPoolExecutor(len(SERVICE_TYPES)) as pool:
        return list(pool.map(one, services(settings, only)))


def up(settings: Settings, only: tuple[str, ...] = ()) -> list[Report]:
    """Install what is missing, start what is not running, wait until each answers."""
    chosen = services(settings, only)
    if chosen:
        chosen[0].ctx.ensure_layout()
    reports: dict[str, Report] = {}
    to_wait: list[Service] = []
    started: dict[str, float] = {}
    for service in chosen:
        pid = service.pid()
        if pid is not None:
            to_wait.append(service)  # ours and running: only its health is left to check
            continue
        if service.port_in_use() or not service.managed:
            ok, detail = service.healthy()
            if ok:
                reports[service.name] = Report(
                    service.name, State.EXTERNAL, service.url, "not started by veilleuse"
                )
                continue
            where = "is in use by another program" if service.managed else "is not local"
            raise StackError(
                service.name, f"{service.host}:{service.port} {where} and does not answer: {detail}"
            )
        service.install()
        service.start()
        started[service.name] = time.monotonic()
        to_wait.append(service)

    deadline = time.monotonic() + settings.stack.start_timeout_s

    def wait(service: Service) -> Report:
        service.wait_until_healthy(deadline)
        service.after_start()
        if service.name not in started:
            return Report(service.name, State.UP, service.url, "already running", service.pid())
        detail = f"ready {time.monotonic() - started[service.name]:.1f}s after its start"
        return Report(service.name, State.STARTED, service.url, detail, service.pid())

    with ThreadPoolExecutor(max(1, len(to_wait))) as pool:
        for report in pool.map(wait, to_wait):
            reports[report.service] = report
    return [reports[s.name] for s in chosen]


def down(settings: Settings, only: tuple[str, ...] = ()) -> list[Report]:
    """Stop what we started (and only that), in reverse order of start-up."""
    reports = []
    for service in reversed(services(settings, only)):
        was_ours = service.stop()
        state = State.STOPPED if was_ours else State.DOWN
        detail = "" if was_ours else "was not running under veilleuse"
        reports.append(Report(service.name, state, service.url, detail))
    return list(reversed(reports))
