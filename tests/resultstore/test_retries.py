"""Retries: a record not written yet (reads), or storage briefly unreachable (every
operation), is tried again, within the retry policy's attempts and deadline and the
store's timeout; anything that cannot get better by waiting fails at once."""

from __future__ import annotations

import collections
import re
import threading
import time
from collections import Counter as Counter_
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from resultstore import (
    ConfigurationError,
    IntegrityError,
    ResultNotFoundError,
    ResultStore,
    RetryPolicy,
    SerializationError,
    StorageError,
    StorageUnavailableError,
)
from resultstore._loops import run_sync
from resultstore.stores import base as stores_base
from resultstore.stores.base import Payload, Reader
from resultstore.stores.memory import MemoryStore


class CountingStore(MemoryStore):
    """A memory store that counts opens and can fail the first ``failures`` of them."""

    def __init__(self, url: str, failures: int = 0, error: type[Exception] = ConnectionError):
        super().__init__(url)
        self.opens = 0
        self.failures = failures
        self.error = error

    async def open(self, key: str, *, start: int = 0, end: int | None = None) -> Reader:
        self.opens += 1
        if self.opens <= self.failures:
            raise self.error("connection reset by peer")
        return await super().open(key, start=start, end=end)


class Counter:
    """An async callable that fails with ``error`` until call number ``succeed_on``."""

    def __init__(self, error: Exception, succeed_on: int | None = None) -> None:
        self.calls = 0
        self.error = error
        self.succeed_on = succeed_on

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls == self.succeed_on:
            return "done"
        raise self.error


def not_found() -> ResultNotFoundError:
    return ResultNotFoundError("no result under key 'k' in memory://x", key="k", url="memory://x")


# -- the policy on its own -------------------------------------------------------------


@pytest.mark.parametrize("attempts", [2, 3, 7])
def test_retries_exactly_the_configured_attempts(attempts: int) -> None:
    counter = Counter(not_found())
    policy = RetryPolicy(attempts=attempts, delay=0)
    with pytest.raises(ResultNotFoundError) as caught:
        run_sync(policy.call(counter))
    assert counter.calls == attempts
    gave_up = rf"\(gave up after {attempts} attempts over \d+\.\ds\)"
    assert re.fullmatch(rf"no result under key 'k' in memory://x {gave_up}", str(caught.value))
    assert (caught.value.key, caught.value.url) == ("k", "memory://x")


def test_success_after_failures_returns_the_value() -> None:
    counter = Counter(not_found(), succeed_on=3)
    assert run_sync(RetryPolicy(attempts=5, delay=0).call(counter)) == "done"
    assert counter.calls == 3


@pytest.mark.parametrize(
    "error",
    [not_found(), StorageUnavailableError("storage is down", key="k", url="s3://b")],
    ids=["not found", "unavailable"],
)
def test_what_can_get_better_is_retried(error: Exception) -> None:
    counter = Counter(error)
    with pytest.raises(type(error)):
        run_sync(RetryPolicy(attempts=4, delay=0).call(counter))
    assert counter.calls == 4


