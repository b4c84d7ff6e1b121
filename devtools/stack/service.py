"""One local service: how to install, configure, start, probe and stop it.

A service is started detached in its own session (so ``down`` can stop its whole process
group), its output appended to ``<home>/logs/<name>.log``, its pid recorded in
``<home>/run/<name>.pid``. A recorded pid only counts while ``/proc/<pid>/cmdline`` still
carries the service's marker (a path inside the stack folder), so a recycled pid is never
mistaken for ours and ``down`` never stops what it did not start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import secrets
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from devtools.stack.context import SERVICE_PATH, StackContext
from pipeline.errors import StackError

# Popen handles of the services this process started: kept so they are not reaped (and
# warned about) by the garbage collector while we are still running.
_STARTED: list[subprocess.Popen[bytes]] = []


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    open_files: int | None = None  # RLIMIT_NOFILE wanted (None: inherit ours)


class Service(ABC):
    """Subclasses describe one service; this base owns the process bookkeeping."""

    name: str
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout_s: float = 60.0

    def __init__(self, ctx: StackContext) -> None:
        self.ctx = ctx

    # -- what a subclass describes -----------------------------------------------------------

    @property
    @abstractmethod
    def host(self) -> str: ...

    @property
    @abstractmethod
    def port(self) -> int: ...

    @property
    @abstractmethod
    def url(self) -> str: ...

    @abstractmethod
    def install(self) -> None:
        """Fetch what is missing (packages, jars, archives); a no-op when all is there."""

    @abstractmethod
    def prepare(self) -> None:
        """Write configuration and initialise data folders; idempotent."""

    @abstractmethod
    def launch(self) -> Launch: ...

    @abstractmethod
    def probe(self) -> None:
        """Make one real request; raise (anything) when the service does not answer it."""

    def after_start(self) -> None:  # noqa: B027 - optional hook, most services need nothing
        """Work that needs the running service (creating a database, say)."""

    # -- folders and files ------------------------------------------------------------------

    @property
    def dir(self) -> Path:
        return self.ctx.home / self.name

    @property
    def log_file(self) -> Path:
        return self.ctx.logs_dir / f"{self.name}.log"

    @property
    def pid_file(self) -> Path:
        return self.ctx.run_dir / f"{self.name}.pid"

    @property
    def marker(self) -> str:
        """A string found in the service's command line and nowhere else."""
        return str(self.dir)

    @property
    def managed(self) -> bool:
        """Only services that the settings place on this machine's loopback are ours to run."""
        return self.host in ("127.0.0.1", "localhost", "::1")

    def secret(self, name: str) -> str:
        """A random secret of this service, made once and kept in ``<dir>/<name>.secret`` (0600)."""
        path = self.dir / f"{name}.secret"
        if not path.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(24))
        return path.read_text().strip()

    def base_env(self) -> dict[str, str]:
        return {"PATH": SERVICE_PATH, "LANG": "C.UTF-8", "HOME": str(self.dir)}

    # -- process bookkeeping -------------------------------------------------------------------

    def pid(self) -> int | None:
        """The pid of our running instance, or None."""
        try:
            record = json.loads(self.pid_file.read_text())
            pid = int(record["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return pid if _is_ours(pid, self.marker) else None

    def port_in_use(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            return sock.connect_ex((self.host, self.port)) == 0

    def healthy(self) -> tuple[bool, str]:
        try:
            with _quiet_client_logs():
                self.probe()
        except Exception as exc:  # noqa: BLE001 - any failure of a probe means "not answering"
            # One line per service in `status`: client errors often span several.
            return False, " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        return True, "answers"

    def start(self) -> int:
        self.prepare()
        spec = self.launch()
        user = self.ctx.service_user()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as out:
            out.write(f"\n--- veilleuse stack: starting {self.name} at {time.ctime()}\n".encode())
            out.flush()
            try:
                with _open_files_limit(spec.open_files):
                    proc = subprocess.Popen(
                        spec.argv,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=spec.env,
                        cwd=spec.cwd,
                        start_new_session=True,
                        user=user.uid if user else None,
                        group=user.gid if user else None,
                        extra_groups=[] if user else None,
                    )
            except OSError as exc:
                raise StackError(self.name, f"could not start: {exc}", self.log_file) from exc
        _STARTED.append(proc)
        self.pid_file.write_text(json.dumps({"pid": proc.pid, "started_at": time.time()}))
        return proc.pid

    def wait_until_healthy(self, deadline: float) -> None:
        last = "not probed yet"
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise StackError(
                    self.name,
                    f"exited during start-up; last log lines:\n{self.tail(20)}",
                    self.log_file,
                )
            ok, last = self.healthy()
            if ok:
                return
            time.sleep(1.0)
        raise StackError(
            self.name,
            f"did not answer in time ({last}); last log lines:\n{self.tail(20)}",
            self.log_file,
        )

    def stop(self) -> bool:
        """Stop our instance (its whole process group); False when none was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, self.stop_signal)
        deadline = time.monotonic() + self.stop_timeout_s
        while time.monotonic() < deadline and _is_ours(pid, self.marker):
            _reap(pid)
            time.sleep(0.2)
        if _is_ours(pid, self.marker):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            _reap(pid)
        self.pid_file.unlink(missing_ok=True)
        return True

    def tail(self, lines: int) -> str:
        try:
            with self.log_file.open("rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - 64 * 1024))
                text = handle.read().decode("utf-8", "replace")
        except OSError:
            return "(no log yet)"
        return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def _open_files_limit(wanted: int | None) -> Iterator[None]:
    """Raise our RLIMIT_NOFILE while a service is launched: the child inherits it at fork (the
    service account could not raise its own hard limit). The hard limit needs CAP_SYS_RESOURCE;
    without it the soft one goes up to the hard one. Restored afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted is None or (wanted <= soft and soft != resource.RLIM_INFINITY):
        yield
        return
    unlimited = hard == resource.RLIM_INFINITY
    try:  # never lower the hard limit: it could not be raised back
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (wanted, hard if unlimited else max(wanted, hard))
        )
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.contextmanager
def _quiet_client_logs() -> Iterator[None]:
    """A probe expects refusals while a service starts: the clients need not log each one."""
    loggers = [logging.getLogger(name) for name in ("elastic_transport", "aiokafka", "kafka")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _is_ours(pid: int, marker: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and marker in cmdline


def _reap(pid: int) -> None:
    """Collect a child of this very process, so that a stopped service does not stay a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
