"""The SQL and Elasticsearch queries of the API, built from parameters (never by pasting
values into the text), and the opaque page cursors. Pure: no I/O."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import orjson
from psycopg import sql

from api.tokens import Principal


class BadCursorError(ValueError):
    """A cursor that this API did not hand out (or of another query)."""


def encode_cursor(kind: str, values: list[Any]) -> str:
    raw = orjson.dumps({"k": kind, "v": values})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str, arity: int) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError) as exc:
        raise BadCursorError("cursor: not one this API handed out") from exc
    if not isinstance(data, dict) or data.get("k") != kind:
        raise BadCursorError("cursor: from another listing")
    values = data.get("v")
    if not isinstance(values, list) or len(values) != arity:
        raise BadCursorError("cursor: malformed")
    return values


@dataclass
class Where:
    """AND-ed conditions with their parameters."""

    parts: list[sql.Composable] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def add(self, condition: str, **params: Any) -> None:
        # The condition is this module's fixed text; values travel as parameters.
        self.parts.append(sql.SQL(condition))
        self.params.update(params)

    def sql(self) -> sql.Composable:
        if not self.parts:
            return sql.SQL("TRUE")
        return sql.SQL(" AND ").join(self.parts)


def scope(where: Where, principal: Principal, column: str) -> None:
    """A staff token sees its own sites only."""
    if not principal.all_sites:
        where.add(f"{column} = ANY(%(scope_sites)s)", scope_sites=list(principal.sites))


# -- lamps -------------------------------------------------------------------------------------

LAMPS = """
SELECT l.lamp_id, l.site_id, l.last_seen_at, l.firmware, l.online FROM lamps AS l
WHERE {} ORDER BY l.lamp_id LIMIT %(limit)s
"""


def lamps_query(
    principal: Principal, site: str | None, limit: int, after: str | None
) -> tuple[sql.Composable, dict[str, Any]]:
    where = Where()
    scope(where, principal, "l.site_id")
    if site is not None:
        where.add("l.site_id = %(site)s", site=site)
    if after is not None:
        where.add("l.lamp_id > %(after)s", after=after)
    query = sql.SQL(LAMPS).format(where.sql())
    return query, {**where.params, "limit": limit}


# Lamps the ``lamps`` table may not hold yet: it is upserted from the hourly activity, an hour
# or so after a lamp's first message, while the messages index has each message within seconds.
# One aggregation on keyword fields over a bounded window (the lamps table covers the rest).
RECENT_LAMPS_WINDOW_MS = 24 * 3600 * 1000
RECENT_LAMPS_MAX = 10_000


def recent_lamps_body(principal: Principal, site: str | None, since_ms: int) -> dict[str, Any]:
    """The messages index's lamps seen since ``since_ms``: per lamp its latest message's site
    and event time (an Elasticsearch aggregation, no hits)."""
    flt: list[dict[str, Any]] = [
        {"range": {"event_time": {"gte": since_ms, "format": "epoch_millis"}}}
    ]
    if site is not None:
        flt.append({"term": {"site_id": site}})
    if not principal.all_sites:
        flt.append({"terms": {"site_id": list(principal.sites)}})
    return {
        "size": 0,
        "track_total_hits": False,
        "query": {"bool": {"filter": flt}},
        "aggs": {
            "lamps": {
                "terms": {"field": "lamp_id", "size": RECENT_LAMPS_MAX},
                # max and a one-bucket terms, not top_hits: about half the time over 10 M
                # messages of 1,000 lamps (BENCHMARKS.md, "Console pages", caveats).
                "aggs": {
                    "last": {"max": {"field": "event_time"}},
                    "site": {  # the site of its latest message, should a lamp have moved
                        "terms": {"field": "site_id", "size": 1, "order": {"last": "desc"}},
                        "aggs": {"last": {"max": {"field": "event_time"}}},
                    },
                },
            }
        },
    }


def recent_lamps(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``recent_lamps_body``'s answer as lamp rows (as ``LAMPS`` selects them), by lamp id."""
    found: dict[str, dict[str, Any]] = {}
    buckets = result.get("aggregations", {}).get("lamps", {}).get("buckets", [])
    for bucket in buckets:
        last = (bucket.get("last") or {}).get("value")
        sites = (bucket.get("site") or {}).get("buckets") or []
        if not isinstance(last, int | float) or not sites or not isinstance(sites[0]["key"], str):
            continue
        found[bucket["key"]] = {
            "lamp_id": bucket["key"],
            "site_id": sites[0]["key"],
            "last_seen_at": ms_datetime(int(last)),
            "firmware": None,
            "online": True,
        }
    return found


