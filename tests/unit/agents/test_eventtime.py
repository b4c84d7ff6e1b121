"""Event-time primitives: the lamp clock, the deduplicator and the windows."""

from __future__ import annotations

import pytest

from agents.eventtime import (
    SEQ_MODULUS,
    Deduplicator,
    LampClock,
    WindowSpec,
    seq_backward_distance,
)

WALL = 1_764_230_400_000
MINUTE = 60_000


# -- LampClock ---------------------------------------------------------------------------------


def test_clock_before_any_message_is_wall_time() -> None:
    """Without a message the lamp's time is the wall time, both ways."""
    clock = LampClock()
    assert clock.offset is None
    assert clock.now(WALL) == WALL
    assert clock.wall_at(WALL + 5) == WALL + 5


def test_clock_offset_is_the_largest_ts_minus_ingest() -> None:
    """The message that travelled fastest shows the clock best: max(ts - ingest)."""
    clock = LampClock()
    clock.observe(1, WALL + 120_000 - 3_000, WALL)  # 120 s ahead, 3 s in transit
    clock.observe(2, WALL + 120_000 + 1_000, WALL + 1_000)  # 0 s in transit
    clock.observe(3, WALL + 120_000 + 2_000 - 25_000, WALL + 2_000)  # 25 s late
    assert clock.offset == 120_000
    assert clock.now(WALL + 10_000) == WALL + 130_000
    assert clock.wall_at(WALL + 150_000) == WALL + 30_000


def test_silent_lamp_clock_advances_with_wall_time() -> None:
    """No message for 10 minutes: the lamp's time keeps moving, offset unchanged."""
    clock = LampClock()
    clock.observe(1, WALL - 60_000, WALL)
    assert clock.now(WALL + 10 * MINUTE) == WALL + 10 * MINUTE - 60_000


def test_only_delayed_messages_do_not_pull_the_clock_back() -> None:
    """A lamp heard only through late messages for minutes keeps its clock (found by the
    hourly figures' test: a clock that followed recent offsets drifted back by the delays)."""
    clock = LampClock()
    clock.observe(1, WALL, WALL)
    for n, wall in enumerate(range(WALL + 130_000, WALL + 900_000, 130_000), start=2):
        clock.observe(n, wall - 600_000, wall)  # every one 10 minutes late
    assert clock.offset == 0


def test_a_heartbeat_with_a_smaller_uptime_is_a_reboot() -> None:
    """The clock resynchronised at reboot is followed at once, even if seq did not show it."""
    clock = LampClock()
    clock.observe(500, WALL + 100_000, WALL, uptime_s=3600)  # 100 s ahead
    assert not clock.observe(501, WALL + 160_000, WALL + 60_000, uptime_s=3660)
    assert clock.observe(502, WALL + 120_000, WALL + 120_000, uptime_s=30)  # corrected
    assert clock.offset == 0 and clock.reboots == 1


def test_a_reordered_heartbeat_is_not_a_reboot() -> None:
    clock = LampClock()
    clock.observe(10, WALL + 60_000, WALL + 60_000, uptime_s=120)
    assert not clock.observe(9, WALL, WALL + 61_000, uptime_s=60)  # older, arriving late
    assert clock.reboots == 0


def test_late_replay_does_not_pull_the_clock_back() -> None:
    """After a silence, replayed old messages do not make the lamp's time go back."""
    clock = LampClock()
    clock.observe(1, WALL, WALL)
    clock.observe(2, WALL + 100_000, WALL + 600_000)  # buffered for 500 s
    clock.observe(3, WALL + 110_000, WALL + 600_000)
    assert clock.offset == 0


def test_reboot_is_detected_and_resets_the_offset() -> None:
    """seq back near 0 after a larger one: a reboot; the old clock (120 s ahead) is forgotten."""
    clock = LampClock()
    for seq in range(100, 200):
        clock.observe(seq, WALL + 120_000 + seq, WALL + seq)
    assert clock.offset == 120_000
    assert clock.observe(0, WALL + 300, WALL + 300)
    assert clock.offset == 0
    assert clock.reboots == 1
    assert clock.latest_seq == 0
    assert not clock.observe(1, WALL + 301, WALL + 301)
    assert clock.reboots == 1


