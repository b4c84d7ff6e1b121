"""The demo's night: the night summary of the simulated home, through the whole path.

The summary covers a local night (22:00 to 07:00 in the site's zone, on each lamp's clock) and
is emitted when a lamp's clock passes its end plus the grace. The demo's lamps send their real
time (``ts`` follows the wall: a clock running faster would be refused, see docs/simulator.md),
so a 3.5-minute run covers a real night only if it runs at 07:00. As for the other slow rules,
the demo compresses the waiting, not the clock: its workers get a night of a few minutes of
real site time around the run (``VEILLEUSE_AGENTS__SUMMARISE_NIGHTS__START``/``__END``), which
the lamps' true clocks (skew included) cross while the home lives. The demo then reads the
summaries back from the API (worker → ``activity.nightly.v1`` → PostgreSQL sink →
``GET /sites/{site}/nights``, ``GET /lamps/{lamp}/nights``), counts the records on the topic,
and checks that every lamp heard during the night got exactly one summary.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from agents.rules.inactivity import site_zone
from devtools.simulator import SimConfig, Simulation
from pipeline.settings import Settings

NIGHT_MINUTES = 3
# The worst clock skew the simulated lamps have (the protocol's ±120 s): the last lamp's clock
# passes the night's end that long after the wall.
MAX_SKEW_S = 120.0
SETTLE_S = 20.0  # the worker's timer, its transaction, the sink's batch


@dataclass(frozen=True)
class DemoNight:
    """The night the demo's workers are given: minutes of site time, on the lamps' clocks."""

    site_id: str
    zone: ZoneInfo
    start: datetime  # local, aware
    end: datetime
    grace_s: float

    @property
    def night_of(self) -> date:
        """The date of its evening, as the agent names it."""
        return self.start.date()

    @property
    def start_ms(self) -> int:
        return int(self.start.timestamp() * 1000)

    @property
    def end_ms(self) -> int:
        return int(self.end.timestamp() * 1000)

    @property
    def closed_by(self) -> float:
        """Wall time (s) by which every lamp's clock has passed the end plus the grace."""
        return self.end.timestamp() + self.grace_s + MAX_SKEW_S + SETTLE_S

    def env(self) -> dict[str, str]:
        return {
            "VEILLEUSE_AGENTS__SUMMARISE_NIGHTS__START": self.start.strftime("%H:%M"),
            "VEILLEUSE_AGENTS__SUMMARISE_NIGHTS__END": self.end.strftime("%H:%M"),
        }

    def label(self) -> str:
        return (
            f"{self.start:%H:%M}-{self.end:%H:%M} {self.zone.key} on {self.night_of} "
            f"({NIGHT_MINUTES} min instead of 22:00-07:00)"
        )


def plan_night(settings: Settings, site_id: str, grace_s: float, now: float) -> DemoNight:
    """A night from the start of the current minute (site time) for ``NIGHT_MINUTES``: the
    pipeline takes about 30 s to be ready, so the lamps cover most of it, and it closes within
    a minute or so of the run's end."""
    zone = site_zone(settings.detection, site_id)  # as the agent finds it
    start = datetime.fromtimestamp(now, zone).replace(second=0, microsecond=0)
    end = (start + timedelta(minutes=NIGHT_MINUTES)).astimezone(zone)
    return DemoNight(site_id, zone, start, end, grace_s)


def heard_during(config: SimConfig, night: DemoNight) -> set[str]:
    """The lamps that sent a valid message stamped within the night (their own clock): each
    covered some of it, so each must have its summary. The simulation is deterministic: the
    same config makes the same messages again."""
    heard: set[str] = set()
    for message in Simulation(config).messages():
        if not message.valid or message.lamp_id in heard:
            continue
        try:
            ts = json.loads(message.payload)["ts"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(ts, int) and night.start_ms <= ts < night.end_ms:
            heard.add(message.lamp_id)
    return heard


@dataclass
class NightCheck:
    night: DemoNight
    heard: set[str]
    lamps: set[str]
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # from the API, by lamp
    records: Counter[str] = field(default_factory=Counter)  # on activity.nightly.v1, by lamp
    lamp_view: dict[str, Any] | None = None  # GET /lamps/{lamp}/nights of one lamp
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.heard)


def api_get(port: int, token: str, path: str) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our API
        return json.loads(response.read())


def site_rows(port: int, token: str, night: DemoNight) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    path = f"/sites/{night.site_id}/nights?night={night.night_of.isoformat()}&limit=500"
    page = api_get(port, token, path)
    for row in page["items"]:
        rows[row["lamp_id"]] = row
    return rows


async def wait_for_summaries(
    port: int, token: str, night: DemoNight, heard: set[str]
) -> dict[str, dict[str, Any]]:
    """The site's summaries of the night from the API, once every lamp heard during it has
    one or the last lamp's clock has long passed the night's end."""
    rows: dict[str, dict[str, Any]] = {}
    while True:
        try:
            rows = await asyncio.to_thread(site_rows, port, token, night)
        except (urllib.error.URLError, OSError, KeyError, ValueError):
            rows = {}
        if heard <= set(rows) or time.time() > night.closed_by:
            return rows
        await asyncio.sleep(2)


