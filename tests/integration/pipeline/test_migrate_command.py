"""`veilleuse migrate` against the real PostgreSQL, each test on a database of its own."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pipeline import clients, migrations
from pipeline.migrations import MIGRATIONS_DIR, MigrationError
from pipeline.settings import Settings
from pipeline.topics import TOPICS, topic_name
from tests.integration.databases import scratch_database


@pytest.fixture
def database(settings: Settings, require: Any) -> Iterator[Settings]:
    """A new, empty database (no migration applied); dropped afterwards."""
    require("postgres")
    with scratch_database(settings, "migrate", migrate=False) as scoped:
        yield scoped


def veilleuse(
    settings: Settings, *args: str, timeout_s: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env={
            **os.environ,
            "VEILLEUSE_POSTGRES__DATABASE": settings.postgres.database,
            "VEILLEUSE_SINK__POSTGRES_METRICS_PORT": "0",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def recorded(settings: Settings) -> list[tuple[int, str, str]]:
    with psycopg.connect(settings.postgres.conninfo()) as conn:
        rows = conn.execute("SELECT version, name, checksum FROM schema_migrations ORDER BY 1")
        return [(int(v), str(n), str(c)) for v, n, c in rows]


def tables(settings: Settings) -> set[str]:
    with psycopg.connect(settings.postgres.conninfo()) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {str(name) for (name,) in rows}


def copy_of_the_migrations(tmp_path: Path) -> Path:
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, folder)
    return folder


REAL = [m.label for m in migrations.discover()]
NEXT = f"{migrations.discover()[-1].version + 1:04d}"  # the number after the real ones


def test_migrate_applies_every_file_once_and_then_nothing(database: Settings) -> None:
    files = migrations.discover()
    status = veilleuse(database, "migrate", "--status")
    assert status.returncode == 1
    assert "0001_initial                  pending" in status.stdout

    first = veilleuse(database, "migrate")
    assert first.returncode == 0, first.stderr
    assert [line.split()[1] for line in first.stdout.splitlines() if "applied" in line] == [
        m.label for m in files
    ]
    assert recorded(database) == [(m.version, m.name, m.checksum) for m in files]
    assert {
        "activity_hourly",
        "activity_daily",
        "alerts",
        "alert_events",
        "lamps",
        "sink_offsets",
        "schema_migrations",
    } <= tables(database)

    again = veilleuse(database, "migrate")
    assert again.returncode == 0, again.stderr
    assert "applied" not in again.stdout
    assert f"is at migration {files[-1].label}" in again.stdout
    assert recorded(database) == [(m.version, m.name, m.checksum) for m in files]
    assert veilleuse(database, "migrate", "--status").returncode == 0


def test_the_sink_refuses_to_start_while_migrations_are_pending(database: Settings) -> None:
    result = veilleuse(database, "sink", "postgres")
    assert result.returncode == 1
    pending = ", ".join(REAL)
    assert f"migration(s) pending ({pending}): run `veilleuse migrate`" in result.stderr
    assert database.postgres.database in result.stderr


def test_a_modified_applied_migration_is_an_error(database: Settings, tmp_path: Path) -> None:
    folder = copy_of_the_migrations(tmp_path)
    conninfo = database.postgres.conninfo()
    assert [m.label for m in migrations.migrate(conninfo, folder)] == REAL
    initial = folder / "0001_initial.sql"
    initial.write_text(initial.read_text() + "\nCREATE TABLE sneaked_in (a int);\n")
    (folder / f"{NEXT}_next.sql").write_text("CREATE TABLE next_one (a int);\n")
    with pytest.raises(MigrationError, match=r"modified since \(0001_initial\)"):
        migrations.migrate(conninfo, folder)
    assert "next_one" not in tables(database)  # nothing applied, not even the new one
    status = migrations.status(conninfo, folder)
    assert [m.label for m, _ in status.changed] == ["0001_initial"]

    # The command and the sink say so too (the database's record no longer matches the file).
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("UPDATE schema_migrations SET checksum = %s WHERE version = 1", ("0" * 64,))
    result = veilleuse(database, "migrate")
    assert result.returncode == 1
    assert "applied migrations were modified since (0001_initial)" in result.stderr
    result = veilleuse(database, "sink", "postgres")
    assert result.returncode == 1
    assert "modified since (0001_initial)" in result.stderr


def test_a_failing_migration_applies_nothing_of_itself(database: Settings, tmp_path: Path) -> None:
    folder = copy_of_the_migrations(tmp_path)
    broken = folder / f"{NEXT}_broken.sql"
    broken.write_text("CREATE TABLE half_done (a int);\nSELECT * FROM no_such_table;\n")
    conninfo = database.postgres.conninfo()
    with pytest.raises(MigrationError, match=rf"{NEXT}_broken\.sql failed"):
        migrations.migrate(conninfo, folder)
    # The real ones before it were applied; nothing of the broken one.
    assert [v for v, _, _ in recorded(database)] == [m.version for m in migrations.discover()]
    assert "half_done" not in tables(database)
    broken.write_text("CREATE TABLE half_done (a int);\n")
    assert [m.label for m in migrations.migrate(conninfo, folder)] == [f"{NEXT}_broken"]
    assert "half_done" in tables(database)


def test_concurrent_migrate_runs_apply_each_migration_once(
    database: Settings, tmp_path: Path
) -> None:
    folder = copy_of_the_migrations(tmp_path)
    # A slow second migration: the runs overlap for certain.
    (folder / f"{NEXT}_slow.sql").write_text(
        "SELECT pg_sleep(1);\nCREATE TABLE slow_one (a int);\n"
    )
    conninfo = database.postgres.conninfo()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: migrations.migrate(conninfo, folder), range(4)))
    applied = sorted(m.label for result in results for m in result)
    assert applied == sorted([*REAL, f"{NEXT}_slow"])
    assert [v for v, _, _ in recorded(database)] == [
        *(m.version for m in migrations.discover()),
        int(NEXT),
    ]


def test_setup_applies_the_migrations(database: Settings, require: Any) -> None:
    require("kafka")
    prefix = f"t{uuid.uuid4().hex[:8]}."
    result = veilleuse(database, "setup", VEILLEUSE_KAFKA__TOPIC_PREFIX=prefix)
    try:
        assert result.returncode == 0, result.stderr
        assert "migration 0001_initial" in result.stdout
        assert f"database '{database.postgres.database}' is at migration" in result.stdout
        assert [v for v, _, _ in recorded(database)] == [m.version for m in migrations.discover()]
    finally:
        scoped = database.model_copy(
            update={"kafka": database.kafka.model_copy(update={"topic_prefix": prefix})}
        )

        async def delete() -> None:
            admin = clients.admin_client(scoped)
            await admin.start()
            try:
                await admin.delete_topics([topic_name(scoped, spec) for spec in TOPICS])
            finally:
                await admin.close()

        asyncio.run(delete())
