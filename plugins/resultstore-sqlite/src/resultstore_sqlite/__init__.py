"""``sqlite:///PATH``: resultstore records in one SQLite database file.

Records live in the table ``resultstore_records (key TEXT PRIMARY KEY, value BLOB, version
TEXT)`` of the database at ``PATH``, which is created (with its folder) on the first write. The
database runs in WAL mode, so readers never block writers, and every connection waits up to
``timeout`` seconds for the write lock, so any number of threads and processes may write at once.

- A write is one transaction (``INSERT OR REPLACE``): readers see the old value or the new
  one, whole. Every write stores a new random version (32 hex digits) and returns it.
- Conditional writes (store interface 2) are single statements, atomic in SQLite: create-only
  is a plain ``INSERT`` (the primary key refuses a second one), compare-and-swap is
  ``UPDATE ... WHERE key = ? AND version = ?``.
- Ranged reads fetch only the range: ``substr(value, ...)`` in the query that finds a small
  value, blob I/O from the offset for a large one. A large range is streamed from SQLite's
  blob I/O (Python 3.11+) inside a read transaction, so the reader keeps seeing the value as
  it was when opened even while another process replaces it. ``stat`` reads ``length(value)``
  and the version, never the value.
- ``stat``, reads and compares take versions from an index on ``(key, version)``: the column
  comes after the value in each row, where reading it would walk a large value's pages.
- A database made by version 0.1 of this plugin (no ``version`` column) is migrated on first
  use: ``ALTER TABLE ... ADD COLUMN version ... DEFAULT '0'`` (no row is rewritten) and the
  index, so its records report version ``'0'`` until their next write. A trigger gives a
  fresh version to rows that writers still running 0.1 insert, so ``'0'`` never comes back
  once replaced.
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
import enum
import errno
import os
import secrets
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

from resultstore.errors import (
    AccessDeniedError,
    ConfigurationError,
    StorageError,
    StorageUnavailableError,
    store_error,
)
from resultstore.serializers import Buffer
from resultstore.stores.base import (
    BytesReader,
    Payload,
    Reader,
    Stat,
    Store,
    check_options,
    run_blocking,
)

__all__ = ["LEGACY_VERSION", "OPTIONS", "TABLE", "SQLiteStore"]
__version__ = "0.2.0"

T = TypeVar("T")

TABLE = "resultstore_records"
"""The table holding the records, in a database that may hold other tables too."""

_SMALL_VALUE = 256 * 1024
"""Values up to this size are fetched whole in the query that finds them."""
_BLOB_WRITE_MIN = 1 << 20
"""Payloads of several buffers from this size are written through blob I/O, not joined."""
_LIST_BATCH = 1000
_MAX_IDLE = 8

OPTIONS = ("timeout", "fsync")
"""The storage options the store takes; any other is refused when the store is made."""

LEGACY_VERSION = "0"
"""The version of a record written before the table had versions (plugin 0.1)."""

_TRIGGER = f"{TABLE}_new_version"
_INDEX = f"{TABLE}_key_version"
_VERSION_COLUMN = f"version TEXT NOT NULL DEFAULT '{LEGACY_VERSION}'"
_CREATE = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} "
    f"(key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL, {_VERSION_COLUMN})"
)
_MIGRATE = f"ALTER TABLE {TABLE} ADD COLUMN {_VERSION_COLUMN}"
# Writers still running plugin 0.1 insert rows without a version: give each a fresh one, so
# LEGACY_VERSION only ever names a row untouched since the migration.
_CREATE_TRIGGER = (
    f"CREATE TRIGGER IF NOT EXISTS {_TRIGGER} AFTER INSERT ON {TABLE} "
    f"WHEN NEW.version = '{LEGACY_VERSION}' BEGIN "
    f"UPDATE {TABLE} SET version = lower(hex(randomblob(16))) WHERE rowid = NEW.rowid; END"
)
# The version column comes after the value in every row (ADD COLUMN appends it), so reading
# it from the row walks a large value's overflow pages: reads and compares take it from this
# covering index instead, and touch the row only for length(value), in its header.
_CREATE_INDEX = f"CREATE INDEX IF NOT EXISTS {_INDEX} ON {TABLE} (key, version)"
_COLUMNS = f"SELECT name FROM pragma_table_info('{TABLE}')"
_SCHEMA_OBJECTS = (
    "SELECT count(*) FROM sqlite_master WHERE (type = 'trigger' AND name = ?) "
    "OR (type = 'index' AND name = ?)"
)
_BY_VERSION = f"(SELECT rowid FROM {TABLE} INDEXED BY {_INDEX} WHERE key = ? AND version = ?)"
_UPSERT = f"INSERT OR REPLACE INTO {TABLE} (key, value, version) VALUES (?, ?, ?)"
_UPSERT_ZEROBLOB = (
    f"INSERT OR REPLACE INTO {TABLE} (key, value, version) VALUES (?, zeroblob(?), ?)"
)
_INSERT = f"INSERT INTO {TABLE} (key, value, version) VALUES (?, ?, ?)"
_INSERT_ZEROBLOB = f"INSERT INTO {TABLE} (key, value, version) VALUES (?, zeroblob(?), ?)"
_SWAP = f"UPDATE {TABLE} SET value = ?, version = ? WHERE rowid = {_BY_VERSION}"
_SWAP_ZEROBLOB = f"UPDATE {TABLE} SET value = zeroblob(?), version = ? WHERE rowid = {_BY_VERSION}"
_ROWID = f"SELECT rowid FROM {TABLE} WHERE key = ?"
# The range [start, start + count) of a small value comes with the row; a large one is read
# afterwards from its rowid. count NULL: to the end. substr of an empty blob is NULL: coalesce.
_FIND = (
    f"SELECT r.rowid, length(r.value), v.version, CASE WHEN length(r.value) <= ? "
    f"THEN coalesce(substr(r.value, ? + 1, coalesce(?, length(r.value))), x'') END "
    f"FROM {TABLE} AS v INDEXED BY {_INDEX} JOIN {TABLE} AS r ON r.rowid = v.rowid "
    "WHERE v.key = ?"
)
_RANGE = f"SELECT coalesce(substr(value, ? + 1, ?), x'') FROM {TABLE} WHERE rowid = ?"
_STAT = (
    f"SELECT length(r.value), v.version FROM {TABLE} AS v INDEXED BY {_INDEX} "
    f"JOIN {TABLE} AS r ON r.rowid = v.rowid WHERE v.key = ?"
)
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

    def seek(self, offset: int, origin: int = 0, /) -> None: ...

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
        if not self._schema_current(conn):
            self._migrate(conn)

    @staticmethod
    def _schema_current(conn: sqlite3.Connection) -> bool:
        """Whether the table has its version column, index and trigger (reads only)."""
        if "version" not in {name for (name,) in conn.execute(_COLUMNS)}:
            return False
        (found,) = conn.execute(_SCHEMA_OBJECTS, (_TRIGGER, _INDEX)).fetchone()
        return int(found) == 2

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        """Create the table, or add the version column a table of plugin 0.1 lacks.

        Under the write lock, so processes migrating at once do it once: the first adds the
        column, the others find it there. ``ADD COLUMN`` with a constant default rewrites no
        row: records written before read as version ``LEGACY_VERSION``. Indexing keys and
        versions reads each row's first bytes, never its value's overflow pages.
        """
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_CREATE)
            if "version" not in {name for (name,) in conn.execute(_COLUMNS)}:
                conn.execute(_MIGRATE)
            conn.execute(_CREATE_INDEX)
            conn.execute(_CREATE_TRIGGER)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

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
    """Streams bytes ``[start, stop)`` of one value through blob I/O, inside a read
    transaction that pins the value as it was when opened."""

    def __init__(
        self,
        store: SQLiteStore,
        key: str,
        conn: sqlite3.Connection,
        blob: _Blob,
        *,
        start: int,
        stop: int,
        version: str | None,
    ) -> None:
        self._store = store
        self._key = key
        self._conn: sqlite3.Connection | None = conn
        self._blob = blob
        self.size = len(blob)  # the whole value's: header lengths are checked against it
        self.version = version
        self._left = max(0, stop - start)
        if start:
            blob.seek(start)

    def _guarded(self, fn: Callable[[], T]) -> T:
        if self._conn is None:
            raise store_error(
                StorageError, "read", self._key, self._store.url, "the reader is closed"
            )
        try:
            return fn()
        except (sqlite3.Error, OSError) as exc:
            raise self._store._translate(exc, "read", self._key) from None

    def _read(self, n: int) -> bytes:
        def take() -> bytes:
            data = self._blob.read(n)
            self._left -= len(data)
            return data

        return self._guarded(take)

    def _readinto(self, buffer: memoryview) -> int:
        def fill() -> int:
            data = self._blob.read(len(buffer))
            buffer[: len(data)] = data
            self._left -= len(data)
            return len(data)

        return self._guarded(fill)

    async def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        return await run_blocking(self._read, n, nbytes=n)

    async def readinto(self, buffer: memoryview) -> int:
        buffer = buffer[: self._left]
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


class _Refused(enum.Enum):
    """Why a conditional write stored nothing."""

    EXISTS = "exists"
    CONFLICT = "conflict"


def _new_version() -> str:
    """A version no other write will have: 128 random bits, as SQL's ``randomblob(16)``."""
    return secrets.token_hex(16)