def count_summaries(records: Iterable[dict[str, Any]], night: DemoNight) -> Counter[str]:
    """Records of the night on activity.nightly.v1, by lamp."""
    return Counter(r["lamp_id"] for r in records if r["night_of"] == night.night_of)


def judge(check: NightCheck) -> None:
    if not check.heard:
        check.problems.append(
            "no lamp was heard during the demo's night (the pipeline started too late?)"
        )
    for lamp in sorted(check.heard):
        n = check.records[lamp]
        if n != 1:
            check.problems.append(f"{lamp}: {n} summaries on activity.nightly.v1, expected 1")
        if lamp not in check.rows:
            check.problems.append(f"{lamp}: no summary from GET /sites/{{site}}/nights")
    for lamp in sorted(check.lamps - check.heard):
        # Covered from before the night (heard within the silence limit), silent during it.
        if check.records[lamp] > 1:
            check.problems.append(f"{lamp}: {check.records[lamp]} summaries, expected at most 1")
    if check.lamp_view is not None:
        lamp = check.lamp_view["lamp_id"]
        served = [
            n for n in check.lamp_view["nights"] if n["night_of"] == str(check.night.night_of)
        ]
        if served != [check.rows.get(lamp)]:
            check.problems.append(f"{lamp}: GET /lamps/{lamp}/nights disagrees with the site's")


def report_lines(check: NightCheck) -> list[str]:
    night = check.night
    lines = [
        f"== the night summary: worker → activity.nightly.v1 → PostgreSQL → "
        f"GET /sites/{night.site_id}/nights ==",
        f"the demo's night: {night.label()}; lamps heard during it: {len(check.heard)} of "
        f"{len(check.lamps)}",
        f"{'lamp':<20}{'covered':>8}{'in bed':>7}{'out':>5}{'bed exits':>10}{'bathroom':>9}"
        f"{'room exits':>11}{'restless/h':>11}{'still':>6}{'back in bed':>12}{'records':>8}",
    ]
    for lamp in sorted(check.lamps):
        row = check.rows.get(lamp)
        if row is None:
            if lamp in check.heard or check.records[lamp]:
                lines.append(f"{lamp:<20}{'(no summary)':>30}{check.records[lamp]:>59}")
            continue
        restless = row["restlessness_per_hour"]
        lines.append(
            f"{lamp:<20}{row['covered_minutes']:>4}/{row['night_minutes']:<3}"
            f"{row['minutes_in_bed']:>7}{row['minutes_out_of_bed']:>5}{row['bed_exits']:>10}"
            f"{row['bathroom_visits']:>9}{row['room_exits']:>11}"
            f"{'-' if restless is None else f'{restless:.1f}':>11}"
            f"{row['longest_still_minutes']:>6}{row['latest_return_to_bed_local'] or '-':>12}"
            f"{check.records[lamp]:>8}"
        )
    lines.append("(minutes; a lamp heard before the night and silent in it may have one too)")
    for problem in check.problems:
        lines.append(f"NIGHT   {problem}")
    return lines


async def nightly_records(isolated: Settings) -> list[dict[str, Any]]:
    """Every committed record of the run's activity.nightly.v1, decoded."""
    from aiokafka import TopicPartition

    from pipeline.clients import consumer
    from pipeline.topics import ACTIVITY_NIGHTLY, topic_name
    from schemas import decode

    topic = topic_name(isolated, ACTIVITY_NIGHTLY)
    reader = consumer(isolated, group_id=None, isolation_level="read_committed")
    await reader.start()
    records: list[dict[str, Any]] = []
    try:
        tps = [TopicPartition(topic, p) for p in range(isolated.kafka.topic_partitions)]
        reader.assign(tps)
        await reader.seek_to_beginning(*tps)
        # read_committed: the end is the last stable offset, what a consumer may read.
        ends = await reader.end_offsets(tps)
        deadline = time.monotonic() + 30
        while any([await reader.position(tp) < ends[tp] for tp in tps]):
            if time.monotonic() > deadline:
                break
            for batch in (await reader.getmany(timeout_ms=500)).values():
                records.extend(decode(record.value)[1] for record in batch)
    finally:
        await reader.stop()
    return records


async def check_night(
    isolated: Settings, config: SimConfig, night: DemoNight, api_port: int, token: str | None
) -> NightCheck:
    """Wait for the night to close on every lamp, then read it back and judge it."""
    lamps = {lamp for _, lamp in config.lamp_ids()}
    check = NightCheck(night, await asyncio.to_thread(heard_during, config, night), lamps)
    if token is None:
        check.problems.append("no API token: the summaries could not be read back")
        return check
    check.rows = await wait_for_summaries(api_port, token, night, check.heard)
    check.records = count_summaries(await nightly_records(isolated), night)
    first = min(check.heard or lamps)
    day = night.night_of
    try:
        check.lamp_view = await asyncio.to_thread(
            api_get,
            api_port,
            token,
            f"/lamps/{first}/nights?from={day}&to={day + timedelta(days=1)}",
        )
    except (urllib.error.URLError, OSError, ValueError) as exc:
        check.problems.append(f"GET /lamps/{first}/nights failed: {exc}")
    judge(check)
    return check
