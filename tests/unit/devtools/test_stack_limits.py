"""The stack launches Mosquitto with the open-files limit its 100,000 connections need."""

from __future__ import annotations

import resource
import subprocess

from devtools.stack.service import _open_files_limit


def test_a_service_inherits_the_raised_limit_and_ours_is_restored() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(1024, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))  # as a login shell starts
    try:
        wanted = hard if hard != resource.RLIM_INFINITY else 65_536
        with _open_files_limit(wanted):
            child = subprocess.run(
                ["sh", "-c", "ulimit -n"], capture_output=True, text=True, check=True
            )
        assert int(child.stdout) == wanted
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (low, hard)
        with _open_files_limit(None):
            child = subprocess.run(
                ["sh", "-c", "ulimit -n"], capture_output=True, text=True, check=True
            )
        assert int(child.stdout) == low
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
