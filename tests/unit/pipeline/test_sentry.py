"""Sentry, end to end without a Sentry: a real command fails and its event envelope reaches a
local HTTP endpoint standing in for the Sentry server (no service of the stack is needed: the
failure is PostgreSQL being unreachable, on a port nothing listens on)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sentry_server import SentryStandIn, sentry_stand_in

# Distinct values for every secret the settings hold: none may reach an event.
SECRETS = {
    "VEILLEUSE_POSTGRES__PASSWORD": "pg-secret-4f1d",
    "VEILLEUSE_MQTT__PASSWORD": "mqtt-secret-9a2c",
    "VEILLEUSE_KAFKA__SASL_PASSWORD": "kafka-secret-77b0",
    "VEILLEUSE_REDIS__PASSWORD": "redis-secret-31ee",
    "VEILLEUSE_ELASTICSEARCH__PASSWORD": "es-secret-0c5a",
    "VEILLEUSE_ELASTICSEARCH__API_KEY": "es-key-secret-6d19",
    "VEILLEUSE_NOTIFIER__WEBHOOK_SECRET": "hook-secret-e804",
    "VEILLEUSE_NOTIFIER__SMTP_PASSWORD": "smtp-secret-52aa",
}


@pytest.fixture
def sentry() -> Iterator[SentryStandIn]:
    with sentry_stand_in() as server:
        yield server


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_notifier(tmp_path: Path, dsn: str | None) -> subprocess.CompletedProcess[str]:
    """``veilleuse notifier`` in staging, with its PostgreSQL unreachable: it must fail."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("VEILLEUSE_") and "proxy" not in k.lower()
    }
    env |= SECRETS | {
        "VEILLEUSE_ENVIRONMENT": "staging",
        "VEILLEUSE_POSTGRES__PORT": str(closed_port()),
        "VEILLEUSE_NOTIFIER__METRICS_PORT": "0",
        "VEILLEUSE_STACK__HOME": str(tmp_path / "stack"),
    }
    if dsn is not None:
        env["VEILLEUSE_SENTRY__DSN"] = dsn
    return subprocess.run(
        [sys.executable, "-m", "cli", "notifier"],
        cwd=tmp_path,  # no .env of the repository
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_failing_component_reports_its_exception_with_component_and_environment(
    tmp_path: Path, sentry: SentryStandIn
) -> None:
    done = run_notifier(tmp_path, sentry.dsn)
    assert done.returncode != 0
    assert "OperationalError" in done.stderr  # the failure the event must describe
    events = sentry.events()
    assert len(events) == 1, [e.body[:300] for e in sentry.envelopes]
    (event,) = events
    assert sentry.envelopes[0].path == "/api/1/envelope/"
    assert "sentry_key=public" in sentry.envelopes[0].headers["X-Sentry-Auth"]
    assert event["tags"]["component"] == "notifier"
    assert event["environment"] == "staging"
    assert event["server_name"] == socket.gethostname()  # which replica: the pod's name
    exception = event["exception"]["values"][-1]
    assert exception["type"] == "OperationalError"
    assert exception["module"].startswith("psycopg")
    assert "Connection refused" in exception["value"] or "connection" in exception["value"]
    frames = exception["stacktrace"]["frames"]
    assert any(f.get("module") == "notifier.service" for f in frames)
    assert event["level"] == "error" and "user" not in event  # send_default_pii=False
    everything = b"".join(envelope.body for envelope in sentry.envelopes).decode()
    for name, secret in SECRETS.items():
        assert secret not in everything, name
    # The frames' variables were sent (scrubbed), so the scrubbing was put to the test.
    assert "[Filtered]" in everything


def test_without_a_dsn_nothing_is_sent(tmp_path: Path, sentry: SentryStandIn) -> None:
    done = run_notifier(tmp_path, None)
    assert done.returncode != 0
    assert "OperationalError" in done.stderr
    assert sentry.envelopes == []