@pytest.mark.parametrize(
    "error",
    [
        IntegrityError("record 'k' is damaged", key="k"),
        SerializationError("cannot decode"),
        StorageError("access denied", key="k"),
        ConfigurationError("bad option"),
        ValueError("a bug"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_what_cannot_get_better_fails_at_once(error: Exception) -> None:
    counter = Counter(error)
    with pytest.raises(type(error)) as caught:
        run_sync(RetryPolicy(attempts=10, delay=1).call(counter))
    assert counter.calls == 1
    assert caught.value is error
    assert "gave up" not in str(caught.value)


def test_a_single_attempt_reports_the_error_as_is() -> None:
    error = not_found()
    with pytest.raises(ResultNotFoundError) as caught:
        run_sync(RetryPolicy(attempts=1).call(Counter(error)))
    assert caught.value is error


def test_delays_grow_by_backoff_up_to_max_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(anyio, "sleep", fake_sleep)
    policy = RetryPolicy(attempts=6, delay=0.1, backoff=2.0, max_delay=0.5)
    with pytest.raises(ResultNotFoundError, match="gave up after 6 attempts"):
        run_sync(policy.call(Counter(not_found())))
    assert slept == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])  # no sleep after the last attempt


def test_a_long_policy_stays_capped() -> None:
    policy = RetryPolicy(attempts=100_000, delay=0.1, backoff=10.0, max_delay=2.0)
    assert policy.sleep_after(99_999) == 2.0


def test_jitter_spreads_each_delay_below_its_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr(anyio, "sleep", fake_sleep)
    for jitter, low in (("equal", 0.5), ("full", 0.0)):
        slept.clear()
        policy = RetryPolicy(attempts=200, delay=0.1, backoff=2.0, max_delay=0.4, jitter=jitter)
        with pytest.raises(ResultNotFoundError):
            run_sync(policy.call(Counter(not_found())))
        bases = [min(0.1 * 2**i, 0.4) for i in range(199)]
        assert all(low * b <= s <= b for s, b in zip(slept, bases, strict=True))
        assert len(set(slept)) > 150  # really random, not a fixed fraction


@pytest.mark.serial
def test_the_deadline_stops_retrying_before_a_sleep_would_pass_it() -> None:
    counter = Counter(not_found())
    policy = RetryPolicy(attempts=100, delay=0.1, deadline=0.35)
    started = time.monotonic()
    with pytest.raises(ResultNotFoundError) as caught:
        run_sync(policy.call(counter))
    elapsed = time.monotonic() - started
    assert counter.calls == 4  # at 0, 0.1, 0.2, 0.3 s: one more sleep would end at 0.4 s
    assert elapsed < 0.35
    assert re.search(r"\(gave up after 4 attempts over 0\.3s\)$", str(caught.value))


def test_a_call_timeout_also_bounds_the_retries() -> None:
    # ResultStore passes its timeout: no sleep ends past it, the last error is raised.
    counter = Counter(not_found())
    with pytest.raises(ResultNotFoundError, match="gave up after 3 attempts"):
        run_sync(RetryPolicy(attempts=100, delay=0.2).call(counter, timeout=0.5))
    assert counter.calls == 3


def test_only_narrows_what_is_retried() -> None:
    counter = Counter(not_found())
    policy = RetryPolicy(attempts=5, delay=0)
    with pytest.raises(ResultNotFoundError):
        run_sync(policy.call(counter, only=StorageUnavailableError))
    assert counter.calls == 1


class Sleepy:
    """An async callable that waits before it fails with ``error`` (until ``succeed_on``)."""

    def __init__(self, error: Exception, succeed_on: int) -> None:
        self.calls = 0
        self.error = error
        self.succeed_on = succeed_on

    async def __call__(self) -> str:
        self.calls += 1
        await anyio.sleep(0.01)
        if self.calls == self.succeed_on:
            return "done"
        raise self.error


def test_an_attempt_that_waits_and_fails_is_retried_within_the_timeout() -> None:
    # The first attempt runs before any retry loop or timer exists; one that waits
    # and then fails is still retried, and the timeout still bounds it all.
    sleepy = Sleepy(not_found(), succeed_on=3)
    assert run_sync(RetryPolicy(attempts=5, delay=0).call(sleepy, timeout=5)) == "done"
    assert sleepy.calls == 3
    stuck = Sleepy(not_found(), succeed_on=0)
    with pytest.raises(TimeoutError):
        run_sync(RetryPolicy(attempts=10**6, delay=0).call(stuck, timeout=0.2))
    assert stuck.calls > 3


def test_an_attempt_that_fails_before_returning_an_awaitable_is_retried() -> None:
    calls = []

    def attempt() -> Any:  # no coroutine function: it fails as it is called
        calls.append(1)
        if len(calls) < 3:
            raise StorageUnavailableError("storage is down", key="k", url="s3://b")
        return Awaitable_("ok", wait=False)

    assert run_sync(RetryPolicy(attempts=5, delay=0).call(attempt, timeout=5)) == "ok"
    assert len(calls) == 3


class Awaitable_:
    """An awaitable that is no coroutine (as a Future or an anyio event is)."""

    def __init__(self, value: str, wait: bool) -> None:
        self.value, self.wait = value, wait

    def __await__(self) -> Any:
        if self.wait:
            yield from anyio.sleep(0).__await__()
        return self.value


@pytest.mark.parametrize("wait", [False, True])
def test_any_awaitable_can_be_retried_with_a_timeout(wait: bool) -> None:
    assert run_sync(RetryPolicy().call(lambda: Awaitable_("ok", wait), timeout=5)) == "ok"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"attempts": 0}, "retry attempts must be at least 1, got 0"),
        ({"attempts": 2.5}, "retry attempts must be a whole number, got attempts=2.5"),
        ({"attempts": True}, "attempts=True"),
        ({"delay": -1}, "delay=-1"),
        ({"delay": float("inf")}, "delay=inf"),
        ({"delay": float("nan")}, "delay=nan"),
        ({"delay": True}, "delay=True"),
        ({"delay": "1"}, "delay='1'"),
        ({"backoff": 0.5}, "backoff=0.5"),
        ({"backoff": float("inf")}, "backoff=inf"),
        ({"backoff": float("nan")}, "backoff=nan"),
        ({"max_delay": -1}, "max_delay=-1"),
        ({"max_delay": float("inf")}, "max_delay=inf"),
        ({"deadline": -1}, "deadline=-1"),
        ({"deadline": float("inf")}, "deadline=inf"),
        ({"deadline": float("nan")}, "deadline=nan"),
        ({"jitter": "half"}, "jitter='half'"),
        ({"retry_on": [ValueError]}, "retry_on must be a tuple of exception classes"),
    ],
)
def test_nonsense_policies_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)) as caught:
        RetryPolicy(**options)
    assert "\n" not in str(caught.value)


