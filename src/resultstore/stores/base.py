"""The store interface: the few async methods a backend implements.

A store moves opaque bytes under validated keys. It knows nothing of framing,
checksums, serializers, retries, caching or key rules: :class:`ResultStore`
does all of that once, above every store. A store's contract:

- ``write(key, payload)`` is atomic: readers see the old record or the new
  one, whole, never a part; concurrent writers of one key leave one of the
  written values, whole.
- ``open(key)`` returns a :class:`Reader`, or raises
  :class:`~resultstore.errors.ResultNotFoundError` when the key is absent.
- ``exists``, ``delete`` (``True`` if something was deleted) and ``list``
  (keys under a prefix, in any order).
- Backend failures are raised as :class:`~resultstore.errors.StorageError`
  (or :class:`~resultstore.errors.StorageUnavailableError` when retrying may
  help), with a one-line message naming the key or URL.

Keys reach a store already validated (see :mod:`resultstore.keys`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from resultstore.errors import ConfigurationError, ResultNotFoundError
from resultstore.serializers import Buffer
from states.concurrency import on_private_loop

__all__ = [
    "INTERFACE_VERSION",
    "BytesReader",
    "Payload",
    "Reader",
    "Store",
    "check_options",
    "run_blocking",
]

INTERFACE_VERSION = 1
"""The store interface version this release of `resultstore` speaks."""

T = TypeVar("T")

_INLINE_LIMIT = 1 << 20


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
    """

    __slots__ = ("buffers", "size")

    def __init__(self, buffers: Sequence[Buffer]) -> None:
        self.buffers = list(buffers)
        self.size = sum(memoryview(b).nbytes for b in self.buffers)

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

    Set ``size`` to the record's length in bytes when the backend knows it
    without extra cost (a file's ``fstat``, an HTTP ``Content-Length``): the
    lengths a record's header claims are then checked against it before any
    buffer is allocated. ``None`` (unknown) makes readers grow buffers only as
    bytes arrive, which costs an extra copy of large values.
    """

    size: int | None = None

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

    Takes one buffer or several (read back to back), and never copies them up front.
    """

    def __init__(self, data: Buffer | Sequence[Buffer]) -> None:
        parts = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
        self._views = [memoryview(part).cast("B") for part in parts]
        self.size = sum(len(view) for view in self._views)
        self._index = 0
        self._pos = 0

    async def read(self, n: int = -1) -> bytes:
        if len(self._views) == 1:  # the common case: one buffer, one copy
            view = self._views[0]
            end = len(view) if n < 0 else min(self._pos + n, len(view))
            chunk = bytes(view[self._pos : end])
            self._pos = end
            return chunk
        size = sum(len(v) for v in self._views) if n < 0 else n
        buffer = bytearray(size)
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


class Store(ABC):
    """Base class of every store; subclasses are registered by URL scheme.

    Register a store under the entry-point group ``resultstore.stores`` with
    the URL scheme as its name, and set ``interface_version`` to the
    :data:`INTERFACE_VERSION` it was written for. ``url`` is the store's location without
    credentials; it is what a persisted result records.
    """

    interface_version: ClassVar[int]
    """The store interface version the class implements; each store declares it."""

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url

    @abstractmethod
    async def write(self, key: str, payload: Payload) -> None:
        """Store ``payload`` under ``key``, atomically replacing any old record."""

    @abstractmethod
    async def open(self, key: str) -> Reader:
        """Open the record under ``key``; raise ResultNotFoundError if absent."""

    @abstractmethod
    async def exists(self, key: str) -> bool:
        """True when a record exists under ``key``."""

    @abstractmethod
    async def delete(self, key: str) -> bool:
        """Delete the record under ``key``; True if there was one."""

    @abstractmethod
    def list(self, prefix: str = "") -> AsyncIterator[str]:
        """Yield every key that starts with ``prefix``, in any order."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections or handles held by the store."""

    async def clean_abandoned(self, older_than: float, *, dry_run: bool = False) -> tuple[int, int]:
        """Remove what writers killed mid-write left behind, untouched for ``older_than`` s.

        Returns (items, bytes) removed, or that would be with ``dry_run``. Optional:
        stores whose interrupted writes leave nothing behind keep this default.
        """
        return 0, 0

    def not_found(self, key: str) -> ResultNotFoundError:
        """The error ``open`` raises for an absent key, worded the same by every store."""
        return ResultNotFoundError(
            f"no result under key {key!r} in {self.url}", key=key, url=self.url
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
