"""A detection worker's failure, caught and logged inside faust's service, reaches Sentry (a
local stand-in) with the worker's component and the exception."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.integration.agents.conftest import DetectionRun, LampSender
from tests.sentry_server import sentry_stand_in


async def test_a_failed_batch_is_reported_to_sentry(detection_run: DetectionRun) -> None:
    run = detection_run
    script = str(Path(__file__).with_name("failing_worker.py"))  # its transactions all fail
    with sentry_stand_in() as sentry:
        worker = run.worker("w1", script=script, VEILLEUSE_SENTRY__DSN=sentry.dsn)
        await asyncio.to_thread(run.wait_for_assignment, [worker])
        async with LampSender(run.settings) as lamps:
            await lamps.send("it-home-9", "L-1", "button", accessory_id="cord", action="press")
        assert worker.proc is not None
        assert await asyncio.to_thread(worker.proc.wait, 60) != 0
        events = sentry.events()
    failed = [e for e in events if e.get("logentry", {}).get("message", "").startswith("batch")]
    assert failed, [e.get("logentry") or e.get("exception") for e in events]
    event = failed[0]
    assert event["tags"]["component"] == "worker"
    assert event["logger"] == "agents.runtime.streaming"
    exception = event["exception"]["values"][-1]
    assert exception["type"] == "RuntimeError"
    assert exception["value"] == "injected: the transaction cannot commit"