# -- retries through ResultStore ----------------------------------------------------------


def test_reading_a_missing_key_retries_then_names_key_url_and_attempts(memory_url: str) -> None:
    backend = CountingStore(memory_url)
    store = ResultStore(backend, retry=RetryPolicy(attempts=4, delay=0.01))
    with pytest.raises(ResultNotFoundError) as caught:
        store.read("results/missing")
    assert backend.opens == 4
    message = str(caught.value)
    assert message.startswith(f"no result under key 'results/missing' in {memory_url} ")
    assert "(gave up after 4 attempts over " in message
    assert (caught.value.key, caught.value.url) == ("results/missing", memory_url)


def test_retry_false_fails_fast_even_with_a_patient_policy(memory_url: str) -> None:
    backend = CountingStore(memory_url)
    store = ResultStore(backend)  # the default policy: 10 attempts, 0.25 s apart
    assert (store.retry.attempts, store.retry.delay) == (10, 0.25)
    with pytest.raises(ResultNotFoundError) as caught:
        store.read("missing", retry=False)
    assert backend.opens == 1  # one try, no waiting
    assert str(caught.value) == f"no result under key 'missing' in {store.storage_url}"


def test_damaged_records_are_read_once(memory_url: str) -> None:
    backend = CountingStore(memory_url)
    store = ResultStore(backend, retry=RetryPolicy(attempts=10, delay=1))
    store.write("value", key="k")
    data, version = backend._records["k"]
    backend._records["k"] = (data[:-1], version)  # lose the last byte
    with pytest.raises(IntegrityError, match="'k'"):
        store.read("k")
    assert backend.opens == 1  # damage is final: read once, never retried


def test_unreachable_storage_is_retried_until_it_answers(memory_url: str) -> None:
    backend = CountingStore(memory_url, failures=2)
    store = ResultStore(backend, retry=RetryPolicy(attempts=5, delay=0.01))
    store.write("patience", key="k")
    assert store.read("k").result == "patience"
    assert backend.opens == 3


