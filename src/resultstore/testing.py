"""The conformance kit every store must pass, built-in or plugin.

Subclass :class:`StoreConformance` in your own test suite and provide a
``store`` fixture that returns a fresh, empty store; pytest then runs every
check below against it, unchanged::

    import pytest
    from resultstore.testing import StoreConformance

    class TestMyStore(StoreConformance):
        @pytest.fixture
        def store(self, tmp_path):
            return MyStore(f"mine://{tmp_path}")

The checks cover what :class:`~resultstore.ResultStore` relies on: byte-exact
round trips of small and large payloads, atomic overwrite, missing keys,
exists/delete/list with prefixes, concurrency, awkward keys, and full records
written and read through a ``ResultStore``. They are plain sync tests that
drive the store's coroutines, so no async pytest plugin is needed.
"""

from __future__ import annotations

import os
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import anyio
import pytest

from resultstore.errors import ResultNotFoundError
from resultstore.result_store import ResultStore
from resultstore.stores.base import Payload, Store
from states.concurrency import run_sync

__all__ = ["AWKWARD_KEYS", "StoreConformance", "clean_resultstore_env", "read_all", "run"]

T = TypeVar("T")

AWKWARD_KEYS = [
    "plain",
    "nested/deeper/key",
    "with space/and-dash_underscore.dot",
    "unicode/résumé/数据/🙂",
    "a" * 200,
    "/".join(["seg"] * 60),
    ".hidden/.dotfile",
    "trailing.dot.",
    "percent%20and+plus&amp=eq?q#hash",
]
"""Keys every store must store and list exactly as given."""


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Drive a store coroutine from a sync test, on the same loop the kit uses."""
    return run_sync(coro)


async def read_all(store: Store, key: str) -> bytes:
    """Open ``key`` on ``store`` and read it to the end."""
    reader = await store.open(key)
    try:
        return await reader.read()
    finally:
        await reader.aclose()


@pytest.fixture(autouse=True)
def clean_resultstore_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide the developer's ``RESULTSTORE_*`` variables (a signing key, say) from tests.

    Import it into a ``conftest.py`` to apply it to every test below that folder.
    """
    for name in list(os.environ):
        if name.upper().startswith("RESULTSTORE_"):
            monkeypatch.delenv(name)


async def _keys(store: Store, prefix: str = "") -> list[str]:
    return sorted([key async for key in store.list(prefix)])


