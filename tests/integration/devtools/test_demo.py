"""A short simulated home over real MQTT through the real connector and a detection worker."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from devtools.demo import DemoRun, run_demo
from devtools.processes import veilleuse
from pipeline.settings import Settings

pytestmark = pytest.mark.slow


@pytest.mark.timeout(240)
async def test_short_home_recall_one_and_no_false_critical(
    settings: Settings, require: Callable[..., None]
) -> None:
    """Ten rooms for 90 s (falls, a silent fall, a recovery, help, floor care, lying in bed, a
    last will, a reboot, residents who stop moving, junk, duplicates, reordering and ±120 s
    clock skews on the incidents' own messages): every expected alert of every kind is read on
    alerts.v1 within its bounds (a critical one by its condition + 2 s, none before its
    condition), none other, and every junk payload reached the DLQ."""
    require("kafka", "mosquitto")
    lines: list[str] = []
    run = DemoRun(settings, lines.append, tty=False, full=False, short=True)
    code = await run_demo(run, stack=False)
    report = "\n".join(lines)
    assert run.result is not None, report
    assert code == 0, report
    result = run.result
    assert result.ok, report
    assert not (result.missed or result.false or result.late or result.early), report
    for kind in ("fall", "help_requested", "fall_recovered", "lamp_offline", "inactivity"):
        assert result.kinds[kind].expected >= 1, kind
        assert result.kinds[kind].recall == 1.0, report
    assert "8 on lamp.dlq.v1 (junk sent: 8)" in report, report
    assert "bound enforced: a critical alert (fall, help) no later than its condition + 2.0 s" in (
        report
    )
    assert all(not p.alive() for p in run.procs)


@pytest.mark.timeout(300)
async def test_serve_keeps_the_console_up_after_the_verdict_until_sigterm(
    settings: Settings, require: Callable[..., None], tmp_path: Path
) -> None:
    """``veilleuse demo --serve`` (the short home): after the verdict the API still answers and
    the printed one-time link signs in, once; SIGTERM stops every process and the command exits
    with the verdict's code."""
    require("kafka", "mosquitto", "postgres", "elasticsearch", "redis")
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        demo = subprocess.Popen(
            veilleuse("demo", "--no-stack", "--short", "--serve"),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 240
        found = None
        while found is None:
            assert demo.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            found = re.search(
                r"sign in:  (http://[^/]+)(/console/sign-in/link/\S+)", log.read_text()
            )
            await asyncio.sleep(0.5)
        base, link = found.group(1), found.group(2)
        report = log.read_text()
        assert "PASS: 0 critical alert(s) missed" in report, report
        await asyncio.sleep(3)  # the verdict is well behind: still up
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            assert (await client.get("/readyz")).status_code == 200
            first = await client.get(link)
            assert first.status_code == 303, first.text
            assert first.headers["location"].startswith("/console/sites/")
            board = await client.get(first.headers["location"])
            assert board.status_code == 200
            assert (await client.get(link)).status_code == 401  # one time only
        demo.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(demo.wait, 90)
        output = log.read_text()
        assert code == 0, output
        assert "SIGTERM: stopping the demo's processes" in output, output
        assert "stopped; exit 0" in output, output
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            with pytest.raises(httpx.TransportError):
                await client.get("/readyz")
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
