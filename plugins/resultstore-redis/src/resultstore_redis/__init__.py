"""``redis://HOST:PORT/DB?prefix=PREFIX``: resultstore records as Redis strings.

Key ``a/b`` is stored as the Redis string ``PREFIX + "a/b"`` (default prefix
``resultstore:``), written with one ``SET``, which Redis applies atomically: a reader gets the
old value or the new one, whole. ``list`` walks the keyspace with ``SCAN ... MATCH``, the
prefix escaped so that ``*``, ``?``, ``[``, ``]`` and ``\\`` in it match only themselves.

It talks to Redis through ``redis.asyncio``; connections belong to the event loop that
opened them, so the store keeps one client per running loop (the sync API of resultstore
runs a private loop per thread).

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

import asyncio
import functools
import os
import re
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, unquote, urlsplit

import redis.asyncio
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from resultstore.errors import ConfigurationError, StorageError, StorageUnavailableError
from resultstore.registry import redact_url
from resultstore.stores.base import BytesReader, Payload, RangeReader, Reader, Store

__all__ = ["DEFAULT_PREFIX", "RedisStore", "escape_glob"]
__version__ = "0.1.0"

T = TypeVar("T")

DEFAULT_PREFIX = "resultstore:"
"""What every key is prefixed with when the URL gives no ``prefix``."""

DEFAULT_PORT = 6379
USERNAME_VARIABLE = "RESULTSTORE_REDIS_USERNAME"
PASSWORD_VARIABLE = "RESULTSTORE_REDIS_PASSWORD"

_ScanPage = tuple[int, list[bytes | str]]
"""One ``SCAN`` reply: the next cursor and the names found."""

_GLOB_SPECIAL = re.compile(r"([\\*?\[\]])")
_UNAVAILABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    TimeoutError,
    asyncio.TimeoutError,
)
_BACKEND_ERRORS = (redis.exceptions.RedisError, OSError, asyncio.TimeoutError)


def escape_glob(text: str) -> str:
    """``text`` as a Redis glob pattern that matches exactly ``text``."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class RedisStore(Store):
    """Records stored as Redis strings under a key prefix, one client per event loop."""

    interface_version = 2

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
        url = f"{scheme}://{_url_host(host)}:{port}/{self.db}"
        if self.prefix != DEFAULT_PREFIX:
            url += f"?prefix={quote(self.prefix, safe='')}"
        super().__init__(url)

        if retries < 0 or scan_count < 1 or socket_timeout <= 0 or socket_connect_timeout <= 0:
            raise ConfigurationError(
                f"bad Redis storage options for {self.url}: retries must be >= 0, scan_count "
                ">= 1 and the timeouts > 0"
            )
        self.scan_count = scan_count
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
        self._retries = retries
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis] = (
            weakref.WeakKeyDictionary()
        )

    # -- clients -----------------------------------------------------------------

    def _client(self) -> redis.asyncio.Redis:
        """The client of the running event loop, created on first use."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            # Clients of loops that have since closed cannot be closed any more: drop them.
            for old in [old for old in self._clients if old.is_closed()]:
                del self._clients[old]
            try:
                client = redis.asyncio.Redis(
                    retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), self._retries),
                    **self._client_options,
                )
            except TypeError as exc:
                raise ConfigurationError(
                    f"bad Redis client_kwargs for {self.url}: {exc}", url=self.url
                ) from None
            self._clients[loop] = client
        return client

    def _name(self, key: str) -> bytes:
        return (self.prefix + key).encode("utf-8")

    # -- errors ------------------------------------------------------------------

    def _translate(self, exc: BaseException, what: str, key: str) -> StorageError:
        """A one-line resultstore error for a failed ``what`` (``"write key 'k'"``)."""
        where = f"cannot {what} in {self.url}"
        text = str(exc).splitlines()[0].strip() if str(exc).strip() else type(exc).__name__
        if isinstance(exc, redis.exceptions.AuthenticationError) or text.startswith(
            ("NOAUTH", "WRONGPASS")
        ):
            return StorageError(
                f"{where}: the Redis server refused the credentials ({type(exc).__name__}); "
                "check the username and password (storage options `username`/`password` or "
                f"{USERNAME_VARIABLE}/{PASSWORD_VARIABLE})",
                key=key,
                url=self.url,
            )
        if isinstance(exc, _UNAVAILABLE):  # BusyLoadingError (server starting) included
            return StorageUnavailableError(
                f"{where}: the Redis server is unreachable ({text}); check the host and port "
                "and that the server is running",
                key=key,
                url=self.url,
            )
        hint = ""
        if text.startswith("OOM"):
            hint = "; the server reached its maxmemory limit"
        elif text.startswith("READONLY"):
            hint = "; the URL points at a read-only replica: use the primary"
        return StorageError(f"{where}: {type(exc).__name__}: {text}{hint}", key=key, url=self.url)

    async def _run(
        self, what: str, key: str, command: Callable[[redis.asyncio.Redis], Awaitable[T]]
    ) -> T:
        try:
            return await command(self._client())
        except _BACKEND_ERRORS as exc:
            raise self._translate(exc, what, key) from None

    # -- the store interface -------------------------------------------------------

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str | None:
        """Store ``payload`` under ``key`` with one ``SET`` (atomic in Redis)."""
        if if_absent or if_version is not None:
            raise self.unsupported("conditional writes")
        name, value = self._name(key), payload.join()
        await self._run(f"write key {key!r}", key, lambda client: client.set(name, value))
        return None

    async def open(self, key: str, *, start: int = 0, end: int | None = None) -> Reader:
        reader = await self._open_whole(key)
        return reader if start == 0 and end is None else RangeReader(reader, start, end)

    async def _open_whole(self, key: str) -> Reader:
        """The value under ``key``, fetched whole by one ``GET``."""
        name = self._name(key)
        value = await self._run(f"read key {key!r}", key, lambda client: client.get(name))
        if value is None:
            raise self.not_found(key)
        return BytesReader(value.encode() if isinstance(value, str) else value)

    async def exists(self, key: str) -> bool:
        """True when a value is stored under exactly ``key``."""
        name = self._name(key)
        found = await self._run(f"check key {key!r}", key, lambda client: client.exists(name))
        return bool(found)

    async def delete(self, key: str) -> bool:
        """Delete the value under ``key`` (``UNLINK``: freed in the background); True if any."""
        name = self._name(key)
        removed = await self._run(f"delete key {key!r}", key, lambda client: client.unlink(name))
        return bool(removed)

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        """Yield every key starting with ``prefix`` once, in no particular order.

        ``SCAN`` may return a key twice while the keyspace is rehashed, so keys already
        yielded are remembered for the duration of the listing.
        """
        start = self._name(prefix)
        pattern = escape_glob(self.prefix + prefix).encode("utf-8") + b"*"
        skip = len(self.prefix.encode("utf-8"))
        what = f"list keys under {prefix!r}"
        seen: set[bytes] = set()
        cursor = 0
        while True:
            page = functools.partial(self._scan, cursor=cursor, pattern=pattern)
            cursor, names = await self._run(what, prefix, page)
            for found in names:
                name = found.encode("utf-8") if isinstance(found, str) else found
                if name in seen or not name.startswith(start):
                    continue
                seen.add(name)
                try:
                    key = name[skip:].decode("utf-8")
                except UnicodeDecodeError:  # not written by resultstore: not a key of ours
                    continue
                yield key
            if cursor == 0:
                return

    def _scan(
        self, client: redis.asyncio.Redis, *, cursor: int, pattern: bytes
    ) -> Awaitable[_ScanPage]:
        return client.scan(cursor, match=pattern, count=self.scan_count)

    async def aclose(self) -> None:
        """Close the running loop's client; the store reconnects on its next use."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        client = self._clients.pop(loop, None)
        if client is not None:
            await client.aclose()
