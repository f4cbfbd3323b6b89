"""Locks and get_or_compute on every store with conditional writes: the API, by example.

Each lock is a lease record under ``.resultstore/locks/<key>`` (see resultstore.locks);
these tests use the public API only, except where a test says it looks at the lease.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from lockstores import lock_url, locks_redis  # noqa: F401 - fixtures
from resultstore import (
    InvalidKeyError,
    IsolationLevel,
    LockHeldError,
    LockNotHeldError,
    LockTimeoutError,
    Reason,
    ResultStore,
    RetryPolicy,
    StorageUnavailableError,
    UnsupportedOperationError,
)
from resultstore.stores.base import Payload
from resultstore.stores.memory import MemoryStore

MARGIN = 0.1  # the clock margin these tests run with (the default is 1 s)


@pytest.fixture
def store(lock_url: str) -> Iterator[ResultStore]:  # noqa: F811 - the imported fixture
    with ResultStore(lock_url, retry=RetryPolicy(attempts=3, delay=0.01)) as results:
        results.lock_clock_margin = MARGIN
        yield results


# -- acquire, release, holders --------------------------------------------------------


@pytest.mark.serial  # measures elapsed time
def test_acquire_is_idempotent_for_its_holder_and_refused_to_others(store: ResultStore) -> None:
    assert store.acquire_lock("job", holder="alice", hold_timeout=30)
    assert store.acquire_lock("job", holder="alice", hold_timeout=30)  # renews, still True
    assert store.is_locked("job")
    assert store.is_lock_holder("job", "alice")
    assert not store.is_lock_holder("job", "bob")

    started = time.monotonic()
    assert not store.acquire_lock("job", holder="bob", acquire_timeout=0)  # tries once
    assert not store.acquire_lock("job", holder="bob", acquire_timeout=0.2)
    waited = time.monotonic() - started
    assert 0.2 <= waited < 1.5, waited

    store.release_lock("job", holder="alice")
    assert not store.is_locked("job")
    assert store.acquire_lock("job", holder="bob", acquire_timeout=0)
    store.release_lock("job", holder="bob")


def test_release_by_a_holder_that_does_not_hold_it_is_a_clear_error(store: ResultStore) -> None:
    with pytest.raises(LockNotHeldError, match=r"'job'.*'alice' does not hold it \(it is not"):
        store.release_lock("job", holder="alice")
    store.acquire_lock("job", holder="alice", hold_timeout=30)
    with pytest.raises(LockNotHeldError) as caught:
        store.release_lock("job", holder="bob")
    error = caught.value
    assert error.reason is Reason.NOT_HELD and error.key == "job"
    assert store.storage_url in str(error) and "held by 'alice'" in str(error)
    assert store.is_lock_holder("job", "alice")  # the failed release changed nothing
    store.release_lock("job", holder="alice")
    with pytest.raises(LockNotHeldError):
        store.release_lock("job", holder="alice")  # released twice


def test_the_default_holder_is_this_thread(store: ResultStore) -> None:
    assert store.acquire_lock("job", hold_timeout=30)
    assert store.is_lock_holder("job")
    seen: dict[str, Any] = {}

    def other_thread() -> None:
        seen["holder"] = store.is_lock_holder("job")
        seen["acquired"] = store.acquire_lock("job", acquire_timeout=0)
        try:
            store.release_lock("job")
        except LockNotHeldError as exc:
            seen["release"] = exc

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert seen["holder"] is False and seen["acquired"] is False
    assert isinstance(seen["release"], LockNotHeldError)
    store.release_lock("job")


@pytest.mark.serial  # measures elapsed time
def test_wait_for_lock(store: ResultStore) -> None:
    assert store.wait_for_lock("job", timeout=0)  # not locked: at once
    store.acquire_lock("job", holder="alice", hold_timeout=30)
    started = time.monotonic()
    assert not store.wait_for_lock("job", timeout=0.1)
    assert 0.1 <= time.monotonic() - started < 1.5

    timer = threading.Timer(0.15, lambda: store.release_lock("job", holder="alice"))
    timer.start()
    try:
        started = time.monotonic()
        assert store.wait_for_lock("job", timeout=10)
        assert time.monotonic() - started < 2.0
    finally:
        timer.join()
    assert not store.is_locked("job")


@pytest.mark.serial  # measures elapsed time
def test_an_expired_lease_is_taken_over_and_its_holder_cannot_release_it(
    store: ResultStore,
) -> None:
    assert not store.is_locked("job")  # connected: the lease below starts now
    started = time.monotonic()  # the lease's 0.4 s start within the acquire below
    assert store.acquire_lock("job", holder="alice", hold_timeout=0.4)
    assert not store.acquire_lock("job", holder="bob", acquire_timeout=0)
    assert store.acquire_lock("job", holder="bob", acquire_timeout=5, hold_timeout=30)
    # Not before its expiry plus the clock margin (the time the two acquires took counts
    # within it), and promptly after it.
    assert 0.4 + MARGIN - 0.05 <= time.monotonic() - started < 0.4 + MARGIN + 1.5
    assert store.is_lock_holder("job", "bob") and not store.is_lock_holder("job", "alice")
    with pytest.raises(LockNotHeldError, match="held by 'bob'"):
        store.release_lock("job", holder="alice")
    store.release_lock("job", holder="bob")


@pytest.mark.serial  # measures elapsed time
def test_an_expired_lease_not_taken_over_is_still_released_by_its_holder(
    store: ResultStore,
) -> None:
    store.acquire_lock("job", holder="alice", hold_timeout=0.1)
    time.sleep(0.1 + MARGIN + 0.05)
    assert not store.is_locked("job")
    assert not store.is_lock_holder("job", "alice")
    store.release_lock("job", holder="alice")  # harmless: nobody took it


def test_a_lock_without_hold_timeout_lasts_until_released(store: ResultStore) -> None:
    store.acquire_lock("job", holder="alice")  # Prefect's default: no expiry
    assert not store.acquire_lock("job", holder="bob", acquire_timeout=0.1)
    store.release_lock("job", holder="alice")


def test_lock_context_manager_and_its_timeout(store: ResultStore) -> None:
    with store.lock("job", hold_timeout=30):
        assert store.is_lock_holder("job")
        timeout = pytest.raises(LockTimeoutError, match=r"'job'.*acquire_timeout=0.1 s")
        with timeout as caught, store.lock("job", holder="bob", acquire_timeout=0.1):
            pass  # pragma: no cover
        assert caught.value.reason is Reason.LOCKED and isinstance(caught.value, TimeoutError)
    assert not store.is_locked("job")

    with pytest.raises(ZeroDivisionError), store.lock("job"):
        1 / 0  # noqa: B018
    assert not store.is_locked("job")  # released on the way out


@pytest.mark.serial  # measures elapsed time
def test_a_block_that_outlives_its_lease_is_told_at_exit(store: ResultStore) -> None:
    lost = pytest.raises(LockNotHeldError, match=r"taken over|held by 'bob'")
    with lost, store.lock("job", holder="alice", hold_timeout=0.2):
        assert store.acquire_lock("job", holder="bob", acquire_timeout=5, hold_timeout=30)
    store.release_lock("job", holder="bob")


@pytest.mark.anyio
async def test_async_lock_api(store: ResultStore) -> None:
    async with store.alock("job", holder="alice", hold_timeout=30):
        assert await store.ais_locked("job")
        assert await store.ais_lock_holder("job", "alice")
        assert not await store.aacquire_lock("job", holder="bob", acquire_timeout=0)
    assert not await store.ais_locked("job")
    assert await store.aacquire_lock("job", holder="bob", acquire_timeout=0, hold_timeout=30)
    async with anyio.create_task_group() as tasks:

        async def release_soon() -> None:
            await anyio.sleep(0.2)
            await store.arelease_lock("job", holder="bob")

        tasks.start_soon(release_soon)
        assert await store.await_for_lock("job", timeout=10)


def test_threads_take_turns(store: ResultStore) -> None:
    """Each thread is its own holder: a read-modify-write under the lock loses no update."""
    store.write(0, "counter")
    inside: list[int] = []
    overlaps: list[int] = []

    def worker() -> None:
        for _ in range(4):
            with store.lock("counter", hold_timeout=30):
                inside.append(1)
                if len(inside) > 1:
                    overlaps.append(len(inside))
                value = store.read("counter").result
                store.write(value + 1, "counter")
                inside.pop()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == []
    assert store.read("counter").result == 12


# -- write(holder=) and isolation levels ---------------------------------------------


def test_write_with_holder_is_refused_while_another_holds_the_lock(store: ResultStore) -> None:
    store.write("free", "doc", holder="bob")  # not locked: anyone may write
    store.acquire_lock("doc", holder="alice", hold_timeout=30)
    store.write("alice's", "doc", holder="alice")
    with pytest.raises(LockHeldError, match=r"'doc'.*held by 'alice', not 'bob'") as caught:
        store.write("bob's", "doc", holder="bob")
    assert caught.value.reason is Reason.LOCKED
    assert store.read("doc").result == "alice's"
    store.release_lock("doc", holder="alice")
    store.write("bob's", "doc", holder="bob")


@pytest.mark.parametrize("lock_url", ["memory"], indirect=True)
def test_isolation_levels(store: ResultStore) -> None:
    assert store.supports_isolation_level(IsolationLevel.READ_COMMITTED)
    assert store.supports_isolation_level(IsolationLevel.SERIALIZABLE)
    assert store.supports_isolation_level("SERIALIZABLE")
    with pytest.raises(ValueError, match="unknown isolation level 'DIRTY'"):
        store.supports_isolation_level("DIRTY")


class _NoConditions(MemoryStore):
    """A store that cannot write conditionally (as many S3-compatible servers)."""

    supports_conditional_write = False


def test_a_store_without_conditional_writes_refuses_locks_in_one_line() -> None:
    store = ResultStore(_NoConditions("memory://no-conditions"))
    assert store.supports_isolation_level(IsolationLevel.READ_COMMITTED)
    assert not store.supports_isolation_level(IsolationLevel.SERIALIZABLE)
    calls = [
        lambda: store.acquire_lock("k"),
        lambda: store.release_lock("k"),
        lambda: store.is_locked("k"),
        lambda: store.is_lock_holder("k"),
        lambda: store.wait_for_lock("k"),
        lambda: store.lock("k").__enter__(),
        lambda: store.write(1, "k", holder="me"),
        lambda: store.get_or_compute("k", lambda: 1),
    ]
    for call in calls:
        with pytest.raises(UnsupportedOperationError) as caught:
            call()
        message = str(caught.value)
        assert "memory://no-conditions does not support" in message and "\n" not in message
        assert caught.value.reason is Reason.UNSUPPORTED
    assert store.get_or_compute("k", lambda: 1) if store.write(1, "k") else False  # a hit


@pytest.mark.parametrize("lock_url", ["memory"], indirect=True)
def test_bad_arguments_are_clear(store: ResultStore) -> None:
    with pytest.raises(ValueError, match="holder must be a non-empty string"):
        store.acquire_lock("k", holder="")
    with pytest.raises(ValueError, match="acquire_timeout must be None or a finite"):
        store.acquire_lock("k", acquire_timeout=-1)
    with pytest.raises(ValueError, match="hold_timeout must be None or a finite number"):
        store.acquire_lock("k", hold_timeout=0)
    with pytest.raises(ValueError, match="fn must be callable"):
        store.get_or_compute("k", 42)  # type: ignore[arg-type]


# -- the reserved namespace -----------------------------------------------------------


def test_leases_live_in_a_reserved_namespace_that_listings_never_show(store: ResultStore) -> None:
    store.write(1, "a/b")
    store.acquire_lock("a/b", holder="alice", hold_timeout=30)
    store.acquire_lock("other", holder="alice", hold_timeout=30)
    assert store.keys() == ["a/b"]
    assert [m.storage_key for m in store.list()] == ["a/b"]
    assert store.keys(".res") == []
    for key in (".resultstore/locks/a/b", ".resultstore", ".resultstore/x"):
        with pytest.raises(InvalidKeyError, match="reserved for resultstore's own records"):
            store.write(1, key)
        with pytest.raises(InvalidKeyError, match="reserved"):
            store.read(key)
    with pytest.raises(InvalidKeyError, match="reserved"):
        store.keys(".resultstore/")
    store.write(1, ".resultstore-not/x")  # only the exact first segment is reserved
    store.release_lock("a/b", holder="alice")
    store.release_lock("other", holder="alice")


# -- get_or_compute -------------------------------------------------------------------


def test_get_or_compute_computes_once_and_then_reads(store: ResultStore) -> None:
    calls: list[int] = []

    def square(x: int, *, plus: int = 0) -> int:
        calls.append(x)
        return x * x + plus

    assert store.get_or_compute("sq/3", square, 3, plus=1) == 10
    assert store.get_or_compute("sq/3", square, 3, plus=1) == 10
    assert calls == [3]
    assert store.read("sq/3").result == 10
    assert not store.is_locked("sq/3")


def test_get_or_compute_threads_compute_once(store: ResultStore) -> None:
    calls: list[str] = []

    def slow() -> str:
        calls.append(threading.current_thread().name)
        time.sleep(0.1)
        return "done"

    results: list[str] = []
    threads = [
        threading.Thread(target=lambda: results.append(store.get_or_compute("once", slow)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["done"] * 4
    assert len(calls) == 1


def test_an_expired_record_counts_as_absent(store: ResultStore) -> None:
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=1)
    store.write("stale", "r", expiration=past)
    assert store.get_or_compute("r", lambda: "fresh") == "fresh"
    assert store.read("r").result == "fresh"
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    assert store.get_or_compute("s", lambda: "x", expiration=soon) == "x"
    assert store.read_metadata("s").expiration == soon


def test_when_fn_raises_the_lock_is_released_and_the_next_caller_computes(
    store: ResultStore,
) -> None:
    def fails() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        store.get_or_compute("r", fails)
    assert not store.is_locked("r") and not store.exists("r")
    assert store.get_or_compute("r", lambda: 7) == 7


@pytest.mark.parametrize("lock_url", ["s3"], indirect=True)  # renewals reach S3 from a pool
@pytest.mark.serial  # measures elapsed time
def test_a_long_computation_keeps_its_lease(store: ResultStore) -> None:
    """hold_timeout=2 s, fn takes 3.2 s: renewals keep the others waiting, not computing.

    (2 s, not 1: with the suite's parallel workers on two cores, a renewal due every
    third of a 1 s lease was once late enough on S3 to lose it.)"""
    calls: list[int] = []

    def slow(n: int) -> int:
        calls.append(n)
        time.sleep(3.2)
        return n

    results: list[int] = []
    first = threading.Thread(
        target=lambda: results.append(store.get_or_compute("long", slow, 1, hold_timeout=2))
    )
    first.start()
    deadline = time.monotonic() + 30
    while not calls:  # the first caller holds the lease and computes
        assert time.monotonic() < deadline and first.is_alive()
        time.sleep(0.01)
    results.append(store.get_or_compute("long", slow, 2, hold_timeout=2))
    first.join()
    assert calls == [1] and results == [1, 1]


@pytest.mark.anyio
async def test_aget_or_compute_takes_sync_and_async_functions(store: ResultStore) -> None:
    calls: list[str] = []

    async def compute_async(name: str) -> str:
        calls.append(name)
        await anyio.sleep(0.2)
        return name.upper()

    def compute_sync(name: str) -> str:
        calls.append(name)
        time.sleep(0.2)
        return name.upper()

    async with anyio.create_task_group() as tasks:
        for _ in range(4):
            tasks.start_soon(store.aget_or_compute, "a", compute_async, "a")
            tasks.start_soon(store.aget_or_compute, "s", compute_sync, "s")
    assert sorted(calls) == ["a", "s"]
    assert await store.aget_or_compute("a", compute_async, "x") == "A"
    with pytest.raises(RuntimeError, match="async boom"):

        async def fails() -> None:
            raise RuntimeError("async boom")

        await store.aget_or_compute("f", fails)
    assert not await store.ais_locked("f")


# -- lost answers ---------------------------------------------------------------------


class _LosesAnswers(MemoryStore):
    """Applies every other conditional write and lease delete, then loses its answer (a
    reset after the request)."""

    lost = 0

    async def delete(self, key: str) -> bool:
        deleted = await super().delete(key)
        if key.startswith(".resultstore/"):
            type(self).lost += 1
            if type(self).lost % 2:
                raise StorageUnavailableError("connection reset by peer", key=key, url=self.url)
        return deleted

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str:
        version = await super().write(key, payload, if_absent=if_absent, if_version=if_version)
        if (if_absent or if_version) and key.startswith(".resultstore/"):
            type(self).lost += 1
            if type(self).lost % 2:
                raise StorageUnavailableError("connection reset by peer", key=key, url=self.url)
        return version


def test_a_lease_write_whose_answer_was_lost_is_settled_by_reading_it_back() -> None:
    store = ResultStore(_LosesAnswers("memory://loses-answers"))
    assert store.acquire_lock("job", holder="alice", hold_timeout=30)  # landed, answer lost
    assert store.is_lock_holder("job", "alice")
    assert not store.acquire_lock("job", holder="bob", acquire_timeout=0)
    store.release_lock("job", holder="alice")  # deleted (a live lease), answer maybe lost
    assert not store.is_locked("job")
    store.acquire_lock("job", holder="alice", hold_timeout=30)
    store.release_lock("job", holder="alice")
    assert not store.is_locked("job")
    with pytest.raises(LockNotHeldError):
        store.release_lock("job", holder="alice")  # released already
    store.acquire_lock("job", holder="alice", hold_timeout=3)  # too near its end to delete
    store.release_lock("job", holder="alice")  # so a "released" record, by compare-and-swap
    assert not store.is_locked("job") and store.acquire_lock("job", holder="bob")
    store.release_lock("job", holder="bob")
    assert store.get_or_compute("r", lambda: 5) == 5
    assert _LosesAnswers.lost >= 5
