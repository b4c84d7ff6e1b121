"""``veilleuse worker`` whose Kafka transactions all fail: how does the worker end?"""

from __future__ import annotations

from typing import Any

from agents.runtime import streaming
from cli import main as cli


async def _refuse(self: Any, *args: Any, **kwargs: Any) -> None:
    raise RuntimeError("injected: the transaction cannot commit")


if __name__ == "__main__":
    streaming.BatchProcessor._commit = _refuse  # type: ignore[method-assign]
    cli.main()
