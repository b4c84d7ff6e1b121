"""PostgreSQL, the project's own cluster (Debian's server binaries), on its own port and folder."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from devtools.stack.service import Launch, Service
from pipeline.errors import StackError


def _server_bin() -> Path | None:
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return versions[-1].parent if versions else None


class Postgres(Service):
    name = "postgres"
    # SIGINT is PostgreSQL's "fast" shutdown: sessions are ended, the data is flushed cleanly.
    stop_signal = signal.SIGINT

    @property
    def host(self) -> str:
        return self.ctx.settings.postgres.host

    @property
    def port(self) -> int:
        return self.ctx.settings.postgres.port

    @property
    def url(self) -> str:
        pg = self.ctx.settings.postgres
        return f"postgresql://{pg.user}@{self.host}:{self.port}/{pg.database}"

    @property
    def data(self) -> Path:
        return self.dir / "data"

    def _bin(self) -> Path:
        found = _server_bin()
        if found is None:
            raise StackError(
                self.name, "PostgreSQL server binaries not found under /usr/lib/postgresql"
            )
        return found

    def install(self) -> None:
        if _server_bin() is None:
            self.ctx.ensure_packages(
                self.name, {"/usr/lib/postgresql/15/bin/postgres": "postgresql"}
            )

    def prepare(self) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        pwfile = self.dir / ".initdb-password"
        pwfile.write_text(self.ctx.settings.postgres.password.get_secret_value() + "\n")
        os.chmod(pwfile, 0o600)
        self.ctx.give_to_service_user(self.dir)
        try:
            self.ctx.run(
                [
                    str(self._bin() / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    self.ctx.settings.postgres.user,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-locale",
                ],
                service=self.name,
                user=self.ctx.service_user(),
                env=self.base_env(),
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def launch(self) -> Launch:
        return Launch(
            argv=[
                str(self._bin() / "postgres"),
                "-D",
                str(self.data),
                "-c",
                f"listen_addresses={self.host}",
                "-c",
                f"port={self.port}",
                # TCP only: a project path can be longer than a Unix socket path may be.
                "-c",
                "unix_socket_directories=",
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=256MB",
            ],
            env=self.base_env(),
            cwd=self.dir,
        )

    def probe(self) -> None:
        self._select_one("postgres")

    def _select_one(self, database: str) -> None:
        import psycopg

        with psycopg.connect(self.ctx.settings.postgres.conninfo(database)) as conn:
            row = conn.execute("SELECT 1").fetchone()
            if row != (1,):
                raise RuntimeError(f"SELECT 1 returned {row!r}")

    def after_start(self) -> None:
        import psycopg
        from psycopg import sql

        database = self.ctx.settings.postgres.database
        conninfo = self.ctx.settings.postgres.conninfo("postgres")
        with psycopg.connect(conninfo, autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
            ).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        self._select_one(database)
