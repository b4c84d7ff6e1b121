"""``veilleuse worker`` that pauses itself (SIGSTOP) once, in the middle of its first batch that
raises an alert: the batch is processed (its state and alerts are in memory) and not yet sent
to Kafka, as a worker frozen by a long pause (a stalled VM, swapping) would hold it. The test
resumes it (SIGCONT) after its partitions moved to another worker, and it goes on to commit that
batch."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from agents.runtime.streaming import BatchProcessor
from cli import main as cli

PAUSED = "PAUSED WITH A BATCH PROCESSED AND NOT COMMITTED"
_commit_retrying = BatchProcessor._commit_retrying
paused: list[bool] = []


async def _pause_then_commit(self: Any, results: Any, *args: Any, **kwargs: Any) -> Any:
    produced = [item.topic for _, result in results for item in result.produce]
    if any(topic.endswith("alerts.v1") for topic in produced) and not paused:
        paused.append(True)
        print(PAUSED, file=sys.stderr, flush=True)  # noqa: T201 - for the test
        os.kill(os.getpid(), signal.SIGSTOP)
    return await _commit_retrying(self, results, *args, **kwargs)


if __name__ == "__main__":
    BatchProcessor._commit_retrying = _pause_then_commit  # type: ignore[method-assign]
    cli.main()
