"""The notifier as real processes on the real Kafka, Redis and PostgreSQL, with a real webhook
receiver (http.server in a thread, verifying every delivery with the Standard Webhooks library,
as a receiving team does, and the deprecated X-Veilleuse-Signature too) and a real SMTP server.

aiosmtpd is not installed in the venv, so :class:`SmtpServer` is a minimal SMTP server written
with asyncio (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) on its own event loop in a thread.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from devtools.processes import PipelineProcess
from devtools.stack import manager
from notifier import staff
from notifier.channels import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WEBHOOK_ID_HEADER,
    SignatureError,
    verify_signature,
)
from pipeline import clients
from pipeline.settings import Settings, webhook_signing_key
from pipeline.topics import ALERT_ACKS, ALERTS, ensure_topics, topic_name
from schemas import encode, schema
from tests.conftest import under_ci
from tests.integration.databases import scratch_database

# A Standard Webhooks secret, as a receiving team is given it.
SECRET = "whsec_" + base64.b64encode(b"integration-test-secret-0123456789").decode()
READY = r"notifier assigned \["


# -- a webhook receiver ------------------------------------------------------------------------


@dataclass(frozen=True)
class Hook:
    path: str
    notification_id: str
    body: dict[str, Any]
    received_ms: int
    raw: bytes
    headers: dict[str, str]

    @property
    def alert_id(self) -> str:
        return str(self.body["alert_id"])

    @property
    def slot(self) -> int:
        return int(self.body["slot"])


class WebhookServer:
    """Records every POST; refuses (401) and counts those whose signatures do not verify."""

    def __init__(self) -> None:
        self.hooks: list[Hook] = []
        self.refused: list[str] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                now = time.time_ns() // 1_000_000
                headers = dict(self.headers.items())
                try:
                    Webhook(SECRET).verify(body, headers)
                    verify_signature(  # deprecated, still sent for one release
                        webhook_signing_key(SECRET),
                        body,
                        self.headers.get(SIGNATURE_HEADER),
                        self.headers.get(TIMESTAMP_HEADER),
                        now_ms=now,
                        tolerance_ms=60_000,
                    )
                except (WebhookVerificationError, SignatureError) as exc:
                    with server.lock:
                        server.refused.append(f"{type(exc).__name__}: {exc}")
                    self.send_response(401)
                    self.end_headers()
                    return
                notification_id = self.headers[WEBHOOK_ID_HEADER]
                hook = Hook(self.path, notification_id, orjson.loads(body), now, body, headers)
                with server.lock:
                    server.hooks.append(hook)
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def of(self, alert_id: str, path: str | None = None) -> list[Hook]:
        with self.lock:
            return [
                h for h in self.hooks if h.alert_id == alert_id and (path is None or h.path == path)
            ]

    def __enter__(self) -> WebhookServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# -- a minimal SMTP server (asyncio, in a thread) ----------------------------------------------


@dataclass(frozen=True)
class Mail:
    sender: str
    recipients: tuple[str, ...]
    message: Message

    @property
    def notification_id(self) -> str:
        return str(self.message["X-Veilleuse-Notification-Id"])


class SmtpServer:
    def __init__(self) -> None:
        self.mails: list[Mail] = []
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def reply(line: str) -> None:
            writer.write(line.encode() + b"\r\n")
            await writer.drain()

        sender, recipients = "", list[str]()
        await reply("220 test-smtp ready")
        while line := (await reader.readline()).decode().rstrip("\r\n"):
            verb = line.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                await reply("250 test-smtp")
            elif verb == "MAIL":
                sender, recipients = line.split(":", 1)[1].strip().strip("<>"), []
                await reply("250 OK")
            elif verb == "RCPT":
                recipients.append(line.split(":", 1)[1].strip().strip("<>"))
                await reply("250 OK")
            elif verb == "DATA":
                await reply("354 end with <CRLF>.<CRLF>")
                lines = []
                while (data := await reader.readline()) not in (b".\r\n", b""):
                    lines.append(data[1:] if data.startswith(b"..") else data)
                mail = Mail(sender, tuple(recipients), email.message_from_bytes(b"".join(lines)))
                with self.lock:
                    self.mails.append(mail)
                await reply("250 queued")
            elif verb in ("RSET", "NOOP"):
                await reply("250 OK")
            elif verb == "QUIT":
                await reply("221 bye")
                break
            else:
                await reply("502 not implemented")
        writer.close()

    def of(self, alert_id: str) -> list[Mail]:
        with self.lock:
            return [m for m in self.mails if m.notification_id.startswith(f"{alert_id}:")]

    def __enter__(self) -> SmtpServer:
        self.thread.start()
        started = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._session, "127.0.0.1", 0), self.loop
        )
        self.server = started.result(10)
        sock: socket.socket = self.server.sockets[0]
        self.port = sock.getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


# -- the services ------------------------------------------------------------------------------


def _require(stack_status: dict[str, manager.Report], *names: str) -> None:
    down = [
        stack_status[n]
        for n in names
        if stack_status[n].state not in (manager.State.UP, manager.State.EXTERNAL)
    ]
    if down:
        message = "; ".join(f"{r.service} is {r.state.value} ({r.detail})" for r in down)
        if under_ci():
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def notifier_database(
    settings: Settings, stack_status: dict[str, manager.Report]
) -> Iterator[Settings]:
    """A scratch database for the module, migrated (0001 and the staff table of 0002)."""
    _require(stack_status, "kafka", "redis", "postgres")
    with scratch_database(settings, "notifier") as scoped:
        yield scoped


@pytest.fixture(scope="module")
def webhooks() -> Iterator[WebhookServer]:
    with WebhookServer() as server:
        yield server


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


@dataclass
class NotifierRun:
    """Isolated topics, consumer group and Redis keys; the notifiers; a producer of records."""

    settings: Settings
    tmp_path: Path
    webhooks: WebhookServer
    smtp: SmtpServer
    site: str
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}.")
    processes: list[PipelineProcess] = field(default_factory=list)
    producer: Any = None
    timings: dict[str, str] = field(default_factory=dict)

    @property
    def redis_prefix(self) -> str:
        return f"test:{self.prefix}"

    def env(self, **overrides: str) -> dict[str, str]:
        env = {
            "VEILLEUSE_KAFKA__TOPIC_PREFIX": self.prefix,
            "VEILLEUSE_POSTGRES__DATABASE": self.settings.postgres.database,
            "VEILLEUSE_NOTIFIER__REDIS_KEY_PREFIX": self.redis_prefix,
            "VEILLEUSE_NOTIFIER__RENOTIFY_S": "2",
            "VEILLEUSE_NOTIFIER__ESCALATE_S": "4",
            "VEILLEUSE_NOTIFIER__AUTOCLOSE_S": "5",
            "VEILLEUSE_NOTIFIER__LEASE_S": "3",
            "VEILLEUSE_NOTIFIER__RETRY_S": "1",
            "VEILLEUSE_NOTIFIER__POLL_INTERVAL_S": "0.05",
            "VEILLEUSE_NOTIFIER__WEBHOOK_URLS": orjson.dumps(
                [self.webhooks.url("/integration")]
            ).decode(),
            "VEILLEUSE_NOTIFIER__WEBHOOK_SECRET": SECRET,
            "VEILLEUSE_NOTIFIER__WEBHOOK_TIMEOUT_S": "2",
            "VEILLEUSE_NOTIFIER__SMTP_HOST": "127.0.0.1",
            "VEILLEUSE_NOTIFIER__SMTP_PORT": str(self.smtp.port),
            "VEILLEUSE_NOTIFIER__SMTP_TIMEOUT_S": "2",
            "VEILLEUSE_NOTIFIER__METRICS_PORT": "0",
            "VEILLEUSE_NOTIFIER__SESSION_TIMEOUT_S": "6",
            "VEILLEUSE_LOG_FORMAT": "json",
            "VEILLEUSE_LOG_LEVEL": "INFO",
        }
        return {**env, **self.timings, **overrides}

    async def notifier(self, name: str, *, ready: bool = True) -> PipelineProcess:
        log_file = self.tmp_path / f"notifier-{name}-{len(self.processes)}.log"
        process = PipelineProcess(["notifier"], self.env(), log_file).start()
        self.processes.append(process)
        if ready:
            await process.wait_for_log(READY, timeout_s=60)
        return process

    async def raise_alert(
        self, lamp: str, *, severity: str = "critical", kind: str = "fall"
    ) -> tuple[str, int]:
        """Produce a raised alert now; its alert_id and emitted_at."""
        alert_id = str(uuid.uuid4())
        now = time.time_ns() // 1_000_000
        await self._alert(alert_id, lamp, "raised", now, severity=severity, kind=kind)
        return alert_id, now

    async def resolve_alert(self, alert_id: str, lamp: str, reason: str = "stood_up") -> int:
        now = time.time_ns() // 1_000_000
        await self._alert(alert_id, lamp, "resolved", now, details={"reason": reason})
        return now

    async def _alert(
        self,
        alert_id: str,
        lamp: str,
        state: str,
        emitted_ms: int,
        *,
        severity: str = "critical",
        kind: str = "fall",
        details: dict[str, str] | None = None,
    ) -> None:
        record = {
            "alert_id": alert_id,
            "kind": kind,
            "severity": severity,
            "state": state,
            "site_id": self.site,
            "lamp_id": lamp,
            "incident_started_at": emitted_ms - 30_000,
            "emitted_at": emitted_ms,
            "details": details or {"confidence": "0.9"},
        }
        await self.producer.send_and_wait(
            topic_name(self.settings, ALERTS),
            encode(schema("alert.v1"), record),
            key=lamp.encode(),
        )

    async def acknowledge(self, alert_id: str, lamp: str, by: str) -> int:
        now = time.time_ns() // 1_000_000
        record = {
            "alert_id": alert_id,
            "lamp_id": lamp,
            "acknowledged_by": by,
            "acknowledged_at": now,
        }
        await self.producer.send_and_wait(
            topic_name(self.settings, ALERT_ACKS),
            encode(schema("alert_ack.v1"), record),
            key=lamp.encode(),
        )
        return now

    def steps(self, alert_id: str) -> list[tuple[str, int, int, dict[str, Any]]]:
        """alert_events of an alert: (step, occurrence, emitted_at ms, details), in time order."""
        with psycopg.connect(self.settings.postgres.conninfo()) as conn:
            rows = conn.execute(
                "SELECT step, occurrence,"
                " (extract(epoch FROM emitted_at) * 1000)::bigint, details"
                " FROM alert_events WHERE alert_id = %s"
                " ORDER BY emitted_at, recorded_at, step",
                (alert_id,),
            ).fetchall()
        return [(str(s), int(o), int(e), dict(d)) for s, o, e, d in rows]

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


async def wait_until(check: Any, timeout_s: float, what: str, run: NotifierRun) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.log_file.name}\n{p.tail(40)}" for p in run.processes)
            raise AssertionError(f"timed out waiting for {what}\n{tails}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def notifier_run(
    notifier_database: Settings,
    webhooks: WebhookServer,
    smtp: SmtpServer,
    tmp_path: Path,
) -> AsyncIterator[NotifierRun]:
    site = f"site-{uuid.uuid4().hex[:6]}"
    run = NotifierRun(notifier_database, tmp_path, webhooks, smtp, site)
    run.settings = notifier_database.model_copy(
        update={
            "kafka": notifier_database.kafka.model_copy(
                update={"topic_prefix": run.prefix, "topic_partitions": 3}
            )
        }
    )
    await ensure_topics(run.settings, (ALERTS, ALERT_ACKS))
    conninfo = run.settings.postgres.conninfo()
    for member in (
        staff.StaffMember(site, "ana", "ana@home.test", webhooks.url("/staff/ana"), True),
        staff.StaffMember(site, "bob", "bob@home.test", None, False),
        staff.StaffMember(site, "cleo", None, webhooks.url("/staff/cleo"), False),
    ):
        staff.add(conninfo, member)
    run.producer = clients.producer(run.settings)
    await run.producer.start()
    redis = clients.redis(run.settings)
    try:
        yield run
    finally:
        run.stop()
        await run.producer.stop()
        for key in redis.scan_iter(match=f"{run.redis_prefix}*"):
            redis.delete(key)
        redis.close()
        admin = clients.admin_client(run.settings)
        await admin.start()
        try:
            with contextlib.suppress(Exception):
                await admin.delete_topics(
                    [topic_name(run.settings, spec) for spec in (ALERTS, ALERT_ACKS)]
                )
        finally:
            await admin.close()
