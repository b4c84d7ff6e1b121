"""The query API as a real process (`veilleuse api`) on a scratch database, its own topics and
its own search alias, with a token of every role and a small seeded history."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from api.tokens import create_token, revoke_token
from devtools.processes import PipelineProcess
from pipeline.ports import free_port
from pipeline.settings import Settings
from pipeline.topics import ALERT_ACKS, LAMP_MESSAGES, ensure_topics, ensure_topics_sync
from tests.integration.databases import scratch_database

SITE_A, SITE_B = "site-a", "site-b"
HOUR = timedelta(hours=1)
NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
YESTERDAY = NOW.replace(hour=8) - timedelta(days=1)  # its hours stay within one day


@dataclass
class ApiRun:
    settings: Settings
    env: dict[str, str]
    url: str
    tokens: dict[str, str]
    process: PipelineProcess

    def client(self, role: str | None) -> httpx.Client:
        headers = {} if role is None else {"Authorization": f"Bearer {self.tokens[role]}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=15)

    def get(self, role: str | None, path: str, **params: Any) -> httpx.Response:
        with self.client(role) as client:
            return client.get(path, params=params)

    def post(self, role: str | None, path: str, body: Any = None) -> httpx.Response:
        with self.client(role) as client:
            return client.post(path, json=body)


def seed(conninfo: str) -> None:
    """Two sites' lamps, alerts (one open per site, one resolved) and hours of activity."""
    with psycopg.connect(conninfo) as conn:
        for lamp, site in (("L-A1", SITE_A), ("L-A2", SITE_A), ("L-B1", SITE_B)):
            conn.execute(
                "INSERT INTO lamps (lamp_id, site_id, last_seen_at, firmware) "
                "VALUES (%s, %s, %s, '1.4.2')",
                (lamp, site, YESTERDAY + HOUR),
            )
        alerts = (
            ("a-open", "fall_confirmed", "critical", SITE_A, "L-A1", NOW - HOUR, "raised", None),
            ("a-done", "help_requested", "critical", SITE_A, "L-A2", NOW - 2 * HOUR, "resolved",
             NOW - HOUR),
            ("b-open", "help_requested", "critical", SITE_B, "L-B1", NOW - 3 * HOUR, "raised",
             None),
        )  # fmt: skip
        for alert_id, kind, severity, site, lamp, started, state, resolved in alerts:
            conn.execute(
                "INSERT INTO alerts (alert_id, kind, severity, site_id, lamp_id, "
                "incident_started_at, state, raised_at, resolved_at, details) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (alert_id, kind, severity, site, lamp, started, state, started, resolved,
                 Jsonb({"zone": "floor"})),
            )  # fmt: skip
            conn.execute(
                "INSERT INTO alert_events (alert_id, step, emitted_at, details) "
                "VALUES (%s, 'raised', %s, '{}')",
                (alert_id, started),
            )
            if resolved is not None:
                conn.execute(
                    "INSERT INTO alert_events (alert_id, step, emitted_at, details) "
                    "VALUES (%s, 'resolved', %s, '{}')",
                    (alert_id, resolved),
                )
        for hour in range(3):
            start = YESTERDAY + hour * HOUR
            conn.execute(
                "INSERT INTO activity_hourly (lamp_id, hour_start, site_id, messages, "
                "motion_events, active_minutes, minutes_in_bed, minutes_absent, bathroom_visits, "
                "falls, help_requests, temperature_readings, temperature_min, temperature_mean, "
                "temperature_max, last_seen_at, firmware, emitted_at, source_partition, "
                "source_offset) VALUES (%s, %s, %s, %s, 10, 5, 20, 0, 1, 0, 0, 1, 20.0, 20.0, "
                "20.0, %s, '1.4.2', now(), 0, %s)",
                ("L-A1", start, SITE_A, 100 + hour, start + timedelta(minutes=59), hour),
            )
        conn.execute(
            "INSERT INTO activity_daily (lamp_id, day, site_id, hours, messages, motion_events, "
            "active_minutes, minutes_in_bed, minutes_absent, bathroom_visits, falls, "
            "help_requests, temperature_readings, temperature_min, temperature_mean, "
            "temperature_max, last_seen_at) VALUES (%s, %s, %s, 3, 303, 30, 15, 60, 0, 3, 0, 0, "
            "3, 20.0, 20.0, 20.0, %s)",
            ("L-A1", YESTERDAY.date(), SITE_A, YESTERDAY + 3 * HOUR),
        )


