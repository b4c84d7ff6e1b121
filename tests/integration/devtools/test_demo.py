"""A short simulated home over real MQTT through the real connector and a detection worker."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from devtools.demo import DemoRun, run_demo
from pipeline.settings import Settings

pytestmark = pytest.mark.slow


@pytest.mark.timeout(240)
async def test_short_home_recall_one_and_no_false_critical(
    settings: Settings, require: Callable[..., None]
) -> None:
    """Ten rooms for 90 s (falls, a silent fall, a recovery, help, floor care, lying in bed, a
    last will, a reboot, junk, duplicates, reordering): every expected alert is read on
    alerts.v1, none other, and every junk payload reached the DLQ."""
    require("kafka", "mosquitto")
    lines: list[str] = []
    run = DemoRun(settings, lines.append, tty=False, full=False, short=True)
    code = await run_demo(run, stack=False)
    report = "\n".join(lines)
    assert run.result is not None, report
    assert code == 0, report
    result = run.result
    assert not result.missed and not result.false, report
    for kind in ("fall", "help_requested", "fall_recovered", "lamp_offline"):
        assert result.kinds[kind].expected >= 1, kind
        assert result.kinds[kind].recall == 1.0, report
    assert "8 on lamp.dlq.v1 (junk sent: 8)" in report, report
    assert all(not p.alive() for p in run.procs)
