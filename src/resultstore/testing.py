"""The conformance kit every store must pass, built-in or plugin (store interface 2).

Subclass :class:`StoreConformance` in your own test suite and provide a
``store`` fixture that returns a fresh, empty store; pytest then runs every
check below against it, unchanged::

    import pytest
    from resultstore import resolve_store
    from resultstore.testing import StoreConformance

    class TestMyStore(StoreConformance):
        @pytest.fixture
        def store(self, tmp_path):
            return resolve_store(f"mine://{tmp_path}")

The checks are plain sync tests that drive the store's coroutines with
:func:`run` (a private event loop per thread), from several threads at once and
from one shared event loop, so no async pytest plugin is needed. The kit closes
the store after each check.

What every store must pass (:class:`StoreConformance`)
------------------------------------------------------

- **Round trips**: small, empty and large (``large_size``) payloads from many
  buffers, byte-exact; ``read(n)``/``readinto`` return exactly what was asked, never
  short before the end (across a client's chunks); a second ``aclose`` of a reader
  does nothing, and the store works again after ``aclose()``.
- **Atomic overwrite**: readers polling a key while it is overwritten, from
  other threads and from other tasks of one event loop (values over 1 MiB, so
  blocking stores go to worker threads), see only a whole old or a whole new
  value: never the key missing (a write that deletes first), never a part (a
  write in place). An open reader keeps the value it opened, or fails with a
  resultstore error, even when that value is overwritten or deleted.
- **Missing keys once other keys exist**: ``exists`` is False, ``open``
  (ranged or not) and ``stat`` raise ``ResultNotFoundError`` naming the key,
  and ``delete`` answers False or None, never True, for keys that share a
  prefix, a folder or a name with stored ones; deleting a key answers True or
  None, never False, and leaves its neighbours alone.
- **stat and versions**: ``stat(key).size`` is the number of bytes written
  and ``Reader.size``, when not None, the whole value's size; a version, when
  not None, is the same from ``write``, ``stat`` and the reader, and changes
  when different bytes are written (also after a delete).
- **Ranged reads**, from every store: ``open(key, start=, end=)`` returns
  exactly bytes ``[start, end)``: inside, empty, cut at the end, past the end.
- **Listing**: every key under a prefix once, literally (pattern characters),
  awkward keys as written, ``many_keys`` keys without duplicates or gaps from
  ``list``, ``list_pages`` and ``list_details`` (also after ``start_after``), and no
  temporary name or missing key in a listing taken while keys are overwritten;
  ``list_details`` sizes and MD5s are those of the current bytes (after overwrites
  too), ``listed_md5`` the MD5 of all the payload's buffers.
- **Keys stay apart**: keys differing only in case, ``%xx``/``+`` escapes, a
  trailing space or dot, or unicode normalization are distinct records.
- **Concurrency**: ``concurrency`` writers of distinct keys, of one key, and
  writes, reads, deletes and ``exists`` overlapping on a shared event loop.
- **Failures are resultstore errors**: every failure a check provokes must be
  the documented :class:`~resultstore.errors.ResultStoreError` subclass, in one
  line; a raw backend exception (``KeyError``, a client's own error) fails the
  check with a message saying which call let it escape.
- **Through the core**: a full :class:`~resultstore.ResultStore` round trip.

Capabilities
------------

Checks that depend on what a store can do read its flags:

- ``supports_conditional_write`` true: create-only writes
  (``if_absent=True``) create or raise ``ResultExistsError``; ``if_version``
  writes replace only that version or raise ``VersionConflictError``;
  ``creators`` concurrent create-only writers of one key (tasks on several
  threads): exactly one wins, the rest get ``ResultExistsError``;
  ``incrementers`` concurrent compare-and-swap incrementers: no lost update;
  ``write``, ``stat`` and readers report versions; a version of another key is a
  conflict; nothing of the store's own (a probe) is listed. False: both kinds of
  conditional write raise ``UnsupportedOperationError`` in one line, also
  when many come at once, and never write anything.
- ``supports_ranged_read`` true: reading a 64 KiB range from the middle of a
  ``ranged_read_size`` value must allocate under a quarter of the value at its
  peak (traced by ``tracemalloc``: the backend fetches only the range, it does
  not fetch the value and slice it). False: the same read must still return
  exactly those bytes (its cost is not checked); range *results* are required
  from every store.
- ``supports_read_head`` true: after a write whose payload carries ``head`` (a
  record's header), ``read_head`` returns exactly those bytes (or None for a
  header too large to keep) with the value's size and version, also for a large
  value and for conditional writes; after an overwrite it returns the new
  header, or None when the new payload has none, never the old one; for a
  missing or deleted key it raises ``ResultNotFoundError``.

Opt-in mixins for what only the plugin can provide
--------------------------------------------------

Each mixin is added next to :class:`StoreConformance` by a plugin that can
provide its fixture; a mixin whose fixture is missing fails (it never passes
or skips silently), and a class without a mixin simply does not have its
checks::

    class TestMyStore(
        StoreConformance, UnreachableConformance, SecretConformance, MultiProcessConformance
    ):
        @pytest.fixture
        def store(self, server): ...
        @pytest.fixture
        def unreachable_store(self):
            return resolve_store(f"mine://127.0.0.1:{port_nothing_listens_on}/db")
        @pytest.fixture
        def secret_store(self, server, secret):
            return resolve_store(server.url, password=secret)

- :class:`UnreachableConformance` (fixture ``unreachable_store``): every
  method on a backend that cannot be reached raises
  ``StorageUnavailableError`` (not a plain ``StorageError``, not the client's
  exception) in one line naming the key (the prefix for ``list``) and the
  store's URL, within ``unreachable_timeout`` seconds for all of them.
- :class:`DeniedConformance` (fixture ``denied_store``, made with credentials the
  backend refuses): every method raises ``AccessDeniedError`` in one line naming key
  and URL (never ``StorageUnavailableError``, which the core retries).
- :class:`ContainerMissingConformance` (fixture ``missing_container_store``, whose
  bucket or database does not exist): every method, ``exists`` and ``list``
  included, raises ``ContainerMissingError``, never "not found" or an empty listing.
- :class:`SecretConformance` (fixtures ``secret_store``, and ``secret``, a
  random token by default): the secret appears in no ``url``, ``repr``,
  ``str``, error (message, attributes, chained exceptions) or log record.
- :class:`MultiProcessConformance` (fixtures ``store_url_for_other_process``,
  default ``store.url``, and ``store_options_for_other_process``, default
  ``{}``): a second interpreter opens the same backend with
  ``resolve_store(url, **options)`` and both processes overwrite one key,
  create keys and (with conditional writes) race create-only writes and
  compare-and-swap increments at once; and after ``os.fork()`` parent and
  child both keep using the store (opt out with ``supports_fork = False``
  where the backend's client cannot survive a fork).

Tuning (class attributes of your subclass)
------------------------------------------

``large_size`` (bytes, default 12 MiB), ``concurrency`` (64), ``many_keys``
(1100), ``creators`` (32), ``incrementers`` (20), ``overwrites`` (12),
``ranged_read_size`` (8 MiB), ``check_timeout`` (seconds a check's threads may
take, 120); on the mixins ``unreachable_timeout``, ``denied_timeout`` and
``missing_container_timeout`` (30 each), ``rounds_across_processes``
(20), ``other_process_timeout`` (120) and ``supports_fork`` (True).
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import tracemalloc
import uuid
import warnings
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote, quote_plus

import anyio
import pytest

from resultstore._loops import run_sync
from resultstore.errors import (
    AccessDeniedError,
    ContainerMissingError,
    ResultExistsError,
    ResultNotFoundError,
    ResultStoreError,
    StorageUnavailableError,
    UnsupportedOperationError,
    VersionConflictError,
)
from resultstore.records import encode_record
from resultstore.result_store import ResultStore
from resultstore.retry import RetryPolicy
from resultstore.stores.base import Head, Listed, Payload, Reader, Stat, Store

__all__ = [
    "AWKWARD_KEYS",
    "ContainerMissingConformance",
    "DeniedConformance",
    "MultiProcessConformance",
    "SecretConformance",
    "StoreConformance",
    "UnreachableConformance",
    "clean_resultstore_env",
    "read_all",
    "run",
]

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)

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
    "/".join(["ü" * 100] * 4),  # 803 bytes, each segment 200 (the longest a key may have)
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


# -- helpers ------------------------------------------------------------------------


async def _keys(store: Store, prefix: str = "") -> list[str]:
    return sorted([key async for key in store.list(prefix)])


async def _listed(store: Store, prefix: str = "") -> list[str]:
    return [key async for key in store.list(prefix)]


async def _read_range(store: Store, key: str, start: int, end: int | None) -> tuple[bytes, Reader]:
    reader = await store.open(key, start=start, end=end)
    try:
        return await reader.read(), reader
    finally:
        await reader.aclose()


def _pattern(tag: bytes, size: int) -> bytes:
    """``size`` bytes repeating ``tag``: a part or a mix of two such values shows."""
    return (tag * (size // len(tag) + 1))[:size]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"


def _raw(what: str, exc: BaseException) -> str:
    return (
        f"{what} let a raw {_describe(exc)} escape; a store raises only resultstore "
        "errors (ResultNotFoundError, StorageUnavailableError, StorageError, ...): "
        "translate the backend's exceptions"
    )


def _one_line(exc: BaseException, what: str) -> str:
    message = str(exc)
    assert message.strip(), f"{what} raised {type(exc).__name__} with an empty message"
    assert "\n" not in message, f"{what} raised a message of several lines: {message!r}"
    return message


def _expect_call(kind: type[E], what: str, call: Callable[[], object]) -> E:
    """The ``kind`` error ``call()`` raises, in one line; anything else fails the check."""
    try:
        result = call()
    except kind as exc:
        _one_line(exc, what)
        return exc
    except ResultStoreError as exc:
        pytest.fail(f"{what} raised {type(exc).__name__} ({exc}); expected {kind.__name__}")
    except Exception as exc:
        pytest.fail(_raw(what, exc) + f" (expected {kind.__name__})")
    if isinstance(result, Reader):
        run(result.aclose())
    pytest.fail(f"{what} returned {result!r}; expected it to raise {kind.__name__}")


def _expect(kind: type[E], what: str, coro: Coroutine[Any, Any, object]) -> E:
    return _expect_call(kind, what, lambda: run(coro))


def _call(what: str, coro: Coroutine[Any, Any, T]) -> T:
    """``run(coro)``, failing the check with a clear message if a raw exception escapes."""
    try:
        return run(coro)
    except ResultStoreError:
        raise
    except Exception as exc:
        pytest.fail(_raw(what, exc))


def _names(error: ResultStoreError, key: str, url: str, what: str) -> None:
    message = str(error)
    assert key in message, f"{what}: the error must name the key {key!r}: {message!r}"
    assert error.key == key, f"{what}: the error's key attribute is {error.key!r}, not {key!r}"
    assert error.url == url, f"{what}: the error's url attribute is {error.url!r}, not {url!r}"


def _typed(what: str, value: object, ok: bool, must: str) -> None:
    """Fail the check when ``what`` returned a value of a type the interface does not allow."""
    assert ok, (
        f"{what} returned {type(value).__name__}; it must return {must} (the core refuses "
        "a plugin's store that returns anything else, with a PluginError)"
    )


def _is_size(value: object) -> bool:
    return type(value) is int and value >= 0


def _check_delete_answer(answer: object, *, existed: bool, what: str) -> None:
    allowed = (True, None) if existed else (False, None)
    assert any(answer is choice for choice in allowed), (
        f"{what} answered {answer!r} for a key that "
        f"{'held a record' if existed else 'held none'}: delete answers True when it "
        "removed a record, False when there was none, None when the backend cannot tell"
    )


def _check_versions(
    store: Store, key: str, written: str | None, stated: str | None, opened: str | None
) -> None:
    reported = {"write returned": written, "stat reported": stated, "the reader reported": opened}
    for name, version in reported.items():
        assert version is None or isinstance(version, str), (
            f"{key!r}: {name} a version of type {type(version).__name__}; versions are str"
        )
    if store.supports_conditional_write:
        missing = [name for name, version in reported.items() if version is None]
        assert not missing, (
            f"{key!r}: {', '.join(missing)} no version, though supports_conditional_write "
            "is true: compare-and-swap writes are made against these versions"
        )
    known = {name: version for name, version in reported.items() if version is not None}
    assert len(set(known.values())) <= 1, f"the versions of {key!r} disagree: {known}"


def _run_in_threads(targets: Sequence[Callable[[], object]], timeout: float) -> None:
    """Run each target in its own thread, released together; re-raise the first failure."""
    barrier = threading.Barrier(len(targets))
    errors: list[BaseException] = []

    def body(target: Callable[[], object]) -> None:
        try:
            barrier.wait(timeout)
            target()
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [
        threading.Thread(target=body, args=(target,), name=f"kit-{i}", daemon=True)
        for i, target in enumerate(targets)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    alive = sum(thread.is_alive() for thread in threads)
    if alive:
        pytest.fail(f"{alive} of {len(threads)} threads still running after {timeout:g} s")
    if errors:
        raise errors[0]


def _in_a_thread_of_its_own(store: Store, coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``coro_fn()`` on the calling thread's loop, then close that loop's clients."""
    try:
        return run(coro_fn())
    finally:
        run(store.aclose())


