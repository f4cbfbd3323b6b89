"""``redis://HOST:PORT/DB?prefix=PREFIX``: resultstore records as Redis strings.

Key ``a/b`` is stored as the Redis string ``PREFIX + "a/b"`` (default prefix
``resultstore:``). Its version lives in a companion string, ``"\\version:" + PREFIX + "a/b"``,
outside every prefix's key space: keys hold no backslash and prefixes start with none, so no
record's name starts with one, ``SCAN`` of the records never returns a version and no key can
collide with one. Every write sets both at once:
``MULTI``/``EXEC`` for a plain write, a Lua script for a conditional one; ``delete`` removes
both. ``list`` walks the keyspace with ``SCAN ... MATCH``, the prefix escaped so that ``*``,
``?``, ``[``, ``]`` and ``\\`` in it match only themselves.

Store interface 2, natively:

- every write stores a new random version (32 hex digits) and returns it;
- ``write(..., if_absent=True)`` is ``SET NX`` and ``write(..., if_version=v)`` a
  compare-and-swap, each in one script that sets the value and its version, atomic in
  Redis; a script resent after a lost reply finds its own version and reports success;
- ``open(key, start=, end=)`` fetches the range with ``GETRANGE``, ``stat`` uses ``STRLEN``,
  each in one pipeline that reads the version before and after (read commands only);
- a record written by plugin 0.1 (no companion) reads as version ``"0"`` and takes
  conditional writes against it.

It talks to Redis through ``redis.asyncio``; connections belong to the event loop that
opened them, so the store keeps one client per running loop in a
:class:`~resultstore.stores.base.LoopLocal` (the sync API of resultstore runs a private loop
per thread): each client's pool is closed when its loop shuts down, and all of them by
``aclose()``; a forked child opens its own.

URLs::

    redis://localhost                         db 0 on port 6379, prefix "resultstore:"
    redis://cache.internal:6380/2?prefix=etl: db 2, keys "etl:<key>"
    rediss://...                              the same over TLS

Credentials never appear in the store's URL, repr or errors. Give them as storage options
(``username``, ``password``), in the URL you open the store with
(``redis://user:secret@host``; they are removed from the URL the store records), or in the
environment (``RESULTSTORE_REDIS_USERNAME``, ``RESULTSTORE_REDIS_PASSWORD``), which is how a
process reading a persisted result gets them.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import os
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, unquote, urlsplit

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from resultstore.errors import (
    AccessDeniedError,
    ConfigurationError,
    StorageError,
    StorageUnavailableError,
    store_error,
)
from resultstore.registry import redact_url
from resultstore.stores.base import (
    BytesReader,
    LoopLocal,
    Payload,
    Reader,
    Stat,
    Store,
    check_options,
)

__all__ = [
    "DEFAULT_PREFIX",
    "LEGACY_VERSION",
    "OPTIONS",
    "VERSION_NAMESPACE",
    "RedisStore",
    "escape_glob",
]
__version__ = "0.2.0"

T = TypeVar("T")

DEFAULT_PREFIX = "resultstore:"
"""What every key is prefixed with when the URL gives no ``prefix``."""

DEFAULT_PORT = 6379
USERNAME_VARIABLE = "RESULTSTORE_REDIS_USERNAME"
PASSWORD_VARIABLE = "RESULTSTORE_REDIS_PASSWORD"

OPTIONS = (
    "username",
    "password",
    "socket_timeout",
    "socket_connect_timeout",
    "retries",
    "scan_count",
    "client_kwargs",
)
"""The storage options the store takes; any other is refused when the store is made."""

VERSION_NAMESPACE = b"\\version:"
"""The version of the record named ``N`` is the string ``VERSION_NAMESPACE + N``.

Keys hold no backslash and prefixes may not start with one, so no record's name starts with
a backslash: a version's name is never a record's, and a ``SCAN`` of the records under a
(non-empty) prefix never returns it. ACL key patterns can name it (``~\\version:PREFIX*``).
"""

LEGACY_VERSION = "0"
"""The version of a record without a companion version (written by plugin 0.1)."""

_ScanPage = tuple[int, list[bytes | str]]
"""One ``SCAN`` reply: the next cursor and the names found."""

_GLOB_SPECIAL = re.compile(r"([\\*?\[\]])")
_PIPELINE_ERROR = re.compile(r"Command # \d+ \(.*?\) of pipeline caused error: ")
_UNAVAILABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
    asyncio.TimeoutError,
)
_READ_ATTEMPTS = 10
"""Reads of a record whose version changed while they ran, before giving up (see ``_read``)."""
_BUSY = ("BUSY", "LOADING", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN")
_DENIED = ("NOAUTH", "WRONGPASS", "NOPERM")
_BACKEND_ERRORS = (redis.exceptions.RedisError, OSError, asyncio.TimeoutError)

# KEYS: the record, its version. ARGV: the value, its new version. 1 if written, else 0.
_CREATE = """
if redis.call('GET', KEYS[2]) == ARGV[2] then return 1 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  redis.call('SET', KEYS[2], ARGV[2])
  return 1
