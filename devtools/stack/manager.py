"""``veilleuse stack up | down | status | logs``: the local stack as a whole."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum

from devtools.stack.chromium import Chromium
from devtools.stack.context import StackContext
from devtools.stack.elasticsearch import Elasticsearch
from devtools.stack.kafka import Kafka
from devtools.stack.mosquitto import Mosquitto, stack_brokers, stray_brokers
from devtools.stack.postgres import Postgres
from devtools.stack.redis import Redis
from devtools.stack.service import Service
from pipeline.errors import StackError
from pipeline.settings import Settings

SERVICE_TYPES: tuple[type[Service], ...] = (Kafka, Elasticsearch, Postgres, Redis, Mosquitto)
SERVICE_NAMES = tuple(cls.name for cls in SERVICE_TYPES)
# Tools are installed and reported like services, but have no process: `down` leaves them be.
TOOL_TYPES: tuple[type[Chromium], ...] = (Chromium,)
TOOL_NAMES = tuple(cls.name for cls in TOOL_TYPES)


class State(StrEnum):
    UP = "up"  # ours, running and answering
    STARTED = "started"  # ours, started by this very command
    EXTERNAL = "external"  # answering, but not started by us: left alone by `down`
    STARTING = "starting"  # ours, running, not answering yet
    DOWN = "down"
    STOPPED = "stopped"
    INSTALLED = "installed"  # a tool (no process): there, and it runs


# The states in which a service (or tool) can be used.
READY = frozenset({State.UP, State.STARTED, State.EXTERNAL, State.INSTALLED})


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
        return f"{self.service:<14}{self.state.value:<10}{self.url}{pid}{detail}"


def services(settings: Settings, only: tuple[str, ...] = ()) -> list[Service]:
    unknown = set(only) - set(SERVICE_NAMES)
    if unknown:
        raise StackError(", ".join(sorted(unknown)), f"unknown service; known: {SERVICE_NAMES}")
    return _instances(StackContext(settings), only)


def _instances(ctx: StackContext, only: tuple[str, ...]) -> list[Service]:
    """The services ``only`` names (all when empty); ``mosquitto``: every broker of the settings."""
    chosen: list[Service] = []
    for cls in SERVICE_TYPES:
        if only and cls.name not in only:
            continue
        chosen.extend(stack_brokers(ctx) if cls is Mosquitto else [cls(ctx)])
    return chosen


def _chosen(
    settings: Settings, only: tuple[str, ...]
) -> tuple[StackContext, list[Service], list[Chromium]]:
    """The services and tools that ``only`` names (all when empty), sharing one context."""
    known = SERVICE_NAMES + TOOL_NAMES
    unknown = set(only) - set(known)
    if unknown:
        raise StackError(", ".join(sorted(unknown)), f"unknown service; known: {known}")
    ctx = StackContext(settings)
    chosen_services = _instances(ctx, only)
    chosen_tools = [cls(ctx) for cls in TOOL_TYPES if not only or cls.name in only]
    return ctx, chosen_services, chosen_tools


def _tool_status(tool: Chromium) -> Report:
    version = tool.version()
    if version is None:
        return Report(tool.name, State.DOWN, tool.url, "not installed: run `veilleuse stack up`")
    return Report(tool.name, State.INSTALLED, tool.url, version)


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

    ctx, chosen, tools = _chosen(settings, only)
    with ThreadPoolExecutor(len(SERVICE_TYPES)) as pool:
        reports = list(pool.map(one, chosen))
    for stray in _strays(ctx, only):
        reports.append(
            Report(stray.name, State.UP, stray.url, "not in VEILLEUSE_MQTT__BROKERS", stray.pid())
        )
    return reports + [_tool_status(tool) for tool in tools]


def _strays(ctx: StackContext, only: tuple[str, ...]) -> list[Mosquitto]:
    return stray_brokers(ctx) if not only or Mosquitto.name in only else []


def up(settings: Settings, only: tuple[str, ...] = ()) -> list[Report]:
    """Install what is missing, start what is not running, wait until each answers."""
    ctx, chosen, tools = _chosen(settings, only)
    if chosen:
        ctx.ensure_layout()
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

    # Installed while the services warm up (a fresh machine's apt-get takes a minute).
    for tool in tools:
        installed = tool.install()
        version = tool.version() or "?"
        detail = f"{version}, installed by this command" if installed else version
        reports[tool.name] = Report(tool.name, State.INSTALLED, tool.url, detail)

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
    return [reports[s.name] for s in chosen] + [reports[t.name] for t in tools]


def down(settings: Settings, only: tuple[str, ...] = ()) -> list[Report]:
    """Stop what we started (and only that), in reverse order of start-up."""
    ctx, chosen, _ = _chosen(settings, only)  # tools: nothing to stop
    # A broker `up` started with a longer broker list than today's settings is stopped too.
    chosen += _strays(ctx, only)
    reports = []
    for service in reversed(chosen):
        was_ours = service.stop()
        state = State.STOPPED if was_ours else State.DOWN
        detail = "" if was_ours else "was not running under veilleuse"
        reports.append(Report(service.name, state, service.url, detail))
    return list(reversed(reports))