def merge_recent_lamps(
    rows: list[dict[str, Any]], recent: dict[str, dict[str, Any]], after: str | None
) -> list[dict[str, Any]]:
    """The ``lamps`` rows with the index's recent lamps: a stored lamp takes a later last
    message from the index, a lamp not stored yet is added; by lamp id, after ``after``."""
    merged = {row["lamp_id"]: dict(row) for row in rows}
    for lamp_id, seen in recent.items():
        if after is not None and lamp_id <= after:
            continue
        row = merged.get(lamp_id)
        if row is None:
            merged[lamp_id] = dict(seen)
        elif row["last_seen_at"] is None or seen["last_seen_at"] > row["last_seen_at"]:
            row["last_seen_at"] = seen["last_seen_at"]
    return [merged[lamp_id] for lamp_id in sorted(merged)]


LAMP = """
SELECT l.lamp_id, l.site_id, l.last_seen_at, l.firmware, l.online FROM lamps AS l
WHERE l.lamp_id = %(lamp_id)s
"""

# What makes an alert's state: resolved wins, then an acknowledgement in its life.
ALERT_COLUMNS = """
    a.alert_id, a.kind, a.severity, a.site_id, a.lamp_id, a.incident_started_at, a.raised_at,
    a.resolved_at, a.details,
    ack.emitted_at AS acknowledged_at, ack.details ->> 'acknowledged_by' AS acknowledged_by,
    CASE WHEN a.resolved_at IS NOT NULL OR a.state = 'resolved' THEN 'resolved'
         WHEN ack.alert_id IS NOT NULL THEN 'acknowledged'
         ELSE 'raised' END AS state
"""
ALERT_FROM = """
FROM alerts AS a
LEFT JOIN alert_events AS ack
       ON ack.alert_id = a.alert_id AND ack.step = 'acknowledged' AND ack.occurrence = 1
"""

OPEN_INCIDENTS = (
    "SELECT a.lamp_id, a.alert_id, a.kind, a.severity, a.incident_started_at, "
    "CASE WHEN ack.alert_id IS NULL THEN 'raised' ELSE 'acknowledged' END AS state"
    + ALERT_FROM
    + "WHERE a.lamp_id = ANY(%(lamps)s) AND a.resolved_at IS NULL AND a.state <> 'resolved' "
    "ORDER BY a.incident_started_at"
)

# -- alerts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertFilter:
    site: str | None = None
    lamp: str | None = None
    kind: str | None = None
    state: str | None = None
    start: datetime | None = None
    end: datetime | None = None


STATE_CONDITIONS = {
    "resolved": "(a.resolved_at IS NOT NULL OR a.state = 'resolved')",
    "acknowledged": "(a.resolved_at IS NULL AND a.state <> 'resolved' "
    "AND ack.alert_id IS NOT NULL)",
    "raised": "(a.resolved_at IS NULL AND a.state <> 'resolved' AND ack.alert_id IS NULL)",
}