def test_small_backward_seq_is_a_reorder_not_a_reboot() -> None:
    """A message a few seq behind (reordered) is not a reboot, and keeps latest_seq."""
    clock = LampClock()
    for seq in range(0, 40):
        clock.observe(seq, WALL + seq, WALL + seq)
    assert not clock.observe(5, WALL + 5, WALL + 50)
    assert clock.latest_seq == 39
    assert clock.reboots == 0


def test_seq_wrapping_at_2_32_is_not_a_reboot() -> None:
    """seq 2^32 - 1 followed by 0, 1: the counter wrapped, the lamp did not reboot."""
    clock = LampClock()
    for seq in range(SEQ_MODULUS - 100, SEQ_MODULUS):
        clock.observe(seq, WALL + 120_000, WALL)
    assert not clock.observe(0, WALL + 120_001, WALL + 1)
    assert not clock.observe(1, WALL + 120_002, WALL + 2)
    assert clock.reboots == 0
    assert clock.latest_seq == 1
    assert clock.offset == 120_000


def test_seq_backward_distance() -> None:
    """Backward distance modulo 2^32; a forward step (also across the wrap) is 0."""
    assert seq_backward_distance(5, 10) == 5
    assert seq_backward_distance(10, 5) == 0
    assert seq_backward_distance(0, SEQ_MODULUS - 1) == 0
    assert seq_backward_distance(SEQ_MODULUS - 1, 0) == 1


def test_clock_dump_load_round_trip() -> None:
    """The stored form restores the same clock."""
    clock = LampClock()
    clock.observe(200, WALL + 5_000, WALL)
    clock.observe(0, WALL + 61_000, WALL + 61_000)
    loaded = LampClock.load(clock.dump())
    assert loaded == clock
    assert loaded.now(WALL + 100_000) == clock.now(WALL + 100_000)


# -- Deduplicator ------------------------------------------------------------------------------


def test_exact_duplicate_is_dropped() -> None:
    """The same (seq, ts) twice: the second is a duplicate."""
    dedup = Deduplicator(horizon_ms=900_000, max_entries=100)
    assert not dedup.is_duplicate(7, WALL, WALL)
    assert dedup.is_duplicate(7, WALL, WALL + 1_000)
    assert dedup.is_duplicate(7, WALL, WALL + 2_000)


def test_same_seq_with_a_new_ts_is_kept() -> None:
    """A rebooted lamp repeats seq with another ts: a new message."""
    dedup = Deduplicator(horizon_ms=900_000, max_entries=100)
    assert not dedup.is_duplicate(7, WALL, WALL)
    assert not dedup.is_duplicate(7, WALL + 30_000, WALL + 30_000)
    assert not dedup.is_duplicate(8, WALL, WALL + 30_000)


def test_entries_older_than_the_horizon_are_forgotten() -> None:
    """After the horizon (event time), a pair is forgotten and would pass again."""
    dedup = Deduplicator(horizon_ms=60_000, max_entries=100)
    dedup.is_duplicate(1, WALL, WALL)
    dedup.is_duplicate(2, WALL + 30_000, WALL + 30_000)
    assert (1, WALL) in dedup.pairs()
    dedup.is_duplicate(3, WALL + 70_000, WALL + 70_000)
    assert dedup.pairs() == [(2, WALL + 30_000), (3, WALL + 70_000)]
    assert not dedup.is_duplicate(1, WALL, WALL + 70_000)


def test_entries_beyond_max_entries_are_evicted_oldest_first() -> None:
    """At most max_entries pairs are kept, the oldest arrivals evicted first."""
    dedup = Deduplicator(horizon_ms=900_000, max_entries=16)
    for seq in range(20):
        dedup.is_duplicate(seq, WALL + seq, WALL + seq)
    assert len(dedup) == 16
    assert [seq for seq, _ in dedup.pairs()] == list(range(4, 20))
    assert not dedup.is_duplicate(0, WALL, WALL + 20)
    assert dedup.is_duplicate(19, WALL + 19, WALL + 20)


def test_dedup_dump_load_round_trip() -> None:
    """The flat stored form restores the same pairs, in order."""
    dedup = Deduplicator(horizon_ms=900_000, max_entries=100)
    for seq in (3, 1, 2):
        dedup.is_duplicate(seq, WALL + seq * 1000, WALL)
    data = dedup.dump()
    assert len(data) == 6 * 8  # three pairs of 64-bit integers, nothing else
    loaded = Deduplicator.load(data, 900_000, 100)
    assert loaded.pairs() == dedup.pairs() == [(3, WALL + 3000), (1, WALL + 1000), (2, WALL + 2000)]
    assert loaded.is_duplicate(1, WALL + 1000, WALL)