class StoreConformance:
    """Checks every store must pass. Provide a ``store`` fixture returning a fresh store."""

    large_size: int = 12 * 1024 * 1024
    """Bytes in the large round trip; raise it for backends with special large-object paths."""

    concurrency: int = 64
    """How many operations the concurrency checks run at once."""

    @pytest.fixture
    def store(self) -> Store:  # pragma: no cover - overridden by subclasses
        raise NotImplementedError("provide a `store` fixture returning a fresh, empty Store")

    @pytest.fixture(autouse=True)
    def _close_store_after_test(self, store: Store) -> Iterator[None]:
        """Close the store on the loop it was used from, so clients never leak."""
        yield
        run(store.aclose())

    # -- round trips -----------------------------------------------------------

    def test_small_round_trip(self, store: Store) -> None:
        run(store.write("k", Payload([b"hello ", b"world"])))
        assert run(read_all(store, "k")) == b"hello world"

    def test_empty_payload_round_trip(self, store: Store) -> None:
        run(store.write("empty", Payload([])))
        assert run(read_all(store, "empty")) == b""
        assert run(store.exists("empty"))

    def test_large_round_trip_from_many_buffers(self, store: Store) -> None:
        block = os.urandom(1024 * 1024)
        count = self.large_size // len(block)
        buffers = [memoryview(block)[i % 7 :] for i in range(count)]
        expected = b"".join(buffers)
        run(store.write("large", Payload(buffers)))
        assert run(read_all(store, "large")) == expected

    def test_reader_reads_exact_sizes_and_into_buffers(self, store: Store) -> None:
        data = bytes(range(256)) * 40
        run(store.write("r", Payload([data])))

        async def check() -> None:
            reader = await store.open("r")
            try:
                assert await reader.read(10) == data[:10]
                into = bytearray(1000)
                assert await reader.readinto(memoryview(into)) == 1000
                assert bytes(into) == data[10:1010]
                assert await reader.read() == data[1010:]
                assert await reader.read(5) == b""
            finally:
                await reader.aclose()

        run(check())

    def test_overwrite_replaces_whole_value(self, store: Store) -> None:
        run(store.write("k", Payload([b"a much longer first value"])))
        run(store.write("k", Payload([b"short"])))
        assert run(read_all(store, "k")) == b"short"
        assert run(_keys(store)) == ["k"]

    # -- missing keys, exists, delete ------------------------------------------------

    def test_missing_key(self, store: Store) -> None:
        with pytest.raises(ResultNotFoundError, match="'nope'"):
            run(store.open("nope"))
        assert run(store.exists("nope")) is False
        assert run(store.delete("nope")) is False

    def test_exists_and_delete(self, store: Store) -> None:
        run(store.write("d/k", Payload([b"x"])))
        assert run(store.exists("d/k")) is True
        assert run(store.exists("d")) is False
        assert run(store.delete("d/k")) is True
        assert run(store.exists("d/k")) is False
        with pytest.raises(ResultNotFoundError):
            run(store.open("d/k"))

    # -- listing -------------------------------------------------------------

    def test_list_with_prefixes(self, store: Store) -> None:
        for key in ["a", "a/b", "a/b/c", "ab", "b/x"]:
            run(store.write(key, Payload([key.encode()])))
        assert run(_keys(store)) == ["a", "a/b", "a/b/c", "ab", "b/x"]
        assert run(_keys(store, "a")) == ["a", "a/b", "a/b/c", "ab"]
        assert run(_keys(store, "a/")) == ["a/b", "a/b/c"]
        assert run(_keys(store, "a/b/")) == ["a/b/c"]
        assert run(_keys(store, "zzz")) == []
        assert run(read_all(store, "a")) == b"a"
        assert run(read_all(store, "a/b")) == b"a/b"

    def test_list_prefixes_with_pattern_characters_are_literal(self, store: Store) -> None:
        keys = ["p*/x", "p?/y", "p[ab]/z", "pa/w", "p%/v", "p_/u"]
        for key in keys:
            run(store.write(key, Payload([b"."])))
        assert run(_keys(store, "p*")) == ["p*/x"]
        assert run(_keys(store, "p?")) == ["p?/y"]
        assert run(_keys(store, "p[ab]/")) == ["p[ab]/z"]
        assert run(_keys(store, "p%")) == ["p%/v"]
        assert run(_keys(store, "p_")) == ["p_/u"]

    def test_an_open_reader_keeps_the_value_it_opened(self, store: Store) -> None:
        old, new = b"o" * 300_000, b"n" * 200_000
        run(store.write("k", Payload([old])))

        async def read_across_overwrite() -> bytes:
            reader = await store.open("k")
            try:
                head = await reader.read(1000)
                await store.write("k", Payload([new]))
                return head + await reader.read()
            finally:
                await reader.aclose()

        assert run(read_across_overwrite()) == old
        assert run(read_all(store, "k")) == new

    def test_awkward_keys_round_trip_and_list(self, store: Store) -> None:
        for key in AWKWARD_KEYS:
            run(store.write(key, Payload([key.encode()])))
        assert run(_keys(store)) == sorted(AWKWARD_KEYS)
        for key in AWKWARD_KEYS:
            assert run(read_all(store, key)) == key.encode()

    # -- concurrency ----------------------------------------------------------

    def test_concurrent_writes_of_distinct_keys_all_land(self, store: Store) -> None:
        async def write_many() -> None:
            async with anyio.create_task_group() as tg:
                for i in range(self.concurrency):
                    tg.start_soon(store.write, f"c/{i}", Payload([str(i).encode() * 100]))

        run(write_many())
        assert run(_keys(store, "c/")) == sorted(f"c/{i}" for i in range(self.concurrency))
        for i in range(0, self.concurrency, 7):
            assert run(read_all(store, f"c/{i}")) == str(i).encode() * 100

    def test_concurrent_writers_of_one_key_leave_one_whole_value(self, store: Store) -> None:
        values = [bytes([i]) * (50_000 + i) for i in range(16)]

        async def race() -> None:
            async with anyio.create_task_group() as tg:
                for value in values:
                    tg.start_soon(store.write, "same", Payload([value]))

        run(race())
        assert run(read_all(store, "same")) in values

    def test_concurrent_operations_on_a_shared_event_loop(self, store: Store) -> None:
        # Unlike the checks above (driven through the kit's private loop, where blocking
        # calls run inline), a shared loop sends blocking calls to worker threads: the
        # store must stay correct when its methods overlap there. Every third value is
        # over 1 MiB, the size from which even local I/O leaves the loop.
        count = max(8, self.concurrency // 2)
        values = [bytes([i % 256]) * (1_100_000 if i % 3 == 0 else 70_000) for i in range(count)]
        reads: dict[int, bytes] = {}

        async def read(i: int) -> None:
            try:
                reads[i] = await read_all(store, f"shared/{i}")
            except ResultNotFoundError:
                assert i % 2, f"shared/{i} was never deleted"  # odd keys may lose to delete

        async def check_present(key: str) -> None:
            assert await store.exists(key), f"{key} was written, never deleted"

        async def overlap() -> None:
            try:
                async with anyio.create_task_group() as tg:
                    for i, value in enumerate(values):
                        tg.start_soon(store.write, f"shared/{i}", Payload([value]))
                async with anyio.create_task_group() as tg:
                    for i in range(count):
                        tg.start_soon(read, i)
                        tg.start_soon(store.delete if i % 2 else check_present, f"shared/{i}")
                remaining = await _keys(store, "shared/")
            finally:
                await store.aclose()  # clients tied to this loop close before it ends
            assert remaining == sorted(f"shared/{i}" for i in range(0, count, 2))

        anyio.run(overlap)
        assert len(reads) >= (count + 1) // 2
        for i, data in reads.items():  # whole values only
            assert data == values[i], f"shared/{i} read back wrong"

    # -- through the core ---------------------------------------------------------

    def test_result_store_round_trip(self, store: Store) -> None:
        results = ResultStore(store, retry=None)
        value = {"numbers": list(range(1000)), "text": "ünïcode", "nested": {"t": (1, 2)}}
        key = results.write(value, key="core/value")
        record = results.read(key, retry=False)
        assert record.result == value
        assert record.metadata.storage_key == "core/value"
        assert results.keys("core/") == ["core/value"]
        assert results.read_metadata(key).size == record.metadata.size
