"""Chromium, Debian's, for the console's browser tests: a package the stack installs like the
services' packages, with no process to start (each test run launches its own headless browser).

The tests drive it with Playwright for Python pointed at ``CHROMIUM``: no browser is ever
downloaded, so the version under test is the one Debian's security updates maintain.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from devtools.stack.context import SERVICE_PATH, StackContext
from pipeline.errors import StackError

CHROMIUM = Path("/usr/bin/chromium")


class Chromium:
    """A tool of the stack: ``install`` when missing, ``version`` to report; nothing runs."""

    name = "chromium"
    package = "chromium"

    def __init__(self, ctx: StackContext, executable: Path = CHROMIUM) -> None:
        self.ctx = ctx
        self.executable = executable

    @property
    def url(self) -> str:
        """Where it is, in the column where a service shows its address."""
        return str(self.executable)

    def install(self) -> bool:
        """Install the package when the executable is missing; True when this call installed it."""
        if self.version() is not None:
            return False
        self.ctx.ensure_packages(self.name, {str(self.executable): self.package})
        if self.version() is None:
            raise StackError(self.name, f"{self.executable} does not run after installing it")
        return True

    def version(self) -> str | None:
        """``Chromium 156.0.8078.114``, as the browser says it; None when it is not there."""
        try:
            done = subprocess.run(
                [str(self.executable), "--version"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                env={"PATH": SERVICE_PATH, "LANG": "C.UTF-8"},
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        # Debian's launcher script adds " built on Debian …" after the version.
        words = done.stdout.split()
        if done.returncode != 0 or len(words) < 2:
            return None
        return f"{words[0]} {words[1]}"
