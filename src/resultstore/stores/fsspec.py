"""Any other fsspec protocol (``gcs://``, ``az://``, ``sftp://``, ...) through one generic store.

Used for a URL scheme that no ``resultstore.stores`` plugin claims but fsspec
knows. Key ``a/b`` lives at ``ROOT/a/b.rsr``, as in the file store. A write
goes to a temporary name beside the target and is then moved over it, so
readers never see part of a record where the move is atomic (local and SFTP
renames, object-store copies). A ranged read (``open(key, start=, end=)``, as
``read_metadata`` does) is one ``cat_file(path, start, end)``: only the range is
fetched. Every call goes through fsspec's sync API in a worker thread, which
suits blocking and async implementations alike, and which
:class:`~resultstore.ResultStore`'s timeout can walk away from: a call stuck on a
server that stopped answering is left to its own socket timeout (a backend that
takes a ``timeout`` option gets ``RESULTSTORE_STALL_TIMEOUT``).

Options are the fsspec filesystem's; where its ``__init__`` takes no
``**kwargs``, an unknown one is refused when the store is made.
"""

from __future__ import annotations

import inspect
import posixpath
import secrets
import socket
import threading
from collections.abc import AsyncIterator
from typing import Any

import fsspec
from fsspec.core import url_to_fs
from fsspec.registry import known_implementations

from resultstore.errors import (
    ConfigurationError,
    ResultStoreError,
    StorageError,
    StorageUnavailableError,
)
from resultstore.keys import RESERVED_SUFFIX
from resultstore.registry import redact_url
from resultstore.settings import get_settings
from resultstore.stores.base import BytesReader, Payload, Reader, Stat, Store, check_options

__all__ = ["FsspecStore", "fsspec_store_class"]

# Failures of the connection itself, not of the request: worth a retry on a new connection.
_CONNECTION_ERRORS = (ConnectionError, TimeoutError, EOFError, socket.gaierror)


def fsspec_store_class(scheme: str) -> type[Store] | None:
    """:class:`FsspecStore` when fsspec knows ``scheme``, else None."""
    if scheme in known_implementations or scheme in fsspec.registry:
        return FsspecStore
    return None


_NAMED = ("POSITIONAL_OR_KEYWORD", "KEYWORD_ONLY")
# Backends whose ``**kwargs`` go only to fsspec's AbstractFileSystem, which reads just these
# (others, such as sftp, hand theirs to a client library that validates them).
_KWARGS_ONLY_TO_FSSPEC = frozenset({"ftp"})
_FSSPEC_BASE_OPTIONS = (
    "use_listings_cache",
    "listings_expiry_time",
    "max_paths",
    "skip_instance_cache",
)