def alerts_query(
    principal: Principal, filters: AlertFilter, limit: int, after: tuple[datetime, str] | None
) -> tuple[sql.Composable, dict[str, Any]]:
    """Newest incidents first; keyset pagination on (incident_started_at, alert_id)."""
    where = Where()
    scope(where, principal, "a.site_id")
    if filters.site is not None:
        where.add("a.site_id = %(site)s", site=filters.site)
    if filters.lamp is not None:
        where.add("a.lamp_id = %(lamp)s", lamp=filters.lamp)
    if filters.kind is not None:
        where.add("a.kind = %(kind)s", kind=filters.kind)
    if filters.state is not None:
        where.add(STATE_CONDITIONS[filters.state])
    if filters.start is not None:
        where.add("a.incident_started_at >= %(start)s", start=filters.start)
    if filters.end is not None:
        where.add("a.incident_started_at < %(end)s", end=filters.end)
    if after is not None:
        where.add(
            "(a.incident_started_at, a.alert_id) < (%(after_at)s, %(after_id)s)",
            after_at=after[0],
            after_id=after[1],
        )
    query = sql.SQL(
        "SELECT "
        + ALERT_COLUMNS
        + ALERT_FROM
        + "WHERE {} ORDER BY a.incident_started_at DESC, a.alert_id DESC LIMIT %(limit)s"
    ).format(where.sql())
    return query, {**where.params, "limit": limit}


ALERT = "SELECT " + ALERT_COLUMNS + ALERT_FROM + "WHERE a.alert_id = %(alert_id)s"

STEPS = """
SELECT step, occurrence, emitted_at, details, recorded_at FROM alert_events
WHERE alert_id = %(alert_id)s ORDER BY emitted_at, recorded_at, step, occurrence
"""

# The board's live steps: those alerts.v1 does not carry, recorded since ``since`` (index
# alert_events_recorded), with the database's clock so that the next poll starts from it.
NEW_STEPS = """
SELECT c.now AS polled_at, s.* FROM (SELECT now() AS now) AS c
LEFT JOIN LATERAL (
    SELECT e.alert_id, e.step, e.occurrence, e.emitted_at, e.recorded_at, e.details,
           a.kind, a.severity, a.site_id, a.lamp_id, a.incident_started_at
    FROM alert_events AS e JOIN alerts AS a ON a.alert_id = e.alert_id
    WHERE e.recorded_at >= COALESCE(%(since)s::timestamptz, now() - %(overlap)s)
      AND e.step NOT IN ('raised', 'resolved')
      AND (%(all_sites)s OR a.site_id = ANY(%(sites)s::text[]))
    ORDER BY e.recorded_at LIMIT %(limit)s
) AS s ON TRUE
"""

# The latest notification or escalation of each of these alerts (the board's state column; an
# acknowledgement is the alert's state itself, with who).
LAST_STEPS = """
SELECT DISTINCT ON (alert_id) alert_id, step, occurrence FROM alert_events
WHERE alert_id = ANY(%(alert_ids)s::text[])
  AND step NOT IN ('raised', 'resolved', 'acknowledged')
ORDER BY alert_id, recorded_at DESC, emitted_at DESC
"""

# The API records the acknowledgement in the alert's life at once (the notifier records the
# same step when it reads alerts.acks.v1; the first one wins, the other is a no-op).
RECORD_ACK = """
INSERT INTO alert_events (alert_id, step, occurrence, emitted_at, details)
VALUES (%(alert_id)s, 'acknowledged', 1, %(at)s, %(details)s)
ON CONFLICT (alert_id, step, occurrence) DO NOTHING
RETURNING alert_id
"""

ACK_OF = """
SELECT emitted_at AS acknowledged_at, details ->> 'acknowledged_by' AS acknowledged_by
FROM alert_events
WHERE alert_id = %(alert_id)s AND step = 'acknowledged' AND occurrence = 1
"""

# -- activity ----------------------------------------------------------------------------------

HOURS = """
SELECT hour_start AS start, messages, motion_events, active_minutes, minutes_in_bed,
       minutes_absent, bathroom_visits, falls, help_requests, temperature_readings,
       temperature_min, temperature_mean, temperature_max, last_seen_at
FROM activity_hourly
WHERE lamp_id = %(lamp_id)s AND hour_start >= %(start)s AND hour_start < %(end)s
ORDER BY hour_start
"""
DAYS = """
SELECT (day::timestamp AT TIME ZONE 'UTC') AS start, messages, motion_events, active_minutes,
       minutes_in_bed, minutes_absent, bathroom_visits, falls, help_requests,
       temperature_readings, temperature_min, temperature_mean, temperature_max, last_seen_at
FROM activity_daily
WHERE lamp_id = %(lamp_id)s AND day >= %(start)s::date AND day < %(end)s::date
ORDER BY day
"""

