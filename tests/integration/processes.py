"""Pipeline commands run as real processes by the integration tests (to SIGKILL them): the
process helper is devtools.processes, shared with the demo and the bench."""

from __future__ import annotations

import subprocess

from devtools.processes import veilleuse


def stack_command(*args: str, timeout_s: float = 300) -> None:
    """``veilleuse stack <args>`` as an operator types it; fails the test if it fails."""
    done = subprocess.run(
        veilleuse("stack", *args),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
