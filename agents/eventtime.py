"""Event-time primitives: per-lamp clocks, deduplication and windows. Pure: no Kafka, no faust.

Each lamp keeps its own event time because lamp clocks disagree by minutes (±120 s by
contract): a partition-wide watermark would fire one lamp's deadlines on another's clock.

* :class:`LampClock` maps wall time to the lamp's clock. It keeps the largest ``ts - ingest``
  offset seen since the lamp's last reboot (the message that travelled fastest shows the clock
  best), so a lamp's event time keeps advancing while it is silent: its deadlines fire on time
  (rule 6).
* :class:`Deduplicator` drops a message whose (``seq``, ``ts``) pair was seen: a true duplicate
  repeats both, while a lamp that rebooted repeats a ``seq`` with a new ``ts``, so no reboot
  heuristic can hide a real message.
* :class:`WindowSpec` assigns event times to tumbling (``step == size``) or hopping windows,
  which their owner closes once the lamp's watermark (event time minus grace) passes their end.
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass
from typing import Any

SEQ_MODULUS = 2**32
# A seq this small after a much larger one is a reboot (seq restarts at 0), not a reorder.
REBOOT_SEQ_MAX = 16
REBOOT_MIN_BACKWARD = 64
# Boot times computed from two heartbeats of one boot differ by rounding and drift only.
BOOT_TOLERANCE_MS = 60_000
# A reboot resynchronises a clock that was off by at most ±120 s, plus some network delay.
MAX_CLOCK_CORRECTION_MS = 300_000


def seq_backward_distance(seq: int, latest: int) -> int:
    """How far ``seq`` is behind ``latest`` modulo 2^32 (a forward wrap is not backward)."""
    distance = (latest - seq) % SEQ_MODULUS
    return distance if distance < SEQ_MODULUS // 2 else 0


@dataclass
class LampClock:
    """The lamp's clock as seen through the pipeline's ingest timestamps.

    ``offset`` is the largest ``ts - ingest`` seen since the lamp's last reboot: delays only
    make a message's offset smaller, so the largest is the closest to the truth, and replays
    or a slow network never pull the clock back. The protocol resynchronises a lamp's clock
    only at reboot, so the offset starts afresh then: when ``seq`` restarts near 0, or when a
    heartbeat's boot time (``ts`` minus its uptime) is later than the last one's: a heartbeat of
    the same boot, even reordered, gives the same boot time.
    """

    offset: int | None = None
    latest_seq: int | None = None
    reboots: int = 0
    boot_ms: int | None = None  # the lamp's boot time on its own clock, from heartbeats

    def observe(self, seq: int, ts: int, ingest_ms: int, uptime_s: int | None = None) -> bool:
        """Record one message (``uptime_s`` for heartbeats); True when the lamp rebooted."""
        rebooted = False
        if self.latest_seq is not None:
            behind = seq_backward_distance(seq, self.latest_seq)
            rebooted = (
                seq <= REBOOT_SEQ_MAX
                and behind >= REBOOT_MIN_BACKWARD
                # A replay or duplicate of an old low seq carries an old ts; after a reboot
                # the clock moved by at most the protocol's skew.
                and ts >= self.now(ingest_ms) - MAX_CLOCK_CORRECTION_MS
            )
        if uptime_s is not None:
            boot = ts - uptime_s * 1000
            if self.boot_ms is not None and boot > self.boot_ms + BOOT_TOLERANCE_MS:
                rebooted = True
            if self.boot_ms is None or rebooted:
                self.boot_ms = boot
        offset = ts - ingest_ms
        if rebooted:
            # The clock was resynchronised: forget what the old one said.
            self.reboots += 1
            self.offset = offset
            if uptime_s is None:
                self.boot_ms = None  # the next heartbeat tells the new boot time
            self.latest_seq = seq
            return True
        if self.latest_seq is None or seq_backward_distance(seq, self.latest_seq) == 0:
            self.latest_seq = seq
        if self.offset is None or offset > self.offset:
            self.offset = offset
        return False

    def now(self, wall_ms: int) -> int:
        """The lamp's event time at ``wall_ms`` (wall time itself before any message)."""
        offset = self.offset
        return wall_ms if offset is None else wall_ms + offset

    def wall_at(self, event_ms: int) -> int:
        """The wall time at which the lamp's clock reads ``event_ms``."""
        offset = self.offset
        return event_ms if offset is None else event_ms - offset

    def dump(self) -> list[Any]:
        return [self.offset, self.latest_seq, self.reboots, self.boot_ms]

    @classmethod
    def load(cls, data: list[Any]) -> LampClock:
        offset, latest, reboots, boot = data
        return cls(offset, latest, reboots, boot)


