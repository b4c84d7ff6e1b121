"""`veilleuse stack` keeps its promises, checked through the command itself."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from devtools.stack import manager
from pipeline.ports import free_port
from pipeline.settings import Settings


def veilleuse(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        check=False,
    )


def pids(settings: Settings) -> dict[str, int | None]:
    return {service.name: service.pid() for service in manager.services(settings)}


def test_a_second_up_is_a_no_op(settings: Settings, require: Callable[..., None]) -> None:
    require(*manager.SERVICE_NAMES)
    before = pids(settings)
    result = veilleuse("stack", "up")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(manager.SERVICE_NAMES) + len(manager.TOOL_NAMES)
    services, tools = lines[: len(manager.SERVICE_NAMES)], lines[len(manager.SERVICE_NAMES) :]
    assert all("already running" in line for line in services), lines
    assert [line.split()[:2] for line in tools] == [
        [name, "installed"] for name in manager.TOOL_NAMES
    ]
    assert not any("installed by this command" in line for line in tools), lines
    assert pids(settings) == before


def test_status_tells_the_truth_after_a_kill(
    restarts_services: None, settings: Settings, require: Callable[..., None]
) -> None:
    require("redis")
    (redis,) = manager.services(settings, ("redis",))
    pid = redis.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while redis.pid() is not None and time.monotonic() < deadline:
        time.sleep(0.1)

    status = veilleuse("stack", "status")
    assert status.returncode == 1
    (line,) = [line for line in status.stdout.splitlines() if line.startswith("redis")]
    assert " down " in line

    restarted = veilleuse("stack", "up", "redis")
    assert restarted.returncode == 0, restarted.stderr
    assert "started" in restarted.stdout
    assert redis.pid() not in (None, pid)
    assert veilleuse("stack", "status").returncode == 0


def test_down_leaves_alone_what_it_did_not_start(tmp_path: Path) -> None:
    port = free_port()
    foreign = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    env = {"VEILLEUSE_STACK__HOME": str(tmp_path / "stack"), "VEILLEUSE_REDIS__PORT": str(port)}
    try:
        deadline = time.monotonic() + 10
        while veilleuse("stack", "status", "redis", env=env).returncode != 0:
            assert time.monotonic() < deadline, "the foreign redis did not come up"
            time.sleep(0.2)
        up = veilleuse("stack", "up", "redis", env=env)
        assert up.returncode == 0, up.stderr
        assert "external" in up.stdout
        down = veilleuse("stack", "down", "redis", env=env)
        assert "was not running under veilleuse" in down.stdout
        assert foreign.poll() is None
        assert veilleuse("stack", "status", "redis", env=env).returncode == 0
    finally:
        foreign.terminate()
        foreign.wait(10)


def test_a_port_taken_by_another_program_is_named(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env = {"VEILLEUSE_STACK__HOME": str(tmp_path), "VEILLEUSE_REDIS__PORT": str(port)}
        result = veilleuse("stack", "up", "redis", env=env)
    assert result.returncode == 1
    assert f"redis: 127.0.0.1:{port} is in use by another program" in result.stderr


@pytest.mark.slow
def test_a_service_that_dies_at_start_is_named_with_its_log(
    tmp_path: Path, require: Callable[..., None]
) -> None:
    require("kafka")  # the jars are already cached, so this costs seconds
    env = {
        "VEILLEUSE_STACK__HOME": str(tmp_path),
        "VEILLEUSE_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "VEILLEUSE_STACK__KAFKA_CONTROLLER_PORT": str(free_port()),
        "VEILLEUSE_STACK__KAFKA_HEAP": "1x",  # the JVM refuses this heap size and exits
    }
    result = veilleuse("stack", "up", "kafka", env=env)
    assert result.returncode == 1
    assert "kafka: exited during start-up" in result.stderr
    assert str(tmp_path / "logs" / "kafka.log") in result.stderr
    assert "Invalid" in result.stderr  # the JVM's own words, from the log's tail


def test_the_demo_smoke_run_passes(require: Callable[..., None]) -> None:
    """`make demo`'s main job: a round trip through every service, the connector, and an
    alarm's whole path (MQTT → connector → Kafka → detection worker → alerts.v1)."""
    require(*manager.SERVICE_NAMES)
    result = veilleuse("smoke")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[1] for line in lines] == [
        *manager.SERVICE_NAMES,
        "connector",
        "detection",
    ]
    assert all(line.startswith("ok ") for line in lines), lines


def test_logs_shows_a_services_log(require: Callable[..., None]) -> None:
    require("redis")
    result = veilleuse("stack", "logs", "redis", "-n", "5")
    assert result.returncode == 0, result.stderr
    assert 0 < len(result.stdout.splitlines()) <= 5
    assert "redis.log" in result.stderr
    unknown = veilleuse("stack", "logs", "zookeeper")
    assert unknown.returncode == 1
    assert "unknown service" in unknown.stderr
