"""``memory://NAME``: a process-wide, named, in-memory store for tests and notebooks.

Every ``MemoryStore`` opened with the same name shares one dictionary, so a
result written through one ``ResultStore`` can be read through another in the
same process. Nothing survives the process. Conditional writes are atomic under
one lock per name; versions are a process-wide counter.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from resultstore.stores.base import BytesReader, Payload, Reader, Stat, Store

__all__ = ["MemoryStore"]

_spaces: dict[str, _Space] = {}
_spaces_lock = threading.Lock()
_versions = itertools.count(1)


class _Space:
    """The records of one name, and the lock that makes conditional writes atomic."""

    __slots__ = ("lock", "records")

    def __init__(self) -> None:
        self.records: dict[str, tuple[bytes, str]] = {}
        self.lock = threading.Lock()


class MemoryStore(Store):
    """Records kept in a dictionary shared by every store of the same name."""

    interface_version = 2
    supports_ranged_read = True
    supports_conditional_write = True

    def __init__(self, url: str = "memory://") -> None:
        from resultstore.registry import redact_url

        parts = urlsplit(redact_url(url))  # never keep credentials in the URL
        name = (parts.netloc + parts.path).strip("/") or "default"
        super().__init__(f"memory://{name}")
        self.name = name
        with _spaces_lock:
            self._space = _spaces.setdefault(name, _Space())
        self._records = self._space.records

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str:
        data, version = payload.join(), str(next(_versions))
        with self._space.lock:
            current = self._records.get(key)
            if if_absent and current is not None:
                raise self.exists_error(key)
            if if_version is not None and (current is None or current[1] != if_version):
                raise self.conflict_error(key, if_version)
            self._records[key] = (data, version)
        return version

    async def open(self, key: str, *, start: int = 0, end: int | None = None) -> Reader:
        try:
            data, version = self._records[key]
        except KeyError:
            raise self.not_found(key) from None
        return BytesReader(data, start=start, end=end, version=version)

    async def stat(self, key: str) -> Stat:
        try:
            data, version = self._records[key]
        except KeyError:
            raise self.not_found(key) from None
        return Stat(len(data), version)

    async def exists(self, key: str) -> bool:
        return key in self._records

    async def delete(self, key: str) -> bool:
        with self._space.lock:
            return self._records.pop(key, None) is not None

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        for key in list(self._records):
            if key.startswith(prefix):
                yield key

    def clear(self) -> None:
        """Forget every record of this store's name."""
        with self._space.lock:
            self._records.clear()