end
return 0
"""
# KEYS: the record, its version. ARGV: the value, its new version, the version expected,
# the version of a record without one. 1 if written, else 0.
_SWAP = """
local current = redis.call('GET', KEYS[2])
if current == ARGV[2] then return 1 end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if not current then current = ARGV[4] end
if current ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""
# The first line of each script's body (`if ... == ARGV[2]`) makes a resend safe: a script
# whose reply was lost (and that the client's retry sends again) finds its own new version
# and reports the write it made, instead of a false conflict.


def escape_glob(text: str) -> str:
    """``text`` as a Redis glob pattern that matches exactly ``text``."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _unwrap(text: str) -> str:
    """The message in ``"('WRONGTYPE ...',)"``, as redis-py words an error in a pipeline."""
    if text.startswith("(") and text.endswith(",)"):
        try:
            args = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
        if isinstance(args, tuple) and args and isinstance(args[0], str):
            return args[0]
    return text


def _new_version() -> str:
    """A version no other write will have: 128 random bits."""
    return secrets.token_hex(16)


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _as_version(value: bytes | str | None) -> str:
    if value is None:
        return LEGACY_VERSION
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value


class _Connection:
    """The client of one event loop, and the scripts registered on it."""

    __slots__ = ("client", "create", "swap")

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self.create = client.register_script(_CREATE)
        self.swap = client.register_script(_SWAP)


class RedisStore(Store):
    """Records stored as Redis strings under a key prefix, one client per event loop."""

    interface_version = 2
    supports_ranged_read = True
    supports_conditional_write = True

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        socket_timeout: float = 30.0,
        socket_connect_timeout: float = 5.0,
        retries: int = 2,
        scan_count: int = 1000,
        client_kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("redis", "rediss"):
            raise ConfigurationError(f"not a redis:// or rediss:// URL: {redact_url(url)!r}")
        try:
            host, port = parts.hostname or "localhost", parts.port or DEFAULT_PORT
        except ValueError:
            raise ConfigurationError(
                f"bad port in Redis URL {redact_url(url)!r}; use redis://HOST:PORT/DB"
            ) from None
        db_text = parts.path.strip("/") or "0"
        if not db_text.isdigit():
            raise ConfigurationError(
                f"bad database number {db_text!r} in Redis URL {redact_url(url)!r}; "
                "use redis://HOST:PORT/DB with DB a number such as 0"
            )
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - {"prefix"})
        if unknown or parts.fragment:
            raise ConfigurationError(
                f"Redis URL {redact_url(url)!r} takes only ?prefix=...; put the database "
                "number in the path (redis://HOST:PORT/DB) and other settings in storage options"
            )
        self.scheme, self.host, self.port, self.db = scheme, host, port, int(db_text)
        self.prefix = query["prefix"][-1] if "prefix" in query else DEFAULT_PREFIX
        if self.prefix.startswith("\\"):
            raise ConfigurationError(
                f"the prefix of Redis URL {redact_url(url)!r} starts with a backslash, which "
                "starts the names of the records' versions; choose another prefix"
            )
        url = f"{scheme}://{_url_host(host)}:{port}/{self.db}"
        if self.prefix != DEFAULT_PREFIX:
            url += f"?prefix={quote(self.prefix, safe='')}"
        super().__init__(url)
        check_options(self.url, options, OPTIONS)

        numbers = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_connect_timeout,
            "retries": retries,
            "scan_count": scan_count,
        }
        for name, number in numbers.items():
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise ConfigurationError(
                    f"Redis option {name} must be a number, not {number!r} (for {self.url})",
                    url=self.url,
                )
        if retries < 0 or scan_count < 1 or socket_timeout <= 0 or socket_connect_timeout <= 0:
            raise ConfigurationError(
                f"bad Redis storage options for {self.url}: retries must be >= 0, scan_count "
                ">= 1 and the timeouts > 0",
                url=self.url,
            )
        if client_kwargs is not None and not isinstance(client_kwargs, Mapping):
            raise ConfigurationError(
                f"Redis option client_kwargs must be a mapping, not {type(client_kwargs).__name__}"
                f" (for {self.url})",
                url=self.url,
            )
        self.scan_count = int(scan_count)
        self._client_options: dict[str, Any] = {
            "host": host,
            "port": port,
            "db": self.db,
            "username": username
            or (unquote(parts.username) if parts.username else None)
            or os.environ.get(USERNAME_VARIABLE)
            or None,
            "password": password
            or (unquote(parts.password) if parts.password else None)
            or os.environ.get(PASSWORD_VARIABLE)
            or None,
            "ssl": scheme == "rediss",
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_connect_timeout,
            **(client_kwargs or {}),
        }
        self._retries = int(retries)
        self._connections: LoopLocal[_Connection] = LoopLocal(self._open, _close)

    # -- clients -----------------------------------------------------------------

    async def _open(self) -> _Connection:
        """A new client for the running event loop (it connects on its first command)."""
        try:
            client = redis.asyncio.Redis(
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), self._retries),
                **self._client_options,
            )
        except TypeError as exc:
            raise ConfigurationError(
                f"bad Redis client_kwargs for {self.url}: {exc}", url=self.url
            ) from None
        return _Connection(client)

    def _name(self, key: str) -> bytes:
        return (self.prefix + key).encode("utf-8")

    @staticmethod
    def _version_name(name: bytes) -> bytes:
        return VERSION_NAMESPACE + name

    # -- errors ------------------------------------------------------------------

    def _translate(self, exc: BaseException, action: str, key: str) -> StorageError:
        """A one-line resultstore error for a failed ``action`` (``"write"``) on ``key``."""
        text = str(exc).strip().splitlines()[0].strip() if str(exc).strip() else ""
        if _PIPELINE_ERROR.match(text):  # "Command # 2 (GETRANGE ...) of pipeline ...: (...)"
            text = _unwrap(_PIPELINE_ERROR.sub("", text, count=1))
        text = text or type(exc).__name__
        if isinstance(exc, redis.exceptions.AuthenticationError) or text.startswith(
            ("NOAUTH", "WRONGPASS")
        ):
            return store_error(
                AccessDeniedError,
                action,
                key,
                self.url,
                f"the Redis server refused the credentials ({type(exc).__name__})",
                hint="check the username and password (storage options `username`/`password`"
                f" or {USERNAME_VARIABLE}/{PASSWORD_VARIABLE})",
            )
        if isinstance(exc, redis.exceptions.NoPermissionError) or text.startswith(_DENIED):
            records = escape_glob(self.prefix)
            return store_error(
                AccessDeniedError,
                action,
                key,
                self.url,
                f"the Redis user may not do this ({text})",
                hint="grant it the commands the store runs (GET, GETRANGE, STRLEN, EXISTS, "
                "SCAN to read; SET, UNLINK, MULTI, EXEC, EVALSHA, SCRIPT LOAD to write) on the "
                f"keys ~{records}* and ~{escape_glob(VERSION_NAMESPACE.decode())}{records}*",
            )
        if isinstance(exc, _UNAVAILABLE) or text.startswith(_BUSY):  # BusyLoadingError too
            return store_error(
                StorageUnavailableError,
                action,
                key,
                self.url,
                f"the Redis server is unreachable ({text})",
                hint="check the host and port and that the server is running",
            )
        hint = ""
        if text.startswith("OOM"):
            hint = "the server reached its maxmemory limit"
        elif text.startswith("READONLY"):
            hint = "the URL points at a read-only replica: use the primary"
        elif "unknown command" in text.lower():
            hint = "the server lacks a command the store needs (Lua scripts: EVALSHA)"
        why = f"{type(exc).__name__}: {text}"
        return store_error(StorageError, action, key, self.url, why, hint=hint)

    async def _run(
        self, action: str, key: str, command: Callable[[_Connection], Awaitable[T]]
    ) -> T:
        try:
            return await command(await self._connections.get())
        except _BACKEND_ERRORS as exc:
            raise self._translate(exc, action, key) from None

    # -- the store interface -------------------------------------------------------

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str:
        """Store ``payload`` under ``key`` with a new version, atomically; returns the version.

        A plain write is ``SET`` of the value and of its version in one ``MULTI``/``EXEC``;
        ``if_absent`` is ``SET NX`` and ``if_version`` a compare of the stored version, each
        with the two ``SET`` in one Lua script.
        """
        name, value, version = self._name(key), payload.join(), _new_version()
        version_name = self._version_name(name)
        keys = [name, version_name]
        if if_absent and if_version is not None:  # no record can meet both: store nothing
            present = await self.exists(key)
            raise self.exists_error(key) if present else self.conflict_error(key, if_version)
        if if_absent:

            async def create(c: _Connection) -> Any:
                return await c.create(keys=keys, args=[value, version])

            if not await self._run("write", key, create):
                raise self.exists_error(key)
        elif if_version is not None:
            args: list[bytes | str] = [value, version, if_version, LEGACY_VERSION]

            async def swap(c: _Connection) -> Any:
                return await c.swap(keys=keys, args=args)

            if not await self._run("write", key, swap):
                raise self.conflict_error(key, if_version)
        else:

            async def plain(c: _Connection) -> Any:
                async with c.client.pipeline(transaction=True) as pipe:
                    pipe.set(name, value)
                    pipe.set(version_name, version)
                    return await pipe.execute()

            await self._run("write", key, plain)
        return version

    async def _read(
        self, action: str, key: str, start: int = 0, end: int | None = None, *, data: bool
    ) -> tuple[int, str, bytes]:
        """The size, version and (with ``data``) bytes ``[start, end)`` of the value.

        One pipeline of read commands only (a user limited to ``+@read`` may run it):
        ``GET`` of the version, ``EXISTS``, ``STRLEN``, ``GETRANGE``, and ``GET`` of the
        version again. Every write replaces the version along with the value, atomically,
        so when both version reads agree, the size and the bytes belong to that version; a
        write landing in between makes the pipeline run again.
        """
        name = self._name(key)
        version_name = self._version_name(name)
        start = max(start, 0)
        ranged = data and (end is None or end > start)

        async def fetch(c: _Connection) -> list[Any]:
            async with c.client.pipeline(transaction=False) as pipe:
                pipe.get(version_name)
                pipe.exists(name)
                pipe.strlen(name)
                if ranged:  # GETRANGE's end is inclusive; -1 is the last byte
                    pipe.getrange(name, start, -1 if end is None else end - 1)
                pipe.get(version_name)
                return list(await pipe.execute())

        for _ in range(_READ_ATTEMPTS):
            before, found, size, *value, after = await self._run(action, key, fetch)
            if before != after:
                continue
            if not found:
                raise self.not_found(key)
            return int(size), _as_version(before), _as_bytes(value[0]) if value else b""
        raise store_error(
            StorageUnavailableError,
            action,
            key,
            self.url,
            f"the record was replaced during each of {_READ_ATTEMPTS} reads",
            hint="retry later",
        )

    async def open(self, key: str, *, start: int = 0, end: int | None = None) -> Reader:
        """Bytes ``[start, end)`` of the value, fetched with ``GETRANGE``, and its version.

        The reader's ``size`` is the whole value's length (``STRLEN``).
        """
        size, version, data = await self._read("read", key, start, end, data=True)
        reader = BytesReader(data, version=version)
        reader.size = size  # the whole value's, not the range's
        return reader

    async def stat(self, key: str) -> Stat:
        """The value's size (``STRLEN``) and version, without its bytes."""
        size, version, _ = await self._read("stat", key, data=False)
        return Stat(size, version)

    async def exists(self, key: str) -> bool:
        """True when a value is stored under exactly ``key``."""
        name = self._name(key)

        async def check(c: _Connection) -> Any:
            return await c.client.exists(name)

        return bool(await self._run("check", key, check))

    async def delete(self, key: str) -> bool:
        """Delete the value and its version (``UNLINK``: freed in the background).

        True if there was a value, whatever became of a version left without one.
        """
        name = self._name(key)

        async def remove(c: _Connection) -> list[Any]:
            async with c.client.pipeline(transaction=True) as pipe:
                pipe.unlink(name)
                pipe.unlink(self._version_name(name))
                return list(await pipe.execute())

        removed, _ = await self._run("delete", key, remove)
        return int(removed) > 0

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        """Yield every key starting with ``prefix`` once, in no particular order.

        ``SCAN`` may return a key twice while the keyspace is rehashed, so keys already
        yielded are remembered for the duration of the listing. Versions never match the
        pattern unless the store's prefix is empty; they are skipped then.
        """
        start = self._name(prefix)
        pattern = escape_glob(self.prefix + prefix).encode("utf-8") + b"*"
        skip = len(self.prefix.encode("utf-8"))
        seen: set[bytes] = set()
        cursor = 0
        while True:
            page = functools.partial(self._scan, cursor=cursor, pattern=pattern)
            cursor, names = await self._run("list", prefix, page)
            for found in names:
                name = _as_bytes(found)
                if (
                    name in seen
                    or not name.startswith(start)
                    or name[skip:].startswith(VERSION_NAMESPACE)
                ):
                    continue
                seen.add(name)
                try:
                    key = name[skip:].decode("utf-8")
                except UnicodeDecodeError:  # not written by resultstore: not a key of ours
                    continue
                yield key
            if cursor == 0:
                return

    def _scan(self, c: _Connection, *, cursor: int, pattern: bytes) -> Awaitable[_ScanPage]:
        return c.client.scan(cursor, match=pattern, count=self.scan_count)

    async def aclose(self) -> None:
        """Close the client of every event loop; the store reconnects on its next use."""
        await self._connections.aclose()


async def _close(connection: _Connection) -> None:
    """Close a client's connection pool, on the loop that opened it."""
    await connection.client.aclose()