class _Observed:
    """What readers saw of a key being overwritten: the reads, and each kind of problem."""

    def __init__(self, values: Sequence[bytes]) -> None:
        self.values = set(values)
        self.reads = 0
        self.problems: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, str] = {}
        self._lock = threading.Lock()

    def record(self, outcome: bytes | Exception) -> None:
        problem = self._classify(outcome)
        with self._lock:
            self.reads += 1
            if problem is not None:
                kind, example = problem
                self.problems[kind] += 1
                self.examples.setdefault(kind, example)

    def _classify(self, outcome: bytes | Exception) -> tuple[str, str] | None:
        if isinstance(outcome, ResultNotFoundError):
            return "the key missing", str(outcome)
        if isinstance(outcome, ResultStoreError):
            return f"{type(outcome).__name__} errors", str(outcome)[:200]
        if isinstance(outcome, Exception):
            return f"raw {type(outcome).__name__} exceptions", _describe(outcome)[:200]
        if outcome in self.values:
            return None
        if any(value.startswith(outcome) for value in self.values):
            return "part of a value", f"the first {len(outcome)} bytes of a written value"
        return "a mixed or wrong value", f"{len(outcome)} bytes matching no written value"

    def check(self, while_what: str) -> None:
        if self.problems:
            seen = "; ".join(
                f"{kind} {count} times (e.g. {self.examples[kind]})"
                for kind, count in self.problems.items()
            )
            pytest.fail(
                f"of {self.reads} reads while {while_what}, readers saw {seen}: a write must "
                "replace the value atomically (never delete it first, never write it in "
                "place) and a read return one whole value"
            )


async def _increment(store: Store, key: str, attempts: int) -> int:
    """Add one to the decimal counter under ``key`` by compare-and-swap; the value written."""
    for _ in range(attempts):
        reader = await store.open(key)
        try:
            data = await reader.read()
            version = reader.version
        finally:
            await reader.aclose()
        if version is None:
            raise AssertionError(
                f"the reader of {key!r} reports no version, though supports_conditional_write "
                "is true: compare-and-swap writes are made against Reader.version"
            )
        await anyio.sleep(0)  # let the other incrementers read the same version
        value = int(data) + 1
        try:
            await store.write(key, Payload([str(value).encode()]), if_version=version)
        except VersionConflictError:
            continue
        return value
    raise AssertionError(f"no compare-and-swap write of {key!r} succeeded in {attempts} attempts")


# -- the checks every store passes ----------------------------------------------------


