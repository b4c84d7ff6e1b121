"""Daily life and incident scripts of one lamp's resident. Pure: times are ms, no I/O.

A script is what happens in one room over a minute or two: the protocol messages the lamp sends
(``Raw`` events, times relative to the script's start) and what the pipeline must make of it
(alerts expected and by when, or alerts that must not be raised). Daily life fills the time
between scripts (``ACTIVITIES``); the generator owns message numbering, clocks and the network.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agents.rules import rule_settings
from agents.rules.environment import EnvironmentSettings
from agents.rules.fall import FallSettings
from agents.rules.inactivity import InactivitySettings
from agents.rules.lamp_offline import LampOfflineSettings
from pipeline.settings import DetectionSettings

# How long after the rule's condition an alert may come and still be on time: the protocol
# says 2 s for a silent lamp's fall (rule 6); "at once" is read the same way. The protocol
# gives warnings no bound: 10 s.
ON_TIME_MS = 2_000
WARNING_ON_TIME_MS = 10_000
# The start of a condition is known to the lamp's clock only within the network's delay.
EARLY_MS = 1_000


@dataclass(slots=True)
class Raw:
    """One thing the lamp does: a protocol message (``kind`` is its ``type``), or ``will``
    (its last will), ``reboot`` (``seq`` restarts, the clock is resynchronised) or ``junk``
    (``fields["reason"]`` says which kind). ``protected`` messages are never reordered (the
    broker's last will, a reboot's first messages: the network's doing, not the lamp's).

    ``tag`` names the message's part in its script's expectation (``Expect.trigger``);
    ``arrive_by`` (script time) bounds how late the network may deliver it, for the one case
    where a later delivery would change what the rules must decide (``fall_recovered``).
    ``owner`` is set by the generator: the placed script the message belongs to."""

    at_ms: int
    kind: str
    fields: dict[str, Any]
    protected: bool = False
    tag: str = ""
    arrive_by: int | None = None
    owner: int = -1


@dataclass(frozen=True)
class Thresholds:
    """The rules' thresholds the ground truth is computed with (the workers' settings)."""

    fall_confirm_ms: int = 30_000
    long_lie_ms: int = 60_000
    offline_after_ms: int = 300_000
    environment_window_ms: int = 600_000
    environment_step_ms: int = 60_000
    window_grace_ms: int = 120_000
    environment_high_c: float = 28.0
    inactivity_after_ms: int = 10_800_000
    inactivity_day: tuple[str, str] = ("08:00", "20:00")
    telemetry_period_ms: int = 60_000
    posture_period_ms: int = 5_000

    @classmethod
    def of(
        cls,
        detection: DetectionSettings,
        rules: Mapping[str, Mapping[str, Any]],
        telemetry_period_s: float,
    ) -> Thresholds:
        """From the workers' settings: ``detection`` and the rules' sections (``rules``)."""
        ms = detection.ms
        fall = rule_settings(rules, FallSettings)
        environment = rule_settings(rules, EnvironmentSettings)
        offline = rule_settings(rules, LampOfflineSettings)
        inactivity = rule_settings(rules, InactivitySettings)
        return cls(
            fall_confirm_ms=ms(fall.confirm_s),
            long_lie_ms=ms(fall.long_lie_s),
            offline_after_ms=ms(offline.offline_after_s),
            environment_window_ms=ms(environment.window_s),
            environment_step_ms=ms(environment.step_s),
            window_grace_ms=ms(detection.window_grace_s),
            environment_high_c=environment.high_c,
            inactivity_after_ms=ms(inactivity.after_s),
            inactivity_day=(inactivity.day_start, inactivity.day_end),
            telemetry_period_ms=round(telemetry_period_s * 1000),
        )


@dataclass(frozen=True)
class Expect:
    """An alert a script must raise. Without a ``trigger``: due at ``due`` (script time),
    raised between ``earliest`` and ``latest``. With one, the time comes from the messages as
    the network delivered them (the generator knows when each one arrives), as the protocol
    defines the rules, in event time: the condition starts at the earliest event time among
    the messages tagged ``trigger`` (the first "on the floor" posture, even if it arrives after
    a later one), is met ``span`` of the lamp's time later, and cannot be known before the first
    of them and every message tagged ``after`` have arrived: due = max(earliest time + span,
    first arrival, arrivals of ``after``); raised between due - EARLY_MS and due + ON_TIME_MS.
    The lamp's clock skew cancels out: a deadline fires when the lamp's clock reaches it, and
    the workers read that clock from the lamp's own messages (docs/detection.md)."""

    kind: str
    due: int
    earliest: int
    latest: int
    trigger: str = ""
    span: int = 0
    after: str = ""


