"""Versioned PostgreSQL schema migrations: ``pipeline/migrations/postgres/NNNN_description.sql``.

``veilleuse migrate`` applies the files not applied yet, in version order, each in its own
transaction together with its row in ``schema_migrations`` (version, name, SHA-256 of the file,
when, how long). Applying twice is a no-op. A file changed after it was applied is an error
(write a new migration instead). Two concurrent runs do not collide: each holds a session
advisory lock for as long as it works.

The comparison of the files with what the database recorded (:func:`compare`) is pure; the
sinks use it to refuse to start while migrations are pending.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pipeline.errors import VeilleuseError

log = logging.getLogger(__name__)

# Package data: the wheel carries the SQL files, so `pip install` plus `veilleuse migrate` works
# anywhere and the image copies nothing by hand. Installed from a wheel or a checkout, the
# package is a folder (never a zip), so the resource is a real path that tests may copy.
MIGRATIONS_DIR = Path(str(resources.files(__name__) / "postgres"))
FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9][a-z0-9_]*)\.sql$")
# pg_advisory_lock key of `veilleuse migrate` (any constant; per database).
LOCK_KEY = 0x7665696C6C657573  # "veilleus"

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version      integer     PRIMARY KEY,
    name         text        NOT NULL,
    checksum     text        NOT NULL,
    applied_at   timestamptz NOT NULL DEFAULT now(),
    execution_ms integer     NOT NULL
)
"""
SELECT_APPLIED = "SELECT version, name, checksum FROM schema_migrations ORDER BY version"


class MigrationError(VeilleuseError):
    """The migration files are malformed, or disagree with what the database recorded."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    sql: str
    checksum: str  # SHA-256 hex of the file's text (line endings normalised to \n)

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


@dataclass(frozen=True)
class Applied:
    """One row of ``schema_migrations``."""

    version: int
    name: str
    checksum: str


@dataclass(frozen=True)
class MigrationStatus:
    applied: list[Migration] = field(default_factory=list)
    pending: list[Migration] = field(default_factory=list)
    # Applied, but the file changed since: (the file now, what the database recorded).
    changed: list[tuple[Migration, Applied]] = field(default_factory=list)
    # Recorded by the database, no such file here (a newer version of the code applied it).
    unknown: list[Applied] = field(default_factory=list)

    @property
    def up_to_date(self) -> bool:
        return not self.pending and not self.changed

    def problem(self) -> str | None:
        """Why a sink must not start on this database, or None."""
        if self.changed:
            names = ", ".join(m.label for m, _ in self.changed)
            return (
                f"applied migrations were modified since ({names}): restore them and add a new "
                "migration instead"
            )
        if self.pending:
            names = ", ".join(m.label for m in self.pending)
            return f"{len(self.pending)} migration(s) pending ({names}): run `veilleuse migrate`"
        return None


def checksum(text: str) -> str:
    return hashlib.sha256(text.replace("\r\n", "\n").encode()).hexdigest()


def parse(path: Path) -> Migration:
    """One migration file; its name must be ``NNNN_description.sql``."""
    match = FILE_NAME.match(path.name)
    if match is None:
        raise MigrationError(
            f"{path.name}: a migration is named NNNN_description.sql "
            "(four digits, lower-case letters, digits and underscores)"
        )
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise MigrationError(f"{path.name} is empty")
    return Migration(int(match["version"]), match["name"], path, text, checksum(text))


def discover(folder: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every ``*.sql`` of ``folder``, in version order; versions are unique and start at 1."""
    if not folder.is_dir():
        raise MigrationError(f"no migrations folder at {folder}")
    migrations = sorted((parse(path) for path in folder.glob("*.sql")), key=lambda m: m.version)
    seen: dict[int, Migration] = {}
    for migration in migrations:
        if migration.version == 0:
            raise MigrationError(f"{migration.path.name}: versions start at 0001")
        if migration.version in seen:
            raise MigrationError(
                f"version {migration.version:04d} twice: "
                f"{seen[migration.version].path.name} and {migration.path.name}"
            )
        seen[migration.version] = migration
    if not migrations:
        raise MigrationError(f"no migration in {folder}")
    return migrations


def compare(files: Sequence[Migration], applied: Iterable[Applied]) -> MigrationStatus:
    """What the database has applied, against the files."""
    by_version = {a.version: a for a in applied}
    status = MigrationStatus()
    for migration in files:
        recorded = by_version.pop(migration.version, None)
        if recorded is None:
            status.pending.append(migration)
        elif recorded.checksum != migration.checksum:
            status.changed.append((migration, recorded))
        else:
            status.applied.append(migration)
    status.unknown.extend(sorted(by_version.values(), key=lambda a: a.version))
    return status


def applied_from_rows(rows: Iterable[Sequence[Any]]) -> list[Applied]:
    return [Applied(int(version), str(name), str(sha)) for version, name, sha in rows]


# -- against a database ----------------------------------------------------------------------


def status(conninfo: str, folder: Path = MIGRATIONS_DIR) -> MigrationStatus:
    """Compare the files with the database (which is left unchanged)."""
    import psycopg

    files = discover(folder)
    with psycopg.connect(conninfo) as conn:
        exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
        rows = conn.execute(SELECT_APPLIED).fetchall() if exists and exists[0] else []
    return compare(files, applied_from_rows(rows))


def migrate(conninfo: str, folder: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Apply the pending migrations in order; returns those applied (empty: already current).

    Raises :class:`MigrationError` when an applied file was modified since; nothing is applied
    then.
    """
    import psycopg

    files = discover(folder)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        # A session lock: held across the per-migration transactions, released on disconnect.
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            conn.execute(CREATE_TABLE)
            current = compare(files, applied_from_rows(conn.execute(SELECT_APPLIED).fetchall()))
            if current.changed:
                problem = current.problem()
                raise MigrationError(problem or "applied migrations were modified")
            for unknown in current.unknown:
                log.warning(
                    "migration %04d_%s is applied but has no file here: this code is older than "
                    "the database",
                    unknown.version,
                    unknown.name,
                )
            done: list[Migration] = []
            for migration in current.pending:
                started = time.perf_counter()
                try:
                    with conn.transaction():
                        conn.execute(migration.sql.encode())
                        conn.execute(
                            "INSERT INTO schema_migrations (version, name, checksum, execution_ms)"
                            " VALUES (%s, %s, %s, %s)",
                            (
                                migration.version,
                                migration.name,
                                migration.checksum,
                                round((time.perf_counter() - started) * 1000),
                            ),
                        )
                except psycopg.errors.Error as exc:
                    if isinstance(exc, psycopg.OperationalError):
                        raise
                    raise MigrationError(
                        f"{migration.path.name} failed (nothing of it applied): {exc}"
                    ) from exc
                log.info(
                    "applied migration %s in %.0f ms",
                    migration.label,
                    (time.perf_counter() - started) * 1000,
                )
                done.append(migration)
            return done
        finally:
            if not conn.closed:
                conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
