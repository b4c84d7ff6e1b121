"""The staff directory (table ``staff``, migration 0002): who is notified of a site's alerts."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from pipeline.errors import VeilleuseError


class StaffError(VeilleuseError):
    """A staff member could not be added or removed."""


@dataclass(frozen=True, slots=True)
class StaffMember:
    site_id: str
    name: str
    email: str | None
    webhook_url: str | None
    on_duty: bool


UPSERT = """
INSERT INTO staff (site_id, name, email, webhook_url, on_duty)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (site_id, name) DO UPDATE SET
    email = EXCLUDED.email,
    webhook_url = EXCLUDED.webhook_url,
    on_duty = EXCLUDED.on_duty,
    updated_at = now()
"""


def add(conninfo: str, member: StaffMember) -> None:
    """Add a staff member, or replace the one of that site and name."""
    if not member.email and not member.webhook_url:
        raise StaffError(f"{member.name}: give an e-mail address or a webhook URL (or both)")
    with psycopg.connect(conninfo) as conn:
        conn.execute(
            UPSERT,
            (member.site_id, member.name, member.email, member.webhook_url, member.on_duty),
        )


def remove(conninfo: str, site_id: str, name: str) -> bool:
    with psycopg.connect(conninfo) as conn:
        cursor = conn.execute("DELETE FROM staff WHERE site_id = %s AND name = %s", (site_id, name))
        return cursor.rowcount == 1


def members(conninfo: str, site_id: str | None = None) -> list[StaffMember]:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            "SELECT site_id, name, email, webhook_url, on_duty FROM staff"
            " WHERE %(site)s::text IS NULL OR site_id = %(site)s ORDER BY site_id, name",
            {"site": site_id},
        ).fetchall()
    return [StaffMember(str(s), str(n), e, w, bool(d)) for s, n, e, w, d in rows]
