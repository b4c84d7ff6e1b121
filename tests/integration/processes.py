"""Pipeline commands run as real processes by the integration tests (to SIGKILL them)."""

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


@dataclass
class PipelineProcess:
    """``python -m pipeline <argv>`` (or ``python <script> <argv>``), output in a file."""

    argv: list[str]
    env: dict[str, str]
    log_file: Path
    script: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> PipelineProcess:
        program = [self.script] if self.script else ["-m", "pipeline"]
        with self.log_file.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, *program, *self.argv],
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def kill(self) -> None:
        assert self.proc is not None
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

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    async def wait_for_log(self, pattern: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not re.search(pattern, self.output()):
            assert self.alive(), f"{self.argv} exited:\n{self.tail(60)}"
            assert time.monotonic() < deadline, f"no {pattern!r} in the log:\n{self.tail(60)}"
            await asyncio.sleep(0.2)


def stack_command(*args: str, timeout_s: float = 300) -> None:
    """``veilleuse stack <args>`` as an operator types it; fails the test if it fails."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "stack", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
