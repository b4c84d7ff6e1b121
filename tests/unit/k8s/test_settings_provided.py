"""Every setting the code reads is provided to every component by the ConfigMap or a Secret of
each overlay, under a name the settings model knows, with a value it accepts."""

from __future__ import annotations

import os

import pytest

from agents.registry import check_agent_sections, installed_agents, settings_sections
from agents.rules import build_rules
from pipeline.settings import Settings, load_settings, settings_table
from tests.unit.k8s.manifests import OVERLAYS, WORKLOAD_KINDS, Doc, of_kind, pod_spec, rendered

# Settings a deployment may leave unset, and why; every other one must be provided.
MAY_STAY_UNSET = {
    "VEILLEUSE_NOTIFIER__SMTP_HOST": "unset: no e-mail, until a franchise configures its relay",
    "VEILLEUSE_NOTIFIER__SMTP_USER": "unset: no SMTP login (set with SMTP_HOST)",
    "VEILLEUSE_ELASTICSEARCH__API_KEY": "the components log in with ECK's user instead",
}
# Read by the local stack only (`veilleuse stack`), never in a cluster.
LOCAL_ONLY_PREFIX = "VEILLEUSE_STACK__"
# Per pod: the pod's own name, given by the workload (fieldRef), never by the ConfigMap.
PER_POD = {
    "VEILLEUSE_MQTT__CLIENT_ID": "connector",
    "VEILLEUSE_DETECTION__INSTANCE_ID": "worker",
    "VEILLEUSE_DETECTION__LIVE_URL": "worker",
}
KAFKA, PG, ES, REDIS = (
    "VEILLEUSE_KAFKA__SASL_PASSWORD",
    "VEILLEUSE_POSTGRES__PASSWORD",
    "VEILLEUSE_ELASTICSEARCH__PASSWORD",
    "VEILLEUSE_REDIS__PASSWORD",
)
MQTT, SENTRY = "VEILLEUSE_MQTT__PASSWORD", "VEILLEUSE_SENTRY__DSN"
NOTIFIER = {"VEILLEUSE_NOTIFIER__WEBHOOK_SECRET", "VEILLEUSE_NOTIFIER__SMTP_PASSWORD"}
# The secrets each component reads. PG and MQTT go to every one of them as well: outside
# development the settings model refuses their local defaults whoever reads them.
READS = {
    "connector": {KAFKA, MQTT, SENTRY},
    "worker": {KAFKA, REDIS, SENTRY},  # Redis: where its live state is registered
    "sink-postgres": {KAFKA, PG, SENTRY},
    "sink-elasticsearch": {KAFKA, ES, SENTRY},
    "notifier": {KAFKA, PG, REDIS, SENTRY} | NOTIFIER,
    "api": {KAFKA, PG, ES, REDIS, SENTRY},
    "migrate": {PG},
    "setup-search": {ES},
    "reindex": {KAFKA, ES},
}
FORCED = {PG, MQTT}
# Secrets the cluster's operators or its administrators create; a test stands in for them.
FAKE_SECRET = "not-the-local-secret"


def is_secret(name: str) -> bool:
    return name.endswith(("PASSWORD", "__DSN", "__API_KEY", "__WEBHOOK_SECRET"))


def setting_names() -> set[str]:
    rows = settings_table(settings_sections()).splitlines()[2:]
    return {row.split("|")[1].strip().strip("`") for row in rows}


def container_env(doc: Doc, configmap: dict[str, str]) -> tuple[dict[str, str], set[str]]:
    """(what the container's environment holds, which of it comes from Secrets)."""
    (container,) = pod_spec(doc)["containers"]
    env: dict[str, str] = {}
    secret_names: set[str] = set()
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        assert ref.startswith("veilleuse-settings"), ref
        env.update(configmap)
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item["valueFrom"]:
            env[item["name"]] = FAKE_SECRET
            secret_names.add(item["name"])
        else:
            env[item["name"]] = f"{doc['metadata']['name']}-0"  # a fieldRef: the pod's name
    return env, secret_names


def configmap_data(docs: tuple[Doc, ...]) -> dict[str, str]:
    (settings,) = [
        doc
        for doc in of_kind(docs, "ConfigMap")
        if doc["metadata"]["name"].startswith("veilleuse-settings")
    ]
    data: dict[str, str] = settings["data"]
    return data


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_configmap_names_only_real_settings_and_no_secret(overlay: str) -> None:
    data = configmap_data(rendered(overlay))
    known = setting_names()
    assert not set(data) - known, f"not settings: {sorted(set(data) - known)}"
    secret_like = [name for name in data if is_secret(name)]
    assert not secret_like, f"secrets belong in Secrets: {secret_like}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_component_gets_every_setting(overlay: str, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = rendered(overlay)
    configmap = configmap_data(docs)
    secrets = {name for name in setting_names() if is_secret(name)}
    common = {
        name
        for name in setting_names()
        if not name.startswith(LOCAL_ONLY_PREFIX)
        and name not in MAY_STAY_UNSET
        and name not in PER_POD
        and name not in secrets
    }
    for doc in of_kind(docs, *WORKLOAD_KINDS):
        where = f"{overlay}: {doc['kind']}/{doc['metadata']['name']}"
        name = doc["metadata"]["labels"]["app.kubernetes.io/component"]
        env, from_secrets = container_env(doc, configmap)
        per_pod = {setting for setting, owner in PER_POD.items() if owner == name}
        missing = (common | READS[name] | FORCED | per_pod) - set(env)
        assert not missing, f"{where} lacks {sorted(missing)}"
        extra = (set(env) & secrets) - READS[name] - FORCED
        assert not extra, f"{where} gets secrets it does not read: {sorted(extra)}"
        assert set(env) & secrets <= from_secrets, f"{where}: a secret outside a Secret"
        # The values themselves: the settings model must accept them, as the pod would.
        monkeypatch.delenv("VEILLEUSE_STACK__HOME", raising=False)
        for variable in [n for n in os.environ if n.startswith("VEILLEUSE_")]:
            monkeypatch.delenv(variable)
        for variable, value in env.items():
            monkeypatch.setenv(variable, value)
        settings = load_settings(_env_file=None)
        assert isinstance(settings, Settings)
        assert settings.environment == overlay, where
        assert settings.kafka.topic_replication_factor == 3, where
        # The rules' and agents' sections, as their registries validate them at start.
        build_rules(settings.detection, settings.rules)
        check_agent_sections(settings, installed_agents().values())


def test_a_missing_or_misnamed_setting_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    data = dict(configmap_data(rendered("production")))
    data["VEILLEUSE_KAFKA__BOOTSTRAP_SERVER"] = data.pop("VEILLEUSE_KAFKA__BOOTSTRAP_SERVERS")
    assert set(data) - setting_names() == {"VEILLEUSE_KAFKA__BOOTSTRAP_SERVER"}
    (worker,) = [
        doc
        for doc in of_kind(rendered("production"), "StatefulSet")
        if doc["metadata"]["name"] == "veilleuse-worker"
    ]
    env, _ = container_env(worker, data)
    assert "VEILLEUSE_KAFKA__BOOTSTRAP_SERVERS" not in env
