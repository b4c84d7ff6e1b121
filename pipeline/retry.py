"""A capped, jittered exponential back-off: how a component waits for a store that is down.

Pure (an injectable random source): the first wait is about ``initial_s``, each failure doubles
it up to ``max_s``, and a success starts again from ``initial_s``. The jitter (each wait drawn
in [half, whole] of the current step) keeps replicas that lost a store together from retrying
in lock step when it comes back.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    def __init__(
        self,
        initial_s: float,
        max_s: float,
        *,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        if initial_s <= 0 or max_s < initial_s:
            raise ValueError(f"need 0 < initial_s <= max_s, got {initial_s}, {max_s}")
        self.initial_s = initial_s
        self.max_s = max_s
        self.uniform = uniform
        self.step_s = initial_s
        self.failures = 0

    def next(self) -> float:
        """After one more failure: how long to wait before trying again."""
        wait = self.uniform(self.step_s / 2, self.step_s)
        self.failures += 1
        self.step_s = min(self.max_s, self.step_s * 2)
        return wait

    def reset(self) -> None:
        """It worked: the next failure waits ``initial_s`` again."""
        self.step_s = self.initial_s
        self.failures = 0
