"""The image's layout, without Docker: the project installed as the Dockerfile installs it (a
built wheel, not an editable checkout), then the Dockerfile's migrations step, then the check
that `veilleuse migrate` finds every migration there."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.migrations import MIGRATIONS_DIR, discover
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


def test_the_wheel_plus_the_dockerfile_step_finds_every_migration(tmp_path: Path) -> None:
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
    assert "pipeline.cli" in (site / "bin" / "veilleuse").read_text()
    # The wheel alone has no migrations: the Dockerfile's step is what puts them in place.
    assert not (site / "migrations").exists()
    where = installed_python(
        site, "from pipeline.migrations import MIGRATIONS_DIR; print(MIGRATIONS_DIR)"
    )
    target = Path(where)
    assert target == site / "migrations" / "postgres"
    target.mkdir(parents=True)
    for sql in sorted(MIGRATIONS_DIR.glob("*.sql")):
        shutil.copy(sql, target)
    found = installed_python(
        site,
        "from pipeline.migrations import discover; print(' '.join(m.label for m in discover()))",
    )
    assert found.split() == [migration.label for migration in discover()]
