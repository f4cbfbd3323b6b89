"""Stores broken on purpose, each in one way a real plugin has been: the kit must fail them.

Two correct stores to depart from: :class:`DictStore` below (records in a dict, a complete
interface-2 store in fifty lines) and ``kvstore.KVStore`` (a network plugin). Every class
here changes one thing, and its docstring says what; ``test_kit_catches_broken_stores.py``
names the check that catches it.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import unquote_plus

import anyio
from kvstore import KVStore

from resultstore.errors import (
    ContainerMissingError,
    ResultNotFoundError,
    StorageError,
    StorageUnavailableError,
    store_error,
)
from resultstore.registry import redact_url
from resultstore.stores.base import (
    BytesReader,
    Listed,
    Payload,
    Reader,
    Stat,
    Store,
    run_blocking,
)

_versions = itertools.count(1)


class DictStore(Store):
    """A correct store: records in a dict, conditional writes atomic under a lock."""

    interface_version = 2
    supports_ranged_read = True
    supports_conditional_write = True
    missing_container_class: type[DictStore]
    """What the same store is when its container is missing (set below: ``_Absent``)."""

    def __init__(self, url: str = "dict://kit") -> None:
        super().__init__(redact_url(url))
        self.records: dict[str, tuple[bytes, str]] = {}
        self.lock = threading.Lock()

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str:
        data, version = payload.join(), str(next(_versions))
        with self.lock:
            current = self.records.get(key)
            if if_absent and current is not None:
                raise self.exists_error(key)
            if if_version is not None and (current is None or current[1] != if_version):
                raise self.conflict_error(key, if_version)
            self.records[key] = (data, version)
        return version

    def _get(self, key: str) -> tuple[bytes, str]:
        try:
            return self.records[key]
        except KeyError:
            raise self.not_found(key) from None

    async def open(self, key: str, *, start: int = 0, end: int | None = None) -> Reader:
        data, version = self._get(key)
        return BytesReader(data, start=start, end=end, version=version)

    async def stat(self, key: str) -> Stat:
        data, version = self._get(key)
        return Stat(len(data), version)

    async def exists(self, key: str) -> bool:
        return key in self.records

    async def delete(self, key: str) -> bool:
        with self.lock:
            return self.records.pop(key, None) is not None

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        with self.lock:
            keys = sorted(key for key in self.records if key.startswith(prefix))
        for key in keys:
            yield key


# -- writes that are not atomic --------------------------------------------------------


class DeletesThenWrites(DictStore):
    """Replaces a value in two statements, DELETE then INSERT: in between the key is missing."""

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str:
        if if_absent or if_version is not None:
            return await super().write(key, payload, if_absent=if_absent, if_version=if_version)
        await self.delete(key)
        await anyio.sleep(0)  # the round trip between the two statements
        return await super().write(key, payload)


class WritesInPlace(DictStore):
    """Writes the new value over the old one chunk by chunk (no temporary + rename)."""

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str:
        if if_absent or if_version is not None:
            return await super().write(key, payload, if_absent=if_absent, if_version=if_version)
        data = payload.join()
        version = await super().write(key, Payload([]))
        for start in range(0, len(data), 1 << 16):
            with self.lock:
                written, _ = self.records[key]
                self.records[key] = (written + data[start : start + (1 << 16)], version)
            await anyio.sleep(0)  # the next chunk's write call
        return version


class ChecksThenCreates(DictStore):
    """A create-only write that SELECTs, then INSERTs: two writers can both find no record."""

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str:
        if if_absent:
            if await self.exists(key):
                raise self.exists_error(key)
            await anyio.sleep(0)  # the round trip between the check and the write
            return await super().write(key, payload)
        return await super().write(key, payload, if_version=if_version)


class ChecksVersionThenWrites(DictStore):
    """A compare-and-swap that reads the version, then writes: concurrent swaps both succeed."""

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str:
        if if_version is not None:
            current = self.records.get(key)
            if current is None or current[1] != if_version:
                raise self.conflict_error(key, if_version)
            await anyio.sleep(0)  # the round trip between the check and the write
            return await super().write(key, payload)
        return await super().write(key, payload, if_absent=if_absent)


class KeepsOneVersion(DictStore):
    """Versions from a column nobody bumps: every write reports, and stores, version "1"."""

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str:
        with self.lock:
            current = self.records.get(key)
            if if_absent and current is not None:
                raise self.exists_error(key)
            if if_version is not None and (current is None or current[1] != if_version):
                raise self.conflict_error(key, if_version)
            self.records[key] = (payload.join(), "1")
        return "1"


class OverwritesDespiteConditions(DictStore):
    """Says it has no conditional writes, then ignores ``if_absent``/``if_version``: overwrites."""

    supports_conditional_write = False

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str:
        return await super().write(key, payload)


# -- wrong answers ------------------------------------------------------------------------


class SaysDeletedForMissingKeys(DictStore):
    """``delete`` answers whether the table holds rows, not whether the key did."""

    async def delete(self, key: str) -> bool:
        with self.lock:
            had_rows = bool(self.records)
            self.records.pop(key, None)
        return had_rows


class IgnoresRanges(DictStore):
    """Claims ranged reads, and returns the whole value whatever ``start`` and ``end`` say."""

    async def open(self, key: str, *, start: int = 0, end: int | None = None) -> Reader:
        data, version = self._get(key)
        return BytesReader(data, version=version)


class FetchesWholeThenSlices(DictStore):
    """Claims ranged reads, fetches the whole value for every range and slices it (the
    answers are right; the cost of a header read is that of the value)."""

    async def open(self, key: str, *, start: int = 0, end: int | None = None) -> Reader:
        data, version = self._get(key)
        fetched = bytes(bytearray(data))  # what a whole GET over the network allocates
        return BytesReader(fetched, start=start, end=end, version=version)


class MiscountsSizes(DictStore):
    """Records the size of a payload's first buffer as the value's size (``stat`` is wrong)."""

    def __init__(self, url: str = "dict://kit") -> None:
        super().__init__(url)
        self.sizes: dict[str, int] = {}

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str:
        version = await super().write(key, payload, if_absent=if_absent, if_version=if_version)
        self.sizes[key] = memoryview(payload.buffers[0]).nbytes if payload.buffers else 0
        return version

    async def stat(self, key: str) -> Stat:
        data, version = self._get(key)
        return Stat(self.sizes.get(key, len(data)), version)


class ListsPageBoundariesTwice(DictStore):
    """Lists in pages of 100 and resumes at the last key seen (``key >= last``), not after it."""

    page_size = 100

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        with self.lock:
            keys = sorted(key for key in self.records if key.startswith(prefix))
        start = 0
        while start < len(keys):
            page = keys[start : start + self.page_size]
            for key in page:
                yield key
            if len(page) < self.page_size:
                return
            start += self.page_size - 1


class SkipsKeysAtPageBoundaries(DictStore):
    """Lists in pages of 100 and skips one key between pages (an off-by-one cursor)."""

    page_size = 100

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        with self.lock:
            keys = sorted(key for key in self.records if key.startswith(prefix))
        for start in range(0, len(keys), self.page_size + 1):
            for key in keys[start : start + self.page_size]:
                yield key


class ListsVersionsAsMD5s(DictStore):
    """``list_details`` shows each record's version as its ``md5`` (an ETag that is not a
    content hash): ``copy_all`` would skip a changed record whose counter matched."""

    async def list_details(
        self, prefix: str = "", *, start_after: str | None = None
    ) -> AsyncIterator[list[Listed]]:
        with self.lock:
            found = sorted((k, v) for k, v in self.records.items() if k.startswith(prefix))
        page = [
            Listed(key, len(data), version.rjust(32, "0"))
            for key, (data, version) in found
            if start_after is None or key > start_after
        ]
        if page:
            yield page


class StatLetsKeyErrorEscape(DictStore):
    """``stat`` indexes the dict without translating: a missing key raises a raw KeyError."""

    async def stat(self, key: str) -> Stat:
        data, version = self.records[key]
        return Stat(len(data), version)


# -- network plugins: errors, secrets, processes -----------------------------------------


class LetsClientErrorsEscape(KVStore):
    """Calls its client without translating its exceptions: ConnectionRefusedError escapes."""

    async def _call(self, action: str, key: str, *request: Any, nbytes: int = 0) -> tuple[Any, ...]:
        reply = await run_blocking(self._request, *request, nbytes=nbytes, may_wait=True)
        if reply[0] == "error":
            raise store_error(StorageError, action, key, self.url, str(reply[1]))
        return reply


class ReportsUnreachableAsStorageError(KVStore):
    """Translates every client failure into a plain StorageError: unreachable is not retried."""

    def _fail(self, exc: BaseException, action: str, key: str) -> StorageError:
        return store_error(StorageError, action, key, self.url, f"{type(exc).__name__}: {exc}")


class ShowsPasswordInRepr(KVStore):
    """A repr made from the connection string it was given, password and all."""

    def __repr__(self) -> str:
        host, port = self._address
        return f"{type(self).__name__}('kv://:{self._password}@{host}:{port}/{self.namespace}')"


class ShowsPasswordInErrors(KVStore):
    """Clean ``url`` and repr, but errors name the connection string, password and all."""

    def _dsn(self) -> str:
        host, port = self._address
        return f"kv://:{self._password}@{host}:{port}/{self.namespace}"

    def not_found(self, key: str) -> ResultNotFoundError:
        return ResultNotFoundError(
            f"no result under key {key!r} at {self._dsn()}", key=key, url=self.url
        )


class SharesConnectionsAcrossFork(KVStore):
    """Keeps a connection per thread without checking ``os.getpid()``: after ``fork`` the
    child speaks on the parent's socket. (Simulated: a connection used from another process
    than the one that opened it fails, as a server does once two processes share a session.)
    """

    def _connection(self) -> Connection:
        held: tuple[int, Connection] | None = getattr(self._local, "held", None)
        if held is None or held[1].closed:
            return super()._connection()
        if held[0] != os.getpid():
            raise ConnectionResetError("connection reset: two processes spoke on one session")
        return held[1]


# -- listings ---------------------------------------------------------------------------


class ListsOnlyTheFirstPage(DictStore):
    """Pages its listing 1,000 keys at a time (S3's page) and never asks for the next page:
    a continuation token read but not sent back."""

    page_size = 1000

    async def list_pages(self, prefix: str = "") -> AsyncIterator[list[str]]:
        with self.lock:
            keys = sorted(key for key in self.records if key.startswith(prefix))
        if keys:
            yield keys[: self.page_size]

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        async for page in self.list_pages(prefix):
            for key in page:
                yield key


class RepeatsAPageOfDetails(DictStore):
    """``list`` is right; its own ``list_details`` pages of 100 resume at the last key of a
    page (``key >= last``) instead of after it, so every boundary key comes twice."""

    async def list_details(
        self, prefix: str = "", *, start_after: str | None = None
    ) -> AsyncIterator[list[Listed]]:
        with self.lock:
            found = sorted(
                (k, len(d))
                for k, (d, _) in self.records.items()
                if k.startswith(prefix) and (start_after is None or k > start_after)
            )
        start = 0
        while start < len(found):
            page = found[start : start + 100]
            yield [Listed(key, size) for key, size in page]
            if len(page) < 100:
                return
            start += 99


class ListsTemporaryNames(DictStore):
    """Writes to a temporary name, then renames it over the key (atomic for readers), but
    lists every name it holds: a write in flight shows as ``key.tmp-N``."""

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str:
        if if_absent or if_version is not None:
            return await super().write(key, payload, if_absent=if_absent, if_version=if_version)
        temporary = f"{key}.tmp-{next(_versions)}"
        version = await super().write(temporary, payload)
        await anyio.sleep(0)  # the rename is a second call
        with self.lock:
            self.records[key] = self.records.pop(temporary)
        return version


class LeavesItsProbeRecord(DictStore):
    """Before its first conditional write, checks that the backend honours conditions with a
    probe record, and leaves the probe behind, in every listing."""

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str:
        if (if_absent or if_version is not None) and "conditional-probe" not in self.records:
            await super().write("conditional-probe", Payload([b"probe"]), if_absent=True)
        return await super().write(key, payload, if_absent=if_absent, if_version=if_version)


# -- MD5s and keys ------------------------------------------------------------------------


class ListsStaleMD5s(DictStore):
    """Keeps each record's MD5 in a column set by the first INSERT only: an overwrite
    (``ON CONFLICT DO UPDATE SET data = ...``) leaves the old MD5 listed."""

    def __init__(self, url: str = "dict://kit") -> None:
        super().__init__(url)
        self.md5s: dict[str, str] = {}

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str:
        version = await super().write(key, payload, if_absent=if_absent, if_version=if_version)
        self.md5s.setdefault(key, hashlib.md5(payload.join()).hexdigest())
        return version

    def listed_md5(self, payload: Payload) -> str | None:
        return hashlib.md5(payload.join()).hexdigest()

    async def list_details(
        self, prefix: str = "", *, start_after: str | None = None
    ) -> AsyncIterator[list[Listed]]:
        with self.lock:
            found = sorted(
                (k, len(d)) for k, (d, _) in self.records.items() if k.startswith(prefix)
            )
        page = [
            Listed(key, size, self.md5s.get(key))
            for key, size in found
            if start_after is None or key > start_after
        ]
        if page:
            yield page


class PromisesTheMD5OfTheFirstBuffer(DictStore):
    """Lists true MD5s, but ``listed_md5`` hashes only the payload's first buffer: the expiry
    index then never matches the listing of a record (written in several buffers)."""

    def listed_md5(self, payload: Payload) -> str | None:
        return hashlib.md5(bytes(payload.buffers[0]) if payload.buffers else b"").hexdigest()

    async def list_details(
        self, prefix: str = "", *, start_after: str | None = None
    ) -> AsyncIterator[list[Listed]]:
        with self.lock:
            found = sorted((k, d) for k, (d, _) in self.records.items() if k.startswith(prefix))
        page = [
            Listed(key, len(data), hashlib.md5(data).hexdigest())
            for key, data in found
            if start_after is None or key > start_after
        ]
        if page:
            yield page


class _AliasesKeys(DictStore):
    """Addresses records by ``_name(key)``, and lists each under the spelling written first."""

    def __init__(self, url: str = "dict://kit") -> None:
        super().__init__(url)
        self.spelling: dict[str, str] = {}

    def _name(self, key: str) -> str:
        return key

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str:
        self.spelling.setdefault(self._name(key), key)
        return await super().write(
            self._name(key), payload, if_absent=if_absent, if_version=if_version
        )

    def _get(self, key: str) -> tuple[bytes, str]:
        try:
            return self.records[self._name(key)]
        except KeyError:
            raise self.not_found(key) from None

    async def exists(self, key: str) -> bool:
        return self._name(key) in self.records

    async def delete(self, key: str) -> bool:
        self.spelling.pop(self._name(key), None)
        return await super().delete(self._name(key))

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        with self.lock:
            names = sorted(self.records)
        for name in names:
            key = self.spelling.get(name, name)
            if key.startswith(prefix):
                yield key


class DecodesEscapesInKeys(_AliasesKeys):
    """Builds a URL path from the key without quoting it, and the server decodes ``%xx`` and
    ``+`` in it: ``x%20y``, ``x+y`` and ``x y`` are one record (listed as written first)."""

    def _name(self, key: str) -> str:
        return unquote_plus(key)


class FoldsCase(_AliasesKeys):
    """A backend whose key column compares case-insensitively (a MySQL ``_ci`` collation):
    ``Case`` and ``case`` are one row, listed under the spelling written first."""

    def _name(self, key: str) -> str:
        return key.casefold()


class SwapsAgainstAnyKeysVersion(DictStore):
    """A compare-and-swap ``UPDATE records SET ... WHERE version = ?`` that forgets
    ``AND key = ?``: the version of another key replaces that other key's value."""

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str:
        if if_version is None:
            return await super().write(key, payload, if_absent=if_absent)
        version = str(next(_versions))
        with self.lock:
            for name, (_, held) in self.records.items():
                if held == if_version:  # the row the UPDATE matched, whichever key it is
                    self.records[name] = (payload.join(), version)
                    return version
        raise self.conflict_error(key, if_version)


# -- readers, closing, declarations ---------------------------------------------------


class _ChunkedReader(BytesReader):
    """A reader returning what one network chunk holds, at most 64 KiB, for ``read(n)`` and
    ``readinto``; ``read()`` alone reads to the end."""

    async def read(self, n: int = -1) -> bytes:
        return await super().read(min(n, 65536) if n >= 0 else n)

    async def readinto(self, buffer: memoryview) -> int:
        return await super().readinto(buffer[:65536])


class ReturnsShortReads(DictStore):
    """``read(n)`` returns one chunk of the client's stream (``await stream.read(n)``), at
    most 64 KiB, not ``n`` bytes: the core takes the short read for the end of the record."""

    async def open(self, key: str, *, start: int = 0, end: int | None = None) -> Reader:
        data, version = self._get(key)
        return _ChunkedReader(data, start=start, end=end, version=version)


class _ReleasedTwice(BytesReader):
    """A reader that returns its connection to the pool on close, and again on a second close."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.released = False

    async def aclose(self) -> None:
        if self.released:
            raise RuntimeError("connection already released to the pool")
        self.released = True


class ClosesReadersOnlyOnce(DictStore):
    """A reader's ``aclose`` releases its connection, and a second ``aclose`` raises the pool's
    RuntimeError instead of doing nothing."""

    async def open(self, key: str, *, start: int = 0, end: int | None = None) -> Reader:
        data, version = self._get(key)
        return _ReleasedTwice(data, start=start, end=end, version=version)


class UnusableAfterAclose(DictStore):
    """``aclose`` closes the connection pool for good: every later call fails ("pool is
    closed") instead of reconnecting."""

    closed = False

    async def aclose(self) -> None:
        self.closed = True

    def _check_open(self, key: str) -> None:
        if self.closed:
            raise store_error(StorageError, "use", key, self.url, "the pool is closed")

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str:
        self._check_open(key)
        return await super().write(key, payload, if_absent=if_absent, if_version=if_version)

    def _get(self, key: str) -> tuple[bytes, str]:
        self._check_open(key)
        return super()._get(key)


class DeclaresNoInterfaceVersion(DictStore):
    """A plugin class that leaves ``interface_version`` unset (``None``, as the registry sees a
    missing one): its own tests construct it directly and pass; ``resolve_store`` refuses it."""

    interface_version = None  # type: ignore[assignment]


# -- containers and credentials ---------------------------------------------------------


class _Absent(DictStore):
    """A dict store whose container (bucket, database) does not exist: every call fails."""

    def _missing(self, key: str) -> StorageError:
        return store_error(
            ContainerMissingError, "use", key, self.url, "database 'kit' does not exist"
        )

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str:
        raise self._missing(key)

    def _get(self, key: str) -> tuple[bytes, str]:
        raise self._missing(key)

    async def exists(self, key: str) -> bool:
        raise self._missing(key)

    async def delete(self, key: str) -> bool:
        raise self._missing(key)

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        raise self._missing(prefix)
        yield prefix  # an async generator


class _AbsentLooksEmpty(_Absent):
    """A missing container seen as an empty one: keys not found, ``exists`` False, no keys."""

    def _get(self, key: str) -> tuple[bytes, str]:
        raise self.not_found(key)

    async def exists(self, key: str) -> bool:
        return False

    async def delete(self, key: str) -> bool:
        return False

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        for key in ():
            yield key


class SaysNotFoundForAMissingContainer(DictStore):
    """Reads of a store whose bucket or database does not exist answer "no result under key"
    (``relation does not exist`` taken for an empty table, ``NoSuchBucket`` for
    ``NoSuchKey``): a mistyped bucket looks like a store without the record."""

    missing_container_class: type[DictStore] = _AbsentLooksEmpty


class ReportsRefusedPasswordAsUnreachable(KVStore):
    """Translates a refused password like a failed connection: StorageUnavailableError, which
    the core retries until its timeout, saying "check the host and port"."""

    def _fail(self, exc: BaseException, action: str, key: str) -> StorageError:
        return store_error(
            StorageUnavailableError,
            action,
            key,
            self.url,
            f"the kv server is unreachable ({type(exc).__name__})",
            hint="check the host and port, and that the server runs",
        )


DictStore.missing_container_class = _Absent


# -- return values of the wrong type ----------------------------------------------------


class AnswersExistsWithText(DictStore):
    """``exists`` answers ``"yes"`` or ``""``: truthy and falsy, so ``if exists`` works, but
    ``exists(...) is True`` is never true and the core gets a str where it needs a bool."""

    async def exists(self, key: str) -> bool:
        return "yes" if key in self.records else ""  # type: ignore[return-value]


class ListsKeysAsBytes(DictStore):
    """``list`` yields each key as UTF-8 bytes (what the backend's client hands back)."""

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        async for key in super().list(prefix):
            yield key.encode()  # type: ignore[misc]


class StatsSizesAsFloats(DictStore):
    """``stat`` reports the size as a float (``3.0 == 3``, so a check by ``==`` passes)."""

    async def stat(self, key: str) -> Stat:
        data, version = self._get(key)
        return Stat(float(len(data)), version)  # type: ignore[arg-type]
