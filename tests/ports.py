"""A free TCP port on the loopback interface, for test servers and for "nobody listens here"."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port free right now: bound, read, released. Nothing listens on it after."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