def _unique_violation(exc: sqlite3.IntegrityError) -> bool:
    return "UNIQUE constraint failed" in str(exc)


class SQLiteStore(Store):
    """Records in one SQLite database file, shared safely by threads and processes."""

    interface_version = 2
    supports_ranged_read = True
    supports_conditional_write = True

    def __init__(
        self, url: str, *, timeout: float = 30.0, fsync: bool = True, **options: Any
    ) -> None:
        self.path = _path_from_url(url)
        super().__init__("sqlite:" + self.path.as_uri()[len("file:") :])
        check_options(self.url, options, OPTIONS)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise ConfigurationError(
                f"sqlite option timeout must be a number of seconds >= 0, not {timeout!r} "
                f"(for {self.url})",
                url=self.url,
            )
        if not isinstance(fsync, bool):
            raise ConfigurationError(
                f"sqlite option fsync must be True or False, not {fsync!r} (for {self.url})",
                url=self.url,
            )
        self.timeout = float(timeout)
        self.fsync = fsync
        self._pool = _Pool(self.path, self.timeout, "FULL" if self.fsync else "NORMAL")

    # -- errors --------------------------------------------------------------

    def _translate(self, exc: BaseException, action: str, key: str) -> StorageError:
        """A one-line resultstore error for a failed ``action`` (``"write"``) on ``key``."""
        if isinstance(exc, OSError):
            why = exc.strerror or type(exc).__name__
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                kind: type[StorageError] = AccessDeniedError
                hint = "check the permissions of the database folder"
            else:
                kind, hint = StorageError, "check that the database folder can be created"
            return store_error(kind, action, key, self.url, why, hint=hint)
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        lowered = text.lower()
        if "locked" in lowered or "busy" in lowered:
            return store_error(
                StorageUnavailableError,
                action,
                key,
                self.url,
                f"{text} (waited {self.timeout:g} s for other writers)",
                hint="retry later or raise the `timeout` storage option",
            )
        if "readonly" in lowered or "read-only" in lowered or "permission" in lowered:
            hint = "check the permissions of the database file and its folder"
            return store_error(AccessDeniedError, action, key, self.url, text, hint=hint)
        hint = ""
        if "unable to open" in lowered:
            hint = "check that the database folder exists and is writable"
        elif "not a database" in lowered or "malformed" in lowered:
            hint = "the file is not a usable SQLite database: point the URL at another file"
        elif "too big" in lowered:
            hint = "the value exceeds SQLite's size limit (1 GB by default)"
        return store_error(StorageError, action, key, self.url, text, hint=hint)

    @contextlib.contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        """Translate sqlite3 and OS errors raised inside into one-line StorageErrors."""
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            raise self._translate(exc, action, key) from None

    # -- writes ----------------------------------------------------------------

    def _write(
        self,
        key: str,
        buffers: list[Buffer],
        size: int,
        if_absent: bool,
        if_version: str | None,
    ) -> str | _Refused:
        """Store the value; its new version, or why a condition refused it."""
        version = _new_version()
        with self._errors("write", key), self._pool.connection(create=True) as conn:
            assert conn is not None
            if if_absent and if_version is not None:  # no record can meet both: store nothing
                present = conn.execute(_EXISTS, (key,)).fetchone() is not None
                return _Refused.EXISTS if present else _Refused.CONFLICT
            if sys.version_info >= (3, 11) and len(buffers) > 1 and size >= _BLOB_WRITE_MIN:
                # Many large buffers (pickle protocol 5): write them in place, not joined.
                conn.execute("BEGIN IMMEDIATE")  # the pool rolls back what is not committed
                rowid = self._place(conn, key, size, version, if_absent, if_version)
                if isinstance(rowid, _Refused):
                    return rowid
                with conn.blobopen(TABLE, "value", rowid) as blob:
                    for buffer in buffers:
                        blob.write(memoryview(buffer).cast("B"))
                conn.execute("COMMIT")
                return version
            value = _joined(buffers)
            if if_absent:
                try:
                    conn.execute(_INSERT, (key, value, version))
                except sqlite3.IntegrityError as exc:
                    if _unique_violation(exc):
                        return _Refused.EXISTS
                    raise
            elif if_version is not None:
                if conn.execute(_SWAP, (value, version, key, if_version)).rowcount == 0:
                    return _Refused.CONFLICT
            else:
                conn.execute(_UPSERT, (key, value, version))
        return version

    @staticmethod
    def _place(
        conn: sqlite3.Connection,
        key: str,
        size: int,
        version: str,
        if_absent: bool,
        if_version: str | None,
    ) -> int | _Refused:
        """Make room for a value of ``size`` zero bytes; the rowid to write it at."""
        if if_absent:
            try:
                rowid = conn.execute(_INSERT_ZEROBLOB, (key, size, version)).lastrowid
            except sqlite3.IntegrityError as exc:
                if _unique_violation(exc):
                    return _Refused.EXISTS
                raise
        elif if_version is not None:
            if conn.execute(_SWAP_ZEROBLOB, (size, version, key, if_version)).rowcount == 0:
                return _Refused.CONFLICT
            (rowid,) = conn.execute(_ROWID, (key,)).fetchone()
        else:
            rowid = conn.execute(_UPSERT_ZEROBLOB, (key, size, version)).lastrowid
        assert rowid is not None
        return int(rowid)

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str:
        """Store ``payload`` under ``key`` in one transaction; returns its new version.

        ``if_absent``: a plain ``INSERT``, refused by the primary key if a record is there.
        ``if_version``: ``UPDATE ... WHERE version = ?``, which changes no row if the record
        was replaced or deleted meanwhile. Both are atomic in SQLite.
        """
        outcome = await run_blocking(
            self._write,
            key,
            payload.buffers,
            payload.size,
            if_absent,
            if_version,
            nbytes=payload.size,
            may_wait=True,
        )
        if outcome is _Refused.EXISTS:
            raise self.exists_error(key)
        if outcome is _Refused.CONFLICT:
            raise self.conflict_error(key, str(if_version))
        assert isinstance(outcome, str)
        return outcome

    # -- reads -----------------------------------------------------------------

    def _find(
        self, conn: sqlite3.Connection, key: str, start: int, end: int | None
    ) -> Reader | None:
        conn.execute("BEGIN")  # one snapshot for the row and its blob
        count = None if end is None else max(0, end - start)
        row = conn.execute(_FIND, (_SMALL_VALUE, start, count, key)).fetchone()
        if row is None:
            return None
        rowid, size, version, data = row
        stop = size if end is None else max(0, min(end, size))
        start = min(start, stop)
        if data is None:  # a large value: read the range from its rowid
            if sys.version_info >= (3, 11):
                blob = conn.blobopen(TABLE, "value", rowid, readonly=True)
                if stop - start > _SMALL_VALUE:  # streams; owns the connection until closed
                    return _BlobReader(
                        self, key, conn, blob, start=start, stop=stop, version=version
                    )
                with contextlib.closing(blob):
                    blob.seek(start)
                    data = blob.read(stop - start)
            else:
                (data,) = conn.execute(_RANGE, (start, stop - start, rowid)).fetchone()
        reader = BytesReader(data, version=version)
        reader.size = size  # the whole value's, not the range's
        return reader

    def _open(self, key: str, start: int, end: int | None) -> Reader | None:
        with self._errors("read", key):
            conn = self._pool.acquire(create=False)
            if conn is None:
                return None
            try:
                reader = self._find(conn, key, start, end)
            except BaseException:
                self._pool.release(conn, healthy=False)
                raise
            if not isinstance(reader, _BlobReader):  # else the reader owns the connection
                self._pool.release(conn)
            return reader

    async def open(self, key: str, *, start: int = 0, end: int | None = None) -> Reader:
        """A reader over bytes ``[start, end)`` of the value, fetching only those.

        Ranges of small values come with the query that finds them (``substr``); large
        ones are read through blob I/O from ``start``. The reader's ``size`` is the whole
        value's length and its ``version`` the version opened.
        """
        start = max(start, 0)
        nbytes = 0 if end is None else max(0, end - start)
        reader = await run_blocking(self._open, key, start, end, nbytes=nbytes)
        if reader is None:
            raise self.not_found(key)
        return reader

    def _stat(self, key: str) -> Stat | None:
        with self._errors("stat", key), self._pool.connection(create=False) as conn:
            row = None if conn is None else conn.execute(_STAT, (key,)).fetchone()
        return None if row is None else Stat(int(row[0]), row[1])

    async def stat(self, key: str) -> Stat:
        """The value's size (``length(value)``, which reads no value) and version."""
        found = await run_blocking(self._stat, key)
        if found is None:
            raise self.not_found(key)
        return found

    def _exists(self, key: str) -> bool:
        with self._errors("check", key), self._pool.connection(False) as conn:
            return conn is not None and conn.execute(_EXISTS, (key,)).fetchone() is not None

    async def exists(self, key: str) -> bool:
        """True when a value is stored under exactly ``key``."""
        return await run_blocking(self._exists, key)

    def _delete(self, key: str) -> bool:
        with self._errors("delete", key), self._pool.connection(False) as conn:
            return conn is not None and conn.execute(_DELETE, (key,)).rowcount > 0

    async def delete(self, key: str) -> bool:
        """Delete the value under ``key``; True if there was one."""
        return await run_blocking(self._delete, key, may_wait=True)

    def _list_batch(self, prefix: str, after: str | None) -> tuple[list[str], bool]:
        """The next keys under ``prefix`` (past ``after``) in order, and whether that was all."""
        with self._errors("list", prefix), self._pool.connection(create=False) as conn:
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
