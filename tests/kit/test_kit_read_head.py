"""The kit's check of ``read_head`` (``supports_read_head``): a correct store passes it, and
stores whose header copies can be stale or wrong fail it, saying why.

The check is run directly on each store (one check, no subprocess), next to the kit's
other catches in test_kit_catches_broken_stores.py.
"""

from __future__ import annotations

import pytest
from broken_stores import DictStore

from resultstore.stores.base import Head, Payload
from resultstore.testing import StoreConformance


class KeepsHeads(DictStore):
    """A correct store with header copies: kept with the value, under the same lock."""

    supports_read_head = True

    def __init__(self, url: str = "dict://kit-heads") -> None:
        super().__init__(url)
        self.heads: dict[str, bytes | None] = {}

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str:
        version = await super().write(key, payload, if_absent=if_absent, if_version=if_version)
        self.heads[key] = payload.head
        return version

    async def read_head(self, key: str) -> Head | None:
        data, version = self._get(key)
        head = self.heads.get(key)
        return None if head is None else Head(head, len(data), version)


class KeepsStaleHeads(KeepsHeads):
    """Keeps the copy of the last write that had one: a write without a header leaves it."""

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str:
        old = self.heads.get(key)
        version = await super().write(key, payload, if_absent=if_absent, if_version=if_version)
        if payload.head is None:
            self.heads[key] = old
        return version


class KeepsTheFirstHead(KeepsHeads):
    """Writes the copy only when the key is new (a second request it then skips)."""

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str:
        old = self.heads.get(key)
        version = await super().write(key, payload, if_absent=if_absent, if_version=if_version)
        if old is not None:
            self.heads[key] = old
        return version


class DropsEveryHead(KeepsHeads):
    """Claims the capability and keeps nothing."""

    async def read_head(self, key: str) -> Head | None:
        self._get(key)
        return None


class KeepsHeadsAfterDelete(KeepsHeads):
    """Reads the copy from its own table (a Redis hash, a metadata row) without the value, and
    ``delete`` removes only the value: a deleted record's header is still returned."""

    def __init__(self, url: str = "dict://kit-heads") -> None:
        super().__init__(url)
        self.table: dict[str, Head] = {}

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str:
        version = await super().write(key, payload, if_absent=if_absent, if_version=if_version)
        if payload.head is None:
            self.table.pop(key, None)
        else:
            self.table[key] = Head(payload.head, payload.size, version)
        return version

    async def read_head(self, key: str) -> Head | None:
        kept = self.table.get(key)
        return await super().read_head(key) if kept is None else kept


class _Kit(StoreConformance):
    large_size = 2 * 1024 * 1024


def check(store: DictStore) -> None:
    _Kit().test_read_head_returns_the_header_written_with_the_value(store)


def test_a_store_keeping_heads_with_its_values_passes() -> None:
    check(KeepsHeads())


def test_a_store_without_the_capability_passes() -> None:
    check(DictStore())


@pytest.mark.parametrize(
    ("store", "says"),
    [
        (KeepsStaleHeads(), "after a write without a header returned a copy"),
        (KeepsTheFirstHead(), "that are not the header just written"),
        (DropsEveryHead(), "must be kept"),
        (KeepsHeadsAfterDelete(), "after a delete returned Head"),
    ],
)
def test_stores_with_wrong_copies_fail(store: DictStore, says: str) -> None:
    with pytest.raises((AssertionError, pytest.fail.Exception), match=says):
        check(store)
