"""The store interface: the few async methods a backend implements (version 2).

A store moves opaque bytes under validated keys. It knows nothing of framing,
checksums, serializers, retries, caching or key rules: :class:`ResultStore`
does all of that once, above every store. A store's contract:

- ``write(key, payload, *, if_absent=False, if_version=None)`` is atomic:
  readers see the old record or the new one, whole, never a part; concurrent
  writers of one key leave one of the written values, whole. With
  ``if_absent`` it creates the key or raises
  :class:`~resultstore.errors.ResultExistsError`; with ``if_version`` it
  replaces the record only if its version is still that one, or raises
  :class:`~resultstore.errors.VersionConflictError`. Both are atomic on the
  backend (never check-then-write), offered by stores whose
  ``supports_conditional_write`` is true. It returns the new version, if the
  backend has versions.
- ``open(key, *, start=0, end=None)`` returns a :class:`Reader` over bytes
  ``[start, end)`` of the value, or raises
  :class:`~resultstore.errors.ResultNotFoundError`. ``supports_ranged_read``
  says the backend fetches only that range (header reads of large records
  then cost what small ones do).
- ``read_head(key)`` (optional, ``supports_read_head``): the copy of a record's
  header the store kept beside the value (``Payload.head``, written with it in the
  same request) where a cheap metadata request returns it (S3 user metadata, one
  HEAD), so a metadata read costs that request whatever the record's size.
- ``stat(key)`` is a cheap probe of size and version; ``exists``; ``delete``
  is idempotent (``True``/``False`` when the backend tells whether there was
  a record, ``None`` when it does not); ``list`` yields the keys under a
  prefix, in any order.
- Backend failures are raised as :class:`~resultstore.errors.StorageError`
  subclasses chosen by cause (unreachable, denied, container missing), worded
  by :func:`~resultstore.errors.store_error`.

Keys reach a store already validated (see :mod:`resultstore.keys`). Stores
written for interface version 1 keep loading: :func:`current_interface`
adapts them (no ranges or conditions, whole reads).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple, TypeVar

from resultstore._loops import LoopLocal, on_private_loop
from resultstore.errors import (
    ConfigurationError,
    ResultExistsError,
    ResultNotFoundError,
    UnsupportedOperationError,
    VersionConflictError,
)
from resultstore.serializers import Buffer

__all__ = [
    "INTERFACE_VERSION",
    "OLDEST_INTERFACE_VERSION",
    "BytesReader",
    "Head",
    "Listed",
    "LoopLocal",
    "Payload",
    "RangeReader",
    "Reader",
    "Stat",
    "Store",
    "check_options",
    "current_interface",
    "run_blocking",
]

INTERFACE_VERSION = 2
"""The store interface version this release of `resultstore` speaks."""

OLDEST_INTERFACE_VERSION = 1
"""The oldest store interface version still loaded (through an adapter)."""

T = TypeVar("T")

_INLINE_LIMIT = 1 << 20

LIST_PAGE = 1000
"""Keys per page of the default :meth:`Store.list_pages` (an S3 ListObjectsV2 page)."""

KeyPage = list[str]
"""A page of keys from :meth:`Store.list_pages` (``list`` is also a method's name there)."""


class Listed(NamedTuple):
    """One key of :meth:`Store.list_details`, with what the listing tells of its value.

    ``md5`` is the hex MD5 of the value's bytes, set only where the backend's listing
    shows it (an S3 ETag of an object written in one piece) and ``None`` otherwise:
    the core then skips reads it would otherwise need (an unchanged record in
    ``copy_all``, an expired one in ``delete_expired``), so it must never be set to
    anything but the MD5 of the bytes a read of the key would return.
    """

    key: str
    size: int | None = None
    md5: str | None = None


DetailPage = list[Listed]
"""A page of :meth:`Store.list_details`."""


async def run_blocking(
    fn: Callable[..., T], *args: Any, nbytes: int = 0, may_wait: bool = False
) -> T:
    """Run blocking ``fn(*args)`` without stalling other tasks on the event loop.

    Calls made through a sync wrapper run inline: their event loop serves no one
    else. Otherwise quick operations (under 1 MiB, and not ``may_wait``, i.e.
    never waiting on a lock or the network) run inline too, because a thread hop
    would cost more than it saves; the rest run in a worker thread.
    """
    if (nbytes < _INLINE_LIMIT and not may_wait) or on_private_loop():
        return fn(*args)
    import anyio.to_thread  # imported on first use: keeps `import resultstore` light

    return await anyio.to_thread.run_sync(fn, *args)


def check_options(url: str, options: Mapping[str, Any], valid: Iterable[str]) -> None:
    """Refuse storage options a store does not take, naming the ones it does.

    A misspelled option (``fsnyc=False``) silently ignored would leave the store
    doing what the user asked it not to; every store calls this (or lets its
    ``__init__`` signature refuse them) when it is made.
    """
    known = set(valid)
    unknown = sorted(set(options) - known)
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        choices = ", ".join(sorted(known)) or "none"
        raise ConfigurationError(
            f"unknown storage option{'s' if len(unknown) > 1 else ''} {names} for {url}; "
            f"valid options: {choices}",
            url=url,
        )


class Payload:
    """The bytes of one record, handed to :meth:`Store.write` as buffers.

    Iterate over it for the buffers in order (no copies), or call
    :meth:`join` when the backend needs a single ``bytes``.

    ``head``, when the core knows it, is the record's header: exactly the bytes
    the record starts with (its prefix and JSON header, a few hundred bytes). A
    store whose ``supports_read_head`` is true keeps a copy of it where a cheap
    metadata request returns it (:meth:`Store.read_head`); other stores ignore it.
    """

    __slots__ = ("buffers", "head", "size")

    def __init__(self, buffers: Sequence[Buffer], head: bytes | None = None) -> None:
        self.buffers = list(buffers)
        self.head = head
        # bytes (a record's header, most payloads) know their length; views are asked.
        self.size = sum(len(b) if type(b) is bytes else memoryview(b).nbytes for b in self.buffers)

    def __iter__(self) -> Any:
        return iter(self.buffers)

    def join(self) -> bytes:
        """All buffers as one ``bytes`` object (one copy)."""
        if len(self.buffers) == 1 and isinstance(self.buffers[0], bytes):
            return self.buffers[0]
        return b"".join(self.buffers)

    def __repr__(self) -> str:
        return f"Payload(<{self.size} bytes in {len(self.buffers)} buffers>)"


class Reader(ABC):
    """A record opened for reading, consumed front to back.

    ``read(n)`` returns exactly ``n`` bytes unless the record ends first
    (``n < 0`` reads to the end); ``readinto(buffer)`` fills ``buffer`` the
    same way and returns the count. Override ``readinto`` to read without an
    intermediate copy.

    Set ``size`` to the whole value's length in bytes (not the range opened)
    when the backend knows it without extra cost (a file's ``fstat``, an HTTP
    ``Content-Length`` or ``Content-Range``): the lengths a record's header
    claims are then checked against it before any buffer is allocated.
    ``None`` (unknown) makes readers grow buffers only as bytes arrive, which
    costs an extra copy of large values. Set ``version`` to the version of
    the value opened (an ETag, a generation) when the backend has versions.

    The caller closes a reader with ``aclose()`` (or ``async with``), once it
    has read what it needs, which may be less than the whole range.
    """

    size: int | None = None
    version: str | None = None

    @abstractmethod
    async def read(self, n: int = -1) -> bytes:
        """Read up to ``n`` bytes, fewer only at the end of the record."""

    async def readinto(self, buffer: memoryview) -> int:
        """Fill ``buffer``; returns the number of bytes read."""
        data = await self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release the underlying resources."""

    async def __aenter__(self) -> Reader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class BytesReader(Reader):
    """A :class:`Reader` over bytes already in memory, for backends that fetch whole values.

    Takes one buffer or several (read back to back), and never copies them up
    front; ``start`` and ``end`` select a range of the whole, as
    :meth:`Store.open` does, and ``size`` is the whole's length.
    """

    def __init__(
        self,
        data: Buffer | Sequence[Buffer],
        *,
        start: int = 0,
        end: int | None = None,
        version: str | None = None,
    ) -> None:
        parts = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
        views = [memoryview(part).cast("B") for part in parts]
        self.size = sum(len(view) for view in views)
        self.version = version
        self._views = _slice(views, start, self.size if end is None else min(end, self.size))
        self._index = 0
        self._pos = 0

    async def read(self, n: int = -1) -> bytes:
        if len(self._views) == 1 and self._index == 0:  # the common case: one copy
            view = self._views[0]
            end = len(view) if n < 0 else min(self._pos + n, len(view))
            chunk = bytes(view[self._pos : end])
            self._pos = end
            return chunk
        left = sum(len(v) for v in self._views[self._index :]) - self._pos
        buffer = bytearray(left if n < 0 else min(n, left))
        got = await self.readinto(memoryview(buffer))
        del buffer[got:]
        return bytes(buffer)

    async def readinto(self, buffer: memoryview) -> int:
        filled = 0
        while filled < len(buffer) and self._index < len(self._views):
            view = self._views[self._index]
            if self._pos == len(view):
                self._index += 1
                self._pos = 0
                continue
            take = min(len(buffer) - filled, len(view) - self._pos)
            buffer[filled : filled + take] = view[self._pos : self._pos + take]
            filled += take
            self._pos += take
        return filled


def _slice(views: list[memoryview], start: int, end: int) -> list[memoryview]:
    """The part ``[start, end)`` of the concatenation of ``views``, without copying."""
    if start <= 0 and end >= sum(len(v) for v in views):
        return views
    picked: list[memoryview] = []
    offset = 0
    for view in views:
        lo, hi = max(start - offset, 0), min(end - offset, len(view))
        if lo < hi:
            picked.append(view[lo:hi])
        offset += len(view)
    return picked


class Stat(NamedTuple):
    """What :meth:`Store.stat` tells about a value: its size and, if any, its version."""

    size: int
    version: str | None = None


class Head(NamedTuple):
    """What :meth:`Store.read_head` returns: the kept copy of a record's header.

    ``data`` is the copy as the backend holds it (untrusted: the core parses and
    verifies it as it does the object's own header, and reads the object instead
    when it does not verify); ``size`` and ``version`` are the whole value's, from
    the same request.
    """

    data: bytes
    size: int
    version: str | None = None


class Store(ABC):
    """Base class of every store; subclasses are registered by URL scheme.

    Register a store under the entry-point group ``resultstore.stores`` with
    the URL scheme as its name, and set ``interface_version`` to the
    :data:`INTERFACE_VERSION` it was written for. ``url`` is the store's location
    without credentials; it is what a persisted result records. The capability
    flags say what the backend does natively; the core and the conformance kit
    rely on them.
    """

    interface_version: ClassVar[int]
    """The store interface version the class implements; each store declares it."""

    supports_ranged_read: ClassVar[bool] = False
    """``open(key, start=, end=)`` fetches only that range from the backend."""

    supports_conditional_write: ClassVar[bool] = False
    """``write(..., if_absent=True)`` and ``write(..., if_version=v)`` are atomic on the backend."""

    supports_read_head: ClassVar[bool] = False
    """:meth:`read_head` returns the copy of ``Payload.head`` kept with the value."""

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url

    @abstractmethod
    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str | None:
        """Store ``payload`` under ``key`` atomically; returns the new version, if any.

        ``if_absent``: only if no value is stored (else ``self.exists_error(key)``).
        ``if_version``: only if the stored value has that version (else
        ``self.conflict_error(key, if_version)``). A store without conditional
        writes raises ``self.unsupported("conditional writes")`` for either.
        """

    @abstractmethod
    async def open(self, key: str, *, start: int = 0, end: int | None = None) -> Reader:
        """Open bytes ``[start, end)`` of the value under ``key`` (``end=None``: to its end).

        Raise ``self.not_found(key)`` if absent. A range past the end is cut short.
        """

    async def stat(self, key: str) -> Stat:
        """The value's size and version, without its bytes; ``self.not_found(key)`` if absent.

        The default opens an empty range; override it with the backend's cheap probe.
        """
        reader = await self.open(key, start=0, end=0)
        try:
            size = reader.size
            if size is None:  # the backend cannot tell: count the bytes
                await reader.aclose()
                reader = await self.open(key)
                size = len(await reader.read())
            return Stat(size, reader.version)
        finally:
            await reader.aclose()

    async def read_head(self, key: str) -> Head | None:
        """The copy of the record's header kept with the value, with its size and version.

        Optional, for stores whose ``supports_read_head`` is true: the copy of
        ``payload.head`` that :meth:`write` kept where one cheap request returns it
        with the value's size and version (S3 user metadata, read with one HEAD),
        so the core's metadata reads skip a ranged read of the value. The copy must
        be written atomically with the value, in the same request (never a second
        write a reader could see apart from it), and replaced or dropped by every
        write, so it is never a stale one. Return None when the value has no copy
        (written without ``head``, by another tool, or too large to keep); raise
        ``self.not_found(key)`` when there is no value. This default keeps none.
        """
        return None

    async def exists(self, key: str) -> bool:
        """True when a value is stored under exactly ``key``."""
        try:
            await self.stat(key)
        except ResultNotFoundError:
            return False
        return True

    @abstractmethod
    async def delete(self, key: str) -> bool | None:
        """Delete the value under ``key`` if there is one; never an error when there is none.

        Return True or False when the backend says whether it deleted something,
        None when it does not (S3); never an extra round trip to find out.
        """

    async def delete_many(self, keys: Sequence[str]) -> None:
        """Delete several keys; stores with a batch delete (S3 DeleteObjects) override it."""
        for key in keys:
            await self.delete(key)

    @abstractmethod
    def list(self, prefix: str = "") -> AsyncIterator[str]:
        """Yield every key that starts with ``prefix``, in any order."""

    async def list_pages(self, prefix: str = "") -> AsyncIterator[KeyPage]:
        """The keys of :meth:`list`, a page (a non-empty list) at a time.

        What the core lists through, so a listing of 100,000 keys costs per page,
        not per key. Optional: this default groups :meth:`list`; override it where
        the backend answers in pages (S3's ListObjectsV2, a folder's entries) and
        let ``list`` flatten it.
        """
        page: KeyPage = []
        async for key in self.list(prefix):
            page.append(key)
            if len(page) >= LIST_PAGE:
                yield page
                page = []
        if page:
            yield page

    async def list_details(
        self, prefix: str = "", *, start_after: str | None = None
    ) -> AsyncIterator[DetailPage]:
        """The keys under ``prefix`` (after ``start_after``, if given) with their details.

        Pages (non-empty lists) of :class:`Listed`. Optional: this default takes the
        keys of :meth:`list_pages`, with no size or MD5, which is always correct. A
        store whose listing shows sizes and content MD5s (S3's ListObjectsV2) overrides
        it; one whose listing comes in ascending order of the keys' UTF-8 bytes (S3's)
        should start after ``start_after`` natively, so a listing of a range costs
        what the range holds (the core stops reading once past the keys it wants).
        """
        async for page in self.list_pages(prefix):
            if start_after is not None:
                page = [key for key in page if key > start_after]
            if page:
                yield [Listed(key) for key in page]

    def listed_md5(self, payload: Payload) -> str | None:
        """The ``md5`` :meth:`list_details` will show for a value written as ``payload``.

        ``None`` (the default) when the listing will not show one. A store whose
        listing shows content MD5s returns the MD5 of the payload's bytes when it will
        write them in one piece (an S3 object written in parts has another ETag).
        The expiry index records it, so ``delete_expired`` can tell from a listing
        that an expired record is still the one indexed (:mod:`resultstore.expiry`).
        """
        return None

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections or handles held by the store."""

    async def clean_abandoned(self, older_than: float, *, dry_run: bool = False) -> tuple[int, int]:
        """Remove what writers killed mid-write left behind, untouched for ``older_than`` s.

        Returns (items, bytes) removed, or that would be with ``dry_run``. Optional:
        stores whose interrupted writes leave nothing behind keep this default.
        """
        return 0, 0

    def exists_error(self, key: str) -> ResultExistsError:
        """What a create-only write raises when the key already holds a value."""
        return ResultExistsError(
            f"cannot create key {key!r} in {self.url}: a record already exists there; "
            "read it, or write without if_absent to replace it",
            key=key,
            url=self.url,
        )

    def conflict_error(self, key: str, expected: str) -> VersionConflictError:
        """What a compare-and-swap write raises when the value is no longer ``expected``."""
        return VersionConflictError(
            f"cannot replace key {key!r} in {self.url}: it is no longer at version "
            f"{expected!r} (written or deleted meanwhile); read it again and retry",
            key=key,
            url=self.url,
        )

    def unsupported(self, what: str) -> UnsupportedOperationError:
        """What a store raises for an operation its backend cannot do atomically."""
        return UnsupportedOperationError(
            f"{self.url} does not support {what}; use a store that does "
            "(file, memory, s3, or a plugin whose supports_conditional_write is true)",
            url=self.url,
        )

    def not_found(self, key: str) -> ResultNotFoundError:
        """The error ``open`` raises for an absent key, worded the same by every store."""
        return ResultNotFoundError(
            f"no result under key {key!r} in {self.url}", key=key, url=self.url
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class _Version1(Store):
    """A store written for interface version 1, seen through version 2.

    Version 1 had ``write(key, payload)``, ``open(key)``, ``exists`` and
    ``delete -> bool``: ranges are read from the start and skipped, and
    conditional writes are refused (the old store cannot do them atomically).
    """

    interface_version = INTERFACE_VERSION

    def __init__(self, inner: Store) -> None:
        super().__init__(inner.url)
        self.inner = inner

    def unsupported(self, what: str) -> UnsupportedOperationError:
        return UnsupportedOperationError(
            f"{self.url} does not support {what}: its plugin implements store interface 1; "
            "upgrade the plugin",
            url=self.url,
        )

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str | None:
        if if_absent or if_version is not None:
            raise self.unsupported("conditional writes")
        await self.inner.write(key, payload)
        return None

    async def open(self, key: str, *, start: int = 0, end: int | None = None) -> Reader:
        reader = await self.inner.open(key)
        if start == 0 and end is None:
            return reader
        return RangeReader(reader, start, end)

    async def exists(self, key: str) -> bool:
        return await self.inner.exists(key)

    async def delete(self, key: str) -> bool | None:
        return await self.inner.delete(key)

    def list(self, prefix: str = "") -> AsyncIterator[str]:
        return self.inner.list(prefix)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def clean_abandoned(self, older_than: float, *, dry_run: bool = False) -> tuple[int, int]:
        return await self.inner.clean_abandoned(older_than, dry_run=dry_run)

    def __repr__(self) -> str:
        return repr(self.inner)


class RangeReader(Reader):
    """The bytes ``[start, end)`` of a reader that can only read from the start.

    For backends that cannot fetch a range: the bytes before ``start`` are read
    and dropped, and reading stops at ``end``. ``open(key, start=, end=)`` of such
    a store returns ``RangeReader(whole_reader, start, end)`` (and leaves
    ``supports_ranged_read`` false).
    """

    def __init__(self, inner: Reader, start: int, end: int | None) -> None:
        self._inner = inner
        self._skip = start
        self._left = None if end is None else max(0, end - start)
        self.size = inner.size
        self.version = inner.version

    async def _skip_ahead(self) -> None:
        while self._skip > 0:
            chunk = await self._inner.read(min(self._skip, 1 << 20))
            if not chunk:
                self._left = 0
            self._skip = 0 if not chunk else self._skip - len(chunk)

    async def read(self, n: int = -1) -> bytes:
        await self._skip_ahead()
        if self._left is not None:
            n = self._left if n < 0 else min(n, self._left)
        data = await self._inner.read(n)
        if self._left is not None:
            self._left -= len(data)
        return data

    async def aclose(self) -> None:
        await self._inner.aclose()


def current_interface(store: Store) -> Store:
    """``store`` as the current interface sees it: stores of version 1 are adapted."""
    if getattr(store, "interface_version", INTERFACE_VERSION) == 1 and not isinstance(
        store, _Version1
    ):
        return _Version1(store)
    return store
