"""Scratch PostgreSQL databases for the integration tests: one per test or module."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import psycopg

from pipeline import migrations
from pipeline.settings import Settings


@contextlib.contextmanager
def scratch_database(settings: Settings, tag: str, *, migrate: bool = True) -> Iterator[Settings]:
    """A new database (migrated unless ``migrate`` is False), dropped afterwards; yields the
    settings that point at it."""
    name = f"vt_{tag}_{uuid.uuid4().hex[:10]}"
    admin = settings.postgres.conninfo("postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        scoped = settings.model_copy(
            update={"postgres": settings.postgres.model_copy(update={"database": name})}
        )
        if migrate:
            migrations.migrate(scoped.postgres.conninfo())
        yield scoped
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