class StoreConformance:
    """Checks every store must pass. Provide a ``store`` fixture returning a fresh store."""

    large_size: int = 12 * 1024 * 1024
    """Bytes in the large round trip; raise it for backends with special large-object paths."""

    concurrency: int = 64
    """How many operations the concurrency checks run at once."""

    many_keys: int = 1100
    """Keys written before one listing, to cross the page boundaries of paged listings
    (1,000 keys a page for S3's ListObjectsV2 and the default ``list_pages``)."""

    creators: int = 32
    """Concurrent create-only writers of one key."""

    incrementers: int = 20
    """Concurrent compare-and-swap incrementers of one counter."""

    overwrites: int = 12
    """Overwrites of a value over 1 MiB while tasks of the same event loop read it."""

    ranged_read_size: int = 8 * 1024 * 1024
    """Size of the value whose 64 KiB ranges must read cheaply with ``supports_ranged_read``."""

    check_timeout: float = 120.0
    """Seconds the threads of one check may take before the check fails."""

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

    def test_reads_are_never_short_before_the_end(self, store: Store) -> None:
        """``read(n)`` and ``readinto`` return exactly what was asked until the value ends,
        across the chunks a client receives (the core takes a short read for the end of
        the record, and a record cut short for a damaged one); ``aclose`` may come twice."""
        size = 1_000_003
        data = _pattern(bytes(range(251)), size)
        run(store.write("r/chunks", Payload([data])))
        steps = [70_001, 1, 200_000, 65_536, 131_073]

        async def in_steps(start: int, end: int | None) -> None:
            expected = data[start:end]
            what = f"a reader of open('r/chunks', start={start}, end={end})"
            reader = await store.open("r/chunks", start=start, end=end)
            try:
                pos, turn = 0, 0
                while pos < len(expected):
                    n = steps[turn % len(steps)]
                    want = expected[pos : pos + n]
                    if turn % 2:
                        into = bytearray(n)
                        got_n = await reader.readinto(memoryview(into))
                        got = bytes(into[:got_n])
                        call = f"readinto(<{n} bytes>)"
                    else:
                        got = await reader.read(n)
                        call = f"read({n})"
                    assert len(got) == len(want), (
                        f"{what}: {call} at offset {pos} returned {len(got)} bytes, not "
                        f"{len(want)}: a read returns exactly the bytes asked for unless the "
                        "value ends first (loop over the client's chunks)"
                    )
                    assert got == want, f"{what}: {call} at offset {pos} returned wrong bytes"
                    pos += n
                    turn += 1
                # At the end, both kinds of call find nothing more, whichever came last.
                assert await reader.read(10) == b"", f"{what}: read(10) read past the end"
                past = await reader.readinto(memoryview(bytearray(10)))
                assert past == 0, f"{what}: readinto read {past} bytes past the end"
                assert await reader.read() == b"", f"{what}: read() read past the end"
            finally:
                await reader.aclose()
            try:
                await reader.aclose()
            except Exception as exc:
                raise AssertionError(
                    f"{what}: a second aclose() raised {_describe(exc)}; closing a closed "
                    "reader must do nothing (async with, then an explicit close, is common)"
                ) from None

        for start, end in [(0, None), (12_345, 900_000)]:
            _call(f"reading 'r/chunks' from {start} to {end} in steps", in_steps(start, end))

        results = ResultStore(store, retry=None)
        value = _pattern(b"a record read in chunks|", 700_001)
        key = results.write(value, key="r/record")
        assert results.read(key, retry=False).result == value, "a record read back wrong"

    def test_the_store_is_usable_after_aclose(self, store: Store) -> None:
        """``aclose`` releases connections; the store reconnects on its next call (the core
        closes stores between uses, and ``ResultStore.close()`` may come more than once)."""

        async def use(round: int) -> None:
            key = f"closed/{round}"
            await store.write(key, Payload([key.encode()]))
            assert await read_all(store, key) == key.encode()
            assert await store.exists(key)
            assert key in await _keys(store, "closed/")
            await store.aclose()
            await store.aclose()

        for round in range(3):
            _call(f"using the store after {round} aclose() calls", use(round))
        assert _call("list('closed/')", _keys(store, "closed/")) == [
            f"closed/{i}" for i in range(3)
        ]

    def test_the_store_declares_an_interface_version_this_release_speaks(
        self, store: Store
    ) -> None:
        """The registry refuses a plugin class without a valid ``interface_version``: the
        kit says so before a user's first ``resolve_store`` does."""
        from resultstore.stores.base import INTERFACE_VERSION, OLDEST_INTERFACE_VERSION

        declared = getattr(type(store), "interface_version", None)
        speaks = f"{OLDEST_INTERFACE_VERSION} to {INTERFACE_VERSION}"
        assert type(declared) is int and declared >= OLDEST_INTERFACE_VERSION, (
            f"{type(store).__name__}.interface_version is {declared!r}; set "
            f"`interface_version = {INTERFACE_VERSION}` on the class (this resultstore speaks "
            f"versions {speaks}): resolve_store refuses the plugin without it"
        )
        assert declared <= INTERFACE_VERSION, (
            f"{type(store).__name__}.interface_version is {declared}, newer than this "
            f"resultstore speaks ({speaks}): upgrade resultstore"
        )

    def test_overwrite_replaces_whole_value(self, store: Store) -> None:
        run(store.write("k", Payload([b"a much longer first value"])))
        run(store.write("k", Payload([b"short"])))
        assert run(read_all(store, "k")) == b"short"
        assert run(_keys(store)) == ["k"]

    # -- atomic overwrite ------------------------------------------------------------

    def test_readers_see_whole_values_while_another_thread_overwrites(self, store: Store) -> None:
        # Threads, each with its own event loop: real concurrency for blocking backends.
        key = "overwritten/threads"
        values = [_pattern(b"old value|", 300_000), _pattern(b"NEW VALUE#", 200_003)]
        run(store.write(key, Payload([values[0]])))
        seen = _Observed(values)
        done = threading.Event()
        writes = 0
        deadline = time.monotonic() + 10

        async def overwrite() -> None:
            nonlocal writes
            while not done.is_set():
                await store.write(key, Payload([values[(writes + 1) % 2]]))
                writes += 1
                if (writes >= 20 and seen.reads >= 60) or time.monotonic() > deadline:
                    done.set()

        async def poll() -> None:
            while not done.is_set():
                try:
                    data = await read_all(store, key)
                except Exception as exc:
                    seen.record(exc)
                else:
                    seen.record(data)

        def writer() -> None:
            try:
                _in_a_thread_of_its_own(store, overwrite)
            finally:
                done.set()

        def reader() -> None:
            _in_a_thread_of_its_own(store, poll)

        _run_in_threads([writer, reader, reader, reader], self.check_timeout)
        seen.check("another thread overwrote the key")
        assert writes >= 2 and seen.reads >= 3, (
            f"too little overlap: {writes} writes, {seen.reads} reads"
        )
        assert run(read_all(store, key)) in values

    def test_readers_see_whole_values_while_another_task_overwrites(self, store: Store) -> None:
        # Tasks of one event loop: a write that yields between two steps (delete, then
        # write; or chunk after chunk) lets a reader in. Values over 1 MiB go to threads.
        key = "overwritten/tasks"
        values = [_pattern(b"old value|", 1_100_000), _pattern(b"NEW VALUE#", 1_300_007)]
        seen = _Observed(values)

        async def main() -> bytes:
            try:
                await store.write(key, Payload([values[0]]))
                done = anyio.Event()

                async def writer() -> None:
                    try:
                        for i in range(self.overwrites):
                            await store.write(key, Payload([values[(i + 1) % 2]]))
                            await anyio.sleep(0)
                    finally:
                        done.set()

                async def reader() -> None:
                    while not done.is_set():
                        try:
                            data = await read_all(store, key)
                        except Exception as exc:
                            seen.record(exc)
                        else:
                            seen.record(data)
                        await anyio.sleep(0)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(writer)
                    for _ in range(3):
                        tg.start_soon(reader)
                return await read_all(store, key)
            finally:
                await store.aclose()  # clients tied to this loop close before it ends

        last = anyio.run(main)
        seen.check("another task of the same event loop overwrote the key")
        assert seen.reads >= 3, f"too little overlap: {seen.reads} reads"
        assert last == values[self.overwrites % 2]

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

    def test_readers_of_a_value_going_away_return_it_or_a_resultstore_error(
        self, store: Store
    ) -> None:
        value = _pattern(b"going away|", 300_000)
        run(store.write("gone", Payload([value])))
        run(store.write("replaced", Payload([value])))

        async def read_across(key: str, start: int, end: int | None) -> bytes | None:
            reader = await store.open(key, start=start, end=end)
            try:
                head = await reader.read(1000)
                if key == "gone":
                    await store.delete(key)
                else:
                    await store.write(key, Payload([b"x" * 100]))
                try:
                    return head + await reader.read()
                except ResultStoreError:
                    return None  # failing is allowed; a raw exception or a mix is not
            finally:
                await reader.aclose()

        for key, start, end in [("gone", 0, None), ("replaced", 100, 250_000)]:
            change = "delete" if key == "gone" else "overwrite"
            got = _call(f"a reader of {key!r} across its {change}", read_across(key, start, end))
            if got is not None:
                assert got == value[start:end], f"a reader of {key!r} returned a mix of values"

    # -- missing keys, exists, delete ------------------------------------------------

    def test_every_method_returns_the_types_the_interface_names(self, store: Store) -> None:
        """What each method returns is of the type the interface names: ``exists`` a bool
        (never 0/1, a str or None), reads bytes, listings ``str`` keys under the prefix in
        lists of pages, sizes ints >= 0, versions ``str`` or None."""
        key = "types/k"

        async def check() -> None:
            version = await store.write(key, Payload([b"abc", b"def"], head=b"abc"))
            _typed("write()", version, version is None or type(version) is str, "a str or None")
            for start, end in ((0, None), (1, 4)):
                what = f"open({key!r}, start={start}, end={end})"
                reader = await store.open(key, start=start, end=end)
                _typed(what, reader, isinstance(reader, Reader), "a Reader (BytesReader(data))")
                try:
                    size, opened = reader.size, reader.version
                    _typed(f"{what}.size", size, size is None or _is_size(size), "int >= 0")
                    _typed(f"{what}.version", opened, opened is None or type(opened) is str, "str")
                    data = await reader.read(1)
                    ok = isinstance(data, (bytes, bytearray, memoryview)) and len(data) == 1
                    _typed(f"{what} then read(1)", data, ok, "one byte as bytes")
                    got = await reader.readinto(memoryview(bytearray(2)))
                    ok = type(got) is int and 0 <= got <= 2
                    _typed(f"{what} then readinto(2 bytes)", got, ok, "a count from 0 to 2")
                finally:
                    await reader.aclose()
            stat = await store.stat(key)
            _typed(f"stat({key!r})", stat, isinstance(stat, Stat), "a Stat(size, version)")
            _typed(f"stat({key!r}).size", stat.size, _is_size(stat.size), "an int >= 0")
            stated = stat.version
            _typed(f"stat({key!r}).version", stated, stated is None or type(stated) is str, "str")
            head = await store.read_head(key)
            ok = head is None or (
                isinstance(head, Head)
                and isinstance(head.data, (bytes, bytearray, memoryview))
                and _is_size(head.size)
                and (head.version is None or type(head.version) is str)
            )
            _typed(f"read_head({key!r})", head, ok, "None or a Head(bytes, int >= 0, str)")
            for probe in (key, "types/missing"):
                found = await store.exists(probe)
                _typed(f"exists({probe!r})", found, type(found) is bool, "a bool (True, False)")
            for prefix in ("", "types/"):
                async for listed in store.list(prefix):
                    ok = type(listed) is str and listed.startswith(prefix)
                    _typed(f"list({prefix!r})", listed, ok, f"str keys starting {prefix!r}")
                async for page in store.list_pages(prefix):
                    ok = type(page) is list and bool(page)
                    ok = ok and all(type(k) is str and k.startswith(prefix) for k in page)
                    _typed(f"list_pages({prefix!r})", page, ok, "non-empty lists of str keys")
                async for details in store.list_details(prefix):
                    ok = type(details) is list and bool(details)
                    for item in details if ok else []:
                        ok = ok and isinstance(item, Listed) and type(item.key) is str
                        ok = ok and (item.size is None or _is_size(item.size))
                        ok = ok and (item.md5 is None or type(item.md5) is str)
                    _typed(f"list_details({prefix!r})", details, ok, "non-empty lists of Listed")
            md5 = store.listed_md5(Payload([b"abc"]))
            _typed("listed_md5()", md5, md5 is None or type(md5) is str, "a str or None")
            cleaned = await store.clean_abandoned(3600.0, dry_run=True)
            ok = type(cleaned) is tuple and len(cleaned) == 2 and all(map(_is_size, cleaned))
            _typed("clean_abandoned()", cleaned, ok, "(items, bytes): two ints >= 0")
            for probe in (key, "types/missing"):
                answer = await store.delete(probe)
                ok = answer is None or type(answer) is bool
                _typed(f"delete({probe!r})", answer, ok, "True, False or None")

        run(check())

    def test_missing_key(self, store: Store) -> None:
        with pytest.raises(ResultNotFoundError, match="'nope'"):
            run(store.open("nope"))
        assert run(store.exists("nope")) is False
        _check_delete_answer(run(store.delete("nope")), existed=False, what="delete('nope')")

    def test_exists_and_delete(self, store: Store) -> None:
        run(store.write("d/k", Payload([b"x"])))
        assert run(store.exists("d/k")) is True
        assert run(store.exists("d")) is False
        _check_delete_answer(run(store.delete("d/k")), existed=True, what="delete('d/k')")
        assert run(store.exists("d/k")) is False
        with pytest.raises(ResultNotFoundError):
            run(store.open("d/k"))

    def _check_missing(self, store: Store, key: str) -> None:
        exists = _call(f"exists({key!r})", store.exists(key))
        assert exists is False, f"exists({key!r}) answered {exists!r} for a key never written"
        probes: list[tuple[str, Callable[[], Coroutine[Any, Any, object]]]] = [
            (f"open({key!r})", lambda: store.open(key)),
            (f"open({key!r}, start=1, end=5)", lambda: store.open(key, start=1, end=5)),
            (f"stat({key!r})", lambda: store.stat(key)),
        ]
        for what, probe in probes:
            error = _expect(ResultNotFoundError, what, probe())
            _names(error, key, store.url, what)
        answer = _call(f"delete({key!r})", store.delete(key))
        _check_delete_answer(answer, existed=False, what=f"delete({key!r}) once other keys exist")

    def test_missing_keys_answer_correctly_once_other_keys_exist(self, store: Store) -> None:
        present = {
            "probe/a": b"a",
            "probe/a/b": b"a/b",
            "probe/ab": b"ab",
            "probe/b/c/d": b"b/c/d",
        }
        for key, value in present.items():
            run(store.write(key, Payload([value])))
        for key in [
            "probe/x",
            "probe/aa",
            "probe/abc",
            "probe/a/c",
            "probe/a/b/c",
            "probe/b",
            "probe/b/c",
            "probe/b/c/d/e",
            "probe",
            "other",
        ]:
            self._check_missing(store, key)
        answer = _call("delete('probe/a')", store.delete("probe/a"))
        _check_delete_answer(answer, existed=True, what="delete('probe/a')")
        self._check_missing(store, "probe/a")
        rest = {key: value for key, value in present.items() if key != "probe/a"}
        for key, value in rest.items():
            assert run(read_all(store, key)) == value, f"deleting 'probe/a' changed {key!r}"
        assert run(_keys(store, "probe/")) == sorted(rest)

    # -- stat, versions, ranges ----------------------------------------------------------

    def test_stat_reports_the_size_and_version_of_what_was_written(self, store: Store) -> None:
        cases: dict[str, list[Any]] = {
            "stat/empty": [],
            "stat/small": [b"ab", b"", bytearray(b"cde")],
            "stat/large": [memoryview(os.urandom(700_000))[5:], b"\0" * 400_000, b"end"],
        }
        for key, buffers in cases.items():
            payload = Payload(buffers)
            written = _call(f"write({key!r})", store.write(key, payload))
            stat = _call(f"stat({key!r})", store.stat(key))
            assert stat.size == payload.size, (
                f"stat({key!r}).size is {stat.size}, but {payload.size} bytes were written "
                f"(in {len(buffers)} buffers)"
            )

            async def opened(key: str = key) -> tuple[bytes, int | None, str | None]:
                reader = await store.open(key)
                try:
                    return await reader.read(), reader.size, reader.version
                finally:
                    await reader.aclose()

            data, size, version = _call(f"open({key!r})", opened())
            assert data == b"".join(bytes(memoryview(b)) for b in buffers)
            assert size in (None, payload.size), (
                f"the reader of {key!r} says size={size}, but the value has {payload.size} bytes"
            )
            _check_versions(store, key, written, stat.version, version)

        key = "stat/versions"
        versions: list[str | None] = []
        for i, content in enumerate([b"one", b"two", None, b"three"]):
            if content is None:
                run(store.delete(key))
                continue
            written = _call(f"write {i} of {key!r}", store.write(key, Payload([content])))
            stat = _call(f"stat({key!r})", store.stat(key))
            assert stat.size == len(content)
            _check_versions(store, key, written, stat.version, stat.version)
            versions.append(stat.version if stat.version is not None else written)
        known = [version for version in versions if version is not None]
        assert len(set(known)) == len(known), (
            f"{key!r} kept a version across writes of different bytes: {versions}; a "
            "version must change on every write (also after a delete)"
        )

    def test_ranged_reads_return_exactly_the_range(self, store: Store) -> None:
        data = bytes(range(256)) * 400 + b"tail"
        n = len(data)
        written = run(store.write("ranged", Payload([data[:5000], data[5000:]])))
        ranges: list[tuple[int, int | None]] = [
            (0, None),
            (0, n),
            (0, 10),
            (10, 20),
            (255, 257),
            (50_000, 50_001),
            (n - 4, None),
            (n - 4, n + 100),
            (100, n + 1000),
            (n, None),
            (n, n + 5),
            (n + 10, None),
            (n + 10, n + 20),
            (0, 0),
            (7, 7),
            (n, n),
        ]
        for start, end in ranges:
            what = f"open('ranged', start={start}, end={end})"
            got, reader = _call(what, _read_range(store, "ranged", start, end))
            expected = data[start:] if end is None else data[start:end]
            assert got == expected, (
                f"{what} returned {len(got)} bytes, expected {len(expected)}: bytes "
                "[start, end) of the value, cut at its end"
            )
            assert reader.size in (None, n), (
                f"{what}: Reader.size is {reader.size}; it is the whole value's size ({n})"
            )
            if written is not None and reader.version is not None:
                assert reader.version == written, f"{what}: the reader's version is not written's"

        async def in_pieces() -> None:
            reader = await store.open("ranged", start=1000, end=5000)
            try:
                assert await reader.read(10) == data[1000:1010]
                into = bytearray(100)
                assert await reader.readinto(memoryview(into)) == 100
                assert bytes(into) == data[1010:1110]
                assert await reader.read() == data[1110:5000]
                assert await reader.read(5) == b""
            finally:
                await reader.aclose()

        _call("reading a range in pieces", in_pieces())

    def test_reading_the_header_of_a_large_value_is_cheap(self, store: Store) -> None:
        size = self.ranged_read_size
        data = os.urandom(size)
        run(store.write("ranged/large", Payload([data])))
        if not store.supports_ranged_read:
            # Ranges are served from the start (RangeReader): the header read must still
            # return exactly its bytes, however large the value; its cost is not checked.
            got, _ = run(_read_range(store, "ranged/large", 0, 65536))
            assert got == data[:65536], (
                f"open(key, start=0, end=65536) of a {size}-byte value returned {len(got)} "
                "bytes, not the first 65536"
            )
            return

        # The backend must fetch only the range. Time is no judge of that (a loaded
        # machine makes a whole read look cheap or a range look dear), memory is: a
        # store that fetches the value and slices it allocates the whole value, one
        # that asks the backend for the range allocates about the range. A first read
        # outside the trace lets clients, connections and caches come up.
        header = 65536  # what the core reads first: a record's header
        # A trace already running (PYTHONTRACEMALLOC, a profiler) is reused, its peak
        # reset and what it held before subtracted, and left running. Memory allocated
        # outside Python's allocator (a client's native buffers) is not traced at all.
        run(_read_range(store, "ranged/large", 0, header))
        tracing = tracemalloc.is_tracing()
        if tracing:
            tracemalloc.reset_peak()
        else:
            tracemalloc.start()
        before, _ = tracemalloc.get_traced_memory()
        try:
            got, _ = run(_read_range(store, "ranged/large", size // 2, size // 2 + header))
            _, peak = tracemalloc.get_traced_memory()
            peak -= before
        finally:
            if not tracing:
                tracemalloc.stop()
        assert got == data[size // 2 : size // 2 + header], (
            f"open(key, start={size // 2}, end={size // 2 + header}) of a {size}-byte value "
            f"returned {len(got)} bytes, not those {header}"
        )
        assert peak < size // 4, (
            f"reading {header} bytes of a {size}-byte value allocated {peak} bytes at its "
            "peak: supports_ranged_read is true, so the backend must fetch only the range "
            "(not the value, sliced afterwards)"
        )

    # -- header copies (supports_read_head) --------------------------------------------

    def test_read_head_returns_the_header_written_with_the_value(self, store: Store) -> None:
        if not store.supports_read_head:
            return  # the core never asks: nothing to check
        key = "head/k"

        def record(tag: bytes, size: int = 100, pad: int = 0) -> Payload:
            """A record's buffers, its header as ``head`` (``pad`` lengthens the header)."""
            body = _pattern(tag, size)
            buffers = encode_record([body] + [b""] * pad, serializer="kit-" + tag.decode())
            head = buffers[0]
            assert isinstance(head, bytes)
            return Payload(buffers, head=head)

        def check(what: str, payload: Payload, version: str | None, *, may_drop: bool) -> None:
            kept = _call(f"read_head({key!r}) after {what}", store.read_head(key))
            stat = _call(f"stat({key!r})", store.stat(key))
            if kept is None:
                assert may_drop, (
                    f"read_head({key!r}) after {what} returned None: supports_read_head is "
                    f"true, so a {len(payload.head or b'')}-byte header must be kept"
                )
                return
            assert kept.data == payload.head, (
                f"read_head({key!r}) after {what} returned {len(kept.data)} bytes that are not "
                "the header just written (a stale copy, or another write's): the copy must be "
                "written with the value, in the same request"
            )
            assert kept.size == payload.size == stat.size, (
                f"read_head({key!r}) after {what} says size={kept.size}; the value has "
                f"{payload.size} bytes"
            )
            assert kept.version == stat.version and version in (None, stat.version), (
                f"read_head({key!r}) after {what} says version={kept.version!r}; write "
                f"returned {version!r} and stat says {stat.version!r}"
            )

        first = record(b"a")
        check("a write", first, _call("write", store.write(key, first)), may_drop=False)
        second = record(b"bb", 300)
        check("an overwrite", second, _call("write", store.write(key, second)), may_drop=False)
        bare = Payload([b"no header here"])
        run(store.write(key, bare))
        kept = _call(f"read_head({key!r})", store.read_head(key))
        assert kept is None, (
            f"read_head({key!r}) after a write without a header returned a copy "
            f"({len(kept.data) if kept else 0} bytes, the previous write's): every write "
            "must replace or drop the copy"
        )
        large = record(b"large", self.large_size)
        check("a large write", large, _call("write", store.write(key, large)), may_drop=False)
        long_header = record(b"long", 5000, pad=4000)  # a header of about 8 KB
        written = _call("write", store.write(key, long_header))
        check("a write with a long header", long_header, written, may_drop=True)
        if store.supports_conditional_write:
            run(store.delete(key))
            created = record(b"created")
            version = _call("write", store.write(key, created, if_absent=True))
            check("a create-only write", created, version, may_drop=False)
            swapped = record(b"swapped")
            version = _call("write", store.write(key, swapped, if_version=version or "-"))
            check("a compare-and-swap write", swapped, version, may_drop=False)
        missing = "head/missing"
        error = _expect(ResultNotFoundError, f"read_head({missing!r})", store.read_head(missing))
        _names(error, missing, store.url, f"read_head({missing!r})")
        run(store.write(key, record(b"deleted")))
        run(store.delete(key))
        what = f"read_head({key!r}) after a delete"
        error = _expect(ResultNotFoundError, what, store.read_head(key))
        _names(error, key, store.url, what)

    # -- conditional writes -----------------------------------------------------------

    def _refuses(self, store: Store, key: str, **condition: Any) -> None:
        """A store without conditional writes refuses them, in one line, and writes nothing."""
        spelled = ", ".join(f"{name}={value!r}" for name, value in condition.items())
        what = (
            f"write({key!r}, ..., {spelled}) on a store whose supports_conditional_write is false"
        )
        _expect(UnsupportedOperationError, what, store.write(key, Payload([b"x"]), **condition))
        assert run(store.exists(key)) is False, f"{what} wrote the key anyway"
        run(store.write(key, Payload([b"kept"])))
        _expect(UnsupportedOperationError, what, store.write(key, Payload([b"x"]), **condition))
        assert run(read_all(store, key)) == b"kept", f"{what} overwrote the value anyway"

    def test_create_only_writes(self, store: Store) -> None:
        key = "conditional/created"
        if not store.supports_conditional_write:
            self._refuses(store, key, if_absent=True)
            return
        first = _call("a create-only write", store.write(key, Payload([b"first"]), if_absent=True))
        assert first is not None, "a create-only write returned no version"
        what = "a second create-only write of the same key"
        error = _expect(ResultExistsError, what, store.write(key, Payload([b"2"]), if_absent=True))
        _names(error, key, store.url, what)
        assert run(read_all(store, key)) == b"first", f"{what} changed the value"
        assert run(store.stat(key)).version == first
        run(store.delete(key))
        again = _call(
            "a create-only write after a delete", store.write(key, Payload([b"3"]), if_absent=True)
        )
        assert again is not None and again != first
        assert run(read_all(store, key)) == b"3"
        listed = _call("list()", _keys(store))
        assert listed == [key], (
            f"after create-only writes, list() shows {listed}, not just [{key!r}]: never "
            "list records of your own (probes, version companions, locks)"
        )

    def test_compare_and_swap_writes(self, store: Store) -> None:
        key = "conditional/swapped"
        if not store.supports_conditional_write:
            self._refuses(store, key, if_version="kit-any-version")
            return
        what = "an if_version write of a missing key"
        bogus = "kit-no-such-version"
        error = _expect(
            VersionConflictError, what, store.write(key, Payload([b"x"]), if_version=bogus)
        )
        _names(error, key, store.url, what)
        assert run(store.exists(key)) is False, f"{what} created it"
        first = run(store.write(key, Payload([b"first"])))
        assert first is not None, "write returned no version, though conditional writes are on"
        second = _call(
            "a write if_version=current", store.write(key, Payload([b"second"]), if_version=first)
        )
        assert second is not None and second != first, f"versions {first!r} then {second!r}"
        assert run(read_all(store, key)) == b"second"
        what = "a write against a version already replaced"
        error = _expect(
            VersionConflictError, what, store.write(key, Payload([b"stale"]), if_version=first)
        )
        _names(error, key, store.url, what)
        assert run(read_all(store, key)) == b"second", f"{what} changed the value"
        other = "conditional/neighbour"
        theirs = run(store.write(other, Payload([b"the neighbour's value"])))
        assert theirs is not None, "write returned no version, though conditional writes are on"
        if theirs != second:  # versions that are content hashes may coincide; these do not
            what = f"a write of {key!r} against the version of {other!r}"
            error = _expect(
                VersionConflictError, what, store.write(key, Payload([b"wrong"]), if_version=theirs)
            )
            _names(error, key, store.url, what)
            assert run(read_all(store, key)) == b"second", f"{what} changed {key!r}"
            assert run(read_all(store, other)) == b"the neighbour's value", (
                f"{what} changed {other!r}: a compare-and-swap must match the key and the "
                "version together (UPDATE ... WHERE key = ? AND version = ?)"
            )
        run(store.delete(key))
        what = "a write against the version of a deleted record"
        _expect(VersionConflictError, what, store.write(key, Payload([b"late"]), if_version=second))
        assert run(store.exists(key)) is False, f"{what} recreated it"
        listed = _call("list()", _keys(store))
        assert listed == [other], (
            f"after compare-and-swap writes, list() shows {listed}, not just [{other!r}]: "
            "never list records of your own (probes, version companions, locks)"
        )

    def test_concurrent_create_only_writers_of_one_key_exactly_one_wins(self, store: Store) -> None:
        key, count, threads = "conditional/race", self.creators, 4
        values = [_pattern(f"creator {i}|".encode(), 2_000 + i) for i in range(count)]
        expected = (
            ResultExistsError if store.supports_conditional_write else UnsupportedOperationError
        )
        wins: list[tuple[int, str | None]] = []
        refused: list[int] = []
        other: list[str] = []

        async def create(i: int) -> None:
            try:
                version = await store.write(key, Payload([values[i]]), if_absent=True)
            except expected:
                refused.append(i)
            except Exception as exc:
                other.append(f"writer {i}: {_describe(exc)}")
            else:
                wins.append((i, version))

        async def several(first: int) -> None:
            async with anyio.create_task_group() as tg:
                for i in range(first, count, threads):
                    tg.start_soon(create, i)

        _run_in_threads(
            [
                functools.partial(_in_a_thread_of_its_own, store, functools.partial(several, t))
                for t in range(threads)
            ],
            self.check_timeout,
        )
        assert not other, f"create-only writers failed unexpectedly: {other[:3]}"
        if not store.supports_conditional_write:
            assert not wins and run(store.exists(key)) is False, (
                "create-only writes on a store without conditional writes wrote the key"
            )
            return
        assert len(wins) == 1, (
            f"{len(wins)} of {count} concurrent create-only writers of one key won; exactly "
            "one must, the others get ResultExistsError: create-only writes must be atomic "
            "on the backend, never check-then-write"
        )
        winner, version = wins[0]
        assert len(refused) == count - 1
        assert run(read_all(store, key)) == values[winner], "the value is not the winner's"
        assert run(store.stat(key)).version == version

    def test_concurrent_compare_and_swap_increments_lose_no_update(self, store: Store) -> None:
        key, count, threads = "conditional/counter", self.incrementers, 4
        run(store.write(key, Payload([b"0"])))
        written: list[int] = []
        failures: list[str] = []
        supported = store.supports_conditional_write

        async def increment() -> None:
            try:
                if supported:
                    written.append(await _increment(store, key, attempts=count * 10))
                else:
                    await store.write(key, Payload([b"1"]), if_version="kit-any-version")
                    failures.append("an if_version write was accepted")
            except UnsupportedOperationError:
                if supported:
                    failures.append("UnsupportedOperationError, though supported")
            except Exception as exc:
                failures.append(_describe(exc))

        async def several(first: int) -> None:
            async with anyio.create_task_group() as tg:
                for _ in range(first, count, threads):
                    tg.start_soon(increment)

        _run_in_threads(
            [
                functools.partial(_in_a_thread_of_its_own, store, functools.partial(several, t))
                for t in range(threads)
            ],
            self.check_timeout,
        )
        assert not failures, f"incrementers failed: {failures[:3]}"
        final = run(read_all(store, key))
        if not supported:
            assert final == b"0", "if_version writes on a store without them changed the value"
            return
        assert sorted(written) == list(range(1, count + 1)) and final == str(count).encode(), (
            f"{count} concurrent compare-and-swap incrementers wrote {sorted(written)} and "
            f"left {final!r}: two writes succeeded against the same version, so updates were "
            "lost; if_version writes must be atomic on the backend"
        )

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

    def test_list_yields_each_of_many_keys_once(self, store: Store) -> None:
        keys = [f"many/{i % 7}/{i:05d}" for i in range(self.many_keys)]

        async def write_all() -> None:
            limiter = anyio.CapacityLimiter(self.concurrency)

            async def write(key: str) -> None:
                async with limiter:
                    await store.write(key, Payload([key.encode()]))

            async with anyio.create_task_group() as tg:
                for key in keys:
                    tg.start_soon(write, key)

        run(write_all())
        listed = _call("list('many/')", _listed(store, "many/"))
        twice = sorted(key for key, seen in collections.Counter(listed).items() if seen > 1)
        missing = sorted(set(keys) - set(listed))
        extra = sorted(set(listed) - set(keys))
        assert not (twice or missing or extra), (
            f"listing {len(keys)} keys yielded {len(listed)}: {len(twice)} twice "
            f"{twice[:3]}, {len(missing)} missing {missing[:3]}, {len(extra)} not written "
            f"{extra[:3]}; every key under the prefix must come exactly once (page boundaries?)"
        )
        assert run(_keys(store, "many/3/")) == sorted(k for k in keys if k.startswith("many/3/"))

        # The core lists through list_pages and list_details, which a store may override
        # with its own paging: they must hold the same keys, each once, across pages.
        async def paged() -> list[str]:
            return [key async for page in store.list_pages("many/") for key in page]

        async def detailed(after: str | None) -> list[str]:
            pages = store.list_details("many/", start_after=after)
            return [item.key async for page in pages for item in page]

        ordered = sorted(keys)
        cuts = {None, ordered[len(keys) // 2], ordered[min(len(keys) - 1, 999)]}
        listings = [("list_pages('many/')", _call("list_pages('many/')", paged()), keys)]
        for after in sorted(cuts, key=str):
            what = f"list_details('many/', start_after={after!r})"
            expected = [key for key in keys if after is None or key > after]
            listings.append((what, _call(what, detailed(after)), expected))
        for what, listed, expected in listings:
            twice = sorted(key for key, seen in collections.Counter(listed).items() if seen > 1)
            missing = sorted(set(expected) - set(listed))
            extra = sorted(set(listed) - set(expected))
            assert not (twice or missing or extra), (
                f"{what} yielded {len(listed)} keys of {len(expected)}: {len(twice)} twice "
                f"{twice[:3]}, {len(missing)} missing {missing[:3]}, {len(extra)} not expected "
                f"{extra[:3]}; every key under the prefix (after start_after) must come "
                "exactly once (page boundaries? a next page never asked for?)"
            )

    def test_awkward_keys_round_trip_and_list(self, store: Store) -> None:
        for key in AWKWARD_KEYS:
            run(store.write(key, Payload([key.encode()])))
        assert run(_keys(store)) == sorted(AWKWARD_KEYS)
        for key in AWKWARD_KEYS:
            assert run(read_all(store, key)) == key.encode()

    def test_listings_while_keys_are_overwritten_show_each_key_once(self, store: Store) -> None:
        """A listing taken while keys are overwritten shows each of them, once, and nothing
        else: no temporary or in-flight names (a write's temporary file, an upload not yet
        complete), no key missing (a write that deletes first). Values over 1 MiB, so
        blocking stores write in worker threads while the listing runs."""
        keys = [f"relisted/{i}" for i in range(6)]
        values = [_pattern(b"first value|", 1_100_000), _pattern(b"SECOND VALUE#", 1_200_001)]
        for key in keys:
            run(store.write(key, Payload([values[0]])))
        problems: list[str] = []
        listings = 0

        async def main() -> None:
            nonlocal listings
            done = anyio.Event()

            async def writer() -> None:
                try:
                    for turn in range(2):
                        for key in keys:
                            await store.write(key, Payload([values[(turn + 1) % 2]]))
                            await anyio.sleep(0)
                finally:
                    done.set()

            async def lister() -> None:
                nonlocal listings
                while not done.is_set():
                    try:
                        listed = await _listed(store, "relisted/")
                    except Exception as exc:
                        problems.append(f"the listing raised {_describe(exc)[:200]}")
                    else:
                        if sorted(listed) != keys:
                            problems.append(f"the listing showed {sorted(listed)[:8]}")
                    listings += 1
                    await anyio.sleep(0)

            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(writer)
                    tg.start_soon(lister)
                    tg.start_soon(lister)
            finally:
                await store.aclose()  # clients tied to this loop close before it ends

        anyio.run(main)
        assert not problems, (
            f"{len(problems)} of {listings} listings of 'relisted/' taken while its {len(keys)} "
            f"keys were overwritten were wrong (e.g. {problems[0]}): a listing shows every "
            "stored key exactly once, and never a temporary name or an unfinished write"
        )
        assert listings >= 2, f"too little overlap: {listings} listings"
        assert run(_keys(store, "relisted/")) == keys

    def test_list_pages_yield_the_keys_of_list(self, store: Store) -> None:
        """The core lists through ``list_pages``: its pages hold exactly ``list``'s keys."""
        keys = [f"pages/{i // 7}/{i}" for i in range(40)] + ["pagesx", "other/1"]
        for key in keys:
            run(store.write(key, Payload([b"v"])))

        async def pages(prefix: str) -> list[list[str]]:
            return [page async for page in store.list_pages(prefix)]

        for prefix in ("", "pages", "pages/", "pages/3/", "nothing/"):
            found = run(pages(prefix))
            assert all(isinstance(page, list) and page for page in found), found
            flat = [key for page in found for key in page]
            assert sorted(flat) == run(_keys(store, prefix)), prefix
            assert len(flat) == len(set(flat)), f"a key listed twice under {prefix!r}"

    def test_list_details_show_the_keys_of_list_and_only_true_md5s(self, store: Store) -> None:
        """``list_details`` lists ``list``'s keys (after ``start_after``); an ``md5`` it
        shows is the MD5 of the bytes a read returns now (also after an overwrite), and an
        ``md5`` that ``listed_md5`` promises is the MD5 of the payload's bytes, all its
        buffers: ``copy_all`` skips, and ``delete_expired`` deletes, on the strength of it."""
        import hashlib

        def payload_of(value: bytes, i: int) -> Payload:
            if i % 3 == 0:
                return Payload([value])
            cut = len(value) // 3  # several buffers, as the core writes records
            return Payload(
                [value[:cut], memoryview(value)[cut : 2 * cut], bytearray(value[2 * cut :])]
            )

        values = {f"details/{i // 7}/{i}": f"value {i}".encode() * (i + 1) for i in range(30)}
        promised: dict[str, str | None] = {}

        def write(key: str, value: bytes, i: int) -> None:
            payload = payload_of(value, i)
            promise = store.listed_md5(payload)
            assert promise is None or promise == hashlib.md5(value).hexdigest(), (
                f"listed_md5 of the {payload.size} bytes written to {key!r} (in "
                f"{len(payload.buffers)} buffers) is {promise}, not their MD5: it must be the "
                "MD5 of all the payload's bytes, or None"
            )
            promised[key] = promise
            _call(f"write({key!r})", store.write(key, payload))

        for i, (key, value) in enumerate(values.items()):
            write(key, value, i)

        async def details(prefix: str, after: str | None = None) -> list[Any]:
            pages = [page async for page in store.list_details(prefix, start_after=after)]
            assert all(isinstance(page, list) and page for page in pages), pages
            return [item for page in pages for item in page]

        def check(when: str) -> None:
            listed = _call("list_details('details/')", details("details/"))
            assert sorted(item.key for item in listed) == sorted(values)
            for item in listed:
                value = values[item.key]
                if item.size is not None:
                    assert item.size == len(value), (
                        f"{item.key}: list_details {when} shows size {item.size}; the value "
                        f"has {len(value)} bytes"
                    )
                if item.md5 is not None:
                    assert item.md5 == hashlib.md5(value).hexdigest(), (
                        f"{item.key}: list_details {when} shows md5 {item.md5}, not the MD5 "
                        "of its bytes (a stale one, from before an overwrite?)"
                    )
                expected = promised[item.key]
                assert expected is None or item.md5 in (expected, None), (
                    f"{item.key}: listed_md5 promised {expected}, the listing shows {item.md5}"
                )

        check("after the writes")
        for i, key in enumerate(sorted(values)):
            if i % 2:
                values[key] = f"overwritten {i}".encode() * (i + 2)
                write(key, values[key], i)
        check("after overwrites with other bytes")

        after = sorted(values)[10]
        later = run(details("details/", after))
        assert {item.key for item in later} <= {key for key in values if key > after}
        assert {item.key for item in later} >= {
            key for key in values if key > after and not key.startswith(after + "/")
        }

    def test_keys_differing_only_in_case_escaping_or_form_stay_apart(self, store: Store) -> None:
        """Keys are compared as exact strings: a backend that folds case, trims trailing
        spaces or dots, normalizes unicode, or decodes ``%xx`` and ``+`` in names would
        make two keys one record (and overwrite one with the other)."""
        groups = [
            ["alias/x y", "alias/x%20y", "alias/x+y", "alias/x%2520y"],
            ["alias/a%2Fb", "alias/a/b"],
            ["alias/Case", "alias/case", "alias/CASE"],
            ["alias/Straße", "alias/strasse"],
            ["alias/pad", "alias/pad ", "alias/pad."],
            ["alias/caf\u00e9", "alias/cafe\u0301"],
        ]
        keys = [key for group in groups for key in group]
        for key in keys:
            _call(f"write({key!r})", store.write(key, Payload([key.encode()])))
        for group in groups:
            for key in group:
                got = _call(f"read {key!r}", read_all(store, key))
                assert got == key.encode(), (
                    f"{key!r} reads back {got!r}: the keys {group} must be distinct records "
                    "(case folded, spaces or dots trimmed, unicode normalized, or %xx/+ decoded?)"
                )
        listed = _call("list('alias/')", _listed(store, "alias/"))
        assert sorted(listed) == sorted(keys), (
            f"list('alias/') shows {sorted(listed)}; expected every key as written: {sorted(keys)}"
        )
        assert _call("list('alias/c')", _keys(store, "alias/c")) == sorted(
            key for key in keys if key.startswith("alias/c")
        ), "a prefix must match case-sensitively"

    def test_resultstore_own_keys_round_trip_and_list(self, store: Store) -> None:
        """Keys under ``.resultstore/`` (lock leases, the expiry index) are ordinary keys
        to a store: gc finds expired records by listing them, so a store that drops
        dot-names from its listings would keep expired records until ``gc --full``."""
        own = [
            ".resultstore/expiry/2026010100/k/runs/7/result",
            ".resultstore/expiry/watermark",
            ".resultstore/locks/runs/7/result",
        ]
        for key in [*own, "runs/7/result"]:
            run(store.write(key, Payload([key.encode()])))
        assert run(_keys(store, ".resultstore/expiry/")) == sorted(own[:2])
        assert run(_keys(store)) == sorted([*own, "runs/7/result"])
        assert run(read_all(store, own[0])) == own[0].encode()
        assert run(store.delete(own[2])) in (True, None)
        assert run(_keys(store, ".resultstore/locks/")) == []

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


# -- opt-in mixins ------------------------------------------------------------------------


class UnreachableConformance:
    """A backend that cannot be reached is ``StorageUnavailableError``, from every method.

    Provide ``unreachable_store``: a store of your scheme whose backend cannot be
    reached (a loopback port nothing listens on, a stopped server).
    """

    unreachable_timeout: float = 30.0
    """Seconds every probe of the unreachable store may take together (retries included)."""

    @pytest.fixture
    def unreachable_store(self) -> Store:
        pytest.fail(
            "UnreachableConformance needs an `unreachable_store` fixture: a store of your "
            "scheme whose backend cannot be reached (a loopback port nothing listens on)",
            pytrace=False,
        )

    def test_an_unreachable_backend_is_storage_unavailable_naming_key_and_url(
        self, unreachable_store: Store
    ) -> None:
        _every_method_fails(
            unreachable_store,
            StorageUnavailableError,
            "on an unreachable backend",
            "unreachable",
            self.unreachable_timeout,
        )


def _every_method_fails(
    store: Store, kind: type[ResultStoreError], when: str, name: str, timeout: float
) -> None:
    """Every store method, and ResultStore's write and read, raise ``kind`` naming key and URL."""
    key, prefix = f"{name}/key", f"{name}/"
    probes: list[tuple[str, str, Callable[[], Coroutine[Any, Any, object]]]] = [
        (f"write({key!r})", key, lambda: store.write(key, Payload([b"x"]))),
        (f"open({key!r})", key, lambda: store.open(key)),
        (f"open({key!r}, start=1, end=3)", key, lambda: store.open(key, start=1, end=3)),
        (f"stat({key!r})", key, lambda: store.stat(key)),
        (f"exists({key!r})", key, lambda: store.exists(key)),
        (f"delete({key!r})", key, lambda: store.delete(key)),
        (f"list({prefix!r})", prefix, lambda: _keys(store, prefix)),
    ]
    if store.supports_conditional_write:
        probes += [
            (
                f"write({key!r}, if_absent=True)",
                key,
                lambda: store.write(key, Payload([b"x"]), if_absent=True),
            ),
            (
                f"write({key!r}, if_version=...)",
                key,
                lambda: store.write(key, Payload([b"x"]), if_version="kit-version"),
            ),
        ]
    started = time.monotonic()
    try:
        for what, named, probe in probes:
            what = f"{what} {when}"
            error = _expect(kind, what, probe())
            message = str(error)
            assert named in message and store.url in message, (
                f"{what}: the message must name {named!r} and {store.url}: {message!r}"
            )
            assert error.url == store.url, f"{what}: error.url is {error.url!r}"
            if named == key:
                assert error.key == key, f"{what}: error.key is {error.key!r}"
        results = ResultStore(store, retry=RetryPolicy(attempts=1, delay=0))
        for what, call in [
            ("ResultStore.write", lambda: results.write(1, key=key)),
            ("ResultStore.read", lambda: results.read(key, retry=False)),
        ]:
            error = _expect_call(kind, f"{what} ({when})", call)
            assert store.url in str(error)
    finally:
        closing = time.monotonic()
        try:
            run(store.aclose())
        except Exception as exc:
            pytest.fail(f"aclose() of a store {when} raised {_describe(exc)}")
        assert time.monotonic() - closing < timeout
    elapsed = time.monotonic() - started
    assert elapsed < timeout, f"the probes of a store {when} took {elapsed:.1f} s; give up sooner"


class DeniedConformance:
    """Refused credentials are ``AccessDeniedError``, from every method.

    Provide ``denied_store``: a store of your scheme whose backend refuses it (a wrong
    password or token). Not ``StorageUnavailableError``, which the core retries for
    ``RESULTSTORE_TIMEOUT`` and words as "check the host and port"; not a raw client error.
    """

    denied_timeout: float = 30.0
    """Seconds every probe of the denied store may take together."""

    @pytest.fixture
    def denied_store(self) -> Store:
        pytest.fail(
            "DeniedConformance needs a `denied_store` fixture: a store of your scheme "
            "made with credentials the backend refuses (a wrong password)",
            pytrace=False,
        )

    def test_refused_credentials_are_access_denied_naming_key_and_url(
        self, denied_store: Store
    ) -> None:
        _every_method_fails(
            denied_store,
            AccessDeniedError,
            "with refused credentials",
            "denied",
            self.denied_timeout,
        )


class ContainerMissingConformance:
    """A missing bucket, database or folder is ``ContainerMissingError``, from every method.

    Provide ``missing_container_store``: a store of your scheme whose container (the
    bucket, the database) does not exist and is not created by a write. Never
    ``ResultNotFoundError``, ``exists() == False`` or an empty listing: a mistyped
    bucket must not look like a store without that record (the core would retry reads
    of it, and ``gc``/``ls`` would report an empty store).
    """

    missing_container_timeout: float = 30.0
    """Seconds every probe of the store may take together."""

    @pytest.fixture
    def missing_container_store(self) -> Store:
        pytest.fail(
            "ContainerMissingConformance needs a `missing_container_store` fixture: a store "
            "of your scheme whose bucket or database does not exist",
            pytrace=False,
        )

    def test_a_missing_container_is_its_own_error_naming_key_and_url(
        self, missing_container_store: Store
    ) -> None:
        _every_method_fails(
            missing_container_store,
            ContainerMissingError,
            "whose container is missing",
            "nocontainer",
            self.missing_container_timeout,
        )


class SecretConformance:
    """A store made with a secret never shows it: not in its URL, repr, errors or logs.

    Provide ``secret_store``: a store of your scheme made with ``secret`` as its
    password or token (in the URL or an option). Override ``secret`` when the
    backend needs a particular one (the password of a test server). A working
    store has its missing-key and conflict errors checked; to check the errors
    of refused credentials or an unreachable backend too, add another class
    whose ``secret_store`` is made that way.
    """

    @pytest.fixture
    def secret(self) -> str:
        return f"kit-secret-{uuid.uuid4().hex}"

    @pytest.fixture
    def secret_store(self, secret: str) -> Store:
        pytest.fail(
            "SecretConformance needs a `secret_store` fixture: a store of your scheme made "
            "with the `secret` fixture's value as its password or token",
            pytrace=False,
        )

    def test_the_secret_never_shows(
        self, secret_store: Store, secret: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        store = secret_store
        forms = {secret, quote(secret, safe=""), quote_plus(secret)}

        def leaks(text: object) -> bool:
            return any(form in str(text) for form in forms)

        caplog.set_level(logging.INFO)
        for where, text in [("store.url", store.url), ("repr(store)", repr(store))]:
            assert not leaks(text), f"{where} shows the secret: {text!r}"
        assert not leaks(str(store)), "str(store) shows the secret"

        errors: list[tuple[str, BaseException]] = []

        def attempt(what: str, call: Callable[[], object]) -> None:
            try:
                result = call()
            except Exception as exc:
                errors.append((what, exc))
            else:
                if isinstance(result, Reader):
                    run(result.aclose())

        key, missing = "secret/key", "secret/missing"
        attempt(f"write({key!r})", lambda: run(store.write(key, Payload([b"v"]))))
        attempt(f"read {key!r}", lambda: run(read_all(store, key)))
        attempt(f"open({key!r}, start=1)", lambda: run(store.open(key, start=1)))
        attempt(f"stat({key!r})", lambda: run(store.stat(key)))
        attempt(f"exists({key!r})", lambda: run(store.exists(key)))
        attempt("list('secret/')", lambda: run(_keys(store, "secret/")))
        attempt(f"open({missing!r})", lambda: run(store.open(missing)))
        attempt(f"stat({missing!r})", lambda: run(store.stat(missing)))
        for _ in range(2):
            attempt(
                f"write({key!r}, if_absent=True)",
                lambda: run(store.write(key, Payload([b"w"]), if_absent=True)),
            )
        attempt(
            f"write({key!r}, if_version=...)",
            lambda: run(store.write(key, Payload([b"w"]), if_version="kit-stale-version")),
        )
        results = ResultStore(store, retry=RetryPolicy(attempts=1, delay=0))
        assert not leaks(repr(results)) and not leaks(results.storage_url)
        attempt("ResultStore.write", lambda: results.write({"v": 1}, key="secret/core"))
        attempt("ResultStore.read", lambda: results.read("secret/core", retry=False))
        attempt("ResultStore.read of a missing key", lambda: results.read(missing, retry=False))
        attempt(f"delete({key!r})", lambda: run(store.delete(key)))
        attempt(f"delete({missing!r})", lambda: run(store.delete(missing)))
        attempt("aclose()", lambda: run(store.aclose()))

        assert errors, "no operation failed, not even opening a missing key"
        for what, exc in errors:
            if not isinstance(exc, ResultStoreError):
                pytest.fail(_raw(what, exc))
            shown = [
                str(exc),
                repr(exc),
                *map(repr, exc.args),
                exc.key,
                exc.url,
                "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            ]
            assert not any(leaks(text) for text in shown), (
                f"{what} raised {type(exc).__name__} showing the secret (in its message, "
                f"attributes or the exceptions chained to it): {str(exc)[:300]!r}"
            )
        for record in caplog.records:
            assert not leaks(record.getMessage()), f"a log record shows the secret: {record}"


_OTHER_PROCESS = (
    "import sys\n"
    "from resultstore.testing import _other_process_main\n"
    "sys.exit(_other_process_main(sys.argv[1]))\n"
)


def _mp_value(who: str, i: int) -> bytes:
    return _pattern(f"{who} {i}|".encode(), 100_000 + i)


async def _share_backend(
    store: Store, me: str, other: str, rounds: int, conditional: bool, timeout: float
) -> dict[str, list[Any]]:
    """One side of two processes using one backend at once; returns its wins and errors."""
    errors: list[str] = []
    wins: list[int] = []
    allowed = {_mp_value(who, i) for who in (me, other) for i in range(rounds)}
    deadline = time.monotonic() + timeout

    async def wait_for(key: str) -> None:
        while not await store.exists(key):
            if time.monotonic() > deadline:
                raise AssertionError(f"{me}: {key} never appeared (after {timeout:g} s)")
            await anyio.sleep(0.01)

    await store.write(f"mp/{me}/ready", Payload([b"1"]))
    await wait_for(f"mp/{other}/ready")
    for i in range(rounds):
        await store.write(f"mp/{me}/{i}", Payload([_mp_value(me, i)]))
        await store.write("mp/shared", Payload([_mp_value(me, i)]))
        try:
            seen = await read_all(store, "mp/shared")
        except ResultNotFoundError:
            errors.append(f"{me} found mp/shared missing while both processes overwrote it")
        else:
            if seen not in allowed:
                errors.append(f"{me} read {len(seen)} bytes of mp/shared matching no value")
        if conditional:
            try:
                await store.write(f"mp/once/{i}", Payload([_mp_value(me, i)]), if_absent=True)
            except ResultExistsError:
                pass
            else:
                wins.append(i)
            await _increment(store, "mp/counter", attempts=50)
    await store.write(f"mp/{me}/done", Payload([b"1"]))
    await wait_for(f"mp/{other}/done")
    for i in range(rounds):
        try:
            data = await read_all(store, f"mp/{other}/{i}")
        except ResultNotFoundError:
            errors.append(f"{me} cannot find mp/{other}/{i}, written by the other process")
        else:
            if data != _mp_value(other, i):
                errors.append(f"{me} read mp/{other}/{i} wrong")
    return {"wins": wins, "errors": errors}


def _other_process_main(spec_text: str) -> int:
    """The second process of :meth:`MultiProcessConformance.test_two_processes_...`."""
    from resultstore.registry import resolve_store

    spec = json.loads(spec_text)
    store = resolve_store(spec["url"], **spec["options"])
    try:
        report = run(
            _share_backend(
                store, "child", "parent", spec["rounds"], spec["conditional"], spec["timeout"]
            )
        )
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        run(store.aclose())
    print(json.dumps(report))
    return 0


def _forked_child(store: Store, report_fd: int, rounds: int, timeout: float) -> NoReturn:
    """In a child after ``fork``: use the store, report "ok" or the error, exit at once.

    The store is used first from the thread that forked (where the store's per-thread
    state, a connection say, came along from the parent), then from a new thread.
    """
    code, message = 1, "?"
    try:
        signal.alarm(max(1, int(timeout)))  # the child ends by SIGALRM if it hangs
        # ``run`` makes this thread a loop of its own: the sync bridge sets the parent's
        # (which shares its selector with the parent) aside at fork.
        outcome: list[str] = []

        async def work(tag: str) -> None:
            for i in range(rounds):
                key, value = f"fork/child/{tag}{i}", f"child {tag}{i}".encode()
                await store.write(key, Payload([value]))
                if await read_all(store, key) != value:
                    raise AssertionError(f"{key} read back wrong in the child")
            if await read_all(store, "fork/before") != b"before":
                raise AssertionError("fork/before read back wrong in the child")
            if not await store.exists(f"fork/child/{tag}0"):
                raise AssertionError(f"exists('fork/child/{tag}0') is false in the child")
            listed = await _keys(store, f"fork/child/{tag}")
            if listed != sorted(f"fork/child/{tag}{i}" for i in range(rounds)):
                raise AssertionError(f"list('fork/child/{tag}') gave {listed} in the child")
            await store.aclose()  # closing the child's connections must not break the parent's

        def attempt(tag: str) -> None:
            try:
                run(work(tag))
                outcome.append("ok")
            except BaseException as exc:
                outcome.append(f"{'in a new thread: ' if tag == 'b' else ''}{_describe(exc)}")

        attempt("a")  # on the thread that forked
        if outcome == ["ok"]:
            thread = threading.Thread(target=attempt, args=("b",), daemon=True)
            thread.start()
            thread.join(timeout)
        message = next((said for said in outcome if said != "ok"), "ok" if outcome else "?")
        if len(outcome) < 2 and message == "ok":
            message = f"the child's new thread did not finish within {timeout:g} s"
        code = 0 if message == "ok" else 1
        os.write(report_fd, message.encode("utf-8", "replace")[:8000])
    finally:
        os._exit(code)


"""Event loops a forked child inherited: kept referenced, so they are never closed there."""


def _wait_for_child(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -signal.SIGKILL
        time.sleep(0.005)


class MultiProcessConformance:
    """Two processes use one backend at once, and the store survives ``fork``.

    ``store_url_for_other_process`` (default ``store.url``) and
    ``store_options_for_other_process`` (default ``{}``, JSON-serializable) are
    what a second interpreter passes to ``resolve_store`` to reach the same
    records; it inherits the environment (credentials from ``*_PASSWORD``
    variables, say). Set ``supports_fork = False`` where the backend's client
    cannot be used after ``fork`` at all.
    """

    supports_fork: bool = True
    """The store can be used in both parent and child after ``os.fork()``."""

    rounds_across_processes: int = 20
    """Writes, overwrites and conditional writes each process makes in the two-process check."""

    other_process_timeout: float = 120.0
    """Seconds the other process (or the forked child) may take."""

    @pytest.fixture
    def store_url_for_other_process(self, store: Store) -> str:
        return store.url

    @pytest.fixture
    def store_options_for_other_process(self) -> dict[str, Any]:
        return {}

    def test_two_processes_use_one_backend_at_once(
        self,
        store: Store,
        store_url_for_other_process: str,
        store_options_for_other_process: dict[str, Any],
    ) -> None:
        rounds, timeout = self.rounds_across_processes, self.other_process_timeout
        conditional = store.supports_conditional_write
        if conditional:
            run(store.write("mp/counter", Payload([b"0"])))
        spec = {
            "url": store_url_for_other_process,
            "options": store_options_for_other_process,
            "rounds": rounds,
            "conditional": conditional,
            "timeout": timeout,
        }
        child = subprocess.Popen(
            [sys.executable, "-c", _OTHER_PROCESS, json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            try:
                mine = run(_share_backend(store, "parent", "child", rounds, conditional, timeout))
            except Exception as exc:
                child.kill()
                _, said = child.communicate()
                raise AssertionError(f"{exc}; the other process said:\n{said[-3000:]}") from exc
            out, said = child.communicate(timeout=timeout)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert child.returncode == 0, (
            f"the other process failed (exit {child.returncode}):\n{said[-3000:]}"
        )
        theirs = json.loads(out.strip().splitlines()[-1])
        assert not mine["errors"] and not theirs["errors"], mine["errors"] + theirs["errors"]
        written = run(_keys(store, "mp/"))
        for who in ("parent", "child"):
            for i in range(rounds):
                assert f"mp/{who}/{i}" in written
        if conditional:
            for i in range(rounds):
                winners = [
                    who
                    for who, report in (("parent", mine), ("child", theirs))
                    if i in report["wins"]
                ]
                assert len(winners) == 1, (
                    f"create-only writes of mp/once/{i} from two processes: {winners or 'none'} "
                    "won; exactly one must"
                )
                assert run(read_all(store, f"mp/once/{i}")) == _mp_value(winners[0], i)
            counter = run(read_all(store, "mp/counter"))
            assert counter == str(2 * rounds).encode(), (
                f"two processes made {2 * rounds} compare-and-swap increments, the counter "
                f"says {counter!r}: updates were lost"
            )

    def test_parent_and_child_both_use_the_store_after_fork(self, store: Store) -> None:
        if not self.supports_fork:
            pytest.skip(f"{type(self).__name__}.supports_fork is false")
        if not hasattr(os, "fork"):
            pytest.skip("os.fork is not available on this platform")
        rounds, timeout = 5, self.other_process_timeout
        run(store.write("fork/before", Payload([b"before"])))
        assert run(read_all(store, "fork/before")) == b"before"  # connections are open now
        read_end, write_end = os.pipe()
        with warnings.catch_warnings():  # forking a process with threads, on purpose
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            os.close(read_end)
            _forked_child(store, write_end, rounds, timeout)
        os.close(write_end)
        try:
            for i in range(rounds):
                value = f"parent {i}".encode()
                run(store.write(f"fork/parent/{i}", Payload([value])))
                assert run(read_all(store, f"fork/parent/{i}")) == value
                assert run(store.exists("fork/before"))
        finally:
            status = _wait_for_child(pid, timeout)
            with os.fdopen(read_end, "rb") as report:
                said = report.read().decode("utf-8", "replace")
        assert status == 0, (
            f"after fork, the child could not use the store (exit {status}): {said or '?'}; "
            "never share a connection across fork: check os.getpid() and connect anew"
        )
        for tag in "ab":
            for i in range(rounds):
                key = f"fork/child/{tag}{i}"
                assert run(read_all(store, key)) == f"child {tag}{i}".encode(), key
        run(store.write("fork/after", Payload([b"after"])))
        assert run(read_all(store, "fork/after")) == b"after"
        assert len(run(_keys(store, "fork/"))) == 3 * rounds + 2
