"""The ``veilleuse`` console script: the root command with every audience's commands."""

from __future__ import annotations

from cli import admin, dev, services
from cli.base import cli
from pipeline.process import exit_on_failure

__all__ = ["admin", "cli", "main", "services"]

dev.register(cli)


def main() -> None:
    exit_on_failure(lambda: cli(standalone_mode=True))
