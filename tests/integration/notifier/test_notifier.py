"""Rule 10 end to end: real notifier processes, Kafka, Redis, PostgreSQL, webhook and SMTP.

Timings are shortened through the settings: re-notify every 2 s, all staff after 4 s, closed
5 s after resolved (the SIGKILL test uses 4 s and 8 s, to leave room for a restart).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter

import orjson
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from notifier.policy import AlertState
from notifier.store import Job, Timers
from pipeline import clients
from tests.integration.notifier.conftest import SECRET, NotifierRun, wait_until

INTEGRATION = "/integration"
LATE_MS = 1500  # how late a notification may arrive (poll, Kafka, process scheduling)


def slots(run: NotifierRun, alert_id: str, path: str = INTEGRATION) -> list[int]:
    return [h.slot for h in run.webhooks.of(alert_id, path)]


def step_names(run: NotifierRun, alert_id: str) -> list[tuple[str, int]]:
    return [(step, occurrence) for step, occurrence, _, _ in run.steps(alert_id)]


async def test_an_unacknowledged_critical_alert_is_renotified_escalated_and_closed(
    notifier_run: NotifierRun,
) -> None:
    run = notifier_run
    await run.notifier("a")
    alert_id, raised_ms = await run.raise_alert("L-1")

    await wait_until(
        lambda: ("notified", 4) in step_names(run, alert_id), 20, "slot 4 recorded", run
    )
    acked_ms = await run.acknowledge(alert_id, "L-1", "ana")
    await wait_until(
        lambda: ("acknowledged", 1) in step_names(run, alert_id), 10, "the ack's step", run
    )
    await asyncio.sleep(3)  # past the next slot (2 s): nothing more once acknowledged

    # On time: slot k at 0, 2, 4, 6 s after the alert was raised; each once.
    hooks = run.webhooks.of(alert_id, INTEGRATION)
    assert [h.slot for h in hooks] == [1, 2, 3, 4]
    for hook, offset_ms in zip(hooks, (0, 2000, 4000, 6000), strict=True):
        late = hook.received_ms - raised_ms - offset_ms
        assert -50 <= late <= LATE_MS, (hook.slot, late)
    # The staff on duty first; everyone from the escalation (slot 3) on.
    assert slots(run, alert_id, "/staff/ana") == [1, 2, 3, 4]
    assert slots(run, alert_id, "/staff/cleo") == [3, 4]
    assert [h.body["audience"] for h in hooks] == ["on_duty", "on_duty", "all_staff", "all_staff"]
    mails = {m.notification_id: m for m in run.smtp.of(alert_id)}
    assert sorted(mails) == [f"{alert_id}:{slot}" for slot in (1, 2, 3, 4)]
    assert mails[f"{alert_id}:1"].recipients == ("ana@home.test",)
    assert mails[f"{alert_id}:3"].recipients == ("ana@home.test", "bob@home.test")
    assert "ALL STAFF" in str(mails[f"{alert_id}:3"].message["Subject"])
    assert not run.webhooks.refused

    resolved_ms = await run.resolve_alert(alert_id, "L-1")
    resolved_at = time.monotonic()
    await wait_until(lambda: ("closed", 1) in step_names(run, alert_id), 15, "closed", run)
    assert time.monotonic() - resolved_at >= 4.9  # not before its 5 s

    steps = run.steps(alert_id)
    assert [(s, o) for s, o, _, _ in steps] == [
        ("raised", 1),
        ("notified", 1),
        ("notified", 2),
        ("escalated", 1),
        ("notified", 3),
        ("notified", 4),
        ("acknowledged", 1),
        ("resolved", 1),
        ("closed", 1),
    ]
    by_step = {(s, o): (at, details) for s, o, at, details in steps}
    assert by_step[("raised", 1)][0] == raised_ms
    assert by_step[("acknowledged", 1)] == (acked_ms, {"acknowledged_by": "ana"})
    assert by_step[("closed", 1)][0] == resolved_ms + 5000
    first = by_step[("notified", 1)][1]
    assert first["to"] == ["ana"]
    assert first["audience"] == "on_duty"
    assert sorted(first["through"]["webhook"]) == [
        run.webhooks.url(INTEGRATION),
        run.webhooks.url("/staff/ana"),
    ]
    assert first["through"]["email"] == ["ana@home.test"]
    assert by_step[("notified", 3)][1]["to"] == ["ana", "bob", "cleo"]
    assert by_step[("escalated", 1)][1]["to"] == ["ana", "bob", "cleo"]


async def test_a_real_delivery_verifies_with_the_standard_webhooks_library(
    notifier_run: NotifierRun,
) -> None:
    """What a receiving team does: ``standardwebhooks.Webhook(secret).verify`` on the raw body
    and headers of a delivery the notifier made. (The receiver already answers 401 to what does
    not verify, so every other test here checks it too.)"""
    run = notifier_run
    await run.notifier("a")
    alert_id, _ = await run.raise_alert("L-5", severity="warning", kind="environment")
    await wait_until(lambda: slots(run, alert_id) == [1], 10, "the delivery", run)
    assert not run.webhooks.refused
    (hook,) = run.webhooks.of(alert_id, INTEGRATION)
    headers = {name.lower(): value for name, value in hook.headers.items()}
    assert headers["webhook-id"] == f"{alert_id}:1" == hook.body["notification_id"]
    sent_ms = int(headers["webhook-timestamp"]) * 1000  # whole seconds
    assert 0 <= hook.received_ms - sent_ms < 2500
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(SECRET).verify(hook.raw, hook.headers) == hook.body
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(hook.raw.replace(b'"warning"', b'"info"'), hook.headers)
    # Deprecated, sent for one more release.
    assert {"x-veilleuse-signature", "x-veilleuse-timestamp"} <= set(headers)


async def test_an_acknowledged_alert_is_not_renotified_and_a_warning_is_notified_once(
    notifier_run: NotifierRun,
) -> None:
    run = notifier_run
    await run.notifier("a")
    critical, _ = await run.raise_alert("L-2")
    warning, _ = await run.raise_alert("L-3", severity="warning", kind="environment")
    info, _ = await run.raise_alert("L-4", severity="info", kind="fall_recovered")

    await wait_until(lambda: slots(run, critical) == [1], 10, "slot 1", run)
    await run.acknowledge(critical, "L-2", "bob")
    await wait_until(lambda: ("acknowledged", 1) in step_names(run, critical), 10, "ack", run)
    await asyncio.sleep(5)  # past slot 2 (2 s) and the escalation (4 s)

    assert slots(run, critical) == [1]
    assert slots(run, critical, "/staff/cleo") == []
    assert [m.notification_id for m in run.smtp.of(critical)] == [f"{critical}:1"]
    assert step_names(run, critical) == [("raised", 1), ("notified", 1), ("acknowledged", 1)]
    assert slots(run, warning) == [1]
    assert step_names(run, warning) == [("raised", 1), ("notified", 1)]
    assert run.webhooks.of(info) == []
    assert step_names(run, info) == [("raised", 1)]


async def test_an_integration_endpoint_that_hangs_does_not_delay_the_other_notifications(
    notifier_run: NotifierRun,
) -> None:
    """A nurse-call integration's URL accepts connections and never answers (a socket that
    listens and never accepts: the kernel completes the handshakes, the request waits), listed
    first; three alerts raised at once. The other integration URL, the staff's own URLs and the
    e-mail get every alert's first notification on time, not one webhook timeout (8 s) per
    alert later; the hung URL is recorded as failed once its timeout passed."""
    run = notifier_run
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)
        hung_url = f"http://127.0.0.1:{hung.getsockname()[1]}/nurse-call"
        run.timings.update(
            {
                "VEILLEUSE_NOTIFIER__WEBHOOK_URLS": orjson.dumps(
                    [hung_url, run.webhooks.url(INTEGRATION)]
                ).decode(),
                "VEILLEUSE_NOTIFIER__WEBHOOK_TIMEOUT_S": "8",
                "VEILLEUSE_NOTIFIER__LEASE_S": "20",  # longer than a send's timeouts
                "VEILLEUSE_NOTIFIER__RENOTIFY_S": "60",
                "VEILLEUSE_NOTIFIER__ESCALATE_S": "120",
            }
        )
        await run.notifier("a")
        raised = [await run.raise_alert(f"L-{k}") for k in range(3)]

        def all_first_sent() -> bool:
            return all(
                slots(run, a) == [1] and slots(run, a, "/staff/ana") == [1] and run.smtp.of(a)
                for a, _ in raised
            )

        await wait_until(all_first_sent, 20, "every alert's first notification", run)
        for alert_id, raised_ms in raised:
            for path in (INTEGRATION, "/staff/ana"):
                (hook,) = run.webhooks.of(alert_id, path)
                assert hook.received_ms - raised_ms <= LATE_MS, (alert_id, path)
        await wait_until(
            lambda: all(("notified", 1) in step_names(run, a) for a, _ in raised),
            20,
            "the notifications recorded",
            run,
        )
    for alert_id, _ in raised:
        (details,) = [d for step, n, _, d in run.steps(alert_id) if (step, n) == ("notified", 1)]
        assert hung_url in details["failed"]["webhook"], details
        assert run.webhooks.url(INTEGRATION) in details["through"]["webhook"], details


async def test_a_notifier_killed_mid_escalation_resumes_without_a_miss_or_a_double(
    notifier_run: NotifierRun,
) -> None:
    run = notifier_run
    run.timings = {
        "VEILLEUSE_NOTIFIER__RENOTIFY_S": "4",
        "VEILLEUSE_NOTIFIER__ESCALATE_S": "8",
    }
    first = await run.notifier("a")
    alert_id, raised_ms = await run.raise_alert("L-5")
    await wait_until(lambda: 2 in slots(run, alert_id), 15, "slot 2", run)
    await asyncio.sleep(1.5)  # between two slots: nothing in flight
    first.kill()
    await run.notifier("b", ready=False)  # timers do not wait for the consumer group

    await wait_until(lambda: 4 in slots(run, alert_id), 25, "slot 4", run)
    await run.acknowledge(alert_id, "L-5", "ana")
    await wait_until(lambda: ("acknowledged", 1) in step_names(run, alert_id), 15, "ack", run)
    await asyncio.sleep(4.5)

    hooks = run.webhooks.of(alert_id, INTEGRATION)
    assert [h.slot for h in hooks] == [1, 2, 3, 4]
    for hook, offset_ms in zip(hooks, (0, 4000, 8000, 12000), strict=True):
        late = hook.received_ms - raised_ms - offset_ms
        assert -50 <= late <= LATE_MS + 1500, (hook.slot, late)
    assert slots(run, alert_id, "/staff/cleo") == [3, 4]
    assert Counter(m.notification_id for m in run.smtp.of(alert_id)) == {
        f"{alert_id}:{slot}": 1 for slot in (1, 2, 3, 4)
    }
    names = step_names(run, alert_id)
    assert [o for s, o in names if s == "notified"] == [1, 2, 3, 4]
    assert names.count(("escalated", 1)) == 1


async def test_two_replicas_side_by_side_notify_once(notifier_run: NotifierRun) -> None:
    run = notifier_run
    replicas = [await run.notifier("a"), await run.notifier("b")]
    lamps = [f"L-{i}" for i in range(10, 16)]
    alerts = [(await run.raise_alert(lamp))[0] for lamp in lamps]

    await wait_until(
        lambda: all(3 in slots(run, a) for a in alerts), 20, "slot 3 of every alert", run
    )
    for alert_id, lamp in zip(alerts, lamps, strict=True):
        await run.acknowledge(alert_id, lamp, "cleo")
    await wait_until(
        lambda: all(("acknowledged", 1) in step_names(run, a) for a in alerts), 15, "acks", run
    )
    await asyncio.sleep(2.5)

    assert all(r.alive() for r in replicas)
    for alert_id in alerts:
        sent = slots(run, alert_id)
        assert sent[:3] == [1, 2, 3], sent
        assert sent == sorted(set(sent)), f"a slot sent twice: {sent}"
        for path in ("/staff/ana", "/staff/cleo"):
            assert len(slots(run, alert_id, path)) == len(set(slots(run, alert_id, path)))
        mail_ids = [m.notification_id for m in run.smtp.of(alert_id)]
        assert len(mail_ids) == len(set(mail_ids)) == len(sent)
        notified = [o for s, o in step_names(run, alert_id) if s == "notified"]
        assert notified == sent


def test_a_claimed_timer_is_nobody_elses_until_its_lease_runs_out(
    notifier_run: NotifierRun,
) -> None:
    run = notifier_run
    timers = Timers(clients.redis(run.settings), f"{run.redis_prefix}lease:", 3600)
    state = AlertState("a-lease", "fall", "critical", run.site, "L-9", 0, 1000)
    assert timers.raised(state, (Job("notify", "a-lease", 1), 1000))
    assert not timers.raised(state, (Job("notify", "a-lease", 1), 1000))  # a replayed record

    assert timers.claim(999, 500, 10) == []  # not due yet
    (mine,) = timers.claim(1000, 500, 10)
    assert mine.job == Job("notify", "a-lease", 1)
    assert timers.claim(1400, 500, 10) == []  # another replica: leased
    (theirs,) = timers.claim(1500, 500, 10)  # the lease ran out (the claimer died)
    assert not timers.complete(mine, (Job("notify", "a-lease", 2), 5000))  # stale: refused
    assert timers.complete(theirs, (Job("notify", "a-lease", 2), 5000))
    assert timers.pending() == [("notify|a-lease|2", 5000)]
    timers.redis.close()


def test_concurrent_claims_share_the_due_timers_without_overlap(
    notifier_run: NotifierRun,
) -> None:
    run = notifier_run
    prefix = f"{run.redis_prefix}race:"
    setup = Timers(clients.redis(run.settings), prefix, 3600)
    for i in range(300):
        state = AlertState(f"a-{i}", "fall", "critical", run.site, "L-9", 0, 1000)
        setup.raised(state, (Job("notify", state.alert_id, 1), 1000))
    claimed: list[list[str]] = [[], [], []]

    def claimer(index: int) -> None:
        timers = Timers(clients.redis(run.settings), prefix, 3600)
        while batch := timers.claim(2000, 60_000, 7):
            claimed[index].extend(c.job.member for c in batch)
        timers.redis.close()

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    setup.redis.close()
    everything = [member for batch in claimed for member in batch]
    assert len(everything) == len(set(everything)) == 300
    assert sum(1 for batch in claimed if batch) >= 2  # they did race
