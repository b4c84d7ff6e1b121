"""The image's layout, without Docker: the project installed as the Dockerfile installs it (a
built wheel, not an editable checkout), then the check that `veilleuse migrate` finds every
migration there; and the wheel's files: migrations inside, no developer tooling, no tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pipeline.migrations import discover
from tests.unit.k8s.manifests import ROOT
from tests.unit.k8s.test_dockerfile import instructions

pytestmark = pytest.mark.slow


def installed_python(site: Path, code: str) -> str:
    # -S: without the development checkout's editable finder, so `pipeline` is the wheel's.
    script = f"import sys; sys.path.insert(0, {str(site)!r}); {code}"
    result = subprocess.run(
        [sys.executable, "-S", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=site,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_installed_wheel_finds_every_migration(tmp_path: Path) -> None:
    # The build context as the Dockerfile copies it, nothing else.
    source = tmp_path / "src"
    for keyword, rest in instructions():
        if keyword == "COPY" and not rest.startswith("--from="):
            *paths, _ = rest.split()
            for path in paths:
                origin, copy = ROOT / path, source / path
                if origin.is_dir():
                    shutil.copytree(origin, copy, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    copy.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(origin, copy)
    site = tmp_path / "site"
    # Offline: the build backend is the development environment's (pyproject's dev extra).
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
    build = subprocess.run(
        [*pip, "--target", str(site), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    assert "cli.main" in (site / "bin" / "veilleuse").read_text()
    # The migrations are the package's data: `veilleuse migrate` finds them in the install.
    found = installed_python(
        site,
        "from pipeline.migrations import discover; print(' '.join(m.label for m in discover()))",
    )
    assert found.split() == [migration.label for migration in discover()]
    where = installed_python(
        site, "from pipeline.migrations import MIGRATIONS_DIR; print(MIGRATIONS_DIR)"
    )
    assert Path(where).is_relative_to(site)
    # The development commands are not there, and say so instead of "no such command" (with the
    # environment's site-packages for click and the settings: the wheel was installed alone).
    script = f"import sys; sys.path.insert(0, {str(site)!r}); from cli.main import main; main()"
    demo = subprocess.run(
        [sys.executable, "-c", script, "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=site,
    )
    assert demo.returncode == 2, demo.stderr
    assert "development command" in demo.stderr


def test_the_wheel_holds_the_migrations_and_no_developer_tooling(tmp_path: Path) -> None:
    # The production wheel: the five layers, the CLI, the schemas and the SQL files; never the
    # developer tooling (devtools/: stack, simulator, demo, smoke, bench), nor the tests.
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    build = subprocess.run(
        [*pip, "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("veilleuse-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    tops = {name.split("/")[0] for name in names if not name.startswith("veilleuse-")}
    assert tops == {"agents", "api", "cli", "connectors", "notifier", "pipeline", "schemas"}
    sql = sorted(n for n in names if n.startswith("pipeline/migrations/postgres/"))
    assert [Path(n).stem for n in sql] == [migration.label for migration in discover()]
