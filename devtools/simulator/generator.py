"""The fleet: every lamp's life, its incidents and the network's mess, merged in publish order.

Pure and deterministic: the same :class:`SimConfig` (seed and ``start_ms`` included) gives the
same messages, byte for byte, and the same ground truth.
"""

from __future__ import annotations

import heapq
import random
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from agents.rules import rule_settings
from agents.rules.inactivity import InactivitySettings, inactivity_due, site_zone
from devtools.simulator import network
from devtools.simulator.model import Counts, Expectation, GroundTruth, Message, NonIncident
from devtools.simulator.scenarios import (
    EARLY_MS,
    ON_TIME_MS,
    SCRIPTS,
    WARNING_ON_TIME_MS,
    Expect,
    Raw,
    Script,
    Thresholds,
    pick_activity,
)
from pipeline.settings import DetectionSettings

# A gap this close to the offline rule's silence may or may not raise it (network delays).
OFFLINE_MARGIN_MS = 3_000
# A motion arriving this close to rule 9's deadline may or may not come first (the same).
INACTIVITY_MARGIN_MS = 3_000
# Background messages this long before a shielded script (a reboot) are never reordered into
# it: a message of the old boot delivered after the new boot's first ones (see docs/simulator.md).
SHIELD_BEFORE_MS = 35_000
REPLAY_SPACING_MS = 10

# What the generator tells the ground truth about a valid message: (type, device time in ms
# after the start, ts). Device time is what ``ts`` would be without the lamp's clock skew.
Info = tuple[str, int, int]

RANDOM_SCENARIOS = tuple(name for name in SCRIPTS if name != "heat_wave")


