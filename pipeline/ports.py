"""Local TCP ports for the processes a command or a test starts on this machine."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port free on the loopback now (another process may still take it: use it soon)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
