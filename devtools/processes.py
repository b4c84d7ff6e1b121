"""A pipeline command run as a child process, its output in a log file: the one helper of the
demo, the bench and the integration tests (which SIGKILL them)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import VeilleuseError

# ``veilleuse`` without its console script: the child runs the interpreter of this one.
COMMAND = ["-m", "cli"]


class ProcessExitedError(VeilleuseError):
    """A child process exited, or did not log what was awaited, in time."""


def veilleuse(*argv: str) -> list[str]:
    """The argument list of ``veilleuse <argv>`` run by this interpreter."""
    return [sys.executable, *COMMAND, *argv]


@dataclass
class PipelineProcess:
    """``veilleuse <argv>`` (or ``python <script> <argv>``), output in ``log_file``."""

    argv: list[str]
    env: dict[str, str]
    log_file: Path
    script: str | None = None
    name: str = ""
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.name = self.name or " ".join(self.argv[:2])

    def start(self) -> PipelineProcess:
        program = [sys.executable, self.script] if self.script else veilleuse()
        with self.log_file.open("ab") as out:
            self.proc = subprocess.Popen(
                [*program, *self.argv],
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        """Raise :class:`ProcessExitedError`, with the log's tail, if it is not running."""
        if not self.alive():
            raise ProcessExitedError(
                f"{self.name} exited with {self.returncode} ({self.log_file}):\n{self.tail()}"
            )

    def kill(self) -> None:
        assert self.proc is not None  # noqa: S101 - started
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout_s: float = 30) -> int | None:
        """SIGTERM and wait (then SIGKILL); the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def output(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    async def wait_for_log(self, pattern: str, timeout_s: float = 60) -> None:
        """Until ``pattern`` is in the log; :class:`ProcessExitedError` if the process exits or
        the time runs out first."""
        deadline = time.monotonic() + timeout_s
        while not re.search(pattern, self.output()):
            self.check()
            if time.monotonic() > deadline:
                raise ProcessExitedError(
                    f"{self.name}: no {pattern!r} in its log after {timeout_s:.0f} s "
                    f"({self.log_file}):\n{self.tail(60)}"
                )
            await asyncio.sleep(0.2)