# A 64-bit integer as array("q") stores it (native byte order).
_INT64 = struct.Struct("=q")


class Deduplicator:
    """The (seq, ts) pairs seen within ``horizon_ms`` of event time, at most ``max_entries``,
    in arrival order in one flat array of 64-bit integers (seq, ts, seq, ts, ...): eviction
    takes the oldest arrivals first, and the changelog gets the array's bytes as they are,
    because a lamp's state is written after every batch that touched it.

    The array is all there is: a pair is looked up by searching its ``ts``'s bytes in the
    array's (a lamp keeps a few hundred pairs, 15 minutes of them). A set of tuples
    beside it cost 20 times the array's 16 bytes per pair, most of a worker's memory per lamp
    (devtools/bench/worker_memory.py, BENCHMARKS.md).
    """

    __slots__ = ("horizon_ms", "log", "max_entries", "start")

    def __init__(self, horizon_ms: int, max_entries: int, log: array[int] | None = None) -> None:
        self.horizon_ms = horizon_ms
        self.max_entries = max_entries
        self.log: array[int] = log if log is not None else array("q")
        self.start = 0  # always even: log[start] is a seq, log[start + 1] its ts

    def __len__(self) -> int:
        return (len(self.log) - self.start) // 2

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Deduplicator):
            return NotImplemented
        return (self.horizon_ms, self.max_entries, self.pairs()) == (
            other.horizon_ms,
            other.max_entries,
            other.pairs(),
        )

    __hash__ = None  # type: ignore[assignment]

    def __contains__(self, pair: tuple[int, int]) -> bool:
        seq, ts = pair
        # The live pairs' bytes, searched for the ts's 8 bytes by bytes.find, in C
        # (array.index would make an int object of every element it passes).
        live = bytes(memoryview(self.log)[self.start :])
        needle = _INT64.pack(ts)
        at = live.find(needle, 8)
        while at >= 0:
            # A hit that is a ts slot (8 bytes into a pair), its own seq before it.
            if at % 16 == 8 and live[at - 8 : at] == _INT64.pack(seq):
                return True
            at = live.find(needle, at + 1)
        return False

    def is_duplicate(self, seq: int, ts: int, now_ms: int) -> bool:
        if (seq, ts) in self:
            return True
        log = self.log
        log.append(seq)
        log.append(ts)
        oldest_allowed = now_ms - self.horizon_ms
        start = self.start
        while (len(log) - start) // 2 > self.max_entries or log[start + 1] < oldest_allowed:
            start += 2
            if start >= len(log):
                break
        if start > 4096 and start * 2 > len(log):
            del log[:start]
            start = 0
        self.start = start
        return False

    def pairs(self) -> list[tuple[int, int]]:
        """The remembered pairs, oldest arrival first."""
        log = self.log
        return list(zip(log[self.start :: 2], log[self.start + 1 :: 2], strict=True))

    def dump(self) -> bytes:
        return self.log[self.start :].tobytes()

    @classmethod
    def load(cls, data: bytes, horizon_ms: int, max_entries: int) -> Deduplicator:
        log = array("q")
        log.frombytes(data)  # ValueError unless whole 64-bit integers
        if len(log) % 2:
            raise ValueError("a (seq, ts) pair is cut in two")
        return cls(horizon_ms, max_entries, log)


@dataclass(frozen=True)
class WindowSpec:
    """Tumbling (``step_ms == size_ms``) or hopping windows of event time, closed after grace."""

    size_ms: int
    step_ms: int
    grace_ms: int

    def __post_init__(self) -> None:
        if self.size_ms <= 0 or self.step_ms <= 0 or self.grace_ms < 0:
            raise ValueError(f"invalid window {self}")
        if self.size_ms % self.step_ms:
            raise ValueError(f"window size {self.size_ms} is not a multiple of its step")

    def starts(self, ts: int) -> range:
        """The start of every window holding ``ts``, oldest first."""
        last = ts - ts % self.step_ms
        first = last - self.size_ms + self.step_ms
        return range(first, last + 1, self.step_ms)

    def closes_at(self, start: int) -> int:
        """The event time (watermark + grace) at which the window starting at ``start`` closes."""
        return start + self.size_ms + self.grace_ms

    def is_closed(self, start: int, now_ms: int) -> bool:
        return now_ms >= self.closes_at(start)
