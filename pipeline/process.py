"""The one process runner of every service: ``asyncio.run`` of its main coroutine with a stop
event that SIGTERM and SIGINT set (so the batch in progress is finished, offsets committed and
clients closed before the process exits), and the exit code of a command that failed.

Kubernetes stops a pod with SIGTERM and a developer with Ctrl-C: both must take the same, graceful
path. The worker is not run here: faust installs its own handlers.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from pipeline.errors import VeilleuseError

T = TypeVar("T")

EXIT_OK = 0
# A VeilleuseError: a known failure, reported with its message (and to Sentry), no traceback.
EXIT_FAILURE = 1
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def run_until_stopped(main: Callable[[asyncio.Event], Coroutine[Any, Any, T]]) -> T:
    """Run ``main(stop)`` in a new event loop; SIGTERM and SIGINT set ``stop``."""

    async def supervised() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, stop.set)
        try:
            return await main(stop)
        finally:
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)

    return asyncio.run(supervised())


def exit_on_failure(entry: Callable[[], None]) -> None:
    """Run a command line's entry point; a :class:`VeilleuseError` exits with
    :data:`EXIT_FAILURE` and its message on stderr, reported to Sentry when configured."""
    try:
        entry()
    except VeilleuseError as exc:
        from pipeline.observability import report_exception

        report_exception(exc)
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(EXIT_FAILURE)