@dataclass
class Script:
    name: str
    length_ms: int
    events: list[Raw] = field(default_factory=list)
    expects: list[Expect] = field(default_factory=list)
    # (kind, from, to): must not be raised meanwhile.
    forbids: list[tuple[str, int, int]] = field(default_factory=list)
    suppress_life: bool = True  # the script says every posture and motion itself
    silent: list[tuple[int, int]] = field(default_factory=list)  # no telemetry either
    heat: tuple[int, int, float] | None = None  # (from, to, °C) of the temperature readings
    outage: tuple[int, int] | None = None  # messages buffered, replayed at its end
    # No background message is reordered into it (a reboot: see generator.SHIELD_BEFORE_MS).
    shield: bool = False

    def expect(
        self, kind: str, due: int, latest: int | None = None, *, trigger: str = "",
        span: int = 0, after: str = "",
    ) -> None:  # fmt: skip
        late = due + ON_TIME_MS if latest is None else latest
        self.expects.append(Expect(kind, due, due - EARLY_MS, late, trigger, span, after))


def posture(  # noqa: PLR0917 - read as a sentence
    at: int, name: str, zone: str = "room", persons: int = 1, conf: float = 0.9, tag: str = ""
) -> Raw:
    fields = {"posture": name, "zone": zone, "confidence": conf, "persons": persons}
    return Raw(at, "posture", fields, tag=tag)


def postures(  # noqa: PLR0917 - read as a sentence: from, to, what, where, with whom, how often
    start: int, end: int, name: str, zone: str = "room", persons: int = 1, step: int = 5_000,
    tag: str = "",
) -> list[Raw]:  # fmt: skip
    """The every-5-s postures of someone seen, from ``start`` to ``end`` inclusive."""
    return [posture(t, name, zone, persons, tag=tag) for t in range(start, end + 1, step)]


def suspicion(at: int, confidence: float, zone: str = "floor") -> Raw:
    fields = {"confidence": confidence, "zone": zone}
    return Raw(at, "fall_suspected", fields, tag="suspicion")


def button(at: int, action: str = "press") -> Raw:
    tag = "press" if action != "cancel" else ""
    return Raw(at, "button", {"accessory_id": "pendant-1", "action": action}, tag=tag)


def rescue(script: Script, start: int, step: int) -> int:
    """A caregiver comes in (two persons seen), the resident is helped up; the end time."""
    script.events += postures(start, start + 10_000, "on_floor", "floor", 2, step)
    script.events += postures(start + 12_000, start + 17_000, "standing", "room", 2, step)
    script.events += postures(start + 20_000, start + 25_000, "sitting", "room", 1, step)
    return start + 26_000


# -- incidents -------------------------------------------------------------------------------


def fall(th: Thresholds, rng: random.Random) -> Script:
    """A fall the resident does not get up from: ``fall`` (critical) 30 s after the suspicion."""
    s, step = Script("fall", 0), th.posture_period_ms
    s.events += [posture(0, "standing"), suspicion(2_000, round(rng.uniform(0.65, 0.97), 2))]
    down_until = 2_000 + th.fall_confirm_ms + 10_000
    s.events += postures(3_000, down_until, "on_floor", "floor", 1, step)
    s.expect("fall", 2_000 + th.fall_confirm_ms, trigger="suspicion", span=th.fall_confirm_ms)
    s.length_ms = rescue(s, down_until + step, step)
    return s


def fall_silent(th: Thresholds, rng: random.Random) -> Script:
    """A fall, then the lamp says nothing more (rule 6): the alert must not wait for it."""
    s, step = Script("fall_silent", 0), th.posture_period_ms
    s.events += [posture(0, "standing"), suspicion(2_000, round(rng.uniform(0.65, 0.97), 2))]
    s.events.append(posture(3_000, "on_floor", "floor"))
    quiet_until = 2_000 + th.fall_confirm_ms + 15_000
    # Shorter than the offline rule's silence: this script proves rule 6, not rule 8.
    quiet_until = min(quiet_until, 3_000 + th.offline_after_ms - 10_000)
    s.silent.append((3_500, quiet_until))
    s.expect("fall", 2_000 + th.fall_confirm_ms, trigger="suspicion", span=th.fall_confirm_ms)
    s.events += postures(quiet_until, quiet_until + 10_000, "on_floor", "floor", 1, step)
    s.length_ms = rescue(s, quiet_until + 10_000 + step, step)
    return s


