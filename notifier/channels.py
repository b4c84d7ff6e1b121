"""Notification channels behind one small protocol: ``await channel.send(notification)``.

- :class:`WebhookChannel`: a JSON POST to the staff's ``webhook_url`` and to every
  ``notifier.webhook_urls`` (nurse-call integrations), signed per Standard Webhooks
  (``webhook-id``, ``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256 of
  "id.timestamp.body">``), so that receivers verify it with the spec's own libraries, which
  also refuse timestamps more than five minutes away (replays). The headers of the releases
  before (``X-Veilleuse-Signature``, :func:`verify_signature`) are still sent, deprecated: they
  go in the next release.
- :class:`EmailChannel`: one e-mail per notification to the recipients with an address,
  through an SMTP relay (stdlib ``smtplib`` in a thread).

A channel reports, per address, whether it was delivered (:class:`Delivery`); it raises only
for a programming error.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import smtplib
import ssl
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any, Protocol

import orjson
from standardwebhooks import Webhook

from notifier.policy import Audience, Clock
from pipeline.errors import VeilleuseError
from pipeline.settings import NotifierSettings

log = logging.getLogger(__name__)

# SMTP sends at once per notifier (several alerts due together, each its own message).
SMTP_THREADS = 4

# Standard Webhooks (https://www.standardwebhooks.com).
WEBHOOK_ID_HEADER = "webhook-id"
WEBHOOK_TIMESTAMP_HEADER = "webhook-timestamp"
WEBHOOK_SIGNATURE_HEADER = "webhook-signature"
# Deprecated: the signature of the releases before Standard Webhooks, sent for one more release
# so that receivers can move to the standard headers; removed in the next release.
SIGNATURE_HEADER = "X-Veilleuse-Signature"
TIMESTAMP_HEADER = "X-Veilleuse-Timestamp"
ID_HEADER = "X-Veilleuse-Notification-Id"


class ChannelError(VeilleuseError):
    """A channel is misconfigured."""


class SignatureError(VeilleuseError):
    """A webhook request's signature is missing, wrong or too old."""


@dataclass(frozen=True, slots=True)
class Recipient:
    name: str
    email: str | None = None
    webhook_url: str | None = None


@dataclass(frozen=True, slots=True)
class Notification:
    """One notification of one alert: its slot, its audience and its recipients."""

    alert_id: str
    slot: int
    audience: Audience
    escalated: bool
    kind: str
    severity: str
    site_id: str
    lamp_id: str
    incident_started_ms: int
    raised_ms: int
    recipients: tuple[Recipient, ...]

    @property
    def notification_id(self) -> str:
        """Stable across retries: receivers may drop duplicates by it."""
        return f"{self.alert_id}:{self.slot}"

    def body(self) -> dict[str, Any]:
        return {
            "notification_id": self.notification_id,
            "alert_id": self.alert_id,
            "slot": self.slot,
            "audience": self.audience.value,
            "escalated": self.escalated,
            "kind": self.kind,
            "severity": self.severity,
            "site_id": self.site_id,
            "lamp_id": self.lamp_id,
            "incident_started_at": self.incident_started_ms,
            "raised_at": self.raised_ms,
            "recipients": [r.name for r in self.recipients],
        }

    def subject(self) -> str:
        again = f" (reminder {self.slot - 1})" if self.slot > 1 else ""
        scope = " - ALL STAFF" if self.audience is Audience.ALL_STAFF else ""
        return (
            f"[{self.severity.upper()}] {self.kind} at {self.site_id}/{self.lamp_id}{again}{scope}"
        )


@dataclass
class Delivery:
    """What one channel did with one notification: addresses reached, and failed (why)."""

    channel: str
    delivered: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def attempted(self) -> bool:
        return bool(self.delivered or self.failed)


class Channel(Protocol):
    name: str

    async def send(self, notification: Notification) -> Delivery: ...


# -- webhook ----------------------------------------------------------------------------------


def sign(secret: bytes, timestamp_ms: int, body: bytes) -> str:
    """The deprecated ``X-Veilleuse-Signature`` of ``body`` sent at ``timestamp_ms``."""
    mac = hmac.new(secret, str(timestamp_ms).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: bytes,
    body: bytes,
    signature: str | None,
    timestamp: str | None,
    *,
    now_ms: int,
    tolerance_ms: int = 300_000,
) -> int:
    """What a receiver of the deprecated headers checks; returns the request's timestamp,
    raises :class:`SignatureError`. Receivers should verify the Standard Webhooks headers
    instead, with ``standardwebhooks.Webhook(secret).verify(body, headers)``."""
    if not signature or not timestamp:
        raise SignatureError("missing signature or timestamp header")
    try:
        sent_ms = int(timestamp)
    except ValueError as exc:
        raise SignatureError(f"timestamp {timestamp!r} is not epoch milliseconds") from exc
    if not hmac.compare_digest(sign(secret, sent_ms, body), signature):
        raise SignatureError("signature does not match the body and timestamp")
    if abs(now_ms - sent_ms) > tolerance_ms:
        raise SignatureError(f"timestamp {sent_ms} is more than {tolerance_ms} ms from now")
    return sent_ms


