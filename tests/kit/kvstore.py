"""A small key-value server and a store plugin for it, written from docs/plugins.md alone.

``kv://HOST:PORT/NAMESPACE`` keeps records in a server process (``python kvstore.py``,
started by :class:`KVServer`) reached over :mod:`multiprocessing.connection`: pickled
requests on a TCP connection, answered within ``timeout`` seconds, and authenticated with a
password (``kv://:PASSWORD@HOST...``, the ``password`` option, or ``KITKV_PASSWORD``).
The server does each request under one lock, so writes, create-only writes and
compare-and-swap writes are atomic there, and it sends only the bytes of a range asked for.

:class:`KVStore` is a network plugin as the kit expects one: ``url`` without the password,
one connection per thread and process (never shared across ``fork``), blocking calls
through ``run_blocking``, every backend failure a one-line resultstore error naming the key
and URL (unreachable: ``StorageUnavailableError``; refused password:
``AccessDeniedError``). It passes the whole kit and every mixin; the broken copies in
``broken_stores.py`` each depart from it, or from ``DictStore``, in one way.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, Listener, answer_challenge, deliver_challenge
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from resultstore.errors import (
    AccessDeniedError,
    ConfigurationError,
    StorageError,
    StorageUnavailableError,
    store_error,
)
from resultstore.registry import redact_url
from resultstore.stores.base import BytesReader, Payload, Reader, Stat, Store, run_blocking

PASSWORD_VARIABLE = "KITKV_PASSWORD"
"""Where a process that has only the URL finds the password."""

_BACKEND_ERRORS = (OSError, EOFError, AuthenticationError)


def free_port() -> int:
    """A loopback TCP port nothing listens on (at the time of asking)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# -- the server ------------------------------------------------------------------------


class _Records:
    """Every namespace's records, and the lock each request runs under."""

    def __init__(self) -> None:
        self.spaces: dict[str, dict[str, tuple[bytes, str]]] = {}
        self.lock = threading.Lock()
        self.versions = itertools.count(1)

    def handle(self, request: tuple[Any, ...]) -> tuple[Any, ...]:
        op, namespace, key, *args = request
        with self.lock:
            space = self.spaces.setdefault(namespace, {})
            current = space.get(key)
            if op == "write":
                data, if_absent, if_version = args
                if if_absent and current is not None:
                    return ("exists",)
                if if_version is not None and (current is None or current[1] != if_version):
                    return ("conflict",)
                version = str(next(self.versions))
                space[key] = (data, version)
                return ("ok", version)
            if op in ("get", "stat") and current is None:
                return ("missing",)
            if op == "get":
                start, end = args
                assert current is not None
                return ("ok", current[0][start:end], len(current[0]), current[1])
            if op == "stat":
                assert current is not None
                return ("ok", len(current[0]), current[1])
            if op == "exists":
                return ("ok", current is not None)
            if op == "delete":
                return ("ok", space.pop(key, None) is not None)
            if op == "keys":
                return ("ok", [name for name in space if name.startswith(key)])
        return ("error", f"unknown request {op!r}")


def _session(records: _Records, conn: Connection, password: str) -> None:
    with conn:
        try:
            deliver_challenge(conn, password.encode())
        except (AuthenticationError, OSError, EOFError):
            return  # a wrong password, or a client gone mid-handshake
        while True:
            try:
                request = conn.recv()
            except (EOFError, OSError):
                return
            try:
                reply = records.handle(request)
            except Exception as exc:
                reply = ("error", f"{type(exc).__name__}: {exc}")
            try:
                conn.send(reply)
            except OSError:
                return


def serve(password: str) -> None:
    """Serve forever on a free loopback port, printed first on stdout."""
    records = _Records()
    listener = Listener(("127.0.0.1", 0), backlog=256)  # each session authenticates itself
    print(listener.address[1], flush=True)
    while True:
        try:
            conn = listener.accept()
        except OSError:
            continue
        threading.Thread(target=_session, args=(records, conn, password), daemon=True).start()


class KVServer:
    """A ``kvstore.py`` server process on a free loopback port; stop it with :meth:`stop`."""

    def __init__(self, password: str) -> None:
        self.password = password
        self.port = 0
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> KVServer:
        env = {**os.environ, PASSWORD_VARIABLE: self.password}
        self._process = subprocess.Popen(
            [sys.executable, __file__], env=env, stdout=subprocess.PIPE, text=True
        )
        assert self._process.stdout is not None
        self.port = int(self._process.stdout.readline())
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def url(self, namespace: str, *, with_password: bool = False) -> str:
        login = f":{quote(self.password, safe='')}@" if with_password else ""
        return f"kv://{login}127.0.0.1:{self.port}/{namespace}"


# -- the store -------------------------------------------------------------------------


