"""Rendering the Kustomize overlays and validating them offline (helpers of the k8s tests).

Rendering is real Kustomize (the `kustomize` binary that `make install` builds into .venv/bin
from the Go module proxy). Built-in kinds are validated against the Kubernetes OpenAPI
schemas shipped by the kubernetes-validate package, strictly (an unknown field is an error);
the operators' kinds against the CRDs vendored in k8s/crds, made strict the same way (the API
server would silently prune an unknown field of a structural schema: a typo would be lost).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "k8s"
OVERLAYS = ("staging", "production")
# The oldest Kubernetes release the manifests are meant for.
KUBERNETES_VERSION = "1.33.0"

Doc = dict[str, Any]


def kustomize_binary() -> str:
    for candidate in (ROOT / ".venv" / "bin" / "kustomize", shutil.which("kustomize")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    message = "kustomize is not installed: `make install` builds it (needs go)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def render(folder: Path) -> list[Doc]:
    result = subprocess.run(
        [kustomize_binary(), "build", str(folder)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        raise AssertionError(f"kustomize build {folder} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.cache
def rendered(overlay: str) -> tuple[Doc, ...]:
    return tuple(render(K8S / "overlays" / overlay))


def _strict(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_schemas() -> dict[tuple[str, str], Doc]:
    """(apiVersion, kind) -> strict JSON schema, for every served version of the vendored CRDs."""
    schemas: dict[tuple[str, str], Doc] = {}
    for path in sorted((K8S / "crds").rglob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served"):
                    schema = _strict(version["schema"]["openAPIV3Schema"])
                    # The API server owns metadata's schema; the CRD only says "object".
                    schema.setdefault("properties", {})["metadata"] = {"type": "object"}
                    schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def validation_errors(doc: Doc) -> list[str]:
    """Every schema error of one rendered document (empty: valid)."""
    import jsonschema
    import kubernetes_validate

    api_version, kind = doc.get("apiVersion", "?"), doc.get("kind", "?")
    name = doc.get("metadata", {}).get("name", "?")
    where = f"{kind}/{name} ({api_version})"
    if not doc.get("metadata", {}).get("name"):
        return [f"{where}: no metadata.name"]
    schema = crd_schemas().get((api_version, kind))
    if schema is not None:
        validator = jsonschema.Draft4Validator(schema)
        return [
            f"{where}: {'/'.join(map(str, error.absolute_path))}: {error.message}"
            for error in validator.iter_errors(doc)
        ]
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{where}: no Kubernetes schema and no vendored CRD for this kind"]
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(map(str, exc.path))
        return [f"{where}: {path}: {exc.message}"]
    return []


def of_kind(docs: tuple[Doc, ...], *kinds: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] in kinds]


WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job", "CronJob")


def pod_template(doc: Doc) -> Doc:
    spec = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
    template: Doc = spec["template"]
    return template


def pod_spec(doc: Doc) -> Doc:
    spec: Doc = pod_template(doc)["spec"]
    return spec


def labels_match(selector: Doc, labels: dict[str, str]) -> bool:
    wanted = selector.get("matchLabels", {})
    return all(labels.get(key) == value for key, value in wanted.items())
