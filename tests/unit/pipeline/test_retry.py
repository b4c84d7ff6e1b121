"""The capped, jittered back-off the components wait with while a store is down."""

from __future__ import annotations

import pytest

from pipeline.retry import Backoff


def test_doubles_up_to_the_cap_with_jitter_in_the_upper_half() -> None:
    draws: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        draws.append((low, high))
        return high

    backoff = Backoff(0.5, 4.0, uniform=uniform)
    waits = [backoff.next() for _ in range(6)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert draws[0] == (0.25, 0.5)  # never less than half the step: replicas spread, not stall
    assert backoff.failures == 6


def test_a_success_starts_again_from_the_first_wait() -> None:
    backoff = Backoff(0.2, 2.0, uniform=lambda low, high: high)
    for _ in range(5):
        backoff.next()
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.next() == 0.2


def test_real_jitter_stays_within_the_step() -> None:
    backoff = Backoff(1.0, 8.0)
    for step in (1.0, 2.0, 4.0, 8.0, 8.0):
        assert step / 2 <= backoff.next() <= step


@pytest.mark.parametrize(("initial", "cap"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_refuses_a_backoff_that_cannot_work(initial: float, cap: float) -> None:
    with pytest.raises(ValueError, match="initial_s"):
        Backoff(initial, cap)
