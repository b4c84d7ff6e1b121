"""The local services' configuration follows the settings, and stays on loopback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devtools.stack import manager
from devtools.stack.context import StackContext
from devtools.stack.elasticsearch import Elasticsearch
from devtools.stack.kafka import Kafka
from devtools.stack.mosquitto import Mosquitto
from devtools.stack.service import Service
from pipeline.errors import StackError
from pipeline.settings import load_settings


@pytest.fixture
def ctx(tmp_path: Path) -> StackContext:
    return StackContext(
        load_settings(
            stack={"home": tmp_path / ".stack", "kafka_controller_port": 29093},
            kafka={"bootstrap_servers": "127.0.0.1:29092"},
            elasticsearch={"url": "http://127.0.0.1:29200"},
        )
    )


def test_kafka_properties_follow_the_settings(ctx: StackContext) -> None:
    text = Kafka(ctx).server_properties()
    assert (
        "listeners=PLAINTEXT://127.0.0.1:29092,SASL_SSL://127.0.0.1:19094,"
        "CONTROLLER://127.0.0.1:29093" in text
    )
    assert f'user_veilleuse="{Kafka(ctx).sasl_password()}"' in text
    assert "auto.create.topics.enable=false" in text
    assert f"log.dirs={ctx.home / 'kafka' / 'data'}" in text


def test_elasticsearch_is_single_node_on_loopback(ctx: StackContext) -> None:
    text = Elasticsearch(ctx).elasticsearch_yml()
    assert "discovery.type: single-node" in text
    assert "network.host: 127.0.0.1" in text
    assert "http.port: 29200" in text
    assert "xpack.security.enabled: false" in text


def test_only_loopback_services_are_managed(tmp_path: Path) -> None:
    settings = load_settings(
        stack={"home": tmp_path}, kafka={"bootstrap_servers": "kafka.prod:9092"}
    )
    managed = {s.name: s.managed for s in manager.services(settings)}
    assert managed["kafka"] is False
    assert managed["redis"] is True


def test_unknown_service_is_named(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="zookeeper: unknown service"):
        manager.services(load_settings(stack={"home": tmp_path}), ("zookeeper",))


def test_a_recycled_pid_is_not_ours(ctx: StackContext) -> None:
    """A pid file that points at some other process must never make us stop that process."""
    service: Service = manager.services(ctx.settings, ("redis",))[0]
    service.ctx.run_dir.mkdir(parents=True)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        service.pid_file.write_text(f'{{"pid": {stranger.pid}}}')
        assert service.pid() is None
        assert service.stop() is False
        assert stranger.poll() is None  # still alive
    finally:
        stranger.kill()
        stranger.wait()


def test_a_multi_line_probe_error_stays_on_one_status_line(ctx: StackContext) -> None:
    service: Service = manager.services(ctx.settings, ("redis",))[0]

    def fail() -> None:
        raise OSError("connection refused\n\tIs the server running?")

    service.probe = fail  # type: ignore[method-assign]
    ok, detail = service.healthy()
    assert not ok
    assert detail == "OSError: connection refused Is the server running?"


def test_a_missing_header_names_its_package(tmp_path: Path) -> None:
    """Headers are not executables: ``files`` is checked for existence (the lamps' ACL plugin
    needs mosquitto-dev's)."""
    ctx = StackContext(load_settings(stack={"home": tmp_path / ".stack", "apt_install": False}))
    present = tmp_path / "present.h"
    present.write_text("")
    ctx.ensure_packages("mosquitto", {}, files={str(present): "present-dev"})  # nothing to do
    with pytest.raises(StackError, match="missing Debian package\\(s\\) absent-dev"):
        ctx.ensure_packages(
            "mosquitto", {}, files={str(present): "present-dev", "/no/such.h": "absent-dev"}
        )


def test_one_mosquitto_per_broker_sharing_the_first_ones_accounts(tmp_path: Path) -> None:
    """Several brokers in the settings: one Mosquitto each, in a folder and under a name of its
    own, all reading the first one's accounts; the first keeps the folder it always had, and
    its pid marker does not match the next ones' command lines."""
    settings = load_settings(
        stack={"home": tmp_path},
        mqtt={"brokers": [{"name": "a", "port": 21883}, {"name": "b", "port": 21884}]},
    )
    first, second = manager.services(settings, ("mosquitto",))
    assert isinstance(first, Mosquitto) and isinstance(second, Mosquitto)
    assert (first.name, first.dir, first.port) == ("mosquitto", tmp_path / "mosquitto", 21883)
    assert (second.name, second.dir, second.port) == (
        "mosquitto-2",
        tmp_path / "mosquitto-2",
        21884,
    )
    assert second.credentials().folder == first.credentials().folder == first.dir
    assert second.probe_password() == first.probe_password()
    assert first.marker not in str(second.conf_file)


def test_a_broker_no_longer_in_the_settings_is_shown_and_stopped(tmp_path: Path) -> None:
    """`up` ran with three brokers, `status` and `down` with today's one: the third, still
    running, is listed as not in the settings (where it listens read from its configuration)
    and stopped with the stack, not left behind."""
    settings = load_settings(
        stack={"home": tmp_path}, mqtt={"brokers": [{"name": "a", "port": 21883}]}
    )
    ctx = StackContext(settings)
    stray = Mosquitto(ctx, 2)
    stray.dir.mkdir(parents=True)
    stray.conf_file.write_text("per_listener_settings false\nlistener 21885 127.0.0.1\n")
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    # A process whose command line names the stray's configuration, as Mosquitto's does.
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", str(stray.conf_file)],
        start_new_session=True,
    )
    try:
        stray.pid_file.write_text(f'{{"pid": {process.pid}}}')
        reports = {r.service: r for r in manager.status(settings, ("mosquitto",))}
        assert reports["mosquitto-3"].state == manager.State.UP
        assert reports["mosquitto-3"].url == "mqtt://127.0.0.1:21885"
        assert "not in VEILLEUSE_MQTT__BROKERS" in reports["mosquitto-3"].detail
        stopped = {r.service: r.state for r in manager.down(settings, ("mosquitto",))}
        assert stopped["mosquitto-3"] == manager.State.STOPPED
        assert process.wait(10) is not None
        assert "mosquitto-3" not in {r.service for r in manager.status(settings, ("mosquitto",))}
    finally:
        process.kill()
        process.wait()
