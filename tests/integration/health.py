"""What the outage tests read from a running component: its probes, metrics and an API's
answers, sampled while a store is down and after it is back."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import httpx

LOG_LIMIT = 1_000_000  # bytes: an outage must leave kilobytes of log, not megabytes


def probe(port: int, path: str) -> tuple[int, dict[str, Any]]:
    """``GET /readyz`` or ``/livez`` of a component: (status, JSON body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read())


def metric(port: int, name: str) -> float | None:
    """The sum of a metric's samples whose line starts with ``name`` (None: no such sample)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    ]
    return sum(values) if values else None


def api_status(url: str, token: str, path: str) -> tuple[int, str]:
    """An API request's status and body (0: no answer at all)."""
    try:
        response = httpx.get(
            f"{url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=15
        )
    except httpx.TransportError as exc:
        return 0, str(exc)
    return response.status_code, response.text


@dataclass
class Outage:
    """What was seen while a store was down."""

    not_ready: list[dict[str, Any]] = field(default_factory=list)  # the sink's /readyz 503s
    not_alive: list[dict[str, Any]] = field(default_factory=list)  # /livez 503s: must stay empty
    api: list[tuple[int, str]] = field(default_factory=list)  # the API's answers
    ready_gauge: list[float | None] = field(default_factory=list)
    last_progress: list[float | None] = field(default_factory=list)
    lag: list[float | None] = field(default_factory=list)

    def sample(self, port: int, component: str, api: tuple[str, str, str] | None) -> None:
        """One look at the component on ``port`` (metric prefix ``component``) and the API."""
        status, body = probe(port, "/readyz")
        if status != 200:
            self.not_ready.append(body)
        status, body = probe(port, "/livez")
        if status != 200:
            self.not_alive.append(body)
        self.ready_gauge.append(metric(port, f"veilleuse_{component}_ready "))
        self.last_progress.append(
            metric(port, f"veilleuse_{component}_last_progress_timestamp_seconds ")
        )
        self.lag.append(metric(port, f"veilleuse_{component}_consumer_lag{{"))
        if api is not None:
            self.api.append(api_status(*api))
