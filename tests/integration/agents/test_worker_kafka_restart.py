"""Kafka crashes under detection workers that are committing fenced transactions, and comes back.

The workers commit a transaction every batch, each with its offsets sent twice with the
consumer's membership (TxnOffsetCommit v3, docs/runtime.md "Fencing"). A broker crash cuts
those requests, and the restarted broker answers the group's coordinator requests with
``COORDINATOR_LOAD_IN_PROGRESS`` / ``NOT_COORDINATOR`` while it reloads: errors to retry, never
to take for a fence (which would drop the workers' state) nor to stop the worker for.

This test runs its **own** single-node Kafka (the stack's jars, its own folder and free ports:
the shared stack's broker is never touched), two workers on it, lamps talking on every
partition so that transactions are always in flight, and one silent fall per partition whose
deadline falls inside the outage. Kafka is SIGKILLed, left down, then started again. Checked:
every fall raised exactly once (read_committed), none before its deadline nor later than the
deadline + 2 s + the measured outage, no other alert, both workers still running, and any
refusal of a commit named by a fencing error only.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from pathlib import Path

import pytest

from pipeline.settings import Settings
from pipeline.topics import ensure_topics
from tests.integration.agents.conftest import AlertTail, DetectionRun, LampSender
from tests.integration.agents.test_fencing import one_lamp_per_partition
from tests.integration.private_services import PrivateKafka, crash, start

pytestmark = pytest.mark.slow

SITE = "it-home-kafka-crash"
CONFIRM_S = 10.0  # the fall rule's confirmation, shortened (30 s in production)
KILL_AFTER_S = 4.0  # after the falls: their deadlines fall inside the outage
DOWN_S = 3.0  # Kafka left dead this long before it is started again
FENCE_LINE = re.compile(r"commit refused, batch aborted: (.*?); state of partitions")
FENCING_NAMES = ("ILLEGAL_GENERATION", "UNKNOWN_MEMBER_ID", "FENCED_INSTANCE_ID")
# aiokafka's line when a transaction's request (AddOffsetsToTxn, the fenced TxnOffsetCommit,
# AddPartitionsToTxn, EndTxn) could not be sent, or the batch path's when it sent a batch again.
CUT_TRANSACTION = re.compile(
    r"(Could not|Cannot) send <class '[^']*Txn[^']*'|transaction aborted \("
)


async def test_a_kafka_crash_under_committing_workers_raises_every_fall_once(
    private_kafka: PrivateKafka, settings: Settings, tmp_path: Path
) -> None:
    kafka = private_kafka
    run = DetectionRun(settings, tmp_path)
    run.settings = settings.model_copy(
        update={
            "kafka": kafka.ctx.settings.kafka.model_copy(update={"topic_prefix": run.prefix}),
        }
    )
    await ensure_topics(run.settings)
    env = {
        "VEILLEUSE_KAFKA__BOOTSTRAP_SERVERS": run.settings.kafka.bootstrap_servers,
        "VEILLEUSE_RULES__FALL__CONFIRM_S": str(CONFIRM_S),
    }
    partitions = run.settings.kafka.topic_partitions
    fallen = one_lamp_per_partition(partitions)
    talkers = [f"L-talk-{i}" for i in range(4 * partitions)]
    try:
        workers = [run.worker("w1", **env), run.worker("w2", **env)]
        await asyncio.to_thread(run.wait_for_assignment, workers, 120)
        async with AlertTail(run.settings) as tail, LampSender(run.settings) as lamps:
            talking = asyncio.Event()
            talking.set()

            async def talk() -> None:
                # Records on every partition all along: a transaction is always being committed.
                while talking.is_set():
                    for lamp in talkers:
                        with contextlib.suppress(Exception):  # Kafka down: skipped, not queued
                            await asyncio.wait_for(
                                lamps.send(SITE, lamp, "motion", zone="room", level=20), 1
                            )
                    await asyncio.sleep(0.05)

            talker = asyncio.create_task(talk())
            await asyncio.sleep(2)
            deadlines: dict[str, float] = {}
            for lamp in fallen:
                await lamps.standing(SITE, lamp)
                await lamps.send(SITE, lamp, "fall_suspected", confidence=0.9, zone="floor")
                sent = await lamps.send(
                    SITE,
                    lamp,
                    "posture",
                    posture="on_floor",
                    zone="floor",
                    confidence=0.9,
                    persons=1,
                )
                deadlines[lamp] = sent["ts"] / 1000 + CONFIRM_S
            await asyncio.sleep(KILL_AFTER_S)
            assert all(w.alive() for w in workers)
            killed_at = time.time()
            await asyncio.to_thread(crash, kafka)
            await asyncio.sleep(DOWN_S)
            await asyncio.to_thread(start, kafka)
            back_at = time.time()
            outage_s = back_at - killed_at
            assert back_at > max(deadlines.values()), "a deadline fell after the outage"
            late_bound_s = 2.0 + outage_s
            found = await tail.wait_for(
                len(fallen),
                lambda a: a["kind"] == "fall" and a["state"] == "raised",
                timeout_s=late_bound_s + 30,
            )
            await asyncio.sleep(3)  # room for a duplicate to show up
            talking.clear()
            await talker
            alerts = list(tail.alerts)
            running = {w.instance_id: w.alive() for w in workers}
    finally:
        run.stop()

    tails = "\n".join(f"--- {w.instance_id}\n{w.log_tail(40)}" for w in workers)
    assert len(found) >= len(fallen), f"{len(found)} of {len(fallen)} falls raised:\n{tails}"
    per_step = Counter((a["alert_id"], a["state"]) for a, _ in alerts)
    assert max(per_step.values()) == 1, [k for k, n in per_step.items() if n > 1]
    raised = [(a, at) for a, at in alerts if a["state"] == "raised"]
    assert sorted(a["lamp_id"] for a, _ in raised) == sorted(fallen), "a false or missing alert"
    lateness = {a["lamp_id"]: at / 1000 - deadlines[a["lamp_id"]] for a, at in raised}
    early = {lamp: s for lamp, s in lateness.items() if s < -0.5}
    assert not early, f"raised before the deadline: {early}"
    late = {lamp: s for lamp, s in lateness.items() if s > late_bound_s}
    assert not late, f"later than deadline + 2 s + the {outage_s:.1f} s outage: {late}"
    assert all(running.values()), f"a worker exited: {running}\n{tails}"
    # The crash did cut a transaction that was being committed (not only idle connections).
    assert any(CUT_TRANSACTION.search(w.output()) for w in workers), tails
    for worker in workers:
        output = worker.output()
        assert "batch failed" not in output, worker.log_tail(60)
        refusals = FENCE_LINE.findall(output)
        # A broker error is never a fence: a refusal names the group's own verdict.
        assert all(any(n in r for n in FENCING_NAMES) for r in refusals), refusals
    worst = max(lateness.values())
    after_back = [at / 1000 - back_at for _, at in raised]
    print(  # noqa: T201 - shown with -s
        f"outage {outage_s:.1f} s; falls late by {min(lateness.values()):+.2f} to {worst:+.2f} s "
        f"(n={len(lateness)}, bound {late_bound_s:.1f} s), raised {min(after_back):.2f} to "
        f"{max(after_back):.2f} s after Kafka answered again"
    )