def fall_recovered(th: Thresholds, rng: random.Random) -> Script:
    """A suspected fall the resident gets up from within 30 s: ``fall_recovered`` (info)."""
    s, step = Script("fall_recovered", 0), th.posture_period_ms
    s.events += [posture(0, "standing"), suspicion(2_000, round(rng.uniform(0.6, 0.9), 2))]
    s.events += [posture(3_000, "on_floor", "floor"), posture(8_000, "on_floor", "floor")]
    up = min(12_000, th.fall_confirm_ms - 5_000)
    s.events += postures(up, up + 20_000, "sitting", "room", 1, step, tag="up")
    # Raised when the first "got up" arrives once the suspicion has. A "got up" delivered
    # after the 30 s would make the workers raise, then withdraw, a fall: the documented price
    # of never holding an alarm back (docs/detection.md), not what this script is about. So
    # the network may reorder these, but not past the confirmation's end.
    deadline = 2_000 + th.fall_confirm_ms
    for raw in s.events:
        if raw.tag == "up" and raw.at_ms < deadline:
            raw.arrive_by = deadline - 1_000
    s.expect("fall_recovered", up, trigger="up", after="suspicion")
    s.forbids.append(("fall", 0, up + th.fall_confirm_ms + 20_000))
    s.length_ms = up + 25_000
    return s


def slow_slide(th: Thresholds, rng: random.Random) -> Script:
    """Sliding slowly from a chair to the floor, no suspicion: a long lie (rule 2)."""
    s, step = Script("slow_slide", 0), th.posture_period_ms
    s.events += postures(0, 5_000, "sitting", "room", 1, step)
    s.events += postures(10_000, 15_000, "lying", "room", 1, step, tag="down")
    down_until = 10_000 + th.long_lie_ms + 10_000
    s.events += postures(20_000, down_until, "on_floor", "floor", 1, step, tag="down")
    s.expect("fall", 10_000 + th.long_lie_ms, trigger="down", span=th.long_lie_ms)
    s.length_ms = rescue(s, down_until + step, step)
    return s


def long_lie(th: Thresholds, rng: random.Random) -> Script:
    """The detector's confidence is too low to count: found on the floor 60 s later."""
    s, step = Script("long_lie", 0), th.posture_period_ms
    s.events += [posture(0, "standing"), suspicion(2_000, round(rng.uniform(0.3, 0.55), 2))]
    down_until = 3_000 + th.long_lie_ms + 10_000
    s.events += postures(3_000, down_until, "on_floor", "floor", 1, step, tag="down")
    s.expect("fall", 3_000 + th.long_lie_ms, trigger="down", span=th.long_lie_ms)
    s.length_ms = rescue(s, down_until + step, step)
    return s


def _help(name: str, action: str, cancel_after: int | None) -> Callable[..., Script]:
    def script(th: Thresholds, rng: random.Random) -> Script:
        s, step = Script(name, 0), th.posture_period_ms
        s.events += postures(0, 5_000, "sitting", "bed", 1, step)
        s.events.append(button(6_000, action))
        s.expect("help_requested", 6_000, trigger="press")
        s.events += postures(10_000, 40_000, "sitting", "bed", 1, step)
        if cancel_after is not None:
            s.events.append(button(6_000 + cancel_after, "cancel"))
        s.events += postures(45_000, 55_000, "standing", "room", 2, step)
        s.length_ms = 60_000
        return s

    script.__doc__ = f"The pendant: {action}" + (", then cancelled" if cancel_after else "")
    return script


help_pressed = _help("help_pressed", "press", None)
help_long_press = _help("help_long_press", "long_press", None)
help_cancelled = _help("help_cancelled", "press", 10_000)


def lying_in_bed(th: Thresholds, rng: random.Random) -> Script:
    """Lying for minutes, in bed: not a fall."""
    s, step = Script("lying_in_bed", 0), th.posture_period_ms
    end = th.long_lie_ms * 2
    s.events += postures(0, end, "lying", "bed", 1, step)
    s.events += [Raw(t, "motion", {"zone": "bed", "level": 8}) for t in range(7_000, end, 40_000)]
    s.forbids.append(("fall", 0, end + th.long_lie_ms))
    s.length_ms = end + step
    return s


def floor_care(th: Thresholds, rng: random.Random) -> Script:
    """A caregiver with the resident on the floor (care, a transfer), a suspicion meanwhile."""
    s, step = Script("floor_care", 0), th.posture_period_ms
    s.events += postures(0, 4_000, "standing", "room", 2, step)
    end_down = 5_000 + th.long_lie_ms + 30_000
    s.events += postures(5_000, end_down, "on_floor", "floor", 2, step)
    s.events.append(suspicion(11_000, 0.8))
    s.events += postures(end_down + step, end_down + 2 * step, "standing", "room", 2, step)
    s.events += postures(end_down + 3 * step, end_down + 4 * step, "sitting", "room", 1, step)
    s.forbids.append(("fall", 0, end_down + 4 * step + th.long_lie_ms))
    s.length_ms = end_down + 4 * step + 1_000
    return s


