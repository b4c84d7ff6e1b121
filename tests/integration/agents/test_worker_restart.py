"""A worker killed while lamps' deadlines are pending: its successor fires each one, once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

from tests.integration.agents.conftest import AlertTail, DetectionRun, LampSender
from tests.integration.agents.flaky_delivery_worker import COMMITTED_WITHOUT

SITE = "it-home-3"


async def test_pending_deadlines_survive_a_sigkill_and_fire_on_time(
    detection_run: DetectionRun,
) -> None:
    """State, deadlines and offsets come back from the changelog and the committed offsets:
    the falls of lamps that went silent before the crash are raised once, on time."""
    run = detection_run
    first = run.worker("w1")
    await asyncio.to_thread(run.wait_for_assignment, [first])
    lamps_down = [f"L-{i}" for i in range(12)]  # spread over every partition
    async with AlertTail(run.settings) as tail, LampSender(run.settings) as lamps:
        for lamp in lamps_down:
            await lamps.send(SITE, lamp, "fall_suspected", confidence=0.9, zone="floor")
        deadline_ms = int(time.time() * 1000) + 30_000
        await asyncio.sleep(2)  # processed and committed by the first worker
        first.kill()
        second = run.worker("w1")  # the same identity, as a restarted pod
        await asyncio.to_thread(run.wait_for_assignment, [second])
        raised = await tail.wait_for(len(lamps_down), lambda a: a["kind"] == "fall", 60)
        await asyncio.sleep(2)
        alerts = list(tail.alerts)
    assert sorted(a["lamp_id"] for a in raised) == sorted(lamps_down), second.log_tail()
    assert Counter((a["alert_id"], a["state"]) for a, _ in alerts).most_common(1)[0][1] == 1
    arrivals = [arrived for a, arrived in alerts if a["kind"] == "fall"]
    assert max(arrivals) - deadline_ms <= 2000, f"last fall {max(arrivals) - deadline_ms} ms late"
    # Not before the confirmation either (the deadline was taken after the last of the sends).
    early_ms = deadline_ms - min(arrivals)
    assert early_ms <= 2000, f"first fall on the topic {early_ms} ms before its deadline"


async def test_a_worker_that_cannot_commit_exits_non_zero(detection_run: DetectionRun) -> None:
    """Rather than run on with state ahead of what Kafka holds: its supervisor restarts it
    and it resumes from the last commit."""
    run = detection_run
    script = str(Path(__file__).with_name("failing_worker.py"))
    worker = run.worker("w1", script=script)
    await asyncio.to_thread(run.wait_for_assignment, [worker])
    async with LampSender(run.settings) as lamps:
        await lamps.send(SITE, "L-1", "button", accessory_id="cord", action="press")
    assert worker.proc is not None
    code = await asyncio.to_thread(worker.proc.wait, 60)
    assert code != 0
    assert "injected: the transaction cannot commit" in worker.log_file.read_text()


async def test_an_alert_kafka_refused_is_sent_again_not_committed_without(
    detection_run: DetectionRun,
) -> None:
    """A delivery that failed (aiokafka fails a batch whose partition had no leader for a
    while, yet lets the transaction commit) aborts the transaction; the batch is sent again
    and its alert arrives once, the worker running on."""
    run = detection_run
    script = str(Path(__file__).with_name("flaky_delivery_worker.py"))
    worker = run.worker("w1", script=script)
    await asyncio.to_thread(run.wait_for_assignment, [worker])
    async with AlertTail(run.settings) as tail, LampSender(run.settings) as lamps:
        await lamps.send(SITE, "L-9", "button", accessory_id="cord", action="press")
        raised = await tail.wait_for(1, lambda a: a["kind"] == "help_requested", 30)
        await asyncio.sleep(2)
        alerts = [a for a, _ in tail.alerts]
    assert len(raised) == 1, worker.log_tail()
    assert len(alerts) == 1, alerts
    assert worker.alive()
    assert "transaction aborted (NotLeaderForPartitionError" in worker.output()
    assert COMMITTED_WITHOUT not in worker.output()
