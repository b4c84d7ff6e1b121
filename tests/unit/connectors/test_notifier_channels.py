"""The webhook's signature (HMAC-SHA256 of timestamp and body) and the e-mail's content."""

from __future__ import annotations

import hashlib
import hmac

import orjson
import pytest
from pydantic import SecretStr, ValidationError

from connectors.notifier.channels import (
    ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    ChannelError,
    EmailChannel,
    Notification,
    Recipient,
    SignatureError,
    WebhookChannel,
    channels_from_settings,
    sign,
    verify_signature,
)
from connectors.notifier.policy import Audience
from pipeline.settings import NotifierSettings

SECRET = b"shared-secret"
NOW = 1_764_230_400_000


class FixedClock:
    def __init__(self, now_ms: int) -> None:
        self.now = now_ms

    def now_ms(self) -> int:
        return self.now


def notification(slot: int = 1, audience: Audience = Audience.ON_DUTY) -> Notification:
    return Notification(
        alert_id="a-1",
        slot=slot,
        audience=audience,
        escalated=False,
        kind="fall",
        severity="critical",
        site_id="fr-lyon-12",
        lamp_id="L-1",
        incident_started_ms=NOW - 30_000,
        raised_ms=NOW,
        recipients=(
            Recipient("ana", "ana@example.org", "http://nurse-call/ana"),
            Recipient("bob", "bob@example.org"),
        ),
    )


def test_the_signature_is_hmac_sha256_of_timestamp_and_body() -> None:
    body = b'{"alert_id":"a-1"}'
    expected = hmac.new(SECRET, b"1000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1000, body) == f"sha256={expected}"


def test_a_signed_request_verifies_and_its_body_is_the_notification() -> None:
    channel = WebhookChannel(SECRET, FixedClock(NOW), urls=["http://integration/hook"])
    body, headers = channel.request(notification())
    assert headers[TIMESTAMP_HEADER] == str(NOW)
    assert headers[ID_HEADER] == "a-1:1"
    sent = verify_signature(
        SECRET, body, headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER], now_ms=NOW + 1000
    )
    assert sent == NOW
    payload = orjson.loads(body)
    assert payload["alert_id"] == "a-1"
    assert payload["recipients"] == ["ana", "bob"]
    assert channel.targets(notification()) == ["http://integration/hook", "http://nurse-call/ana"]


@pytest.mark.parametrize(
    ("secret", "body", "timestamp", "now", "message"),
    [
        (b"other", b"{}", str(NOW), NOW, "does not match"),
        (SECRET, b'{"x":1}', str(NOW), NOW, "does not match"),  # body changed
        (SECRET, b"{}", str(NOW + 1), NOW, "does not match"),  # timestamp changed
        (SECRET, b"{}", str(NOW), NOW + 301_000, "more than"),  # a replay, too old
        (SECRET, b"{}", "yesterday", NOW, "not epoch"),
        (SECRET, b"{}", None, NOW, "missing"),
    ],
)
def test_tampered_or_replayed_requests_are_refused(
    secret: bytes, body: bytes, timestamp: str | None, now: int, message: str
) -> None:
    signature = sign(SECRET, NOW, b"{}")
    with pytest.raises(SignatureError, match=message):
        verify_signature(secret, body, signature, timestamp, now_ms=now)


def test_a_webhook_needs_a_secret_and_urls_need_one_too() -> None:
    with pytest.raises(ChannelError):
        WebhookChannel(b"", FixedClock(NOW))
    with pytest.raises(ValidationError, match="webhook_secret"):
        NotifierSettings(webhook_urls=("http://x",))


def test_the_email_names_the_alert_and_goes_to_every_address() -> None:
    settings = NotifierSettings(smtp_host="127.0.0.1", smtp_from="veilleuse@home.example")
    channel = EmailChannel(settings)
    message = channel.message(notification(3, Audience.ALL_STAFF), ["ana@example.org"])
    assert message["From"] == "veilleuse@home.example"
    assert message["Subject"] == "[CRITICAL] fall at fr-lyon-12/L-1 (reminder 2) - ALL STAFF"
    assert message["X-Veilleuse-Notification-Id"] == "a-1:3"
    assert "alert_id: a-1" in message.get_content()


def test_channels_follow_the_settings() -> None:
    clock = FixedClock(NOW)
    assert channels_from_settings(NotifierSettings(), clock) == []
    both = NotifierSettings(webhook_secret=SecretStr("s"), smtp_host="127.0.0.1")
    assert [c.name for c in channels_from_settings(both, clock)] == ["webhook", "email"]
    with pytest.raises(ChannelError):
        EmailChannel(NotifierSettings())


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_endpoints_are_failures_not_exceptions() -> None:
    port = _closed_port()
    webhook = WebhookChannel(
        SECRET, FixedClock(NOW), urls=[f"http://127.0.0.1:{port}/hook"], timeout_s=2
    )
    try:
        delivery = await webhook.send(notification())
    finally:
        await webhook.close()
    assert delivery.delivered == []
    assert sorted(delivery.failed) == [f"http://127.0.0.1:{port}/hook", "http://nurse-call/ana"]
    mail = EmailChannel(NotifierSettings(smtp_host="127.0.0.1", smtp_port=port, smtp_timeout_s=2))
    delivery = await mail.send(notification())
    assert delivery.delivered == []
    assert sorted(delivery.failed) == ["ana@example.org", "bob@example.org"]
