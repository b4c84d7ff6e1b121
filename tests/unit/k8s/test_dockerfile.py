"""The Dockerfile, checked offline (no Docker engine on the development machines: it is never
built here). What can be checked without building: its sources, its user, its entrypoint."""

from __future__ import annotations

import fnmatch
import re
import tomllib

from tests.unit.k8s.manifests import ROOT, WORKLOAD_KINDS, of_kind, pod_spec, rendered

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def ignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (last matching rule wins)."""
    verdict = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            verdict = not negate
    return verdict


def test_every_copy_source_exists_and_is_in_the_context() -> None:
    copies = [rest for keyword, rest in instructions() if keyword == "COPY"]
    assert copies
    for rest in copies:
        if rest.startswith("--from="):
            continue
        *sources, _destination = rest.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert not ignored(source), f"COPY {source}: excluded by .dockerignore"


def test_every_package_is_copied() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    copied = {rest.split()[0] for keyword, rest in instructions() if keyword == "COPY"}
    assert set(packages) <= copied
    # The migrations are package data (pipeline/migrations/postgres): nothing copied by hand.
    assert not any(source.startswith("migrations") for source in copied)


def test_the_entrypoint_is_the_console_script_as_a_fixed_non_root_user() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["veilleuse"] == "cli.main:main"
    steps = instructions()
    (entrypoint,) = [rest for keyword, rest in steps if keyword == "ENTRYPOINT"]
    assert entrypoint == '["/opt/veilleuse/bin/veilleuse"]'
    (user,) = [rest for keyword, rest in steps if keyword == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    # The manifests' runAsUser is the image's user (runAsNonRoot checks a numeric uid).
    for doc in of_kind(rendered("production"), *WORKLOAD_KINDS):
        assert pod_spec(doc)["securityContext"]["runAsUser"] == int(uid)


def test_the_build_step_checks_the_installed_migrations() -> None:
    # The wheel carries the SQL files; the build fails if the installed package finds none.
    text = DOCKERFILE.read_text()
    assert "from pipeline.migrations import discover; assert discover()" in text
    assert "cp " not in text


def test_the_build_step_imports_the_installed_pipeline_not_the_source_tree() -> None:
    # The build's WORKDIR holds the sources: a plain `python -c` puts it first on sys.path and
    # imports the source tree's pipeline/, and the check would pass on the sources even if the
    # wheel lacked the migrations. Found by k8s/build-image-without-docker.sh.
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    calls = re.findall(r"python((?: -\w)*) -c '(?:from|import) pipeline", text)
    assert len(calls) == 1
    assert all("-P" in flags.split() for flags in calls)


def test_the_base_image_is_one_argument_for_both_stages() -> None:
    froms = [rest for keyword, rest in instructions() if keyword == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]