COUNTS = (
    "messages",
    "motion_events",
    "active_minutes",
    "minutes_in_bed",
    "minutes_absent",
    "bathroom_visits",
    "falls",
    "help_requests",
)


def live_point(hour: dict[str, Any]) -> dict[str, Any]:
    """A worker's open hour (activity_hourly.v1 figures, times in ms) as an activity point."""
    point = {name: hour[name] for name in (*COUNTS, "temperature_readings")}
    point.update(
        start=ms_datetime(hour["hour_start"]),
        live=True,
        temperature_min=hour["temperature_min"],
        temperature_mean=hour["temperature_mean"],
        temperature_max=hour["temperature_max"],
        last_seen_at=ms_datetime(hour["last_seen_at"]) if hour["last_seen_at"] >= 0 else None,
    )
    return point


def fold_into_day(day: dict[str, Any] | None, hour: dict[str, Any], start: datetime) -> dict:  # type: ignore[type-arg]
    """Add an open hour to its day's figures (the daily row only holds emitted hours)."""
    if day is None:
        return {**hour, "start": start}
    merged = dict(day)
    for name in COUNTS:
        merged[name] = day[name] + hour[name]
    readings = day["temperature_readings"] + hour["temperature_readings"]
    merged["temperature_readings"] = readings
    if hour["temperature_readings"]:
        merged["temperature_min"] = _opt(min, day["temperature_min"], hour["temperature_min"])
        merged["temperature_max"] = _opt(max, day["temperature_max"], hour["temperature_max"])
        merged["temperature_mean"] = round(
            (
                (day["temperature_mean"] or 0.0) * day["temperature_readings"]
                + hour["temperature_mean"] * hour["temperature_readings"]
            )
            / readings,
            3,
        )
    merged["last_seen_at"] = _opt(max, day["last_seen_at"], hour["last_seen_at"])
    merged["live"] = True
    return merged


