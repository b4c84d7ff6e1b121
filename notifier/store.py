"""The notifier's state: timers and alert states in Redis, the alert's life in PostgreSQL.

Redis (every key under ``notifier.redis_key_prefix``):

- ``<p>due``: a sorted set of timers (jobs), score = due time (epoch ms). A job is
  ``notify|<alert_id>|<slot>`` or ``close|<alert_id>``.
- ``<p>alert:<alert_id>``: a hash, what the notifier knows of the alert (:class:`AlertState`).

Claiming is one Lua script: due jobs get their score moved to ``now + lease`` and are returned
with that score as a token. A second replica does not see them as due any more; if the claimer
dies, they are due again once the lease has passed. Completing (or rescheduling) a job is a
script that acts only if the job still carries the claimer's token: a replica whose lease ran
out cannot complete a job someone else now holds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg.rows import tuple_row

from notifier.channels import Recipient
from notifier.policy import AlertState, Audience
from pipeline.errors import VeilleuseError

log = logging.getLogger(__name__)
T = TypeVar("T")


class StoreError(VeilleuseError):
    """Redis or PostgreSQL holds something the notifier cannot use."""


def store_failure(exc: BaseException) -> str | None:
    """The store ``exc`` says is down or unreachable ("redis", "postgres"), or None when the
    error is not one that waiting can cure (a bug, or data a store refuses for good).

    Redis: connection errors and timeouts (a restart; ``BusyLoadingError`` while it reloads its
    AOF is one), and ``READONLY`` (a replica during a failover). PostgreSQL: ``OperationalError``
    (connection lost, server shutting down or starting up) and ``InterfaceError`` (a connection
    already closed). A bare ``OSError`` or timeout can only come from a socket here.
    """
    import psycopg
    import redis.exceptions

    if isinstance(
        exc,
        redis.exceptions.ConnectionError
        | redis.exceptions.TimeoutError
        | redis.exceptions.ReadOnlyError,
    ):
        return "redis"
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return "postgres"
    if isinstance(exc, OSError | TimeoutError):
        return "network"
    return None


@dataclass(frozen=True, slots=True)
class Job:
    kind: str  # "notify" or "close"
    alert_id: str
    slot: int = 0

    @property
    def member(self) -> str:
        if self.kind == "notify":
            return f"notify|{self.alert_id}|{self.slot}"
        return f"close|{self.alert_id}"

    @classmethod
    def parse(cls, member: str) -> Job:
        parts = member.split("|")
        if parts[0] == "notify" and len(parts) == 3 and parts[2].isdigit():
            return cls("notify", parts[1], int(parts[2]))
        if parts[0] == "close" and len(parts) == 2:
            return cls("close", parts[1])
        raise StoreError(f"not a notifier job: {member!r}")


@dataclass(frozen=True, slots=True)
class Claimed:
    job: Job
    token: int  # the score the claim gave it: now + lease


# KEYS[1] state, KEYS[2] due; ARGV: raised_ms, ttl_s, job ('' none), due_ms, then field pairs.
RAISE = """
if redis.call('HSETNX', KEYS[1], 'raised_ms', ARGV[1]) == 0 then return 0 end
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[2], 'NX', ARGV[4], ARGV[3]) end
return 1
"""

# KEYS[1] state; ARGV: acknowledged_by, acknowledged_ms, ttl_s. 1: the first acknowledgement.
ACK = """
redis.call('HSET', KEYS[1], 'acknowledged', '1')
local first = redis.call('HSETNX', KEYS[1], 'ack_ms', ARGV[2])
if first == 1 then redis.call('HSET', KEYS[1], 'ack_by', ARGV[1]) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return first
"""

# KEYS[1] state, KEYS[2] due; ARGV: resolved_ms, ttl_s, close job, close due ms.
RESOLVE = """
if redis.call('HSETNX', KEYS[1], 'resolved_ms', ARGV[1]) == 0 then return 0 end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], 'NX', ARGV[4], ARGV[3])
return 1
"""

# KEYS[1] due; ARGV: now_ms, lease_until_ms, limit.
CLAIM = """
local jobs = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, job in ipairs(jobs) do redis.call('ZADD', KEYS[1], 'XX', ARGV[2], job) end
return jobs
"""

# KEYS[1] due; ARGV: job, token, next job ('' none), next due ms, reschedule ('1': keep job at
# next due instead of removing it).
COMPLETE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[5] == '1' then
  redis.call('ZADD', KEYS[1], 'XX', ARGV[4], ARGV[1])
  return 1
end
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[3] ~= '' then redis.call('ZADD', KEYS[1], 'NX', ARGV[4], ARGV[3]) end
return 1
"""


