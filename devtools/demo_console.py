"""What ``veilleuse demo`` says about the support console, and ``--serve``.

At the end of a run the demo makes a staff token of the simulated home and a one-time sign-in
link for it (``api.console.links``), and prints the console's address and the link: one click
opens the home's board. With ``--serve`` the run's processes (the pipeline and the API that
serves the console) stay up after the verdict until SIGINT (Ctrl-C) or SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from api.console import links
from api.tokens import Principal, create_token, digest
from pipeline import clients
from pipeline.settings import Settings

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def served_url(settings: Settings, port: int) -> str:
    """The demo's own API (on a port of its own): what a browser on this machine opens."""
    host = settings.api.host
    if host in {"0.0.0.0", "::", ""}:  # noqa: S104 - a listening address, not a bind
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def issue_link(settings: Settings, name: str, site: str) -> str:
    """A new staff token ``name`` of ``site`` and a one-time sign-in code for it."""
    principal = Principal(name, "staff", (site,))
    token = create_token(settings.postgres.conninfo(), name, "staff", (site,))
    redis = clients.redis(settings)
    try:
        return links.store(redis, digest(token), principal, settings.api.console_link_ttl_s)
    finally:
        redis.close()


def console_lines(base_url: str, code: str, site: str, ttl_s: float, serving: bool) -> list[str]:
    base = base_url.rstrip("/")
    lines = [
        "== the support console ==",
        f"console:  {base}/console/  (the home's board: {base}/console/sites/{site})",
        f"sign in:  {links.url_of(base, code)}",
        f"          (one-time link, staff of {site}; valid {ttl_s / 60:.0f} min, first use only; "
        "then `veilleuse token link NAME` or a token on the sign-in page)",
    ]
    if serving:
        lines.append("serving the pipeline and the console: Ctrl-C (or SIGTERM) stops them")
    else:
        lines.append(
            "the demo's processes have stopped: run `.venv/bin/veilleuse api` first (or "
            "`veilleuse demo --serve`, which keeps everything up until Ctrl-C)"
        )
    return lines


async def wait_for_stop() -> str:
    """Until SIGINT or SIGTERM; the signal's name. Handled here rather than as
    KeyboardInterrupt so that the run stops its processes and exits with its verdict."""
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stopped.set()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await stopped.wait()
    finally:
        for sig in STOP_SIGNALS:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    return received[0]
