"""Two detection workers on the real Kafka; one is killed with SIGKILL mid-incident."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from tests.integration.agents.conftest import AlertTail, DetectionRun, LampSender

SITE = "it-home-1"
FALL_CONFIRM_MS = 30_000


async def test_every_alert_once_across_a_sigkill(detection_run: DetectionRun) -> None:
    """Falls in progress when a worker dies are raised once, by the survivor (which also held
    standby replicas of its partner's state); silent lamps' falls reach the topic within 2 s of
    their deadline; non-incidents raise nothing."""
    run = detection_run
    w1 = run.worker("w1", VEILLEUSE_DETECTION__STANDBY_REPLICAS="1")
    await asyncio.to_thread(run.wait_for_assignment, [w1])
    w2 = run.worker("w2", VEILLEUSE_DETECTION__STANDBY_REPLICAS="1")
    await asyncio.to_thread(run.wait_for_assignment, [w1, w2])

    falls = [f"L-fall-{i}" for i in range(8)]  # down before the kill, get up at the end
    recovered = ["L-up-0", "L-up-1"]  # back up within 30 s
    staff = ["L-staff-0"]  # a caregiver in the room
    weak = ["L-weak-0"]  # confidence 0.59
    quiet = [f"L-quiet-{i}" for i in range(8)]  # ordinary life
    helpers = ["L-help-0"]  # pressed, then cancelled
    silent = {"L-silent-0": 0, "L-silent-1": 120, "L-silent-2": -120}  # lamp -> clock skew

    async with AlertTail(run.settings) as tail, LampSender(run.settings) as lamps:
        for lamp in falls + recovered + weak + quiet + helpers:
            await lamps.standing(SITE, lamp, copies=2)
        await lamps.standing(SITE, staff[0], persons=2)
        for lamp in falls:
            await lamps.send(SITE, lamp, "fall_suspected", confidence=0.8, zone="floor", copies=2)
            await lamps.send(
                SITE,
                lamp,
                "posture",
                posture="on_floor",
                zone="floor",
                confidence=0.8,
                persons=1,
                copies=2,
            )
        for lamp in recovered + staff:
            await lamps.send(SITE, lamp, "fall_suspected", confidence=0.9, zone="floor")
        await lamps.send(SITE, weak[0], "fall_suspected", confidence=0.59, zone="floor")
        await lamps.send(
            SITE, helpers[0], "button", accessory_id="pendant", action="press", copies=2
        )
        for lamp in quiet:
            await lamps.send(SITE, lamp, "motion", zone="room", level=30)
            await lamps.send(
                SITE, lamp, "posture", posture="sitting", zone="room", confidence=0.9, persons=1
            )
        await asyncio.sleep(3)
        for lamp in recovered:
            await lamps.standing(SITE, lamp)
        await lamps.send(SITE, helpers[0], "button", accessory_id="pendant", action="cancel")

        w1.kill()  # every fall above is mid-incident: its 30 s are not over
        await asyncio.to_thread(run.wait_for_assignment, [w2])

        deadlines: dict[str, int] = {}
        for lamp, skew in silent.items():
            await lamps.standing(SITE, lamp, skew_s=skew)
            await lamps.send(
                SITE, lamp, "fall_suspected", confidence=0.9, zone="floor", skew_s=skew
            )
            deadlines[lamp] = int(time.time() * 1000) + FALL_CONFIRM_MS
        # The silent lamps send nothing more.

        raised = await tail.wait_for(
            len(falls) + len(silent),
            lambda a: a["kind"] == "fall" and a["state"] == "raised",
            timeout_s=90,
        )
        assert len(raised) == len(falls) + len(silent), w2.log_tail()
        for lamp in falls:
            await lamps.standing(SITE, lamp)
        await tail.wait_for(
            len(falls), lambda a: a["kind"] == "fall" and a["state"] == "resolved", timeout_s=30
        )
        await asyncio.sleep(3)  # room for a duplicate to show up
        alerts = list(tail.alerts)

    per_step = Counter((a["alert_id"], a["state"]) for a, _ in alerts)
    assert max(per_step.values()) == 1, [k for k, n in per_step.items() if n > 1]
    steps = Counter((a["lamp_id"], a["kind"], a["state"]) for a, _ in alerts)
    expected = Counter(
        [(lamp, "fall", "raised") for lamp in falls + list(silent)]
        + [(lamp, "fall", "resolved") for lamp in falls]
        + [(lamp, "fall_recovered", s) for lamp in recovered for s in ("raised", "resolved")]
        + [(helpers[0], "help_requested", s) for s in ("raised", "resolved")]
    )
    assert steps == expected
    for alert, arrived_ms in alerts:
        lamp = alert["lamp_id"]
        if lamp in silent and alert["state"] == "raised":
            late_ms = arrived_ms - deadlines[lamp]
            # Both bounds: an alert without its 30 s of confirmation is as wrong as a late one
            # (the deadline is taken just after the send, so the true one is a little earlier).
            assert -1000 <= late_ms <= 2000, (
                f"{lamp}: on the topic {late_ms:+} ms from its deadline"
            )
            skew_ms = silent[lamp] * 1000
            started = int(alert["incident_started_at"].timestamp() * 1000)
            assert abs(started - (deadlines[lamp] - FALL_CONFIRM_MS + skew_ms)) < 2000
    assert w2.alive(), w2.log_tail()
