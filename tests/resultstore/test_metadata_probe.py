"""Metadata reads open the header's first bytes only (``records.HEADER_PROBE``), and a
header larger than that (a record of thousands of segments) is opened again to its end."""

from __future__ import annotations

import os

import numpy as np

from resultstore import ResultStore
from resultstore.records import HEADER_PROBE
from resultstore.stores.base import Reader
from resultstore.stores.memory import MemoryStore


class RangeCounting(MemoryStore):
    """Records the ranges the core opens."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.opened: list[tuple[int, int | None]] = []

    async def open(self, key: str, *, start: int = 0, end: int | None = None) -> Reader:
        self.opened.append((start, end))
        return await super().open(key, start=start, end=end)


def test_the_probe_is_small(memory_url: str) -> None:
    # Headers are a few hundred bytes: a probe of 64 KiB cost the sqlite plugin 16 pages.
    assert 4096 <= HEADER_PROBE <= 16384
    backend = RangeCounting(memory_url)
    store = ResultStore(backend)
    store.write(np.arange(1 << 20), key="big")
    assert store.read_metadata("big").size >= 8 << 20
    assert backend.opened == [(0, HEADER_PROBE)]


def test_a_header_larger_than_the_probe_is_read_to_its_end(memory_url: str) -> None:
    # Every array is one out-of-band pickle buffer, so one segment length in the header.
    value = [np.full(3, i) for i in range(3000)]
    backend = RangeCounting(memory_url)
    store = ResultStore(backend)
    store.write(value, key="many")
    metadata = store.read_metadata("many")
    assert len(backend.opened) == 2
    first, second = backend.opened
    assert first == (0, HEADER_PROBE)
    assert second[0] == 0 and second[1] is not None and second[1] > HEADER_PROBE
    assert metadata == store.read("many").metadata
    assert all((a == b).all() for a, b in zip(store.read("many").result, value, strict=True))


def test_metadata_reads_open_only_the_header(memory_url: str) -> None:
    backend = RangeCounting(memory_url)
    store = ResultStore(backend)
    store.write(os.urandom(8 << 20), key="big")
    metadata = store.read_metadata("big")
    assert metadata.size > 8 << 20
    assert backend.opened == [(0, 8 * 1024)]  # records.HEADER_PROBE
