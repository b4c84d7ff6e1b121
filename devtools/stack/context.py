"""What every local service needs: folders, the unprivileged account, Java, apt and Maven."""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import StackError
from pipeline.settings import Settings

log = logging.getLogger(__name__)

# A fixed PATH for the services: they do not inherit the caller's environment.
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAVEN_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"


@dataclass(frozen=True)
class ServiceUser:
    """The account the services run as (Elasticsearch and PostgreSQL refuse root)."""

    name: str
    uid: int
    gid: int


@dataclass
class StackContext:
    settings: Settings
    _apt_updated: bool = field(default=False, init=False)

    @property
    def home(self) -> Path:
        return self.settings.stack.home

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def downloads_dir(self) -> Path:
        return self.home / "downloads"

    def ensure_layout(self) -> None:
        for folder in (self.home, self.logs_dir, self.run_dir, self.downloads_dir):
            folder.mkdir(parents=True, exist_ok=True)
        user = self.service_user()
        if user is not None:
            self._make_traversable(self.home)
            self.give_to_service_user(self.home, recursive=False)

    # -- the unprivileged account ------------------------------------------------------------

    def service_user(self) -> ServiceUser | None:
        """The account to run services as; None when we are not root (then: as ourselves)."""
        if os.geteuid() != 0:
            return None
        name = self.settings.stack.service_user
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            log.info("creating the unprivileged service account %s", name)
            self.run(
                [
                    "useradd",
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    name,
                ],
                service="stack",
            )
            entry = pwd.getpwnam(name)
        return ServiceUser(name=name, uid=entry.pw_uid, gid=entry.pw_gid)

    def give_to_service_user(self, path: Path, *, recursive: bool = True) -> None:
        user = self.service_user()
        if user is None:
            return
        os.chown(path, user.uid, user.gid)
        if recursive and path.is_dir():
            for root, dirs, files in os.walk(path):
                for name in dirs + files:
                    os.lchown(os.path.join(root, name), user.uid, user.gid)

    @staticmethod
    def _make_traversable(path: Path) -> None:
        """The service account must be able to reach the project folder (execute bit only)."""
        for ancestor in [path, *path.parents]:
            mode = ancestor.stat().st_mode
            if not mode & stat.S_IXOTH:
                log.warning(
                    "granting other users traversal (o+x) of %s so the service account reaches %s",
                    ancestor,
                    path,
                )
                ancestor.chmod(mode | stat.S_IXOTH)

    # -- installing what is missing ----------------------------------------------------------

    def ensure_packages(
        self, service: str, needs: dict[str, str], *, files: dict[str, str] | None = None
    ) -> None:
        """``needs`` maps an executable (name or absolute path) to the Debian package with it;
        ``files``, a file that is not executable (a header) to its package."""
        missing = sorted(
            {pkg for exe, pkg in needs.items() if not _executable_exists(exe)}
            | {pkg for path, pkg in (files or {}).items() if not os.path.exists(path)}
        )
        if not missing:
            return
        if not self.settings.stack.apt_install or os.geteuid() != 0:
            raise StackError(
                service,
                f"missing Debian package(s) {', '.join(missing)}: "
                f"run `apt-get install -y {' '.join(missing)}` as root",
            )
        if not self._apt_updated:
            self.run(["apt-get", "update", "-q"], service=service)
            self._apt_updated = True
        log.info("installing %s with apt-get", " ".join(missing))
        self.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
            service=service,
            env={"DEBIAN_FRONTEND": "noninteractive", "PATH": SERVICE_PATH},
        )

    def java_home(self, service: str, minimum: int = 17) -> Path:
        """A JDK of at least ``minimum``, preferring the oldest one that qualifies (the LTS)."""
        configured = self.settings.stack.java_home
        if configured is not None:
            version = _java_major(configured / "bin" / "java")
            if version is None or version < minimum:
                raise StackError(
                    service, f"VEILLEUSE_STACK__JAVA_HOME={configured} is not Java ≥ {minimum}"
                )
            return configured
        candidates: list[tuple[int, Path]] = []
        for java in sorted(Path("/usr/lib/jvm").glob("*/bin/java")):
            version = _java_major(java)
            if version is not None and version >= minimum and not java.parent.parent.is_symlink():
                candidates.append((version, java.parent.parent))
        if not candidates:
            self.ensure_packages(
                service, {"/usr/lib/jvm/java-17-openjdk-amd64/bin/java": "openjdk-17-jre-headless"}
            )
            return self.java_home(service, minimum)
        return min(candidates)[1]

    def maven(self, service: str, pom: Path, goal_args: list[str]) -> None:
        self.ensure_packages(service, {"mvn": "maven"})
        self.run(["mvn", "-B", "-q", "-f", str(pom), *goal_args], service=service)

    def run(
        self,
        argv: list[str],
        *,
        service: str,
        env: dict[str, str] | None = None,
        user: ServiceUser | None = None,
        cwd: Path | None = None,
    ) -> str:
        """Run a setup command to completion; a failure names the service and shows the output."""
        try:
            done = subprocess.run(
                argv,
                env=env,
                cwd=cwd,
                user=user.uid if user else None,
                group=user.gid if user else None,
                extra_groups=[] if user else None,
                capture_output=True,
                text=True,
                check=False,
                timeout=900,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise StackError(service, f"`{' '.join(argv[:3])} …` failed: {exc}") from exc
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
            raise StackError(
                service, f"`{' '.join(argv[:4])} …` exited with {done.returncode}:\n{tail}"
            )
        return done.stdout


def _executable_exists(exe: str) -> bool:
    if os.path.isabs(exe):
        return os.access(exe, os.X_OK)
    return shutil.which(exe, path=SERVICE_PATH) is not None


def _java_major(java: Path) -> int | None:
    if not os.access(java, os.X_OK):
        return None
    try:
        out = subprocess.run(
            [str(java), "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major
