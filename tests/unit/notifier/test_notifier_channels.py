"""The webhook's signatures (Standard Webhooks, and the deprecated X-Veilleuse-Signature) and
the e-mail's content."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import time

import orjson
import pytest
from pydantic import SecretStr, ValidationError
from standardwebhooks import Webhook, WebhookVerificationError

from notifier.channels import (
    ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WEBHOOK_ID_HEADER,
    WEBHOOK_SIGNATURE_HEADER,
    WEBHOOK_TIMESTAMP_HEADER,
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
from notifier.policy import Audience
from pipeline.errors import ConfigurationError
from pipeline.ports import free_port
from pipeline.settings import NotifierSettings, load_settings, webhook_signing_key

SECRET = b"shared-secret"
NOW = 1_764_230_400_000
# Standard Webhooks' published test vector (the spec's and its libraries' own tests).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
WHSEC = "whsec_" + base64.b64encode(bytes(range(32))).decode()


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


# -- Standard Webhooks ---------------------------------------------------------------------


def wall_clock() -> FixedClock:
    """Standard Webhooks' verifiers compare the timestamp with the real time."""
    return FixedClock(time.time_ns() // 1_000_000)


def test_the_whsec_key_signs_the_specs_test_vector() -> None:
    key = webhook_signing_key(SPEC_SECRET)
    signed = b'msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{"test": 2432232314}'
    mac = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert f"v1,{mac}" == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_delivery_verifies_with_the_standard_webhooks_library() -> None:
    clock = wall_clock()
    channel = WebhookChannel(webhook_signing_key(WHSEC), clock, urls=["http://integration/hook"])
    body, headers = channel.request(notification())
    assert headers[WEBHOOK_ID_HEADER] == "a-1:1"
    assert headers[WEBHOOK_TIMESTAMP_HEADER] == str(clock.now // 1000)  # whole seconds
    assert headers[WEBHOOK_SIGNATURE_HEADER].startswith("v1,")
    # Exactly what a receiver does: the library, the whsec_ secret, the raw body and headers.
    payload = Webhook(WHSEC).verify(body, headers)
    assert payload["alert_id"] == "a-1"
    assert payload["notification_id"] == headers[WEBHOOK_ID_HEADER]
    # Recomputed from the spec's text, not from the library that signed it.
    signed = f"a-1:1.{clock.now // 1000}.".encode() + body
    mac = hmac.new(webhook_signing_key(WHSEC), signed, hashlib.sha256).digest()
    assert headers[WEBHOOK_SIGNATURE_HEADER] == "v1," + base64.b64encode(mac).decode()


def test_the_webhook_id_is_the_same_on_every_try_of_a_slot() -> None:
    clock = wall_clock()
    channel = WebhookChannel(webhook_signing_key(WHSEC), clock)
    _, first = channel.request(notification(slot=2))
    clock.now += 61_000
    _, retried = channel.request(notification(slot=2))
    _, next_slot = channel.request(notification(slot=3))
    assert first[WEBHOOK_ID_HEADER] == retried[WEBHOOK_ID_HEADER] == "a-1:2"
    assert first[WEBHOOK_TIMESTAMP_HEADER] != retried[WEBHOOK_TIMESTAMP_HEADER]
    assert next_slot[WEBHOOK_ID_HEADER] == "a-1:3"


def _tampered(
    body: bytes, headers: dict[str, str], what: str, now_ms: int
) -> tuple[bytes, dict[str, str]]:
    if what == "body":
        return body.replace(b'"severity":"critical"', b'"severity":"info"'), headers
    if what == "id":
        return body, {**headers, WEBHOOK_ID_HEADER: "a-1:9"}
    if what == "timestamp":
        return body, {**headers, WEBHOOK_TIMESTAMP_HEADER: str(now_ms // 1000 - 1)}
    if what == "signature":
        return body, {
            **headers,
            WEBHOOK_SIGNATURE_HEADER: "v1," + base64.b64encode(bytes(32)).decode(),
        }
    return body, {k: v for k, v in headers.items() if k != WEBHOOK_SIGNATURE_HEADER}


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("body", "No matching signature"),
        ("id", "No matching signature"),
        ("timestamp", "No matching signature"),
        ("signature", "No matching signature"),
        ("missing", "Missing required headers"),
    ],
)
def test_the_library_refuses_a_tampered_delivery(what: str, message: str) -> None:
    clock = wall_clock()
    body, headers = WebhookChannel(webhook_signing_key(WHSEC), clock).request(notification())
    Webhook(WHSEC).verify(body, headers)  # untouched, it passes
    body, headers = _tampered(body, headers, what, clock.now)
    with pytest.raises(WebhookVerificationError, match=message):
        Webhook(WHSEC).verify(body, headers)


def test_the_library_refuses_another_secret_and_an_old_or_future_delivery() -> None:
    clock = wall_clock()
    channel = WebhookChannel(webhook_signing_key(WHSEC), clock)
    body, headers = channel.request(notification())
    other = "whsec_" + base64.b64encode(bytes(range(1, 33))).decode()
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(other).verify(body, headers)
    clock.now -= 6 * 60_000  # signed six minutes ago: a replay
    body, headers = channel.request(notification())
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(WHSEC).verify(body, headers)
    clock.now += 12 * 60_000
    body, headers = channel.request(notification())
    with pytest.raises(WebhookVerificationError, match="too new"):
        Webhook(WHSEC).verify(body, headers)


def test_a_raw_secret_of_earlier_releases_is_whsec_of_its_base64() -> None:
    settings = NotifierSettings(webhook_secret=SecretStr("shared-secret"))
    assert settings.webhook_key() == SECRET
    (channel,) = channels_from_settings(settings, wall_clock())
    assert isinstance(channel, WebhookChannel)
    body, headers = channel.request(notification())
    Webhook("whsec_" + base64.b64encode(SECRET).decode()).verify(body, headers)
    Webhook(SECRET).verify(body, headers)  # the library takes bytes as the key itself
    # ... and the deprecated header still verifies with the same secret.
    verify_signature(
        SECRET,
        body,
        headers[SIGNATURE_HEADER],
        headers[TIMESTAMP_HEADER],
        now_ms=int(headers[TIMESTAMP_HEADER]),
    )


def test_a_whsec_secret_from_the_environment_signs_the_deliveries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VEILLEUSE_NOTIFIER__WEBHOOK_SECRET", WHSEC)
    settings = load_settings()
    assert settings.notifier.webhook_key() == bytes(range(32))
    (channel,) = channels_from_settings(settings.notifier, wall_clock())
    assert isinstance(channel, WebhookChannel)
    body, headers = channel.request(notification())
    Webhook(WHSEC).verify(body, headers)
    # Some providers drop the base64 padding: the same key.
    assert webhook_signing_key(WHSEC.rstrip("=")) == bytes(range(32))


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("whsec_not*base64!", "not base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "key of 5 bytes"),
        ("whsec_", "key of 0 bytes"),
    ],
)
def test_a_bad_whsec_secret_is_refused_without_showing_it(secret: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as refused:
        load_settings(notifier={"webhook_secret": secret})
    encoded = secret.removeprefix("whsec_")
    assert not encoded or encoded not in str(refused.value)


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


async def test_unreachable_endpoints_are_failures_not_exceptions() -> None:
    port = free_port()
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


async def test_a_webhook_target_that_hangs_costs_the_other_targets_nothing() -> None:
    """The first URL answers only once the second has been reached: sent one after the other,
    the first would time out (and the second come only after it); sent together, both are
    delivered."""
    from aiohttp import web

    second_reached = asyncio.Event()

    async def hangs_until_the_other(_request: web.Request) -> web.Response:
        await asyncio.wait_for(second_reached.wait(), 10)
        return web.Response(status=204)

    async def answers(_request: web.Request) -> web.Response:
        second_reached.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hangs", hangs_until_the_other)
    app.router.add_post("/answers", answers)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    webhook = WebhookChannel(
        SECRET, FixedClock(NOW), urls=[f"{base}/hangs", f"{base}/answers"], timeout_s=2
    )
    lone = dataclasses.replace(notification(), recipients=())  # the configured URLs only
    try:
        delivery = await webhook.send(lone)
    finally:
        await webhook.close()
        await runner.cleanup()
    assert delivery.failed == {}
    assert delivery.delivered == [f"{base}/hangs", f"{base}/answers"]
