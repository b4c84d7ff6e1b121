"""Every rendered overlay is valid for Kubernetes and its operators, and holds the promises of
k8s/README.md: hardened workloads, budgets, policies, topics and settings that match the code."""

from __future__ import annotations

import copy
import re

import pytest

from pipeline.topics import TOPICS
from tests.unit.k8s.manifests import (
    OVERLAYS,
    WORKLOAD_KINDS,
    Doc,
    crd_schemas,
    labels_match,
    of_kind,
    pod_spec,
    pod_template,
    rendered,
    validation_errors,
)

COMPONENTS = {
    "connector": "StatefulSet",
    "worker": "StatefulSet",
    "sink-postgres": "Deployment",
    "sink-elasticsearch": "Deployment",
    "notifier": "Deployment",
    "api": "Deployment",
}
JOBS = {"migrate": "Job", "setup-search": "Job", "reindex": "CronJob"}
OPERATOR_KINDS = {
    ("kafka.strimzi.io/v1", "Kafka"),
    ("kafka.strimzi.io/v1", "KafkaNodePool"),
    ("kafka.strimzi.io/v1", "KafkaTopic"),
    ("kafka.strimzi.io/v1", "KafkaUser"),
    ("elasticsearch.k8s.elastic.co/v1", "Elasticsearch"),
    ("postgresql.cnpg.io/v1", "Cluster"),
    ("postgresql.cnpg.io/v1", "ScheduledBackup"),
    ("apps.emqx.io/v2beta1", "EMQX"),
    ("redis.redis.opstreelabs.in/v1beta2", "Redis"),
}


def component(doc: Doc) -> str:
    label: str = doc["metadata"].get("labels", {}).get("app.kubernetes.io/component", "")
    return label


