"""``memory://NAME``: a process-wide, named, in-memory store for tests and notebooks.

Every ``MemoryStore`` opened with the same name shares one dictionary, so a
result written through one ``ResultStore`` can be read through another in the
same process. Nothing survives the process.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from resultstore.stores.base import BytesReader, Payload, Reader, Store

__all__ = ["MemoryStore"]

_spaces: dict[str, dict[str, bytes]] = {}
_spaces_lock = threading.Lock()


class MemoryStore(Store):
    """Records kept in a dictionary shared by every store of the same name."""

    interface_version = 1

    def __init__(self, url: str = "memory://") -> None:
        from resultstore.registry import redact_url

        parts = urlsplit(redact_url(url))  # never keep credentials in the URL
        name = (parts.netloc + parts.path).strip("/") or "default"
        super().__init__(f"memory://{name}")
        self.name = name
        with _spaces_lock:
            self._records = _spaces.setdefault(name, {})

    async def write(self, key: str, payload: Payload) -> None:
        self._records[key] = payload.join()

    async def open(self, key: str) -> Reader:
        try:
            return BytesReader(self._records[key])
        except KeyError:
            raise self.not_found(key) from None

    async def exists(self, key: str) -> bool:
        return key in self._records

    async def delete(self, key: str) -> bool:
        return self._records.pop(key, None) is not None

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        for key in list(self._records):
            if key.startswith(prefix):
                yield key

    def clear(self) -> None:
        """Forget every record of this store's name."""
        self._records.clear()