def test_storage_that_stays_unreachable_gives_up_with_one_line(memory_url: str) -> None:
    backend = CountingStore(memory_url, failures=100)
    store = ResultStore(backend, retry=RetryPolicy(attempts=3, delay=0.01))
    with pytest.raises(StorageUnavailableError) as caught:
        store.read("k")
    assert backend.opens == 3
    message = str(caught.value)
    assert message.startswith(
        f"cannot read key 'k': {memory_url} is unreachable "
        "(ConnectionError: connection reset by peer); check the URL and network"
    )
    assert "gave up after 3 attempts" in message
    assert "\n" not in message
    assert isinstance(caught.value.__cause__, ConnectionError)


def test_other_backend_failures_become_one_line_storage_errors(memory_url: str) -> None:
    backend = CountingStore(memory_url, failures=100, error=PermissionError)
    store = ResultStore(backend, retry=RetryPolicy(attempts=5, delay=0.01))
    with pytest.raises(StorageError) as caught:
        store.read("k")
    assert backend.opens == 1  # not retried: waiting will not grant the permission
    assert not isinstance(caught.value, StorageUnavailableError)
    assert str(caught.value) == (
        f"cannot read key 'k' in {memory_url}: PermissionError: connection reset by peer"
    )


class FlakyStore(MemoryStore):
    """A memory store whose every operation fails with ConnectionError ``failures`` times."""

    def __init__(self, url: str, failures: int = 2) -> None:
        super().__init__(url)
        self.failures = failures
        self.calls: Counter_[str] = collections.Counter()

    def _flake(self, name: str) -> None:
        self.calls[name] += 1
        if self.calls[name] <= self.failures:
            raise ConnectionError(f"{name} cut off")

    async def write(self, key: str, payload: Payload) -> None:
        await super().write(key, payload)
        self._flake("write")  # the write landed, its answer did not

    async def exists(self, key: str) -> bool:
        self._flake("exists")
        return await super().exists(key)

    async def delete(self, key: str) -> bool:
        deleted = await super().delete(key)
        self._flake("delete")  # deleted, but the caller never hears it
        return deleted

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        for number, key in enumerate(sorted([k async for k in super().list(prefix)])):
            if number == 3:
                self._flake("list")  # cut off after three keys
            yield key


@pytest.mark.parametrize("operation", ["write", "exists", "delete", "keys", "list"])
def test_every_operation_retries_unreachable_storage(
    memory_url: str, operation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stores_base, "LIST_PAGE", 2)  # pages of keys yielded before the cut
    backend = FlakyStore(memory_url, failures=0)
    store = ResultStore(backend, retry=RetryPolicy(attempts=3, delay=0.01))
    for i in range(6):
        store.write(i, key=f"k/{i}")
    backend.failures, backend.calls = 2, collections.Counter()

    if operation == "write":
        assert store.write("again", key="k/0") == "k/0"
        assert store.read("k/0").result == "again"
    elif operation == "exists":
        assert store.exists("k/1") is True
    elif operation == "delete":
        # One request per attempt, no presence check first. The first attempt deleted
        # but lost its answer, so the retry's "nothing there" is reported as unknown.
        assert store.delete("k/2") is None
        assert backend.calls["delete"] == 3 and backend.calls["exists"] == 0
        assert store.exists("k/2") is False
    elif operation == "keys":
        # A listing cut off is restarted; the keys seen before are not yielded twice.
        assert store.keys() == [f"k/{i}" for i in range(6)]
    else:
        assert [m.storage_key for m in store.list("k/")] == [f"k/{i}" for i in range(6)]
    expected = "list" if operation in ("keys", "list") else operation
    assert backend.calls[expected] == 3


def test_a_delete_says_whether_there_was_a_record(memory_url: str) -> None:
    store = ResultStore(memory_url)
    store.write(1, key="k")
    assert store.delete("k") is True
    assert store.delete("k") is False  # idempotent: nothing there, no error


