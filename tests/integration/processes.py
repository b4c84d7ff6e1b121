"""Pipeline commands run as real processes by the integration tests (to SIGKILL them): the
process helper is devtools.processes, shared with the demo and the bench."""

from __future__ import annotations

import subprocess
from pathlib import Path

from devtools.processes import PipelineProcess, veilleuse


def stack_command(*args: str, timeout_s: float = 300) -> None:
    """``veilleuse stack <args>`` as an operator types it; fails the test if it fails."""
    done = subprocess.run(
        veilleuse("stack", *args),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def pipeline_processes(
    env: dict[str, str], logs: Path, instance_id: str, *, live_port: int, **worker_env: str
) -> list[PipelineProcess]:
    """A detection worker and both sinks over ``env`` (a scoped run's settings), not started,
    each logging under ``logs``. The worker's session is the broker's smallest (6 s) and the
    sinks linger 100 ms: tests wait on what they write. ``worker_env`` adds to the worker's."""
    return [
        PipelineProcess(
            ["worker", "--instance-id", instance_id],
            {
                **env,
                "VEILLEUSE_DETECTION__METRICS_PORT": "0",
                "VEILLEUSE_DETECTION__LIVE_PORT": str(live_port),
                "VEILLEUSE_DETECTION__SESSION_TIMEOUT_S": "6",
                **worker_env,
            },
            logs / "worker.log",
        ),
        PipelineProcess(
            ["sink", "postgres"],
            {
                **env,
                "VEILLEUSE_SINK__POSTGRES_METRICS_PORT": "0",
                "VEILLEUSE_SINK__LINGER_MS": "100",
            },
            logs / "sink-postgres.log",
        ),
        PipelineProcess(
            ["sink", "elasticsearch"],
            {
                **env,
                "VEILLEUSE_SINK__ELASTICSEARCH_METRICS_PORT": "0",
                "VEILLEUSE_SINK__LINGER_MS": "100",
            },
            logs / "sink-elasticsearch.log",
        ),
    ]
