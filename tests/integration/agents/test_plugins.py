"""Rules and agents of other packages, found by their entry points, through a real worker on
the real Kafka: what a team does to extend Veilleuse without forking it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import orjson
import pytest

from devtools.processes import veilleuse
from pipeline.topics import TopicSpec, ensure_topics, topic_name
from schemas import Registry, SchemaError, alert_kind, decode, schema_file
from tests.integration.agents.conftest import AlertTail, DetectionRun, LampSender, read_records
from tests.plugin_dist import ECHO_PACKAGE, LONG_STAY, install_plugin

SITE = "it-plugins-1"


def python_path(folder: Path) -> str:
    return os.pathsep.join([str(folder), *filter(None, [os.environ.get("PYTHONPATH")])])


async def test_a_rule_added_as_a_module_raises_its_own_kind_through_a_real_worker(
    detection_run: DetectionRun, tmp_path: Path
) -> None:
    """Module + entry point only: no edit of the registry, the settings model or the schema."""
    site = install_plugin(
        tmp_path / "site",
        "team_rules",
        {"team_long_stay.py": LONG_STAY},
        {"veilleuse.rules": {"long_stay": "team_long_stay:LongStayRule"}},
    )
    run = detection_run
    worker = run.worker(
        "plugins-1", PYTHONPATH=python_path(site), VEILLEUSE_RULES__LONG_STAY__AFTER_S="2"
    )
    run.wait_for_assignment([worker])
    async with AlertTail(run.settings) as tail, LampSender(run.settings) as lamps:
        await lamps.send(
            SITE, "L-PLUG-1", "posture", posture="standing", zone="bathroom", confidence=0.9,
            persons=1,
        )  # fmt: skip
        found = await tail.wait_for(1, lambda a: alert_kind(a) == "long_stay", timeout_s=30)
    assert found, f"no long_stay alert on alerts.v1:\n{worker.log_tail()}"
    (alert,) = found
    assert (alert["kind"], alert["kind_name"], alert["lamp_id"]) == (
        "unknown",
        "long_stay",
        "L-PLUG-1",
    )


def agents_list(env: dict[str, str]) -> str:
    done = subprocess.run(
        veilleuse("agents", "list"),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


async def test_an_agent_installed_by_entry_point_is_listed_and_run_alone(
    detection_run: DetectionRun, tmp_path: Path
) -> None:
    site = install_plugin(
        tmp_path / "site",
        "team_agents",
        ECHO_PACKAGE,
        {"veilleuse.agents": {"echo_messages": "team_echo:AGENT"}},
    )
    run = detection_run
    env = {**run.env(), "PYTHONPATH": python_path(site)}
    listed = agents_list(env)
    assert "echo_messages: Copies lamp messages to echo.v1." in listed
    assert f"  reads:    {run.prefix}lamp.messages.v1" in listed
    # Its records' schema is its own package's, and said so.
    assert f"  emits:    {run.prefix}echo.v1 (echo.v1, from package team_echo.schemas)" in listed
    assert "detect_incidents:" in listed
    assert "echo_messages" not in agents_list(run.env())  # not installed there

    echo = TopicSpec("echo.v1", "copies", 3_600_000)
    await ensure_topics(run.settings, (echo,))
    worker = run.worker(
        "plugins-2", args=("--agents", "echo_messages"), PYTHONPATH=python_path(site)
    )
    run.wait_for_assignment([worker])
    async with LampSender(run.settings) as lamps:
        await lamps.send(SITE, "L-PLUG-2", "heartbeat", fw="1.0", uptime_s=5, rssi=-50)
    records = await read_records(run.settings, topic_name(run.settings, echo), 1)
    assert [r.key for r in records] == [b"L-PLUG-2"], worker.log_tail()
    # Written with the schema the plugin ships, which Veilleuse's own registry does not know.
    own = schema_file(site / "team_echo" / "schemas" / "echo.v1.avsc")
    writer, copy = Registry(site, {own.name: own}, {}).decode(records[0].value or b"")
    assert (writer.full_name, writer.fingerprint) == ("team_echo.v1.Echo", own.fingerprint)
    assert copy["lamp_id"] == "L-PLUG-2"
    assert orjson.loads(copy["payload"])["type"] == "heartbeat"
    with pytest.raises(SchemaError, match="unknown writer schema fingerprint"):
        decode(records[0].value or b"")
    # Only the agent asked for runs.
    (starting,) = [line for line in worker.output().splitlines() if "starting agents" in line]
    assert "starting agents echo_messages (" in starting, starting
    assert f"transactional id {run.app_id}-plugins-2" in starting, starting