class KVStore(Store):
    """Records in a ``kvstore.py`` server, one namespace per URL path."""

    interface_version = 2
    supports_ranged_read = True
    supports_conditional_write = True

    def __init__(
        self, url: str, *, password: str | None = None, timeout: float = 30.0, **options: Any
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "kv":
            raise ConfigurationError(f"not a kv:// URL: {redact_url(url)!r}")
        try:
            host, port = parts.hostname or "127.0.0.1", parts.port
        except ValueError:
            port = None
        if port is None:
            raise ConfigurationError(f"kv URL {redact_url(url)!r} needs a port: kv://HOST:PORT/NS")
        self.namespace = parts.path.strip("/") or "default"
        super().__init__(f"kv://{host}:{port}/{self.namespace}")
        self._address = (host, port)
        self._password = (
            password
            or (unquote(parts.password) if parts.password else None)
            or os.environ.get(PASSWORD_VARIABLE, "")
        )
        self.timeout = timeout
        self._local = threading.local()

    # -- connections: one per thread and process ------------------------------------

    def _connection(self) -> Connection:
        held: tuple[int, Connection] | None = getattr(self._local, "held", None)
        if held is not None and held[0] == os.getpid() and not held[1].closed:
            return held[1]
        # A connection inherited through fork is the parent's: never used here (dropping
        # it closes only this process's copy of the socket, which the parent keeps).
        sock = socket.create_connection(self._address, timeout=self.timeout)
        sock.settimeout(None)  # Connection reads the descriptor itself, blocking
        conn = Connection(sock.detach())
        try:
            self._wait(conn)  # for the server's challenge
            answer_challenge(conn, self._password.encode())
        except BaseException:
            conn.close()
            raise
        self._local.held = (os.getpid(), conn)
        return conn

    def _wait(self, conn: Connection) -> None:
        if not conn.poll(self.timeout):
            raise TimeoutError(f"no answer within {self.timeout:g} s")

    def _request(self, *request: Any) -> tuple[Any, ...]:
        conn = self._connection()
        try:
            conn.send(request)
            self._wait(conn)
            reply: tuple[Any, ...] = conn.recv()
        except BaseException:
            self._local.held = None  # its state is unknown: never reuse it
            conn.close()
            raise
        return reply

    def _fail(self, exc: BaseException, action: str, key: str) -> StorageError:
        if isinstance(exc, AuthenticationError):
            return store_error(
                AccessDeniedError,
                action,
                key,
                self.url,
                "the kv server refused the password",
                hint=f"check the `password` option or {PASSWORD_VARIABLE}",
            )
        return store_error(
            StorageUnavailableError,
            action,
            key,
            self.url,
            f"the kv server is unreachable ({type(exc).__name__})",
            hint="check the host and port, and that the server runs",
        )

    async def _call(self, action: str, key: str, *request: Any, nbytes: int = 0) -> tuple[Any, ...]:
        try:
            reply = await run_blocking(self._request, *request, nbytes=nbytes, may_wait=True)
        except _BACKEND_ERRORS as exc:
            raise self._fail(exc, action, key) from None
        if reply[0] == "error":
            raise store_error(StorageError, action, key, self.url, str(reply[1]))
        return reply

    # -- the store interface ------------------------------------------------------------

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str:
        request = ("write", self.namespace, key, payload.join(), if_absent, if_version)
        reply = await self._call("write", key, *request, nbytes=payload.size)
        if reply[0] == "exists":
            raise self.exists_error(key)
        if reply[0] == "conflict":
            raise self.conflict_error(key, str(if_version))
        return str(reply[1])

    async def open(self, key: str, *, start: int = 0, end: int | None = None) -> Reader:
        reply = await self._call("read", key, "get", self.namespace, key, start, end)
        if reply[0] == "missing":
            raise self.not_found(key)
        _, data, size, version = reply
        reader = BytesReader(data, version=version)
        reader.size = size  # the whole value's, not the range's
        return reader

    async def stat(self, key: str) -> Stat:
        reply = await self._call("stat", key, "stat", self.namespace, key)
        if reply[0] == "missing":
            raise self.not_found(key)
        return Stat(int(reply[1]), str(reply[2]))

    async def exists(self, key: str) -> bool:
        return bool((await self._call("check", key, "exists", self.namespace, key))[1])

    async def delete(self, key: str) -> bool:
        return bool((await self._call("delete", key, "delete", self.namespace, key))[1])

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        reply = await self._call("list", prefix, "keys", self.namespace, prefix)
        for key in reply[1]:
            yield key

    async def aclose(self) -> None:
        """Close this thread's connection (a forked child's inherited one stays untouched)."""
        held: tuple[int, Connection] | None = getattr(self._local, "held", None)
        self._local.held = None
        if held is not None and held[0] == os.getpid():
            held[1].close()


if __name__ == "__main__":
    serve(os.environ[PASSWORD_VARIABLE])