def state_from_fields(alert_id: str, fields: Mapping[str, str]) -> AlertState | None:
    """An alert's state from its Redis hash; None unless its raised record was seen."""
    raised = fields.get("raised_ms")
    if raised is None:
        return None
    return AlertState(
        alert_id=alert_id,
        kind=fields.get("kind", ""),
        severity=fields.get("severity", ""),
        site_id=fields.get("site_id", ""),
        lamp_id=fields.get("lamp_id", ""),
        incident_started_ms=int(fields.get("incident_started_ms", "0")),
        raised_ms=int(raised),
        acknowledged=fields.get("acknowledged") == "1",
        resolved="resolved_ms" in fields,
        closed=fields.get("closed") == "1",
    )


class Timers:
    """The Redis half: alert states and due jobs (synchronous redis-py; call it in a thread)."""

    def __init__(self, redis: Any, prefix: str, ttl_s: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.due_key = f"{prefix}due"
        self._raise = redis.register_script(RAISE)
        self._ack = redis.register_script(ACK)
        self._resolve = redis.register_script(RESOLVE)
        self._claim = redis.register_script(CLAIM)
        self._complete = redis.register_script(COMPLETE)

    def state_key(self, alert_id: str) -> str:
        return f"{self.prefix}alert:{alert_id}"

    def raised(self, state: AlertState, first: tuple[Job, int] | None) -> bool:
        """Record a raised alert and schedule its first job; False: known already."""
        fields = {
            "alert_id": state.alert_id,
            "kind": state.kind,
            "severity": state.severity,
            "site_id": state.site_id,
            "lamp_id": state.lamp_id,
            "incident_started_ms": str(state.incident_started_ms),
        }
        job, due = first if first is not None else (None, 0)
        args: list[Any] = [state.raised_ms, self.ttl_s, job.member if job else "", due]
        for name, value in fields.items():
            args += [name, value]
        return bool(self._raise(keys=[self.state_key(state.alert_id), self.due_key], args=args))

    def acknowledged(self, alert_id: str, by: str, at_ms: int) -> bool:
        return bool(self._ack(keys=[self.state_key(alert_id)], args=[by, at_ms, self.ttl_s]))

    def resolved(self, alert_id: str, resolved_ms: int, close_due_ms: int) -> bool:
        job = Job("close", alert_id)
        return bool(
            self._resolve(
                keys=[self.state_key(alert_id), self.due_key],
                args=[resolved_ms, self.ttl_s, job.member, close_due_ms],
            )
        )

    def closed(self, alert_id: str) -> None:
        key = self.state_key(alert_id)
        pipe = self.redis.pipeline()
        pipe.hset(key, "closed", "1")
        pipe.expire(key, self.ttl_s)
        pipe.execute()

    def state(self, alert_id: str) -> tuple[AlertState | None, dict[str, str]]:
        """The alert's state (None unless its raised record was seen), and the raw fields."""
        raw: dict[bytes, bytes] = self.redis.hgetall(self.state_key(alert_id))
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        return state_from_fields(alert_id, fields), fields

    def claim(self, now_ms: int, lease_ms: int, limit: int) -> list[Claimed]:
        token = now_ms + lease_ms
        members = self._claim(keys=[self.due_key], args=[now_ms, token, limit])
        claimed = []
        for member in members:
            text = member.decode() if isinstance(member, bytes) else str(member)
            try:
                claimed.append(Claimed(Job.parse(text), token))
            except StoreError:
                log.exception("dropping a malformed timer %r", text)
                self.redis.zrem(self.due_key, text)
        return claimed

    def complete(self, claimed: Claimed, following: tuple[Job, int] | None) -> bool:
        job, due = following if following is not None else (None, 0)
        return bool(
            self._complete(
                keys=[self.due_key],
                args=[claimed.job.member, claimed.token, job.member if job else "", due, "0"],
            )
        )

    def reschedule(self, claimed: Claimed, due_ms: int) -> bool:
        return bool(
            self._complete(
                keys=[self.due_key], args=[claimed.job.member, claimed.token, "", due_ms, "1"]
            )
        )

    def pending(self) -> list[tuple[str, int]]:
        """Every timer and its due time (for operations and tests)."""
        rows = self.redis.zrange(self.due_key, 0, -1, withscores=True)
        return [(m.decode(), int(s)) for m, s in rows]


# -- PostgreSQL ---------------------------------------------------------------------------------


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


UPSERT_ALERT = """
INSERT INTO alerts AS a (alert_id, kind, severity, site_id, lamp_id, incident_started_at, state,
                         raised_at, resolved_at, details)
VALUES (%(alert_id)s, %(kind)s, %(severity)s, %(site_id)s, %(lamp_id)s, %(incident_started_at)s,
        %(state)s, %(raised_at)s, %(resolved_at)s, %(details)s::jsonb)
ON CONFLICT (alert_id) DO UPDATE SET
    raised_at = COALESCE(a.raised_at, EXCLUDED.raised_at),
    resolved_at = COALESCE(a.resolved_at, EXCLUDED.resolved_at),
    state = CASE WHEN a.resolved_at IS NULL AND EXCLUDED.resolved_at IS NOT NULL
                 THEN 'resolved' ELSE a.state END,
    updated_at = now()
"""

INSERT_STEP = """
INSERT INTO alert_events (alert_id, step, occurrence, emitted_at, details, source_topic,
                          source_partition, source_offset)
SELECT %(alert_id)s, %(step)s, %(occurrence)s, %(emitted_at)s, %(details)s::jsonb, %(topic)s,
       %(partition)s, %(offset)s
WHERE EXISTS (SELECT 1 FROM alerts WHERE alert_id = %(alert_id)s)
ON CONFLICT (alert_id, step, occurrence) DO NOTHING
"""

SELECT_STEP = "SELECT 1 FROM alert_events WHERE alert_id = %s AND step = %s AND occurrence = %s"

SELECT_STAFF = """
SELECT name, email, webhook_url, on_duty FROM staff WHERE site_id = %s ORDER BY name
"""


@dataclass(frozen=True, slots=True)
class Step:
    """One row of ``alert_events`` that the notifier appends."""

    alert_id: str
    step: str
    occurrence: int
    emitted_ms: int
    details: Mapping[str, Any]
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None

    def params(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "step": self.step,
            "occurrence": self.occurrence,
            "emitted_at": _ts(self.emitted_ms),
            "details": orjson.dumps(self.details, option=orjson.OPT_SORT_KEYS).decode(),
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
        }


def choose_recipients(
    staff: Sequence[tuple[str, str | None, str | None, bool]], audience: Audience
) -> tuple[list[Recipient], bool]:
    """The recipients of an audience among the site's staff (name, email, webhook, on duty);
    True when nobody is on duty and all staff are notified instead."""
    everyone = [Recipient(name, email, url) for name, email, url, _ in staff]
    if audience is Audience.ALL_STAFF:
        return everyone, False
    on_duty = [Recipient(name, email, url) for name, email, url, duty in staff if duty]
    if on_duty:
        return on_duty, False
    return everyone, True


def _forget(call: asyncio.Future[Any]) -> None:
    """A call left behind: whatever it ends with was already reported as a timeout."""
    if not call.cancelled():
        call.exception()


class Journal:
    """The PostgreSQL half: the alert's row and its life in ``alert_events``.

    Every call gives up after ``timeout_s`` and drops its connection: a server that stopped
    answering without closing (frozen, or a primary lost behind a failover, whose sockets
    hang until TCP gives up, minutes later) must not hold the notifier; the next call
    connects again."""

    def __init__(self, conninfo: str, *, timeout_s: float = 5.0) -> None:
        self.conninfo = conninfo
        self.timeout_s = timeout_s
        self._conn: AsyncConnection[Any] | None = None
        # One connection, used by several alerts' tasks at once (Notifier.run_due): each
        # call's transaction must not interleave with another's on it.
        self._lock = asyncio.Lock()

    async def _run(self, body: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> T:
        """``body`` on the connection, alone on it, given up after ``timeout_s``: then the call
        is left behind (cancelled, not awaited: its rollback would wait for the same silent
        server) with its connection, and the next call connects again."""
        async with self._lock:
            call = asyncio.ensure_future(self._on_connection(body))
            try:
                done, _ = await asyncio.wait({call}, timeout=self.timeout_s)
            except asyncio.CancelledError:
                call.cancel()
                raise
            if call in done:
                return call.result()
            call.cancel()
            call.add_done_callback(_forget)
            self._conn = None
            raise psycopg.OperationalError(
                f"PostgreSQL did not answer within {self.timeout_s:g} s; connection dropped"
            )

    async def _on_connection(self, body: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> T:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = await AsyncConnection.connect(
                self.conninfo, autocommit=False, row_factory=tuple_row
            )
        return await body(self._conn)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                # Bounded: closing tells a server that may not be there any more.
                async with asyncio.timeout(1.0):
                    await conn.close()
            except Exception as exc:  # noqa: BLE001 - a broken connection may not close cleanly
                log.debug("closing the journal's connection failed: %s", exc)

    async def alert(self, row: Mapping[str, Any], *steps: Step) -> list[bool]:
        """Upsert the alert's row and append ``steps``, in one transaction; per step: new?"""

        async def body(conn: AsyncConnection[Any]) -> list[bool]:
            async with conn.transaction():
                await conn.execute(UPSERT_ALERT, dict(row))
                return [await self._insert(conn, step) for step in steps]

        return await self._run(body)

    async def steps(self, *steps: Step) -> list[bool]:
        """Append steps (of known alerts) in one transaction; per step: new? A step of an alert
        with no row is not written (False)."""

        async def body(conn: AsyncConnection[Any]) -> list[bool]:
            async with conn.transaction():
                return [await self._insert(conn, step) for step in steps]

        return await self._run(body)

    @staticmethod
    async def _insert(conn: AsyncConnection[Any], step: Step) -> bool:
        cursor = await conn.execute(INSERT_STEP, step.params())
        return cursor.rowcount == 1

    async def has_step(self, alert_id: str, step: str, occurrence: int) -> bool:
        async def body(conn: AsyncConnection[Any]) -> bool:
            async with conn.transaction():
                cursor = await conn.execute(SELECT_STEP, (alert_id, step, occurrence))
                return await cursor.fetchone() is not None

        return await self._run(body)

    async def recipients(self, site_id: str, audience: Audience) -> tuple[list[Recipient], bool]:
        async def body(conn: AsyncConnection[Any]) -> list[Any]:
            async with conn.transaction():
                cursor = await conn.execute(SELECT_STAFF, (site_id,))
                return await cursor.fetchall()

        rows = await self._run(body)
        staff = [(str(n), e, w, bool(d)) for n, e, w, d in rows]
        return choose_recipients(staff, audience)


def alert_row(
    state: AlertState, *, resolved_ms: int | None, details: Mapping[str, str]
) -> dict[str, Any]:
    return {
        "alert_id": state.alert_id,
        "kind": state.kind,
        "severity": state.severity,
        "site_id": state.site_id,
        "lamp_id": state.lamp_id,
        "incident_started_at": _ts(state.incident_started_ms),
        "state": "resolved" if resolved_ms is not None else "raised",
        "raised_at": None if resolved_ms is not None else _ts(state.raised_ms),
        "resolved_at": None if resolved_ms is None else _ts(resolved_ms),
        "details": orjson.dumps(dict(details), option=orjson.OPT_SORT_KEYS).decode(),
    }