def heat_wave(th: Thresholds, rng: random.Random) -> Script:
    """The room heats up above 28 °C for longer than the averaging window: ``environment``."""
    window, hop, grace = th.environment_window_ms, th.environment_step_ms, th.window_grace_ms
    length = window + 2 * hop + 3 * th.telemetry_period_ms
    s = Script("heat_wave", length, suppress_life=False, heat=(0, length, 31.5))
    # Earliest: the first window holding a hot reading closes a grace after it; latest: the
    # first window wholly hot (starting within a hop of the heat) closes, plus a tick.
    s.expects.append(
        Expect("environment", grace, grace - EARLY_MS, hop + window + grace + ON_TIME_MS)
    )
    return s


def lamp_offline(th: Thresholds, rng: random.Random) -> Script:
    """The lamp's connection drops: the broker publishes its last will; it is back 20 s later."""
    s = Script("lamp_offline", 26_000)
    s.events.append(Raw(0, "will", {}, protected=True))
    s.silent.append((0, 20_000))
    s.events.append(Raw(20_000, "status", {"online": True}, protected=True))
    s.events.append(Raw(20_100, "heartbeat", {}, protected=True))
    s.events += postures(21_000, 26_000, "standing", "room", 1, th.posture_period_ms)
    s.expect("lamp_offline", 0, WARNING_ON_TIME_MS)
    return s


def wifi_outage(th: Thresholds, rng: random.Random) -> Script:
    """Wi-Fi down longer than the offline rule's silence: the lamp buffers, then replays late.
    The ground truth's offline alert comes from the gap the generator sees (any long gap)."""
    length = th.offline_after_ms + 20_000
    return Script("wifi_outage", length, suppress_life=False, outage=(0, length))


def reboot(th: Thresholds, rng: random.Random) -> Script:
    """A reboot: 4 s of silence, ``seq`` back to 0, the clock resynchronised. Nothing to raise."""
    s = Script("reboot", 10_000, shield=True)
    s.silent.append((0, 4_000))
    s.events.append(Raw(4_000, "reboot", {}, protected=True))
    s.events.append(Raw(4_050, "heartbeat", {}, protected=True))
    s.events.append(Raw(4_100, "status", {"online": True}, protected=True))
    s.events += postures(5_000, 10_000, "sitting", "room", 1, th.posture_period_ms)
    s.forbids.append(("lamp_offline", 0, 10_000))
    return s


SCRIPTS: dict[str, Callable[[Thresholds, random.Random], Script]] = {
    "fall": fall,
    "fall_silent": fall_silent,
    "fall_recovered": fall_recovered,
    "slow_slide": slow_slide,
    "long_lie": long_lie,
    "help_pressed": help_pressed,
    "help_long_press": help_long_press,
    "help_cancelled": help_cancelled,
    "lying_in_bed": lying_in_bed,
    "floor_care": floor_care,
    "heat_wave": heat_wave,
    "lamp_offline": lamp_offline,
    "wifi_outage": wifi_outage,
    "reboot": reboot,
}


# -- daily life --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Activity:
    name: str
    posture: str
    zone: str
    persons: int
    motions_per_min: float
    min_s: float
    max_s: float
    night: float  # weight at night (22:00-07:00 site time)
    day: float  # weight in the daytime


ACTIVITIES = (
    Activity("sleep", "lying", "bed", 1, 0.2, 3_600, 10_800, 8, 0),
    Activity("night_bathroom", "standing", "bathroom", 1, 6, 120, 480, 2, 1),
    Activity("rest_in_bed", "sitting", "bed", 1, 0.5, 600, 2_400, 1, 1),
    Activity("nap", "lying", "bed", 1, 0.2, 1_200, 3_600, 0, 1),
    Activity("meal", "absent", "room", 0, 0, 1_800, 3_600, 0, 4),
    Activity("out", "absent", "room", 0, 0, 1_800, 7_200, 0, 5),
    Activity("staff_visit", "standing", "room", 2, 4, 300, 900, 1, 1),
    Activity("walking", "standing", "room", 1, 8, 120, 600, 0, 2),
    Activity("sitting", "sitting", "room", 1, 1, 900, 3_600, 0, 3),
)


def pick_activity(rng: random.Random, local_hour: int) -> Activity:
    night = local_hour >= 22 or local_hour < 7
    weights = [a.night if night else a.day for a in ACTIVITIES]
    return rng.choices(ACTIVITIES, weights)[0]