def _opt(pick: Any, a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return pick(a, b)


def ms_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def day_start(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


# -- message search (Elasticsearch) -------------------------------------------------------------

# Newest first; (partition, offset) of lamp.messages.v1 breaks ties: unique per message.
SEARCH_SORT = [
    {"event_time": {"order": "desc"}},
    {"kafka.partition": {"order": "asc", "unmapped_type": "integer"}},
    {"kafka.offset": {"order": "asc", "unmapped_type": "long"}},
]


@dataclass(frozen=True)
class SearchFilter:
    q: str | None = None
    lamp: str | None = None
    site: str | None = None
    type: str | None = None
    start: datetime | None = None
    end: datetime | None = None


def search_body(
    principal: Principal, filters: SearchFilter, size: int, after: list[Any] | None
) -> dict[str, Any]:
    must: list[dict[str, Any]] = []
    flt: list[dict[str, Any]] = []
    if filters.q:
        # simple_query_string never fails on user syntax: a stray quote is a term, not a 500.
        must.append(
            {
                "simple_query_string": {
                    "query": filters.q,
                    "fields": ["raw"],
                    "default_operator": "and",
                }
            }
        )
    for name, value in (("lamp_id", filters.lamp), ("site_id", filters.site)):
        if value is not None:
            flt.append({"term": {name: value}})
    if filters.type is not None:
        flt.append({"term": {"type": filters.type}})
    if not principal.all_sites:
        flt.append({"terms": {"site_id": list(principal.sites)}})
    if filters.start is not None or filters.end is not None:
        bounds: dict[str, Any] = {"format": "epoch_millis"}
        if filters.start is not None:
            bounds["gte"] = round(filters.start.timestamp() * 1000)
        if filters.end is not None:
            bounds["lt"] = round(filters.end.timestamp() * 1000)
        flt.append({"range": {"event_time": bounds}})
    body: dict[str, Any] = {
        "query": {"bool": {"must": must or [{"match_all": {}}], "filter": flt}},
        "sort": SEARCH_SORT,
        "size": size,
        "track_total_hits": False,
    }
    if after is not None:
        body["search_after"] = after
    return body


def message_of(hit: dict[str, Any]) -> dict[str, Any]:
    source = hit["_source"]

    def when(name: str) -> datetime | None:
        value = source.get(name)
        return ms_datetime(value) if isinstance(value, int) else None

    return {
        "id": hit["_id"],
        "lamp_id": source.get("lamp_id"),
        "site_id": source.get("site_id"),
        "type": source.get("type"),
        "seq": source.get("seq"),
        "ts": when("ts"),
        "received_at": when("received_at"),
        "event_time": when("event_time"),
        "payload": source.get("payload"),
        "raw": source.get("raw", ""),
    }


# -- nights ------------------------------------------------------------------------------------

NIGHT_COLUMNS = """
    n.lamp_id, n.site_id, n.night_of, n.time_zone, n.night_start, n.night_end, n.night_minutes,
    n.covered_minutes, n.messages, n.minutes_in_bed, n.minutes_out_of_bed, n.bed_exits,
    n.bathroom_visits, n.room_exits, n.restless_motion_events, n.restlessness_per_hour,
    n.longest_still_minutes, n.latest_return_to_bed, n.latest_return_to_bed_local, n.emitted_at
"""

# Where a lamp is: its row in ``lamps`` (its latest activity), else the site of its latest
# stored night (a lamp whose summaries came before its first hourly figures).
LAMP_SITE = """
SELECT site_id FROM (
    SELECT l.site_id, 0 AS rank FROM lamps AS l WHERE l.lamp_id = %(lamp_id)s
    UNION ALL
    (SELECT n.site_id, 1 AS rank FROM night_summaries AS n WHERE n.lamp_id = %(lamp_id)s
     ORDER BY n.night_of DESC LIMIT 1)
) AS found ORDER BY rank LIMIT 1
"""

LAMP_NIGHTS = "SELECT " + NIGHT_COLUMNS + "FROM night_summaries AS n WHERE {} ORDER BY n.night_of"


def lamp_nights_query(
    principal: Principal, lamp_id: str, start: date, end: date
) -> tuple[sql.Composable, dict[str, Any]]:
    """The lamp's nights from ``start`` (inclusive) to ``end`` (exclusive), of the token's
    sites only (a lamp that moved keeps its nights in its former home)."""
    where = Where()
    where.add("n.lamp_id = %(lamp_id)s", lamp_id=lamp_id)
    where.add("n.night_of >= %(start)s AND n.night_of < %(end)s", start=start, end=end)
    scope(where, principal, "n.site_id")
    return sql.SQL(LAMP_NIGHTS).format(where.sql()), where.params


# Without a night asked for: the latest night stored for the site.
SITE_NIGHTS = sql.SQL("""
SELECT {columns} FROM night_summaries AS n
WHERE n.site_id = %(site)s
  AND n.night_of = COALESCE(%(night)s::date,
                            (SELECT max(night_of) FROM night_summaries WHERE site_id = %(site)s))
  AND (%(after)s::text IS NULL OR n.lamp_id > %(after)s::text)
ORDER BY n.lamp_id LIMIT %(limit)s
""").format(columns=sql.SQL(NIGHT_COLUMNS))


# -- the support console ------------------------------------------------------------------------


def sites_query(principal: Principal) -> tuple[sql.Composable, dict[str, Any]]:
    """The sites the principal may see that have lamps, with their lamp counts."""
    where = Where()
    scope(where, principal, "l.site_id")
    query = sql.SQL(
        "SELECT l.site_id, count(*) AS lamps FROM lamps AS l WHERE {} "
        "GROUP BY l.site_id ORDER BY l.site_id"
    ).format(where.sql())
    return query, where.params


SITE_KNOWN = """
SELECT EXISTS (SELECT 1 FROM lamps WHERE site_id = %(site)s)
    OR EXISTS (SELECT 1 FROM alerts WHERE site_id = %(site)s) AS known
"""
