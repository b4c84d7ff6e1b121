"""The import contracts of pyproject.toml ([tool.importlinter], docs/layout.md): a package imports
only the floors below it, production code never imports devtools, schemas imports nothing of
ours. `make lint` runs them too; here they fail with the test suite's report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_import_contracts_hold() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run(
        [str(lint), "--no-cache"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