class WebhookChannel:
    name = "webhook"

    def __init__(
        self,
        secret: bytes,
        clock: Clock,
        *,
        urls: Sequence[str] = (),
        timeout_s: float = 10.0,
    ) -> None:
        if not secret:
            raise ChannelError("a webhook channel needs a secret")
        self.secret = secret
        self.signer = Webhook(secret)  # bytes: the key itself, not base64
        self.clock = clock
        self.urls = tuple(urls)
        self.timeout_s = timeout_s
        self._session: Any = None

    def targets(self, notification: Notification) -> list[str]:
        seen: dict[str, None] = dict.fromkeys(self.urls)
        for recipient in notification.recipients:
            if recipient.webhook_url:
                seen.setdefault(recipient.webhook_url)
        return list(seen)

    def request(self, notification: Notification) -> tuple[bytes, dict[str, str]]:
        """The body and headers of the notification's POST (signed now)."""
        body = orjson.dumps(notification.body(), option=orjson.OPT_SORT_KEYS)
        now_ms = self.clock.now_ms()
        sent_s = now_ms // 1000  # the spec's timestamp is whole seconds
        # The same id on every try of the same slot: receivers drop duplicates by it.
        message_id = notification.notification_id
        signature = self.signer.sign(
            message_id, datetime.fromtimestamp(sent_s, UTC), body.decode("utf-8")
        )
        headers = {
            "Content-Type": "application/json",
            WEBHOOK_ID_HEADER: message_id,
            WEBHOOK_TIMESTAMP_HEADER: str(sent_s),
            WEBHOOK_SIGNATURE_HEADER: signature,
            TIMESTAMP_HEADER: str(now_ms),
            SIGNATURE_HEADER: sign(self.secret, now_ms, body),
            ID_HEADER: message_id,
        }
        return body, headers

    async def send(self, notification: Notification) -> Delivery:
        import aiohttp

        delivery = Delivery(self.name)
        targets = self.targets(notification)
        if not targets:
            return delivery
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s)
            )
        body, headers = self.request(notification)
        session = self._session

        async def post(url: str) -> str | None:
            """None when delivered, else why not."""
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    return None if 200 <= response.status < 300 else f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                return f"{type(exc).__name__}: {exc}"

        # Every target at once: one that hangs costs the others nothing.
        outcomes = await asyncio.gather(*(post(url) for url in targets))
        for url, failure in zip(targets, outcomes, strict=True):
            if failure is None:
                delivery.delivered.append(url)
            else:
                delivery.failed[url] = failure
        return delivery

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# -- e-mail -----------------------------------------------------------------------------------


class EmailChannel:
    name = "email"

    def __init__(self, notifier: NotifierSettings) -> None:
        if not notifier.smtp_host:
            raise ChannelError("an e-mail channel needs notifier.smtp_host")
        self.host = notifier.smtp_host
        self.port = notifier.smtp_port
        self.sender = notifier.smtp_from
        self.tls = notifier.smtp_tls
        self.user = notifier.smtp_user
        self.password = (
            notifier.smtp_password.get_secret_value() if notifier.smtp_password else None
        )
        self.timeout_s = notifier.smtp_timeout_s
        # Threads of its own: a relay that hangs must not take the threads the notifier's
        # Redis calls run on (asyncio.to_thread's shared pool).
        self._pool = ThreadPoolExecutor(max_workers=SMTP_THREADS, thread_name_prefix="smtp")

    def message(self, notification: Notification, to: Sequence[str]) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = ", ".join(to)
        message["Subject"] = notification.subject()
        message["X-Veilleuse-Notification-Id"] = notification.notification_id
        body = notification.body()
        lines = [f"{key}: {value}" for key, value in body.items()]
        message.set_content("\n".join(lines) + "\n")
        return message

    def _send_sync(self, message: EmailMessage, to: Sequence[str]) -> dict[str, str]:
        """Send; the addresses the relay refused, with its answer."""
        smtp: smtplib.SMTP
        if self.tls == "tls":
            smtp = smtplib.SMTP_SSL(
                self.host, self.port, timeout=self.timeout_s, context=ssl.create_default_context()
            )
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
        with smtp:
            if self.tls == "starttls":
                smtp.starttls(context=ssl.create_default_context())
            if self.user and self.password is not None:
                smtp.login(self.user, self.password)
            refused = smtp.send_message(message, from_addr=self.sender, to_addrs=list(to))
        return {address: f"refused: {code} {text!r}" for address, (code, text) in refused.items()}

    async def send(self, notification: Notification) -> Delivery:
        delivery = Delivery(self.name)
        to = [r.email for r in notification.recipients if r.email]
        if not to:
            return delivery
        message = self.message(notification, to)
        loop = asyncio.get_running_loop()
        try:
            refused = await loop.run_in_executor(self._pool, self._send_sync, message, to)
        except (smtplib.SMTPException, OSError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            delivery.failed.update(dict.fromkeys(to, reason))
        else:
            delivery.failed.update(refused)
            delivery.delivered.extend(a for a in to if a not in refused)
        return delivery

    async def close(self) -> None:
        self._pool.shutdown(wait=False)


def channels_from_settings(notifier: NotifierSettings, clock: Clock) -> list[Channel]:
    """The channels the settings configure: webhook with a secret, e-mail with an SMTP host."""
    channels: list[Channel] = []
    key = notifier.webhook_key()
    if key is not None:
        channels.append(
            WebhookChannel(
                key,
                clock,
                urls=notifier.webhook_urls,
                timeout_s=notifier.webhook_timeout_s,
            )
        )
    if notifier.smtp_host:
        channels.append(EmailChannel(notifier))
    return channels