class FsspecStore(Store):
    """Records stored through an fsspec filesystem, under the URL's path."""

    interface_version = 2
    # ``cat_file(path, start, end)`` asks the backend for the range alone (a local or SFTP
    # seek and read, an HTTP or object-store range GET), so a header read of a large record
    # costs what one of a small record does.
    supports_ranged_read = True

    def __init__(self, url: str, **options: Any) -> None:
        protocol, path = url.split("://", 1)
        self.protocol = protocol
        shown = redact_url(f"{protocol}://{path.rstrip('/')}")
        try:
            cls = fsspec.get_filesystem_class(protocol)
        except ImportError as exc:
            hint = known_implementations.get(protocol, {}).get("err") or str(exc)
            raise ConfigurationError(
                f"storage URL scheme {protocol!r} needs an fsspec implementation that is not "
                f"installed: {hint}",
                url=url,
            ) from None
        settings = get_settings()
        self._stall = min(settings.stall_timeout, settings.timeout)
        parameters = inspect.signature(cls.__init__).parameters
        named = [name for name, p in parameters.items() if name != "self" and p.kind.name in _NAMED]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            check_options(shown, options, named)
        elif protocol in _KWARGS_ONLY_TO_FSSPEC:  # its **kwargs reach fsspec's base alone
            check_options(shown, options, [*named, *_FSSPEC_BASE_OPTIONS])
        if "timeout" in parameters and "timeout" not in options:
            options = {**options, "timeout": self._stall}  # FTP's socket timeout, say
        self._source = (url, options)
        try:
            self.fs, self.root = self._connect()
        except _CONNECTION_ERRORS as exc:
            raise StorageUnavailableError(
                f"cannot connect to {shown}: the server is unreachable or does not answer "
                f"({type(exc).__name__}: {exc or 'connection closed'}); check the host and "
                "the network",
                url=shown,
            ) from None
        self.root = self.root.rstrip("/")
        # Async implementations are safe to call from several threads at once; a sync one
        # may hold one connection (FTP, SFTP) that overlapping calls would corrupt, and
        # that must be opened anew once it breaks.
        self._lock = None if self.fs.async_impl else threading.Lock()
        self._broken = False
        super().__init__(shown)

    def _connect(self) -> tuple[Any, str]:
        # url_to_fs passes what the URL holds (host, port, login) to the filesystem; this
        # store owns its instance, so replacing a broken one touches no one else's.
        url, options = self._source
        fs, root = url_to_fs(url, skip_instance_cache=True, **options)
        return fs, str(root)

    def _path(self, key: str) -> str:
        # Like the file store: the reserved suffix keeps keys "a" and "a/b" apart.
        return f"{self.root}/{key}{RESERVED_SUFFIX}" if self.root else key + RESERVED_SUFFIX

    def _call(self, method: str, *args: Any) -> Any:
        if self._lock is None:
            return getattr(self.fs, method)(*args)
        # A call abandoned on a server that stopped answering holds the connection until
        # its socket times out; the calls queued behind it give up after as long.
        if not self._lock.acquire(timeout=self._stall):
            raise TimeoutError(f"the connection stayed busy for {self._stall:g} s")
        try:
            if self._broken:  # reconnect, so a retried call can succeed once the server is back
                self.fs = self._connect()[0]
                self._broken = False
            try:
                return getattr(self.fs, method)(*args)
            except _CONNECTION_ERRORS:
                self._broken = True
                raise
        finally:
            self._lock.release()

    async def _run(self, action: str, key: str, method: str, *args: Any) -> Any:
        # fsspec's sync API works for every implementation (async ones run on fsspec's own
        # I/O thread). A generic backend may be remote, so the call runs in a worker thread
        # even for a sync caller: a timeout can then abandon it instead of waiting.
        import anyio.to_thread

        try:
            return await anyio.to_thread.run_sync(self._call, method, *args, abandon_on_cancel=True)
        except FileNotFoundError:
            raise
        except ResultStoreError:
            raise
        except _CONNECTION_ERRORS as exc:
            raise StorageUnavailableError(
                f"cannot {action} key {key!r} in {self.url}: the server is unreachable or hung "
                f"up ({type(exc).__name__}: {exc or 'connection closed'}); check the host and "
                "the network",
                key=key,
                url=self.url,
            ) from exc
        except Exception as exc:
            raise StorageError(
                f"cannot {action} key {key!r} in {self.url}: {type(exc).__name__}: {exc}",
                key=key,
                url=self.url,
            ) from exc

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str | None:
        if if_absent or if_version is not None:
            raise self.unsupported("conditional writes")
        path = self._path(key)
        folder, name = posixpath.split(path)
        tmp = posixpath.join(folder, f"{name}.{secrets.token_hex(8)}.tmp")
        await self._run("write", key, "makedirs", folder, True)
        await self._run("write", key, "pipe_file", tmp, payload.join())
        try:
            await self._run("write", key, "mv", tmp, path)
        except BaseException:
            await self._run("write", key, "rm_file", tmp)
            raise
        return None

    async def open(self, key: str, *, start: int = 0, end: int | None = None) -> Reader:
        """Bytes ``[start, end)`` of the record, fetched as one ranged ``cat_file``.

        A whole read says the value's size (the bytes' length). A range says it only
        when it comes back short, i.e. reached the end (``start`` plus what came back);
        otherwise ``size`` stays None rather than cost a second round trip (``info``).
        """
        start = max(0, start)
        if end is not None and end <= start:  # nothing to fetch: size and existence only
            found = await self.stat(key)
            reader = BytesReader(b"")
            reader.size = found.size
            return reader
        ranged = start > 0 or end is not None
        try:
            if ranged:
                data = await self._run("read", key, "cat_file", self._path(key), start, end)
            else:
                data = await self._run("read", key, "cat_file", self._path(key))
        except FileNotFoundError:
            if start == 0:
                raise self.not_found(key) from None
            # Some backends refuse a range that starts past the end (FTP's REST): if the
            # record is there, the range is just empty.
            return await self.open(key, start=start, end=start)
        reader = BytesReader(data)
        if ranged:
            reached_end = end is None or len(data) < end - start
            # An empty answer from past the end does not say where the end is.
            reader.size = start + len(data) if reached_end and (data or start == 0) else None
        return reader

    async def stat(self, key: str) -> Stat:
        """The record's size from ``info`` (a ``stat``, a HEAD), without its bytes."""
        try:
            info = await self._run("check", key, "info", self._path(key))
        except FileNotFoundError:
            raise self.not_found(key) from None
        if info.get("type") != "file":
            raise self.not_found(key)
        return Stat(int(info["size"]))

    async def exists(self, key: str) -> bool:
        # Not fsspec's isfile(): it answers False for any error, an unreachable server too.
        try:
            info = await self._run("check", key, "info", self._path(key))
        except FileNotFoundError:
            return False
        return bool(info.get("type") == "file")

    async def delete(self, key: str) -> bool:
        if not await self.exists(key):
            return False
        try:
            await self._run("delete", key, "rm_file", self._path(key))
        except FileNotFoundError:
            return False
        return True

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        try:
            found = await self._run("list", prefix or "*", "find", self.root or "/")
        except FileNotFoundError:
            return
        base = len(self.root) + 1 if self.root else 0
        for path in found:
            key = path[base : -len(RESERVED_SUFFIX)]
            if path.endswith(RESERVED_SUFFIX) and key.startswith(prefix):
                yield key
