"""Both S3 stores through a proxy that resets, stalls and fails requests (tests/faultproxy.py).

``s3://`` (s3fs/botocore) and ``s3+obstore://`` (obstore) run the same scenarios.

Every operation must either succeed or fail, within a bounded time, with a one-line
:class:`StorageError`; a read never returns anything but a value that may really be
stored, and no acknowledged write is ever lost.

A ledger tracks, for every key, the set of values it may hold: an acknowledged write or
delete leaves exactly one possibility; a failed one adds its value (or absence) to the
possibilities, since the server may or may not have applied it (``reset_mid`` resets the
connection after the server answered). Keys are partitioned among the workers, so the
operations on one key are sequential, and a successful read or ``exists`` narrows the
possibilities to what it saw. The proxy never forwards a request late, so a failed
write cannot land after the client has moved on.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from faultproxy import FAULT_KINDS, FaultProxy
from resultstore import (
    ResultNotFoundError,
    ResultStore,
    RetryPolicy,
    StorageError,
    StorageUnavailableError,
)
from seaweedfs import SeaweedFS

# Client settings that bound a stalled request: botocore gives up on a silent
# connection after READ_TIMEOUT and retries (standard mode, MAX_ATTEMPTS in all).
READ_TIMEOUT = 2.0
MAX_ATTEMPTS = 3
CLIENT_CONFIG = {
    "connect_timeout": 2,
    "read_timeout": READ_TIMEOUT,
    "retries": {"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
}
STALL_SECONDS = READ_TIMEOUT + 0.5
# Worst case of one operation: botocore's attempts with their backoff (under 1 s, then
# under 2 s), s3fs's own retries of timeouts, and a read's retry policy on top. Far above
# what happens in practice, far below "hangs".
OP_BOUND = 30.0

ABSENT = "<absent>"
OPERATIONS = ("write", "read", "exists", "delete")
WEIGHTS = (4, 3, 2, 1)


@pytest.fixture(params=["s3", "s3+obstore"])
def scheme(request: pytest.FixtureRequest) -> str:
    """Each test runs against both S3 stores."""
    return str(request.param)


@pytest.fixture
def proxy(s3_server: SeaweedFS) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", s3_server.s3_port, stall_seconds=STALL_SECONDS, seed=9) as p:
        yield p


def store_through(
    scheme: str,
    proxy: FaultProxy,
    s3_server: SeaweedFS,
    bucket: str,
    *,
    max_attempts: int = MAX_ATTEMPTS,
    **options: Any,
) -> ResultStore:
    """A ResultStore whose S3 client talks to the server through ``proxy``.

    ``max_attempts`` is the client's (1: no retries, so faults surface as errors).
    """
    storage_options = s3_server.storage_options()
    storage_options["client_kwargs"] = {
        **storage_options["client_kwargs"],
        "endpoint_url": proxy.url,
    }
    if scheme == "s3":
        storage_options["config_kwargs"] = {
            **storage_options["config_kwargs"],
            **CLIENT_CONFIG,
            "retries": {"max_attempts": max_attempts, "mode": "standard"},
        }
    else:  # the same bounds in obstore's terms
        storage_options["client_options"] = {
            "connect_timeout": f"{CLIENT_CONFIG['connect_timeout']}s",
            "read_timeout": f"{READ_TIMEOUT}s",
        }
        storage_options["retry_config"] = {"max_retries": max_attempts - 1}
    return ResultStore(
        f"{scheme}://{bucket}/faults-{uuid.uuid4().hex[:10]}",
        storage_options={**storage_options, **options},
        retry=RetryPolicy(attempts=3, delay=0.05),
    )


@dataclass
class Ledger:
    """What each key may hold, and what happened."""

    possible: dict[str, set[Hashable]]
    ok: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    slowest: float = 0.0

    def expect(self, key: str, seen: Hashable, op: str) -> None:
        if seen not in self.possible[key]:
            shown = "absent" if seen == ABSENT else f"value #{_number(seen)}"
            could = sorted(
                "absent" if v == ABSENT else f"#{_number(v)}" for v in self.possible[key]
            )
            self.problems.append(f"{op} {key!r} saw {shown}; it could only hold {could}")
        self.possible[key] = {seen}


def _number(value: Hashable) -> int:
    assert isinstance(value, tuple)
    number = value[1]
    assert isinstance(number, int)
    return number


def _value(key: str, number: int, rng: random.Random, big: bool) -> tuple[str, int, bytes]:
    """A value that names its key and number; its padding makes sizes vary."""
    size = rng.randrange(6_000_000, 11_000_000) if big else rng.randrange(0, 3000)
    return (key, number, bytes([number % 256]) * size)


async def _one_op(
    store: ResultStore, ledger: Ledger, rng: random.Random, key: str, number: int, big: bool
) -> None:
    op = rng.choices(OPERATIONS, WEIGHTS)[0]
    value = _value(key, number, rng, big)
    started = time.monotonic()
    try:
        if op == "write":
            await store.awrite(value, key=key)
            ledger.possible[key] = {value}
        elif op == "read":
            try:
                record = await store.aread(key)
            except ResultNotFoundError:
                ledger.expect(key, ABSENT, op)
            else:
                ledger.expect(key, record.result, op)
        elif op == "exists":
            if await store.aexists(key):
                present = ledger.possible[key] - {ABSENT}
                if not present:
                    ledger.problems.append(f"exists {key!r} is True, but it must be absent")
                ledger.possible[key] = present or ledger.possible[key]
            else:
                ledger.expect(key, ABSENT, op)
        else:
            deleted = await store.adelete(key)  # None: the store cannot say (S3)
            if deleted is False and ABSENT not in ledger.possible[key]:
                ledger.problems.append(f"delete {key!r} found nothing, but it held a value")
            if deleted is True and ledger.possible[key] == {ABSENT}:
                ledger.problems.append(f"delete {key!r} deleted something, but it was absent")
            ledger.possible[key] = {ABSENT}
        ledger.ok[op] += 1
    except StorageError as exc:
        ledger.failed[op] += 1
        message = str(exc)
        if "\n" in message or repr(key) not in message:
            ledger.problems.append(f"{op} {key!r}: not a one-line error naming the key: {message}")
        if op == "write":
            ledger.possible[key].add(value)
        elif op == "delete":
            ledger.possible[key].add(ABSENT)
    except Exception as exc:  # IntegrityError, a raw botocore/aiohttp error, ...
        ledger.failed[op] += 1
        ledger.problems.append(f"{op} {key!r}: {type(exc).__name__}: {exc}")
    elapsed = time.monotonic() - started
    ledger.slowest = max(ledger.slowest, elapsed)
    if elapsed > OP_BOUND:
        ledger.problems.append(f"{op} {key!r} took {elapsed:.1f}s (bound {OP_BOUND}s)")


async def run_mixed_operations(
    store: ResultStore,
    *,
    operations: int,
    workers: int,
    keys: int,
    seed: int,
    big: bool = False,
) -> Ledger:
    """``operations`` random operations by ``workers`` concurrent tasks; each owns some keys."""
    names = [f"k/{i:03d}" for i in range(keys)]
    ledger = Ledger(possible={name: {ABSENT} for name in names})

    async def worker(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        mine = names[index::workers]
        for number in range(index, operations, workers):
            await _one_op(store, ledger, rng, rng.choice(mine), number, big)

    async with anyio.create_task_group() as tg:
        for index in range(workers):
            tg.start_soon(worker, index)
    return ledger


async def verify_with_faults_off(proxy: FaultProxy, store: ResultStore, ledger: Ledger) -> int:
    """Check every key against the ledger; returns how many keys held exactly one possibility."""
    proxy.fault_rate = 0.0
    certain = 0
    for key, possible in ledger.possible.items():
        certain += len(possible) == 1
        try:
            seen: Hashable = (await store.aread(key, retry=False)).result
        except ResultNotFoundError:
            seen = ABSENT
        ledger.expect(key, seen, "final read")
    assert await store.aexists("never/written") is False
    return certain


def report(name: str, proxy: FaultProxy, ledger: Ledger, certain: int, started: float) -> str:
    counts = proxy.counts
    faults = ", ".join(f"{kind} {counts[kind]}" for kind in FAULT_KINDS if counts[kind])
    line = (
        f"{name}: {counts['requests']} requests, faults injected: {faults or 'none'}; "
        f"ops ok {sum(ledger.ok.values())} {dict(ledger.ok)}, "
        f"failed {sum(ledger.failed.values())} {dict(ledger.failed)}; "
        f"{len(ledger.possible)} keys verified ({certain} had one possible value, "
        f"{len(ledger.possible) - certain} two after a failed op); "
        f"slowest op {ledger.slowest:.1f}s; "
        f"total {time.monotonic() - started:.1f}s"
    )
    print(line)
    return line


@pytest.mark.parametrize(
    ("kind", "operations"),
    [(kind, 16 if kind == "stall" else 48) for kind in FAULT_KINDS],  # a stall costs 2 s
)
def test_each_fault_kind_ends_in_success_or_a_one_line_error(
    kind: str,
    operations: int,
    scheme: str,
    proxy: FaultProxy,
    s3_server: SeaweedFS,
    s3_bucket: str,
) -> None:
    # botocore does not retry here, so faults reach resultstore and must come out as
    # one-line StorageErrors, and failed writes leave their keys ambiguous.
    store = store_through(scheme, proxy, s3_server, s3_bucket, max_attempts=1)
    proxy.kinds, proxy.fault_rate = (kind,), 0.3
    started = time.monotonic()

    async def scenario() -> tuple[Ledger, int]:
        async with store:
            ledger = await run_mixed_operations(
                store, operations=operations, workers=8, keys=16, seed=FAULT_KINDS.index(kind)
            )
            return ledger, await verify_with_faults_off(proxy, store, ledger)

    ledger, certain = anyio.run(scenario)

    report(kind, proxy, ledger, certain, started)
    assert ledger.problems == []
    assert proxy.counts[kind] > 0
    assert sum(ledger.ok.values()) > 0


def test_multipart_writes_under_faults_are_whole_or_absent(
    scheme: str, proxy: FaultProxy, s3_server: SeaweedFS, s3_bucket: str
) -> None:
    # 6-11 MB values in 5 MB parts: resets and errors hit part uploads and completions.
    store = store_through(scheme, proxy, s3_server, s3_bucket, part_size=5 * 1024 * 1024)
    proxy.kinds = ("reset_before", "reset_mid", "http_500", "http_503")
    proxy.fault_rate = 0.2
    started = time.monotonic()

    async def scenario() -> tuple[Ledger, int]:
        async with store:
            ledger = await run_mixed_operations(
                store, operations=16, workers=4, keys=4, seed=99, big=True
            )
            return ledger, await verify_with_faults_off(proxy, store, ledger)

    ledger, certain = anyio.run(scenario)

    report("multipart", proxy, ledger, certain, started)
    assert ledger.problems == []
    assert proxy.faults > 0


def test_a_thousand_operations_at_ten_percent_faults_lose_no_acknowledged_write(
    scheme: str, proxy: FaultProxy, s3_server: SeaweedFS, s3_bucket: str
) -> None:
    store = store_through(scheme, proxy, s3_server, s3_bucket)
    proxy.fault_rate = 0.1
    started = time.monotonic()

    async def scenario() -> tuple[Ledger, int]:
        async with store:
            ledger = await run_mixed_operations(
                store, operations=1000, workers=16, keys=100, seed=2026
            )
            return ledger, await verify_with_faults_off(proxy, store, ledger)

    ledger, certain = anyio.run(scenario)

    report("1000 mixed ops at 10%", proxy, ledger, certain, started)
    assert ledger.problems == []
    assert sum(ledger.ok.values()) + sum(ledger.failed.values()) == 1000
    counts = proxy.counts
    assert all(counts[kind] > 0 for kind in FAULT_KINDS), counts
    assert certain > 0


def test_the_proxy_is_transparent_with_faults_off(
    scheme: str, proxy: FaultProxy, s3_server: SeaweedFS, s3_bucket: str
) -> None:
    store = store_through(scheme, proxy, s3_server, s3_bucket)
    with store:
        key = store.write(b"\x00" * 3_000_000, key="plain")
        assert store.read(key).result == b"\x00" * 3_000_000
        assert store.exists(key) and store.keys() == [key]
        assert store.delete(key) is not False and not store.exists(key)
    assert proxy.faults == 0 and proxy.counts["requests"] >= 5


def test_a_connection_reset_while_streaming_a_body_is_unavailable_and_retried(
    scheme: str, proxy: FaultProxy, s3_server: SeaweedFS, s3_bucket: str
) -> None:
    # The response head arrives, then the connection dies halfway through the body:
    # aiohttp raises ClientPayloadError from the body stream, outside botocore's retries.
    store = store_through(scheme, proxy, s3_server, s3_bucket, max_attempts=1)
    value = bytes(range(256)) * 8192  # 2 MB: half the response is well past its head
    with store:
        store.write(value, key="big")
        proxy.kinds, proxy.methods, proxy.fault_rate = ("reset_mid",), frozenset({"GET"}), 1.0

        with pytest.raises(StorageUnavailableError) as once:
            store.read("big", retry=False)
        with pytest.raises(StorageUnavailableError) as retried:
            store.read("big")  # retried: every attempt is cut short again

        proxy.fault_rate = 0.0
        assert store.read("big").result == value
    for error in (once.value, retried.value):
        message = str(error)
        assert len(message.splitlines()) == 1
        assert message.startswith("cannot read key 'big' in s3://")  # the alias's too
        assert "unavailable" in message
    assert "gave up after 3 attempts" in str(retried.value)
    assert proxy.counts["reset_mid"] == 4


def test_a_delete_cut_off_by_the_network_is_retried_by_the_obstore_store(
    proxy: FaultProxy, s3_server: SeaweedFS, s3_bucket: str
) -> None:
    # obstore sends a delete as S3's multi-object delete, a POST, which it does not retry
    # when the network cuts it off; deleting is idempotent, so the store retries it
    # (max_retries from its retry_config).
    store = store_through("s3+obstore", proxy, s3_server, s3_bucket, max_attempts=3)
    with store:
        store.write("doomed", key="k")
        proxy.kinds, proxy.methods, proxy.fault_rate = (
            ("reset_before",),
            frozenset({"DELETE", "POST"}),
            1.0,
        )

        with pytest.raises(StorageUnavailableError) as caught:
            store.delete("k")

        assert proxy.counts["reset_before"] == 3  # one attempt and two retries
        assert str(caught.value).startswith("cannot delete key 'k' in s3://")
        assert "\n" not in str(caught.value)
        proxy.fault_rate = 0.0
        assert store.delete("k") is None  # one request: S3 does not say
        assert not store.exists("k")