def test_dedup_load_refuses_an_odd_list() -> None:
    """A truncated stored form is an error (the engine then starts the lamp afresh)."""
    with pytest.raises(ValueError):
        Deduplicator.load(b"\x01" * 12, 900_000, 100)
    with pytest.raises(ValueError):
        Deduplicator.load(b"\x01" * 24, 900_000, 100)


# -- WindowSpec --------------------------------------------------------------------------------


def test_tumbling_window_holds_each_time_once() -> None:
    """step == size: one window per time, starting on a multiple of the size."""
    spec = WindowSpec(size_ms=MINUTE, step_ms=MINUTE, grace_ms=0)
    assert list(spec.starts(WALL + 59_999)) == [WALL]
    assert list(spec.starts(WALL + MINUTE)) == [WALL + MINUTE]
    assert spec.closes_at(WALL) == WALL + MINUTE


def test_hopping_windows_hold_each_time_size_over_step_times() -> None:
    """10-minute windows every minute: a time is in 10 windows, oldest first."""
    spec = WindowSpec(size_ms=10 * MINUTE, step_ms=MINUTE, grace_ms=2 * MINUTE)
    starts = list(spec.starts(WALL + 30_000))
    assert starts == [WALL - 9 * MINUTE + i * MINUTE for i in range(10)]
    assert all(start <= WALL + 30_000 < start + 10 * MINUTE for start in starts)
    assert spec.closes_at(WALL) == WALL + 12 * MINUTE


def test_window_closes_at_end_plus_grace() -> None:
    """is_closed from closes_at on, not a millisecond before."""
    spec = WindowSpec(size_ms=10 * MINUTE, step_ms=MINUTE, grace_ms=2 * MINUTE)
    assert not spec.is_closed(WALL, WALL + 12 * MINUTE - 1)
    assert spec.is_closed(WALL, WALL + 12 * MINUTE)


def test_window_starts_of_negative_and_zero_times() -> None:
    """Alignment holds at and before the epoch."""
    spec = WindowSpec(size_ms=2 * MINUTE, step_ms=MINUTE, grace_ms=0)
    assert list(spec.starts(0)) == [-MINUTE, 0]
    assert list(spec.starts(-1)) == [-2 * MINUTE, -MINUTE]


@pytest.mark.parametrize(
    ("size", "step", "grace"),
    [(0, 1, 0), (60, 0, 0), (-60, 60, 0), (60, -60, 0), (60, 60, -1), (100, 60, 0)],
)
def test_invalid_window_specs_raise(size: int, step: int, grace: int) -> None:
    """Non-positive size or step, negative grace, size not a multiple of step."""
    with pytest.raises(ValueError):
        WindowSpec(size, step, grace)


def test_an_old_low_seq_arriving_late_is_not_a_reboot() -> None:
    """Found by the hourly figures' integration test: duplicates of a lamp's first messages,
    delivered after its later ones, looked like a reboot and moved its clock back an hour."""
    clock = LampClock()
    for seq in range(120):
        clock.observe(seq, WALL + seq * 30_000, WALL + 3_600_000)
    assert not clock.observe(0, WALL, WALL + 3_601_000)  # an hour old: a replay, not a boot
    assert clock.reboots == 0
    lamp_now = clock.now(WALL + 3_602_000)
    assert clock.observe(0, lamp_now - 200_000, WALL + 3_602_000)  # set back 200 s: a reboot


def test_every_pair_of_64_bit_integers_is_remembered_apart() -> None:
    """Distinct pairs, even at the 64-bit edges the stored array allows (a junk seq or ts), and
    a seq equal to another pair's ts, never look alike."""
    edges = [-(2**63), -(2**32), -1, 0, 1, 2**32, WALL, 2**63 - 1]
    dedup = Deduplicator(horizon_ms=2**62, max_entries=4096)
    pairs = [(seq, ts) for seq in edges for ts in edges]
    assert not any(dedup.is_duplicate(seq, ts, -(2**63)) for seq, ts in pairs)
    assert all(dedup.is_duplicate(seq, ts, -(2**63)) for seq, ts in pairs)
    assert len(dedup) == len(pairs)
    restored = Deduplicator.load(dedup.dump(), horizon_ms=2**62, max_entries=4096)
    assert restored.pairs() == pairs == dedup.pairs()