def workloads(docs: tuple[Doc, ...]) -> list[Doc]:
    return of_kind(docs, *WORKLOAD_KINDS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_document_validates(overlay: str) -> None:
    docs = rendered(overlay)
    errors = [error for doc in docs for error in validation_errors(doc)]
    assert not errors, "\n".join(errors)


def test_the_validation_catches_broken_manifests() -> None:
    docs = rendered("production")
    deployment = copy.deepcopy(of_kind(docs, "Deployment")[0])
    deployment["spec"]["replicas"] = "three"
    assert validation_errors(deployment)
    typo = copy.deepcopy(of_kind(docs, "Deployment")[0])
    typo["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    assert validation_errors(typo)
    topic = copy.deepcopy(of_kind(docs, "KafkaTopic")[0])
    topic["spec"]["partitons"] = 3
    assert validation_errors(topic)
    kafka = copy.deepcopy(of_kind(docs, "Kafka")[0])
    kafka["spec"]["kafka"]["listeners"][0]["type"] = "nodeport-ish"
    assert validation_errors(kafka)
    unknown = {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}}
    assert validation_errors(unknown)


def test_every_operator_kind_has_its_vendored_crd() -> None:
    assert set(crd_schemas()) >= OPERATOR_KINDS
    used = {(doc["apiVersion"], doc["kind"]) for doc in rendered("production")}
    assert used >= OPERATOR_KINDS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_components_and_jobs_are_there(overlay: str) -> None:
    docs = rendered(overlay)
    found = {component(doc): doc["kind"] for doc in workloads(docs)}
    assert found == {**COMPONENTS, **JOBS}
    assert not of_kind(docs, "Secret"), "Secrets are referenced, never committed"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workloads_are_hardened(overlay: str) -> None:
    for doc in workloads(rendered(overlay)):
        where = f"{overlay}: {doc['kind']}/{doc['metadata']['name']}"
        spec = pod_spec(doc)
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["runAsUser"] == 10001, where
        assert spec["automountServiceAccountToken"] is False, where
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            for kind in ("requests", "limits"):
                assert set(container["resources"][kind]) == {"cpu", "memory"}, where
            assert container["image"].startswith("registry.invalid/veilleuse/veilleuse:"), where
            if doc["kind"] in ("Deployment", "StatefulSet"):
                assert "livenessProbe" in container, where
                assert "readinessProbe" in container, where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_component_has_a_budget_and_a_network_policy(overlay: str) -> None:
    docs = rendered(overlay)
    budgets = of_kind(docs, "PodDisruptionBudget")
    policies = of_kind(docs, "NetworkPolicy")
    for doc in workloads(docs):
        labels = pod_template(doc)["metadata"]["labels"]
        name = component(doc)
        own = [p for p in policies if p["spec"]["podSelector"]["matchLabels"] == labels]
        assert own, f"{overlay}: no NetworkPolicy of its own for {name}"
        assert any(
            labels_match(p["spec"]["podSelector"], labels)
            and p["spec"].get("policyTypes") == ["Ingress", "Egress"]
            and not p["spec"].get("ingress")
            and not p["spec"].get("egress")
            for p in policies
        ), f"{overlay}: {name} is not under the default-deny policy"
        if doc["kind"] in ("Deployment", "StatefulSet"):
            assert any(labels_match(b["spec"]["selector"], labels) for b in budgets), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscalers(overlay: str) -> None:
    docs = rendered(overlay)
    settings = configmap(docs)
    scalers = {doc["metadata"]["name"]: doc for doc in of_kind(docs, "HorizontalPodAutoscaler")}
    api = scalers["veilleuse-api"]["spec"]
    assert api["metrics"][0]["resource"]["name"] == "cpu"
    worker = scalers["veilleuse-worker"]["spec"]
    assert worker["scaleTargetRef"]["kind"] == "StatefulSet"
    assert worker["metrics"][0]["type"] == "External"
    assert "lag" in worker["metrics"][0]["external"]["metric"]["name"]
    # A worker beyond the partition count would idle.
    assert worker["maxReplicas"] <= int(settings["VEILLEUSE_KAFKA__TOPIC_PARTITIONS"])
    # What an autoscaler scales has no replicas of its own, which each apply would reset.
    for scaler in scalers.values():
        target = scaler["spec"]["scaleTargetRef"]
        (scaled,) = [
            doc
            for doc in of_kind(docs, target["kind"])
            if doc["metadata"]["name"] == target["name"]
        ]
        assert "replicas" not in scaled["spec"], target["name"]


def configmap(docs: tuple[Doc, ...]) -> dict[str, str]:
    (settings,) = [
        doc
        for doc in of_kind(docs, "ConfigMap")
        if doc["metadata"]["name"].startswith("veilleuse-settings")
    ]
    data: dict[str, str] = settings["data"]
    return data


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_topics_follow_the_code_and_the_settings(overlay: str) -> None:
    docs = rendered(overlay)
    settings = configmap(docs)
    topics = {doc["spec"]["topicName"]: doc["spec"] for doc in of_kind(docs, "KafkaTopic")}
    app_id = settings["VEILLEUSE_DETECTION__APP_ID"]
    changelog = f"{app_id}-lamp_state-changelog"
    assert set(topics) == {spec.name for spec in TOPICS} | {changelog}
    for spec in TOPICS:
        assert int(topics[spec.name]["config"]["retention.ms"]) == spec.retention_ms
    for name, topic in topics.items():
        assert topic["partitions"] == int(settings["VEILLEUSE_KAFKA__TOPIC_PARTITIONS"]), name
        assert topic["replicas"] == 3 == int(settings["VEILLEUSE_KAFKA__TOPIC_REPLICATION_FACTOR"])
        assert topic["config"]["min.insync.replicas"] == 2
        assert int(settings["VEILLEUSE_KAFKA__TOPIC_MIN_INSYNC_REPLICAS"]) == 2
    assert topics[changelog]["config"]["cleanup.policy"] == "compact"


def test_the_overlays_differ_where_they_should() -> None:
    staging, production = configmap(rendered("staging")), configmap(rendered("production"))
    assert staging["VEILLEUSE_ENVIRONMENT"] == "staging"
    assert production["VEILLEUSE_ENVIRONMENT"] == "production"
    namespaces = {
        overlay: {
            doc["metadata"].get("namespace")
            for doc in rendered(overlay)
            if doc["kind"] != "Namespace"
        }
        for overlay in OVERLAYS
    }
    assert namespaces == {"staging": {"veilleuse-staging"}, "production": {"veilleuse"}}
    for overlay, (name,) in namespaces.items():
        (namespace,) = of_kind(rendered(overlay), "Namespace")
        assert namespace["metadata"]["name"] == name


# What each component may reach besides DNS and Sentry (HTTPS to public addresses).
EGRESS = {
    "connector": {"mqtt", "kafka"},
    "worker": {"kafka", "redis"},  # redis: the registration of its live state
    "sink-postgres": {"kafka", "postgres"},
    "sink-elasticsearch": {"kafka", "elasticsearch"},
    "notifier": {"kafka", "postgres", "redis", "outside:25,443,465,587"},
    "api": {"kafka", "postgres", "elasticsearch", "redis", "worker"},  # worker: live state
    "migrate": {"postgres"},
    "setup-search": {"elasticsearch"},
    "reindex": {"kafka", "elasticsearch"},
}
STORES = {
    "strimzi.io/cluster": "kafka",
    "cnpg.io/cluster": "postgres",
    "elasticsearch.k8s.elastic.co/cluster-name": "elasticsearch",
    "app": "redis",
    "apps.emqx.io/instance": "mqtt",
    "app.kubernetes.io/component": "worker",  # our own pods: only the workers are a peer
}


def peer(rule: Doc) -> set[str]:
    found = set()
    for target in rule.get("to", []):
        if "ipBlock" in target:
            ports = ",".join(str(p["port"]) for p in sorted(rule["ports"], key=lambda p: p["port"]))
            found.add(f"outside:{ports}")
        elif "namespaceSelector" in target:
            found.add("dns")
        else:
            labels = target["podSelector"]["matchLabels"]
            found |= {store for key, store in STORES.items() if key in labels}
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_component_reaches_only_its_peers(overlay: str) -> None:
    docs = rendered(overlay)
    policies = of_kind(docs, "NetworkPolicy")
    for doc in workloads(docs):
        labels = pod_template(doc)["metadata"]["labels"]
        reached: set[str] = set()
        for policy in policies:
            if labels_match(policy["spec"]["podSelector"], labels):
                for rule in policy["spec"].get("egress", []):
                    reached |= peer(rule)
        expected = EGRESS[component(doc)] | {"dns", "outside:443"}
        assert reached == expected, f"{overlay}: {component(doc)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_connector_replicas_know_their_count_and_identity(overlay: str) -> None:
    """Replica 0 drains the sessions of ordinals >= VEILLEUSE_CONNECTOR__REPLICAS: the setting
    must be the StatefulSet's count, and the client id the pod's name (its ordinal)."""
    docs = rendered(overlay)
    (connector,) = [doc for doc in of_kind(docs, "StatefulSet") if component(doc) == "connector"]
    settings = configmap(docs)
    assert int(settings["VEILLEUSE_CONNECTOR__REPLICAS"]) == connector["spec"]["replicas"]
    assert int(settings["VEILLEUSE_CONNECTOR__MAX_ORDINAL"]) > connector["spec"]["replicas"]
    assert float(settings["VEILLEUSE_MQTT__RECONNECT_MAX_S"]) <= 2.0
    (container,) = pod_spec(connector)["containers"]
    env = {item["name"]: item for item in container["env"]}
    assert env["VEILLEUSE_MQTT__CLIENT_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.name"
    )
    assert connector["spec"]["serviceName"] in {
        doc["metadata"]["name"] for doc in of_kind(docs, "Service")
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_emqx_keeps_sessions_across_a_node_restart(overlay: str) -> None:
    (emqx,) = of_kind(rendered(overlay), "EMQX")
    config = emqx["spec"]["config"]["data"]
    assert re.search(r"durable_sessions\s*\{\s*enable\s*=\s*true", config)
    assert "backend = builtin_raft" in config
    assert "replication_factor = 3" in config
    assert emqx["spec"]["coreTemplate"]["spec"]["replicas"] >= 3
    assert emqx["spec"]["image"].startswith("emqx/emqx-enterprise:")
    env = {item["name"] for item in emqx["spec"]["coreTemplate"]["spec"]["env"]}
    assert "EMQX_LICENSE__KEY" in env
