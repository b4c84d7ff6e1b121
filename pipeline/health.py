"""Readiness and liveness that tell the truth, served beside each component's metrics.

Every long-running component keeps one :class:`Health` and reports to it:

- ``progress()`` each time it finished work (a batch written, a record produced);
- ``problem(dependency, error)`` when a store or Kafka fails, ``ok(dependency)`` when it answers
  again (the first ``ok`` after a problem logs one "resumed" line with the outage's length);
- its backlog, through the ``backlog`` callable (records in hand or known to be waiting).

**Ready** (``/readyz``): started, and not stalled: a component that has work waiting and made no
progress for ``stall_after_s`` is not ready, with the reason (the dependencies reported down, or
"no progress"). **Alive** (``/livez``): the event loop beats (:meth:`Health.beat_forever`), and
the component is not wedged, i.e. work waiting, no progress for ``stuck_after_s`` while no
dependency is reported down. A component that is not alive cannot recover by itself; the
watchdog (:meth:`Health.watch`) then exits the process with status 70 so that its supervisor
restarts it, which is what a stuck process needs and what a process waiting for a store must
not get (that one waits, reports not ready, and resumes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

log = logging.getLogger(__name__)

# The status a watchdog exits with (EX_SOFTWARE): the orchestrator restarts the process.
WEDGED_EXIT_STATUS = 70
# Work waiting this long without progress is a wait worth a "resumed" line when it ends.
WAIT_NOTICED_S = 5.0


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str

    def body(self, **extra: Any) -> bytes:
        return json.dumps({"ok": self.ok, "reason": self.reason, **extra}).encode()


class Health:
    """One process's readiness and liveness (see the module's docstring)."""

    def __init__(
        self,
        component: str,
        *,
        stall_after_s: float = 60.0,
        stuck_after_s: float = 300.0,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.component = component
        self.stall_after_s = stall_after_s
        self.stuck_after_s = stuck_after_s
        self.clock = clock
        self.backlog: Callable[[], int] = lambda: 0
        # Further conditions of readiness: each returns why the component is not ready, or None.
        self.conditions: list[Callable[[], str | None]] = []
        self.started = False
        now = clock()
        self.last_progress = now
        self.last_beat = now
        self.problems: dict[str, tuple[float, str]] = {}  # dependency -> (since, last error)
        self._stalled_since: float | None = None
        self._lock = threading.Lock()
        self._ready_gauge: Gauge | None = None
        self._progress_gauge: Gauge | None = None
        if registry is not None:
            name = component.replace("-", "_")
            self._ready_gauge = Gauge(
                f"veilleuse_{name}_ready",
                "1 while the component reports ready (started, not stalled).",
                registry=registry,
            )
            self._progress_gauge = Gauge(
                f"veilleuse_{name}_last_progress_timestamp_seconds",
                "Unix time of the component's last progress (work finished).",
                registry=registry,
            )
            self._progress_gauge.set(time.time())
            self._ready_gauge.set_function(lambda: 1.0 if self.readiness().ok else 0.0)

    # -- what the component reports ----------------------------------------------------------

    def start(self) -> None:
        self.started = True
        self.progress()

    def progress(self) -> None:
        now = self.clock()
        with self._lock:
            self.last_progress = now
            stalled, self._stalled_since = self._stalled_since, None
        if self._progress_gauge is not None:
            self._progress_gauge.set(time.time())
        if stalled is not None:
            log.info(
                "%s: progress resumed after %.1f s",
                self.component,
                now - stalled,
                extra={"component": self.component},
            )

    def problem(self, dependency: str, error: object) -> None:
        """``dependency`` (kafka, redis, postgres, elasticsearch...) failed with ``error``."""
        now = self.clock()
        with self._lock:
            since = self.problems.get(dependency, (now, ""))[0]
            self.problems[dependency] = (since, str(error) or type(error).__name__)

    def ok(self, dependency: str) -> None:
        """``dependency`` answered: if it had failed, log once that the component resumed."""
        with self._lock:
            failed = self.problems.pop(dependency, None)
        if failed is not None:
            log.info(
                "%s: %s answers again after %.1f s; resumed",
                self.component,
                dependency,
                self.clock() - failed[0],
                extra={"component": self.component},
            )

    def beat(self) -> None:
        self.last_beat = self.clock()

    async def beat_forever(self, interval_s: float = 1.0) -> None:
        """Beat from the event loop (a loop that stops turning stops beating), and notice work
        waiting without progress, so that the first progress after it is logged once."""
        while True:
            self.beat()
            self._notice_wait()
            await asyncio.sleep(interval_s)

    def _notice_wait(self) -> None:
        if not self.started or self._stalled_since is not None:
            return
        if self._waiting() and self.clock() - self.last_progress > WAIT_NOTICED_S:
            with self._lock:
                if self._stalled_since is None:
                    self._stalled_since = self.last_progress

    # -- what the probes answer ---------------------------------------------------------------

    def _waiting(self) -> bool:
        try:
            return self.backlog() > 0
        except Exception:  # noqa: BLE001 - a probe must answer, whatever the component's state
            return False

    def readiness(self) -> Verdict:
        if not self.started:
            return Verdict(False, "starting")
        reasons = [why for why in (condition() for condition in self.conditions) if why]
        now = self.clock()
        if self._waiting() and now - self.last_progress > self.stall_after_s:
            with self._lock:
                if self._stalled_since is None:
                    self._stalled_since = self.last_progress
                problems = dict(self.problems)
            why = "; ".join(f"{dep} down: {err}" for dep, (_, err) in sorted(problems.items()))
            reasons.append(
                f"no progress for {now - self.last_progress:.0f} s with work waiting"
                + (f" ({why})" if why else "")
            )
        return Verdict(False, "; ".join(reasons)) if reasons else Verdict(True, "ready")

    def liveness(self) -> Verdict:
        now = self.clock()
        if now - self.last_beat > self.stuck_after_s:
            return Verdict(False, f"event loop stuck for {now - self.last_beat:.0f} s")
        if (
            self.started
            and not self.problems
            and self._waiting()
            and now - self.last_progress > self.stuck_after_s
        ):
            return Verdict(
                False,
                f"wedged: work waiting, dependencies answering, no progress for "
                f"{now - self.last_progress:.0f} s",
            )
        return Verdict(True, "alive")

    def watch(
        self, interval_s: float = 1.0, exit_process: Callable[[int], Any] = os._exit
    ) -> threading.Thread:
        """A thread that exits the process when it is no longer alive (see the module)."""

        def run() -> None:
            while True:
                time.sleep(interval_s)
                verdict = self.liveness()
                if not verdict.ok:
                    log.critical(
                        "%s is not alive (%s); exiting for the supervisor to restart it",
                        self.component,
                        verdict.reason,
                        extra={"component": self.component},
                    )
                    for handler in logging.getLogger().handlers:
                        handler.flush()
                    exit_process(WEDGED_EXIT_STATUS)
                    return

        thread = threading.Thread(target=run, name=f"{self.component}-watchdog", daemon=True)
        thread.start()
        return thread