@pytest.fixture(scope="module")
def api_run(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiRun]:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    with scratch_database(settings, "api") as database:
        scoped = database.model_copy(
            update={"kafka": database.kafka.model_copy(update={"topic_prefix": prefix})}
        )
        ensure_topics_sync(scoped)
        conninfo = scoped.postgres.conninfo()
        seed(conninfo)
        roles = {
            "support": ("support", ()),
            "staff_a": ("staff", (SITE_A,)),
            "staff_b": ("staff", (SITE_B,)),
            "admin": ("admin", ()),
            "revoked": ("support", ()),
        }
        tokens = {
            name: create_token(conninfo, name, role, sites) for name, (role, sites) in roles.items()
        }
        revoke_token(conninfo, "revoked")
        tokens["forged"] = "vl_" + "A" * 43
        port = free_port()
        env = {
            "VEILLEUSE_POSTGRES__DATABASE": scoped.postgres.database,
            "VEILLEUSE_KAFKA__TOPIC_PREFIX": prefix,
            "VEILLEUSE_SINK__ELASTICSEARCH_INDEX_PREFIX": f"{prefix[:-1]}-messages",
            "VEILLEUSE_DETECTION__APP_ID": f"{prefix}detection",
            "VEILLEUSE_API__PORT": str(port),
            "VEILLEUSE_API__TOKEN_CACHE_S": "0",
            "VEILLEUSE_LOG_FORMAT": "json",
        }
        log_file = Path(tmp_path_factory.mktemp("api")) / "api.log"
        process = PipelineProcess(["api"], env, log_file).start()
        run = ApiRun(scoped, env, f"http://127.0.0.1:{port}", tokens, process)
        try:
            wait_until_ready(run)
            yield run
        finally:
            process.stop()


def wait_until_ready(run: ApiRun, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert run.process.alive(), f"the API exited:\n{run.process.tail(40)}"
        try:
            if run.get(None, "/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"the API is not ready:\n{run.process.tail(40)}"
        time.sleep(0.2)


async def start_api(settings: Settings, log_file: Path, **env: str) -> ApiRun:
    """The API as a process on ``settings``' database (migrated) with a support token, ready;
    for the outage tests of the stores it reads (stop it with ``run.process.stop()``)."""
    await ensure_topics(settings, (ALERT_ACKS, LAMP_MESSAGES))  # its /readyz asks for them
    conninfo = settings.postgres.conninfo()
    tokens = {"support": create_token(conninfo, f"outage-{uuid.uuid4().hex[:6]}", "support")}
    port = free_port()
    environment = {
        "VEILLEUSE_POSTGRES__DATABASE": settings.postgres.database,
        "VEILLEUSE_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "VEILLEUSE_SINK__ELASTICSEARCH_INDEX_PREFIX": settings.sink.elasticsearch_index_prefix,
        "VEILLEUSE_API__PORT": str(port),
        "VEILLEUSE_API__TOKEN_CACHE_S": "0",
        # Short, so that a request while a store is down answers 503 quickly.
        "VEILLEUSE_API__REQUEST_TIMEOUT_S": "3",
        "VEILLEUSE_LOG_FORMAT": "json",
        **env,
    }
    process = PipelineProcess(["api"], environment, log_file).start()
    run = ApiRun(settings, environment, f"http://127.0.0.1:{port}", tokens, process)
    await asyncio.to_thread(wait_until_ready, run, 60)
    return run