def test_a_missing_record_is_not_retried_outside_reads(memory_url: str) -> None:
    backend = CountingStore(memory_url)
    store = ResultStore(backend, retry=RetryPolicy(attempts=5, delay=0.01))
    with pytest.raises(ResultNotFoundError) as caught:
        store.read_metadata("missing")
    assert backend.opens == 1
    assert "gave up" not in str(caught.value)


def test_retry_false_and_no_retry_states_try_once_even_for_unreachable_storage(
    memory_url: str,
) -> None:
    backend = CountingStore(memory_url, failures=100)
    store = ResultStore(backend, retry=RetryPolicy(attempts=5, delay=0.01))
    with pytest.raises(StorageUnavailableError) as caught:
        store.read("k", retry=False)
    assert backend.opens == 1
    assert "gave up" not in str(caught.value)


@pytest.mark.serial  # about wall-clock time: run on quiet cores
def test_unreachable_storage_gives_up_at_the_timeout_not_the_attempts(memory_url: str) -> None:
    backend = CountingStore(memory_url, failures=1000)
    store = ResultStore(backend, retry=RetryPolicy(attempts=1000, delay=0.1), timeout=0.45)
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError, match=r"gave up after 5 attempts over 0\.4s"):
        store.read("k")
    assert time.monotonic() - started < 0.45
    assert backend.opens == 5


def test_a_late_writer_is_waited_for(file_url: str) -> None:
    reader = ResultStore(file_url, retry=RetryPolicy(attempts=20, delay=0.05))
    writer = ResultStore(file_url)

    def write_later() -> None:
        time.sleep(0.6)
        writer.write({"finally": "here"}, key="slow/result")

    thread = threading.Thread(target=write_later)
    started = time.monotonic()
    thread.start()
    try:
        assert reader.read("slow/result").result == {"finally": "here"}
    finally:
        thread.join()
    assert time.monotonic() - started >= 0.55  # it really waited for the writer


@pytest.mark.anyio
async def test_a_late_writer_is_waited_for_by_async_reads(memory_url: str) -> None:
    store = ResultStore(memory_url, retry=RetryPolicy(attempts=20, delay=0.05))

    async def write_later() -> None:
        await anyio.sleep(0.3)
        await store.awrite("async value", key="k")

    async with anyio.create_task_group() as tg:
        tg.start_soon(write_later)
        assert (await store.aread("k")).result == "async value"


# -- configuration from the environment ------------------------------------------------------


def test_environment_sets_the_read_policy(monkeypatch: pytest.MonkeyPatch, memory_url: str) -> None:
    monkeypatch.setenv("RESULTSTORE_READ_ATTEMPTS", "3")
    monkeypatch.setenv("RESULTSTORE_READ_RETRY_DELAY", "0.01")
    backend = CountingStore(memory_url)
    store = ResultStore(backend)
    assert store.retry == RetryPolicy(attempts=3, delay=0.01)
    with pytest.raises(ResultNotFoundError, match=r"gave up after 3 attempts"):
        store.read("missing")
    assert backend.opens == 3
    # A policy given in code wins.
    assert ResultStore(backend, retry=RetryPolicy(attempts=2)).retry.attempts == 2


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RESULTSTORE_READ_ATTEMPTS", "0"),
        ("RESULTSTORE_READ_ATTEMPTS", "many"),
        ("RESULTSTORE_READ_RETRY_DELAY", "-1"),
    ],
)
def test_bad_retry_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as caught:
        ResultStore("memory://x")
    message = str(caught.value)
    assert message.startswith(f"invalid setting {variable}: ")
    assert message.endswith("; fix or unset it")
    assert "\n" not in message


def test_settings_are_read_when_a_store_is_made(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    before = ResultStore(f"file://{tmp_path}")
    monkeypatch.setenv("RESULTSTORE_READ_ATTEMPTS", "2")
    after = ResultStore(f"file://{tmp_path}")
    assert (before.retry.attempts, after.retry.attempts) == (10, 2)
