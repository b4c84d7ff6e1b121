"""The probes point at the ports the settings give the components, and the connector's exec
probes answer what they claim, against /readyz and /livez served the way the connector serves
them (pipeline.metrics.serve with its Health)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from pipeline.health import Health
from pipeline.metrics import serve
from pipeline.ports import free_port
from tests.unit.k8s.manifests import OVERLAYS, Doc, of_kind, pod_spec, rendered

PORT_SETTINGS = {
    "worker": "VEILLEUSE_DETECTION__METRICS_PORT",
    "sink-postgres": "VEILLEUSE_SINK__POSTGRES_METRICS_PORT",
    "sink-elasticsearch": "VEILLEUSE_SINK__ELASTICSEARCH_METRICS_PORT",
    "notifier": "VEILLEUSE_NOTIFIER__METRICS_PORT",
    "api": "VEILLEUSE_API__PORT",
}


def settings_of(docs: tuple[Doc, ...]) -> dict[str, str]:
    for doc in of_kind(docs, "ConfigMap"):
        if doc["metadata"]["name"].startswith("veilleuse-settings"):
            data: dict[str, str] = doc["data"]
            return data
    raise AssertionError("no veilleuse-settings ConfigMap")


def container(docs: tuple[Doc, ...], component: str) -> Doc:
    for doc in of_kind(docs, "Deployment", "StatefulSet"):
        if doc["metadata"]["labels"]["app.kubernetes.io/component"] == component:
            (only,) = pod_spec(doc)["containers"]
            return only
    raise AssertionError(f"no workload {component}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_the_ports_of_the_settings(overlay: str) -> None:
    docs = rendered(overlay)
    settings = settings_of(docs)
    for component, setting in PORT_SETTINGS.items():
        spec = container(docs, component)
        ports = {port["name"]: port["containerPort"] for port in spec["ports"]}
        for probe in ("livenessProbe", "readinessProbe"):
            named = spec[probe]["httpGet"]["port"]
            assert ports[named] == int(settings[setting]), f"{component} {probe}"
    assert settings["VEILLEUSE_API__HOST"] == "0.0.0.0"  # noqa: S104 - reachable in its pod
    connector = container(docs, "connector")
    for probe in ("livenessProbe", "readinessProbe"):
        command = " ".join(connector[probe]["exec"]["command"])
        assert f"127.0.0.1:{settings['VEILLEUSE_CONNECTOR__METRICS_PORT']}/" in command


@pytest.fixture
def served() -> Iterator[tuple[dict[str, bool], int]]:
    """A connector's Health, whose readiness follows its subscriptions as the connector's does
    (MqttSource._unsubscribed)."""
    health = Health("connector", registry=CollectorRegistry())
    subscribed: dict[str, bool] = {}
    health.conditions.append(
        lambda: None if subscribed and all(subscribed.values()) else "not subscribed"
    )
    health.start()
    port = free_port()
    server = serve(CollectorRegistry(), port, health)
    yield subscribed, port
    server.shutdown()
    server.server_close()


def run_probe(probe: str, port: int) -> int:
    docs = rendered("production")
    default = settings_of(docs)["VEILLEUSE_CONNECTOR__METRICS_PORT"]
    command = list(container(docs, "connector")[probe]["exec"]["command"])
    assert command[0] == "python"
    command = [sys.executable, *(part.replace(f":{default}/", f":{port}/") for part in command[1:])]
    return subprocess.run(command, capture_output=True, timeout=30, check=False).returncode


def test_connector_readiness_follows_the_subscriptions(
    served: tuple[dict[str, bool], int],
) -> None:
    subscribed, port = served
    assert run_probe("readinessProbe", port) != 0  # not subscribed anywhere yet
    subscribed.update({"emqx": True, "old-mosquitto": False})
    assert run_probe("readinessProbe", port) != 0  # one broker still missing
    subscribed["old-mosquitto"] = True
    assert run_probe("readinessProbe", port) == 0
    assert run_probe("livenessProbe", port) == 0


def test_connector_liveness_fails_when_nothing_answers() -> None:
    assert run_probe("livenessProbe", free_port()) != 0
