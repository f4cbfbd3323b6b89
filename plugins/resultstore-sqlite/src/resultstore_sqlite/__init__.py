"""``sqlite:///PATH``: resultstore records in one SQLite database file.

Records live in the table ``resultstore_records (key TEXT PRIMARY KEY, value BLOB)`` of the
database at ``PATH``, which is created (with its folder) on the first write. The database runs
in WAL mode, so readers never block writers, and every connection waits up to ``timeout``
seconds for the write lock, so any number of threads and processes may write at once.

- A write is one transaction (``INSERT OR REPLACE``): readers see the old value or the new
  one, whole.
- A read of a small value fetches it in one query. A large value is streamed from SQLite's
  blob I/O (Python 3.11+) inside a read transaction, so the reader keeps seeing the value as
  it was when opened even while another process replaces it, and reading a record's header
  (``ResultStore.read_metadata``, ``ResultStore.list``) reads no more than the header.
- Connections are pooled per store and never shared across ``fork``.

URLs::

    sqlite:///abs/path/results.db   absolute path
    sqlite://results.db             relative to the working directory (made absolute)
    sqlite://~/results.db           in the home folder

Storage options: ``timeout`` (seconds to wait for a lock, default 30) and ``fsync``
(``True``: ``PRAGMA synchronous=FULL``, every commit is on disk before a write returns;
``False``: ``NORMAL``, which survives a crash of the process but maybe not of the machine).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

from resultstore.errors import ConfigurationError, StorageError, StorageUnavailableError
from resultstore.serializers import Buffer
from resultstore.stores.base import BytesReader, Payload, RangeReader, Reader, Store, run_blocking

__all__ = ["TABLE", "SQLiteStore"]
__version__ = "0.1.0"

T = TypeVar("T")

TABLE = "resultstore_records"
"""The table holding the records, in a database that may hold other tables too."""

_SMALL_VALUE = 256 * 1024
"""Values up to this size are fetched whole in the query that finds them."""
_BLOB_WRITE_MIN = 1 << 20
"""Payloads of several buffers from this size are written through blob I/O, not joined."""
_LIST_BATCH = 1000
_MAX_IDLE = 8

_SETUP = f"CREATE TABLE IF NOT EXISTS {TABLE} (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL)"
_UPSERT = f"INSERT OR REPLACE INTO {TABLE} (key, value) VALUES (?, ?)"
_UPSERT_ZEROBLOB = f"INSERT OR REPLACE INTO {TABLE} (key, value) VALUES (?, zeroblob(?))"
_FIND = (
    f"SELECT rowid, length(value), CASE WHEN length(value) <= ? THEN value END "
    f"FROM {TABLE} WHERE key = ?"
)
_VALUE = f"SELECT value FROM {TABLE} WHERE rowid = ?"
_EXISTS = f"SELECT 1 FROM {TABLE} WHERE key = ?"
_DELETE = f"DELETE FROM {TABLE} WHERE key = ?"
_LIST_FROM = f"SELECT key FROM {TABLE} WHERE key >= ? ORDER BY key LIMIT ?"
_LIST_AFTER = f"SELECT key FROM {TABLE} WHERE key > ? ORDER BY key LIMIT ?"

# Connections inherited through fork() must never be used or closed in the child (closing
# one could checkpoint or delete the parent's WAL); they are parked here instead.
_inherited: list[sqlite3.Connection] = []


class _Blob(Protocol):
    """The part of ``sqlite3.Blob`` (Python 3.11+) the reader uses."""

    def read(self, length: int = -1, /) -> bytes: ...

    def __len__(self) -> int: ...

    def close(self) -> None: ...


def _path_from_url(url: str) -> Path:
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        raise ConfigurationError(f"not an sqlite:// URL: {url!r}", url=url)
    if parts.query or parts.fragment:
        raise ConfigurationError(
            f"sqlite URL {url!r} takes no query or fragment; pass options as storage options "
            "and percent-encode '?' or '#' in the path",
            url=url,
        )
    raw = unquote(parts.netloc + parts.path)
    if not raw:
        raise ConfigurationError(
            f"sqlite URL {url!r} has no path; use sqlite:///absolute/path/results.db", url=url
        )
    if raw == ":memory:" or raw.startswith("file:"):
        raise ConfigurationError(
            f"sqlite URL {url!r} must name a database file; for results kept in memory use "
            "memory://NAME",
            url=url,
        )
    return Path(os.path.expanduser(raw)).resolve()


def _joined(buffers: list[Buffer]) -> Buffer:
    if len(buffers) == 1:
        return memoryview(buffers[0]).cast("B")
    return b"".join(buffers)


class _Pool:
    """Idle connections to one database file, shared by the threads of one process."""

    def __init__(self, path: Path, timeout: float, synchronous: str) -> None:
        self.path = path
        self.timeout = timeout
        self.synchronous = synchronous
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        self._ready = False

    def _connect(self, create: bool) -> sqlite3.Connection | None:
        if not create and not self._ready and not self.path.exists():
            return None
        if create and not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            if not self._ready:
                self._setup(conn)
                self._ready = True
        except BaseException:
            conn.close()
            raise
        return conn

    def _setup(self, conn: sqlite3.Connection) -> None:
        # Switching to WAL needs a moment without other connections mid-transaction; WAL is
        # then a property of the file, so this loop runs once per database, not per process.
        # If that moment does not come within `timeout`, carry on in the current mode: every
        # journal mode keeps writes atomic; WAL only lets readers and a writer overlap.
        deadline = time.monotonic() + self.timeout
        while True:
            with contextlib.suppress(sqlite3.OperationalError):
                (mode,) = conn.execute("PRAGMA journal_mode=WAL").fetchone()
                if str(mode).lower() == "wal":
                    break
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        conn.execute(_SETUP)

    def acquire(self, create: bool) -> sqlite3.Connection | None:
        """An idle connection or a new one; ``None`` if the database does not exist yet
        and ``create`` is false."""
        with self._lock:
            if self._pid != os.getpid():
                _inherited.extend(self._idle)
                self._idle, self._pid, self._ready = [], os.getpid(), False
            if self._idle:
                return self._idle.pop()
        return self._connect(create)

    def release(self, conn: sqlite3.Connection, healthy: bool = True) -> None:
        """Return ``conn`` for reuse, or close it if it may be in a bad state."""
        if healthy and conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            healthy = not conn.in_transaction
        with self._lock:
            if self._pid != os.getpid():
                _inherited.append(conn)
                return
            if healthy and len(self._idle) < _MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    @contextlib.contextmanager
    def connection(self, create: bool) -> Iterator[sqlite3.Connection | None]:
        """A connection for one operation, returned to the pool afterwards."""
        conn = self.acquire(create)
        if conn is None:
            yield None
            return
        try:
            yield conn
        except BaseException:
            self.release(conn, healthy=False)
            raise
        self.release(conn)

    def close(self) -> None:
        """Close every idle connection (connections lent to open readers close with them)."""
        with self._lock:
            idle, self._idle = self._idle, []
            if self._pid != os.getpid():
                _inherited.extend(idle)
                return
        for conn in idle:
            conn.close()


class _BlobReader(Reader):
    """Streams one value through blob I/O inside a read transaction that pins its version."""

    def __init__(
        self,
        store: SQLiteStore,
        key: str,
        conn: sqlite3.Connection,
        blob: _Blob,
    ) -> None:
        self._store = store
        self._key = key
        self._conn: sqlite3.Connection | None = conn
        self._blob = blob
        self.size = len(blob)  # header lengths are checked against it before allocating

    def _guarded(self, fn: Callable[[], T]) -> T:
        if self._conn is None:
            raise StorageError(
                f"cannot read key {self._key!r} in {self._store.url}: the reader is closed",
                key=self._key,
                url=self._store.url,
            )
        try:
            return fn()
        except (sqlite3.Error, OSError) as exc:
            raise self._store._translate(exc, f"read key {self._key!r}", self._key) from None

    def _read(self, n: int) -> bytes:
        return self._guarded(lambda: self._blob.read(n))

    def _readinto(self, buffer: memoryview) -> int:
        def fill() -> int:
            data = self._blob.read(len(buffer))
            buffer[: len(data)] = data
            return len(data)

        return self._guarded(fill)

    async def read(self, n: int = -1) -> bytes:
        return await run_blocking(self._read, n, nbytes=max(n, 0))

    async def readinto(self, buffer: memoryview) -> int:
        return await run_blocking(self._readinto, buffer, nbytes=len(buffer))

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        healthy = True
        try:
            self._blob.close()
            conn.execute("COMMIT")
        except sqlite3.Error:
            healthy = False
        self._store._pool.release(conn, healthy=healthy)


class SQLiteStore(Store):
    """Records in one SQLite database file, shared safely by threads and processes."""

    interface_version = 2

    def __init__(
        self, url: str, *, timeout: float = 30.0, fsync: bool = True, **options: Any
    ) -> None:
        self.path = _path_from_url(url)
        super().__init__("sqlite:" + self.path.as_uri()[len("file:") :])
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise ConfigurationError(
                f"sqlite option timeout must be a number of seconds >= 0, not {timeout!r}",
                url=self.url,
            )
        self.timeout = float(timeout)
        self.fsync = bool(fsync)
        self._pool = _Pool(self.path, self.timeout, "FULL" if self.fsync else "NORMAL")

    # -- errors --------------------------------------------------------------

    def _translate(self, exc: BaseException, what: str, key: str) -> StorageError:
        """A one-line resultstore error for a failed ``what`` (``"write key 'k'"``)."""
        where = f"cannot {what} in {self.url}"
        if isinstance(exc, OSError):
            detail = exc.strerror or type(exc).__name__
            return StorageError(
                f"{where}: {detail}; check that the database folder can be created and written",
                key=key,
                url=self.url,
            )
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        lowered = text.lower()
        if "locked" in lowered or "busy" in lowered:
            return StorageUnavailableError(
                f"{where}: {text} (waited {self.timeout:g} s for other writers); "
                "retry later or raise the `timeout` storage option",
                key=key,
                url=self.url,
            )
        hint = ""
        if "unable to open" in lowered:
            hint = "; check that the database folder exists and is writable"
        elif "not a database" in lowered or "malformed" in lowered:
            hint = "; the file is not a usable SQLite database: point the URL at another file"
        elif "too big" in lowered:
            hint = "; the value exceeds SQLite's size limit (1 GB by default)"
        elif "readonly" in lowered or "read-only" in lowered:
            hint = "; check the permissions of the database file and its folder"
        return StorageError(f"{where}: {text}{hint}", key=key, url=self.url)

    @contextlib.contextmanager
    def _errors(self, what: str, key: str) -> Iterator[None]:
        """Translate sqlite3 and OS errors raised inside into one-line StorageErrors."""
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            raise self._translate(exc, what, key) from None

    # -- the store interface ---------------------------------------------------

    def _write(self, key: str, buffers: list[Buffer], size: int) -> None:
        with self._errors(f"write key {key!r}", key), self._pool.connection(create=True) as conn:
            assert conn is not None
            if sys.version_info >= (3, 11) and len(buffers) > 1 and size >= _BLOB_WRITE_MIN:
                # Many large buffers (pickle protocol 5): write them in place, not joined.
                conn.execute("BEGIN IMMEDIATE")
                rowid = conn.execute(_UPSERT_ZEROBLOB, (key, size)).lastrowid
                assert rowid is not None
                with conn.blobopen(TABLE, "value", rowid) as blob:
                    for buffer in buffers:
                        blob.write(memoryview(buffer).cast("B"))
                conn.execute("COMMIT")
            else:
                conn.execute(_UPSERT, (key, _joined(buffers)))

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str | None:
        """Store ``payload`` under ``key`` in one transaction, replacing any old value."""
        if if_absent or if_version is not None:
            raise self.unsupported("conditional writes")
        await run_blocking(
            self._write, key, payload.buffers, payload.size, nbytes=payload.size, may_wait=True
        )
        return None

    def _find(self, conn: sqlite3.Connection, key: str) -> Reader | None:
        conn.execute("BEGIN")
        row = conn.execute(_FIND, (_SMALL_VALUE, key)).fetchone()
        if row is None:
            return None
        rowid, _size, value = row
        if value is None:
            if sys.version_info >= (3, 11):
                blob = conn.blobopen(TABLE, "value", rowid, readonly=True)
                return _BlobReader(self, key, conn, blob)
            (value,) = conn.execute(_VALUE, (rowid,)).fetchone()
        return BytesReader(value)

    def _open(self, key: str) -> Reader | None:
        with self._errors(f"read key {key!r}", key):
            conn = self._pool.acquire(create=False)
            if conn is None:
                return None
            try:
                reader = self._find(conn, key)
            except BaseException:
                self._pool.release(conn, healthy=False)
                raise
            if not isinstance(reader, _BlobReader):  # else the reader owns the connection
                self._pool.release(conn)
            return reader

    async def open(self, key: str, *, start: int = 0, end: int | None = None) -> Reader:
        reader = await self._open_whole(key)
        return reader if start == 0 and end is None else RangeReader(reader, start, end)

    async def _open_whole(self, key: str) -> Reader:
        """A reader over the value under ``key``; ``ResultNotFoundError`` if there is none."""
        reader = await run_blocking(self._open, key)
        if reader is None:
            raise self.not_found(key)
        return reader

    def _exists(self, key: str) -> bool:
        with self._errors(f"check key {key!r}", key), self._pool.connection(False) as conn:
            return conn is not None and conn.execute(_EXISTS, (key,)).fetchone() is not None

    async def exists(self, key: str) -> bool:
        """True when a value is stored under exactly ``key``."""
        return await run_blocking(self._exists, key)

    def _delete(self, key: str) -> bool:
        with self._errors(f"delete key {key!r}", key), self._pool.connection(False) as conn:
            return conn is not None and conn.execute(_DELETE, (key,)).rowcount > 0

    async def delete(self, key: str) -> bool:
        """Delete the value under ``key``; True if there was one."""
        return await run_blocking(self._delete, key, may_wait=True)

    def _list_batch(self, prefix: str, after: str | None) -> tuple[list[str], bool]:
        """The next keys under ``prefix`` (past ``after``) in order, and whether that was all."""
        what = f"list keys under {prefix!r}"
        with self._errors(what, prefix), self._pool.connection(create=False) as conn:
            if conn is None:
                return [], True
            if after is None:
                rows = conn.execute(_LIST_FROM, (prefix, _LIST_BATCH)).fetchall()
            else:
                rows = conn.execute(_LIST_AFTER, (after, _LIST_BATCH)).fetchall()
        # Keys sort as UTF-8 bytes, i.e. by code point, so the keys starting with ``prefix``
        # are one run beginning at ``prefix``: stop at the first key past it.
        keys = [key for (key,) in rows]
        for i, key in enumerate(keys):
            if not key.startswith(prefix):
                return keys[:i], True
        return keys, len(keys) < _LIST_BATCH

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        """Yield every key starting with ``prefix``, in key order, a batch per query."""
        after: str | None = None
        while True:
            keys, done = await run_blocking(self._list_batch, prefix, after)
            for key in keys:
                yield key
            if done or not keys:
                return
            after = keys[-1]

    async def aclose(self) -> None:
        """Close the idle connections; the store reconnects on its next use."""
        self._pool.close()