@dataclass(frozen=True)
class SimConfig:
    """A simulation: ``lamps`` lamps spread evenly over ``sites`` sites for ``duration_s``.

    ``start_ms`` is the wall time (epoch ms) of the start: a message published ``at_ms``
    after it carries ``ts = start_ms + at_ms + the lamp's clock skew``, so ``ts`` follows wall
    time (the pipeline learns each lamp's clock from it). ``life_speed`` compresses daily life
    (activities last 1/life_speed of their real length); incidents keep the rules' real times.
    ``plan`` places incidents: (lamp index, script name, start s); with ``incident_rate`` (per
    lamp and hour) random incidents are added.
    """

    lamps: int = 100
    sites: int = 1
    seed: int = 0
    start_ms: int = 1_764_230_400_000
    duration_s: float = 600.0
    observe_s: float = 10.0  # how long after the end alerts are still read (trailing gaps)
    detection: DetectionSettings = field(default_factory=DetectionSettings)
    # The rules' thresholds, as the workers' VEILLEUSE_RULES__<RULE>__<FIELD> give them.
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)
    telemetry_period_s: float = 60.0
    posture_period_s: float = 5.0
    life_speed: float = 1.0
    plan: tuple[tuple[int, str, float], ...] = ()
    incident_rate: float = 0.0
    duplicate_rate: float = 0.002
    reorder_rate: float = 0.002
    reorder_max_s: float = 30.0
    junk_rate: float = 5e-6
    junk_plan: tuple[tuple[int, str, float], ...] = ()  # (lamp index, reason, at s)
    max_skew_s: float = 120.0
    # (lamp index, skew s): a lamp's clock skew until its first reboot, instead of a random one.
    skews: tuple[tuple[int, float], ...] = ()
    site_prefix: str = "sim"
    lamp_prefix: str = "S"
    timezone: str = "Europe/Paris"
    # Generate only the lamps whose index % shards == shard: processes sharing a big fleet.
    # Each lamp's life depends on the seed and its id only, so the shards add up to the whole.
    shard: int = 0
    shards: int = 1

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds.of(self.detection, self.rules, self.telemetry_period_s)

    def site_id(self, site: int) -> str:
        return f"{self.site_prefix}-{site:03d}"

    def lamp_ids(self) -> list[tuple[str, str]]:
        """(site_id, lamp_id) of every lamp, in index order."""
        return [
            (self.site_id(i * self.sites // self.lamps), f"{self.lamp_prefix}-{i:06d}")
            for i in range(self.lamps)
        ]


@dataclass
class _Placed:
    start: int
    script: Script
    site_id: str = ""
    lamp_id: str = ""
    # tag -> [(device time, arrival)] of the script's tagged messages, as the network played them.
    arrivals: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    # Kinds this script's incident does not raise: part of an incident still open (rule 5).
    absorbed: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        return self.script.name


class _Device:
    """One lamp's firmware state (numbering, clock, boot) and what the pipeline heard of it."""

    def __init__(self, sim: Simulation, index: int, site_id: str, lamp_id: str) -> None:
        c = sim.config
        self.sim, self.site_id, self.lamp_id = sim, site_id, lamp_id
        self.rng = rng = random.Random(f"{c.seed}/lamp/{lamp_id}")
        self.base = f"lamps/{site_id}/{lamp_id}/"
        self.skew = round(rng.uniform(-c.max_skew_s, c.max_skew_s) * 1000)
        self.skew = next((round(s * 1000) for i, s in c.skews if i == index), self.skew)
        self.seq = rng.randrange(1_000, 2**32)
        self.booted_at = -rng.randrange(3_600, 90 * 86_400) * 1000
        self.fw = rng.choice(("2.3.1", "2.4.0", "2.4.0-beta3"))
        self.last_heard: int | None = None
        self.offline_open = False  # a last will was heard: rule 8's alert is already open
        # Rule 9 as the workers will see it, in arrival order (see _inactivity).
        self.motion_at: int | None = None  # device time of the last motion (or first message)
        self.inactive_due: int | None = None  # when its timer fires, ms after the start
        self.inactive_loose = False  # the timer was set already due: fires within a tick, or not
        self.inactive_open = False
        self.plain: tuple[int, int] = (0, -1)  # motion in this range is due ``after_s`` later

    def encode(self, raw: Raw) -> tuple[bytes, str, int, bool, bool] | None:
        """(payload, topic, qos, retain, valid) of ``raw``; None for a reboot."""
        c, counts, at = self.sim.config, self.sim.counts, raw.at_ms
        if raw.kind == "reboot":
            self.seq, self.booted_at = 0, at
            self.skew = round(self.rng.uniform(-c.max_skew_s, c.max_skew_s) * 1000)
            return None
        ts = c.start_ms + at + self.skew
        if raw.kind == "junk":
            reason = str(raw.fields["reason"])
            counts.junk_by_reason[reason] = counts.junk_by_reason.get(reason, 0) + 1
            payload = network.junk(reason, self.lamp_id, self.seq, ts, self.rng)
            return payload, self.base + "events", 1, False, False
        kind, fields = raw.kind, raw.fields
        channel, qos, retain = "events", 1, False
        if kind == "will":
            kind, fields, channel, retain = "status", {"online": False}, "status", True
            body = {"v": 1, "lamp_id": self.lamp_id, "seq": 0, "ts": 0, "type": kind, **fields}
        else:
            if kind == "heartbeat":
                uptime = (at - self.booted_at) // 1000
                fields = {"fw": self.fw, "uptime_s": uptime, "rssi": self.rng.randrange(-80, -45)}
            if kind in ("temperature", "heartbeat"):
                channel, qos = "telemetry", 0
            elif kind == "status":
                channel, retain = "status", True
            body = {"v": 1, "lamp_id": self.lamp_id, "seq": self.seq, "ts": ts, "type": kind}
            body.update(fields)
            self.seq = (self.seq + 1) % 2**32
        counts.by_type[kind] = counts.by_type.get(kind, 0) + 1
        return orjson.dumps(body), self.base + channel, qos, retain, True

    def heard(self, message: Message, info: Info | None) -> Iterator[Message]:
        """Count ``message`` as published; a silence before it may be an offline alert, a
        lack of motion an inactivity alert."""
        counts = self.sim.counts
        counts.published += 1
        if not message.valid:
            counts.junk += 1
        elif message.duplicate:
            counts.valid += 1
            counts.duplicates += 1  # dropped by the workers: not the lamp speaking
            is_will = message.retain and b'"online":false' in message.payload
            if is_will and not self.offline_open:
                # Except a last will's: every will is the same bytes (seq 0, ts 0), so its
                # second delivery after the lamp spoke again is a new one to the rules.
                self.sim.will_again(self.site_id, self.lamp_id, message.at_ms)
                self.offline_open = True
        else:
            counts.valid += 1
            is_will = message.retain and b'"online":false' in message.payload
            if not is_will:
                if not self.offline_open and self.last_heard is not None:
                    self.sim.gap(self.site_id, self.lamp_id, self.last_heard, message.at_ms)
                self.last_heard = message.at_ms
                if info is not None:
                    self._inactivity(message.at_ms, *info)
            self.offline_open = is_will
        yield message

    def _inactivity(self, arrival: int, kind: str, device_at: int, ts: int) -> None:
        """Rule 9 (agents/rules/inactivity.py) in arrival order: the first message, then each
        motion newer than the last one, sets the timer; it fires unless such a motion arrives
        first; a motion resolves the alert. The deadline is computed on the lamp's clock (its
        day is the site's local day on that clock, skew included: ``inactivity_due``), and
        fires when the lamp's clock reaches it: in wall time, the deadline less the skew."""
        due = self.inactive_due
        newer = (kind == "motion" or self.motion_at is None) and (
            self.motion_at is None or device_at > self.motion_at
        )
        if due is not None and (
            arrival - INACTIVITY_MARGIN_MS > due
            or (newer and arrival + INACTIVITY_MARGIN_MS >= due)
        ):
            # Fired; a motion this close to the deadline may have been processed before it.
            close = newer and arrival - INACTIVITY_MARGIN_MS <= due
            if not self.inactive_open:
                self.sim.inactive(
                    self.site_id, self.lamp_id, due, not close and not self.inactive_loose
                )
                self.inactive_open = True
            self.inactive_due = None
        if not newer:
            return
        if kind == "motion":
            self.inactive_open = False
        self.motion_at = device_at
        skew = ts - self.sim.config.start_ms - device_at
        fires = self._inactivity_due(ts) - self.sim.config.start_ms - skew
        # A motion delivered after its own deadline (a replay): the timer is already due and
        # fires at the next tick, unless the next replayed motion comes within that tick.
        self.inactive_loose = fires < arrival + INACTIVITY_MARGIN_MS
        self.inactive_due = max(fires, arrival)

    def _inactivity_due(self, ts: int) -> int:
        """``inactivity_due`` (the rule's own calendar), skipped within a day as the rule does:
        the generator plays 100,000 lamps."""
        if self.plain[0] <= ts <= self.plain[1]:
            return ts + self.sim.th.inactivity_after_ms
        due, self.plain = self.sim.inactivity_due(self.site_id, ts)
        return due

    def finish(self, observed_until: int) -> None:
        if self.last_heard is not None and not self.offline_open:
            self.sim.gap(self.site_id, self.lamp_id, self.last_heard, observed_until)
        due = self.inactive_due
        if (
            due is not None
            and due <= observed_until + INACTIVITY_MARGIN_MS
            and not self.inactive_open
        ):
            certain = due < observed_until - INACTIVITY_MARGIN_MS and not self.inactive_loose
            self.sim.inactive(self.site_id, self.lamp_id, due, certain)


class Simulation:
    """Iterate :meth:`messages` (publish order); :attr:`truth` is complete once it is exhausted
    (offline alerts are expected from the gaps the network makes, known as they are made)."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.th = config.thresholds
        self.truth = GroundTruth()
        self.counts = Counts()
        self.duration_ms = round(config.duration_s * 1000)
        self.zone = ZoneInfo(config.timezone)
        self._inactivity = rule_settings(config.rules, InactivitySettings)
        self._zones: dict[str, ZoneInfo] = {}
        self._placed: dict[int, list[_Placed]] = {}
        self._place()
        # A planned script may run past the duration (the player plays it to its end); the
        # run reads alerts until observe_s after the last message, whichever shard plays it.
        ends = [
            round(start_s * 1000)
            + SCRIPTS[name](
                self.th, random.Random(f"{config.seed}/plan/{i}/{name}/{start_s}")
            ).length_ms
            for i, name, start_s in config.plan
        ]
        self.end_ms = max([self.duration_ms, *ends])

    @property
    def observed_until_ms(self) -> int:
        """Until when (ms after the start) the run reads alerts: observe_s after the end."""
        return self.end_ms + round(self.config.observe_s * 1000)

    # -- incidents ---------------------------------------------------------------------------

    def _place(self) -> None:
        c = self.config
        ids = c.lamp_ids()
        for index, name, start_s in c.plan:
            if index % c.shards != c.shard:
                continue
            rng = random.Random(f"{c.seed}/plan/{index}/{name}/{start_s}")
            self._add(index, round(start_s * 1000), SCRIPTS[name](self.th, rng))
        if c.incident_rate > 0:
            for index in range(c.shard, c.lamps, c.shards):
                rng = random.Random(f"{c.seed}/incidents/{ids[index][1]}")
                t = rng.expovariate(c.incident_rate / 3_600_000)
                while t < self.duration_ms:
                    name = rng.choice(RANDOM_SCENARIOS)
                    script = SCRIPTS[name](self.th, rng)
                    start = round(t)
                    ends = start + script.length_ms + c.observe_s * 1000
                    if ends < self.duration_ms and self._fits(index, start, script):
                        self._add(index, start, script)
                    t += script.length_ms + 60_000 + rng.expovariate(c.incident_rate / 3_600_000)
        for index, placed in self._placed.items():
            placed.sort(key=lambda p: p.start)
            self._scripted_truth(placed, *ids[index])
        self.truth.scenarios.sort(key=lambda s: (s[1], s[0]))

    def _scripted_truth(self, placed: list[_Placed], site_id: str, lamp_id: str) -> None:
        """The scripts' expectations known at once, and their non-incidents, for one lamp."""
        help_open: _Placed | None = None
        for p in placed:
            p.site_id, p.lamp_id = site_id, lamp_id
            self.truth.scenarios.append((lamp_id, p.start, p.script.name))
            if help_open is not None and any(e.kind == "help_requested" for e in p.script.expects):
                # Rule 5: a request nobody cancelled or acknowledged is still open, and a new
                # press is part of it (the simulation acknowledges nothing).
                p.absorbed = frozenset({"help_requested"})
                why = f"{p.name} (the request at t={help_open.start / 1000:.0f} s still open)"
                end = p.start + p.script.length_ms
                self.truth.non_incidents.append(
                    NonIncident(lamp_id, site_id, "help_requested", p.start, end, why)
                )
            elif p.name in ("help_pressed", "help_long_press"):
                help_open = p
            for e in p.script.expects:
                if not e.trigger and e.kind not in p.absorbed:
                    # Known at once; the others once the network has played the messages.
                    self._expect(p, e, p.start + e.due, p.start + e.earliest, p.start + e.latest)
            for kind, start, end in p.script.forbids:
                self.truth.non_incidents.append(
                    NonIncident(lamp_id, site_id, kind, p.start + start, p.start + end, p.name)
                )

    def _expect(self, p: _Placed, e: Expect, due: int, earliest: int, latest: int) -> None:
        self.truth.expected.append(
            Expectation(p.lamp_id, p.site_id, e.kind, due, earliest, latest, p.script.name)
        )

    def _expect_delivered(self, p: _Placed) -> None:
        """The expectations that depend on when the network delivered the script's messages."""
        for e in p.script.expects:
            if not e.trigger or e.kind in p.absorbed:
                continue
            # The rule's clock starts at the condition's start in event time (the earliest of
            # the trigger's messages, however late it arrives), and nobody can know of it
            # before the first of them has arrived.
            delivered = p.arrivals[e.trigger]
            at = min(d[0] for d in delivered)
            arrival = min(d[1] for d in delivered)
            after = max((a for _, a in p.arrivals.get(e.after, ())), default=arrival)
            due = max(at + e.span, arrival, after)
            self._expect(p, e, due, due - EARLY_MS, due + ON_TIME_MS)

    def _fits(self, index: int, start: int, script: Script) -> bool:
        return all(
            start >= p.start + p.script.length_ms + 60_000
            or start + script.length_ms + 60_000 <= p.start
            for p in self._placed.get(index, ())
        )

    def _add(self, index: int, start: int, script: Script) -> None:
        self._placed.setdefault(index, []).append(_Placed(start, script))

    # -- messages ----------------------------------------------------------------------------

    def messages(self) -> Iterator[Message]:
        """Every publish of every lamp, by ``at_ms`` (ties: lamp order)."""
        streams = [
            self._lamp_messages(index, site_id, lamp_id)
            for index, (site_id, lamp_id) in enumerate(self.config.lamp_ids())
            if index % self.config.shards == self.config.shard
        ]
        return heapq.merge(*streams, key=lambda m: m.at_ms)

    def _local_hour(self, at_ms: float) -> int:
        life_ms = self.config.start_ms + at_ms * self.config.life_speed
        return datetime.fromtimestamp(life_ms / 1000, UTC).astimezone(self.zone).hour

    def _raw(self, index: int, rng: random.Random) -> Iterator[Raw]:
        """The lamp's own events in device order: life, telemetry, scripts and junk."""
        placed = self._placed.get(index, [])
        life_gaps = [
            (p.start, p.start + p.script.length_ms) for p in placed if p.script.suppress_life
        ]
        silent = [(p.start + a, p.start + b) for p in placed for a, b in p.script.silent]
        heat = [
            (p.start + p.script.heat[0], p.start + p.script.heat[1], p.script.heat[2])
            for p in placed
            if p.script.heat
        ]
        scripted = [
            Raw(
                p.start + e.at_ms,
                e.kind,
                e.fields,
                e.protected,
                e.tag,
                None if e.arrive_by is None else p.start + e.arrive_by,
                owner,
            )
            for owner, p in enumerate(placed)
            for e in p.script.events
        ]
        junk = self._junk_events(index, rng)
        streams = [
            self._life(rng, life_gaps),
            self._telemetry(rng, silent, heat),
            iter(sorted(scripted, key=lambda r: r.at_ms)),
            iter(junk),
        ]
        return heapq.merge(*streams, key=lambda r: r.at_ms)

    def _junk_events(self, index: int, rng: random.Random) -> list[Raw]:
        c = self.config
        events = [
            Raw(round(at * 1000), "junk", {"reason": r}) for i, r, at in c.junk_plan if i == index
        ]
        if c.junk_rate > 0:
            # Roughly the lamp's share of junk: its expected message count times the rate.
            expected = c.duration_s * 0.15 * c.junk_rate
            n = int(expected) + (1 if rng.random() < expected - int(expected) else 0)
            for _ in range(n):
                at = rng.randrange(0, self.duration_ms)
                events.append(Raw(at, "junk", {"reason": rng.choice(network.JUNK_REASONS)}))
        return sorted(events, key=lambda r: r.at_ms)

    def _life(self, rng: random.Random, gaps: list[tuple[int, int]]) -> Iterator[Raw]:
        c, end = self.config, self.duration_ms
        period = round(c.posture_period_s * 1000)
        # The run starts in the middle of everyone's life: first postures spread over a period.
        t = rng.randrange(0, period)
        gap_starts = [g[0] for g in gaps]
        while t < end:
            activity = pick_activity(rng, self._local_hour(t))
            length = rng.uniform(activity.min_s, activity.max_s) * 1000 / c.life_speed
            stop = min(end, t + max(round(length), 8_000))
            # A script takes over the room: life stops before it and resumes after it.
            g = bisect_right(gap_starts, t) - 1
            if g >= 0 and t < gaps[g][1]:
                t = gaps[g][1] + 500
                continue
            if g + 1 < len(gaps) and gaps[g + 1][0] < stop:
                stop = gaps[g + 1][0] - 1_000
                if stop <= t:
                    t = gaps[g + 1][1] + 500
                    continue
            seen = activity.posture != "absent"
            fields = {
                "posture": activity.posture,
                "zone": activity.zone,
                "confidence": 0.9,
                "persons": activity.persons,
            }
            next_posture: float = t
            rate = activity.motions_per_min / 60_000
            next_motion = t + (rng.expovariate(rate) if rate else end + 1)
            while True:
                at = min(next_posture, next_motion)
                if at >= stop:
                    break
                if at == next_posture:
                    yield Raw(
                        round(at),
                        "posture",
                        {**fields, "confidence": round(rng.uniform(0.75, 0.99), 2)},
                    )
                    next_posture = at + period if seen else end + 1
                else:
                    yield Raw(
                        round(at), "motion", {"zone": activity.zone, "level": rng.randrange(5, 90)}
                    )
                    next_motion = at + max(1_000.0, rng.expovariate(rate))
            t = max(stop, t + 1)

    def _telemetry(
        self,
        rng: random.Random,
        silent: list[tuple[int, int]],
        heat: list[tuple[int, int, float]],
    ) -> Iterator[Raw]:
        period = self.th.telemetry_period_ms
        base = rng.uniform(20.5, 23.5)
        t = rng.randrange(0, period)
        while t < self.duration_ms:
            if not any(a <= t < b for a, b in silent):
                celsius = base + rng.uniform(-0.3, 0.3)
                for a, b, hot in heat:
                    if a <= t < b:
                        celsius = hot + rng.uniform(-0.5, 0.5)
                fields = {"celsius": round(celsius, 1), "humidity": round(rng.uniform(35, 55), 1)}
                yield Raw(t, "temperature", fields)
                if not any(a <= t + 300 < b for a, b in silent):
                    yield Raw(t + 300, "heartbeat", {})
            t += period

    def _lamp_messages(  # noqa: PLR0915 - one lamp's stream, in the order it is made
        self, index: int, site_id: str, lamp_id: str
    ) -> Iterator[Message]:
        """Device order → publish order: numbering, clock, duplicates, reordering, outages."""
        c = self.config
        device = _Device(self, index, site_id, lamp_id)
        placed = self._placed.get(index, [])
        outages = [
            (p.start + p.script.outage[0], p.start + p.script.outage[1])
            for p in placed
            if p.script.outage
        ]
        # Only a reboot is shielded: every incident is played through the same reordering
        # and duplicates as the background traffic, its own messages included.
        shielded = [
            (p.start - SHIELD_BEFORE_MS, p.start + p.script.length_ms + 5_000)
            for p in placed
            if p.script.shield
        ]
        replayed = dict.fromkeys(outages, 0)
        pending: list[tuple[int, int, Message, Info | None]] = []
        order = 0
        # What the network does to a script's own messages is drawn from the script's own
        # generator, seeded without the lamp's name (the demo's names change with each run):
        # for a seed, an incident meets the same delays and duplicates in every run, whatever
        # the hour it starts at (daily life, which depends on it, draws from the lamp's).
        nets = [random.Random(f"{c.seed}/net/{index}/{p.start}/{p.name}") for p in placed]
        for raw in self._raw(index, device.rng):
            at = raw.at_ms
            rng = nets[raw.owner] if raw.owner >= 0 else device.rng
            while pending and pending[0][0] <= at:
                yield from device.heard(*heapq.heappop(pending)[2:])
            encoded = device.encode(raw)
            if encoded is None:
                continue
            payload, topic, qos, retain, valid = encoded
            publish_at = at
            outage = next(((a, b) for a, b in outages if a <= at < b), None)
            if outage is not None:
                publish_at = outage[1] + replayed[outage] * REPLAY_SPACING_MS
                replayed[outage] += 1
                self.counts.delayed += 1
            elif (
                not raw.protected
                and rng.random() < c.reorder_rate
                and not any(a <= at + c.reorder_max_s * 1000 and at <= b for a, b in shielded)
            ):
                delay = rng.randrange(1_000, round(c.reorder_max_s * 1000))
                # Not past the end: the run observes its last messages for observe_s only.
                delay = min(delay, self.duration_ms - 2_000 - at)
                if raw.arrive_by is not None:
                    delay = min(delay, raw.arrive_by - at)
                if delay > 0:
                    publish_at = at + delay
                    self.counts.delayed += 1
                    self.counts.scripted_delayed += raw.owner >= 0
            if raw.owner >= 0 and raw.tag:
                arrivals = placed[raw.owner].arrivals.setdefault(raw.tag, [])
                arrivals.append((at, publish_at))
            info = None
            if valid and raw.kind not in ("will", "junk"):
                info = (raw.kind, at, c.start_ms + at + device.skew)  # encode's ts
            message = Message(publish_at, topic, payload, qos, retain, lamp_id, valid)
            order += 1
            heapq.heappush(pending, (publish_at, order, message, info))
            if valid and qos == 1 and rng.random() < c.duplicate_rate:
                order += 1
                again = Message(
                    publish_at + rng.randrange(50, 2_000), topic, payload, qos, retain, lamp_id,
                    True, True,
                )  # fmt: skip
                heapq.heappush(pending, (again.at_ms, order, again, info))
                self.counts.scripted_duplicates += raw.owner >= 0
        while pending:
            yield from device.heard(*heapq.heappop(pending)[2:])
        device.finish(self.observed_until_ms)
        for p in placed:
            self._expect_delivered(p)

    def inactivity_due(self, site_id: str, ts: int) -> tuple[int, tuple[int, int]]:
        """Rule 9's deadline (the lamp's event time) after a motion at ``ts``, by the rule's
        own calendar in the site's zone as the workers' settings give it; and the range of
        ``ts`` of that day whose deadline is simply ``after_s`` later."""
        zone = self._zones.get(site_id)
        if zone is None:
            zone = self._zones[site_id] = site_zone(self.config.detection, site_id)
        settings = self._inactivity
        day = datetime.fromtimestamp(ts / 1000, zone).date()
        start = datetime.combine(day, time.fromisoformat(settings.day_start), zone)
        end = datetime.combine(day, time.fromisoformat(settings.day_end), zone)
        span = self.th.inactivity_after_ms
        plain = (int(start.timestamp() * 1000), int(end.timestamp() * 1000) - span)
        return inactivity_due(ts, zone, settings), plain

    def will_again(self, site_id: str, lamp_id: str, at: int) -> None:
        """A last will delivered again after the lamp spoke: rule 8 raises it anew, at once."""
        self.truth.expected.append(
            Expectation(
                lamp_id, site_id, "lamp_offline", at, at - EARLY_MS, at + WARNING_ON_TIME_MS,
                "last will delivered twice",
            )
        )  # fmt: skip

    def inactive(self, site_id: str, lamp_id: str, due: int, required: bool) -> None:
        """No motion until ``due``: rule 9's ``inactivity`` alert."""
        self.truth.expected.append(
            Expectation(
                lamp_id, site_id, "inactivity", due, due - EARLY_MS, due + WARNING_ON_TIME_MS,
                "no motion", required=required,
            )
        )  # fmt: skip

    def gap(self, site_id: str, lamp_id: str, before: int, after: int) -> None:
        """Silence from ``before`` to ``after``: rule 8 raises ``lamp_offline`` after 5 min."""
        offline = self.th.offline_after_ms
        if after - before < offline - OFFLINE_MARGIN_MS:
            return
        required = after - before > offline + OFFLINE_MARGIN_MS
        self.truth.expected.append(
            Expectation(
                lamp_id,
                site_id,
                "lamp_offline",
                before + offline,
                before + offline - 1_000,
                before + offline + WARNING_ON_TIME_MS,
                "silence",
                required=required,
            )
        )
