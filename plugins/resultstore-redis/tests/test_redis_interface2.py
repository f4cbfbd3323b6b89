"""resultstore-redis and store interface 2 against a real redis-server: ranges, stat,
versions, conditional writes, races between threads and processes, records written by
plugin 0.1, options and errors."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from resultstore import ConfigurationError, ResultNotFoundError, ResultStore, resolve_store
from resultstore.errors import (
    AccessDeniedError,
    Reason,
    ResultExistsError,
    StorageError,
    StorageUnavailableError,
    VersionConflictError,
)
from resultstore.stores.base import Payload, Reader, Stat, Store
from resultstore.testing import read_all, run

from redis_raceworker import race
from redis_testserver import PASSWORD, RedisServer
from resultstore_redis import LEGACY_VERSION, VERSION_NAMESPACE, RedisStore, escape_glob

WORKER = str(Path(__file__).with_name("redis_raceworker.py"))


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    yield client
    client.close()


def names(store: Store, key: str) -> tuple[bytes, bytes]:
    """The Redis names of ``key``'s record and of its version."""
    assert isinstance(store, RedisStore)
    record = (store.prefix + key).encode()
    return record, VERSION_NAMESPACE + record


async def read_range(store: Store, key: str, start: int, end: int | None) -> tuple[bytes, Reader]:
    reader = await store.open(key, start=start, end=end)
    try:
        return await reader.read(), reader
    finally:
        await reader.aclose()


def sent_bytes(raw: redis.Redis) -> int:
    """How many bytes the server has sent to its clients so far."""
    return int(raw.info("stats")["total_net_output_bytes"])


# -- capabilities -----------------------------------------------------------------


def test_the_store_declares_interface_2_with_ranges_and_conditions(redis_store: Store) -> None:
    assert isinstance(redis_store, RedisStore)
    assert RedisStore.interface_version == 2
    assert redis_store.supports_ranged_read is True
    assert redis_store.supports_conditional_write is True


# -- ranged reads --------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1000, 3 << 20])
def test_ranged_reads_return_exactly_the_range_with_size_and_version(
    redis_store: Store, size: int
) -> None:
    data = os.urandom(size)
    version = run(redis_store.write("r", Payload([data])))
    ranges = [(0, None), (0, 0), (0, 10), (5, None), (7, 7), (10, 5), (size, None)]
    ranges += [(size // 2, size // 2 + 100), (max(size - 3, 0), size + 100), (size + 5, None)]
    ranges += [(1, size - 1), (100, 300_000), (-5, 3)]
    for start, end in ranges:
        got, reader = run(read_range(redis_store, "r", start, end))
        assert got == data[max(start, 0) : end], (start, end)
        assert reader.size == size, (start, end)  # the whole value's length
        assert reader.version == version


def test_a_range_reads_in_pieces_and_into_buffers(redis_store: Store) -> None:
    data = os.urandom(2 << 20)
    run(redis_store.write("r", Payload([data[:1000], data[1000:]])))

    async def check() -> None:
        reader = await redis_store.open("r", start=1000, end=1_500_000)
        try:
            assert await reader.read(10) == data[1000:1010]
            into = bytearray(600_000)
            assert await reader.readinto(memoryview(into)) == 600_000
            assert bytes(into) == data[1010:601_010]
            assert await reader.read() == data[601_010:1_500_000]
            assert await reader.read(5) == b""
        finally:
            await reader.aclose()

    run(check())


def test_a_range_and_a_stat_fetch_only_what_they_need(redis_store: Store, raw: redis.Redis) -> None:
    run(redis_store.write("big", Payload([os.urandom(8 << 20)])))
    before = sent_bytes(raw)
    got, reader = run(read_range(redis_store, "big", 1 << 20, (1 << 20) + 65536))
    assert len(got) == 65536 and reader.size == 8 << 20
    assert run(redis_store.stat("big")).size == 8 << 20
    assert sent_bytes(raw) - before < 200_000  # not the 8 MiB value


def test_ranges_and_stat_of_a_missing_key(redis_store: Store) -> None:
    with pytest.raises(ResultNotFoundError, match="'k'"):
        run(redis_store.open("k", start=5, end=10))
    with pytest.raises(ResultNotFoundError, match="'k'"):
        run(redis_store.stat("k"))


def test_read_metadata_of_a_large_record_works_through_ranges(redis_url: str) -> None:
    with ResultStore(redis_url) as results:
        key = results.write(os.urandom(5 << 20), key="big")
        assert results.read_metadata(key).size == results.read(key).metadata.size


# -- stat, versions and their companion keys ------------------------------------------


def test_stat_gives_size_and_the_version_every_write_returns(redis_store: Store) -> None:
    first = run(redis_store.write("k", Payload([b"hello"])))
    assert isinstance(first, str) and len(first) == 32
    assert run(redis_store.stat("k")) == Stat(5, first)
    second = run(redis_store.write("k", Payload([b"hello"])))  # same bytes, new version
    assert second != first
    assert run(redis_store.stat("k")) == Stat(5, second)
    run(redis_store.write("e", Payload([])))
    assert run(redis_store.stat("e")) == Stat(0, run(redis_store.stat("e")).version)


def test_versions_never_repeat_across_deletes(redis_store: Store, raw: redis.Redis) -> None:
    record, version = names(redis_store, "k")
    seen = set()
    for _ in range(50):
        seen.add(run(redis_store.write("k", Payload([b"same"]))))
        assert raw.get(version) is not None
        assert run(redis_store.delete("k")) is True
        assert raw.exists(record, version) == 0  # the version goes with its record
        assert run(redis_store.delete("k")) is False
    assert len(seen) == 50


def test_versions_are_kept_outside_every_prefix_and_never_listed(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    # Keys that look like a version's name, or hold the words, are records like any other.
    keys = ["k", "k/version", "version/k", "x:version:k", "a/b", "a\U0001f642"]
    store = resolve_store(redis_server.url(prefix="vk:"))
    try:
        for key in keys:
            run(store.write(key, Payload([key.encode()])))
        assert sorted([n.decode() for n in raw.scan_iter(match="vk:*")]) == [
            f"vk:{key}" for key in sorted(keys)
        ]  # what a SCAN of the records (plugin 0.1's list, say) finds: no versions
        assert run(_keys(store)) == sorted(keys)
        assert run(_keys(store, "k")) == ["k", "k/version"]
        for key in keys:
            assert raw.exists(b"\\version:vk:" + key.encode()) == 1
    finally:
        for key in keys:
            run(store.delete(key))
        run(store.aclose())
    assert list(raw.scan_iter(match=b"*vk:*")) == []


def test_a_store_without_prefix_lists_no_versions(redis_server: RedisServer) -> None:
    raw = redis.Redis(host="127.0.0.1", port=redis_server.port, db=7)
    raw.flushdb()
    store = resolve_store(redis_server.url(db=7, prefix=""))
    other = resolve_store(redis_server.url(db=7, prefix="o:"))
    try:
        for key in ["a", "b/c", "version:a", "version/a"]:
            run(store.write(key, Payload([b"."])))
        run(other.write("k", Payload([b"."])))
        assert raw.dbsize() == 10  # five records, five versions
        assert run(_keys(store)) == ["a", "b/c", "o:k", "version/a", "version:a"]
        assert run(_keys(store, "v")) == ["version/a", "version:a"]
        assert run(_keys(other)) == ["k"]
    finally:
        raw.flushdb()
        raw.close()
        run(store.aclose())
        run(other.aclose())


async def _keys(store: Store, prefix: str = "") -> list[str]:
    return sorted([key async for key in store.list(prefix)])


@pytest.mark.parametrize("prefix", ["%5C", "%5Cversion%3A", "%5Cx"])
def test_a_prefix_starting_with_a_backslash_is_refused(prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="backslash"):
        resolve_store(f"redis://localhost/0?prefix={prefix}")
    assert isinstance(resolve_store("redis://localhost/0?prefix=a%5Cb"), RedisStore)  # inside: ok


def test_a_read_that_sees_the_version_change_runs_again(
    redis_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(redis_store, RedisStore)
    version = run(redis_store.write("k", Payload([b"value"])))
    real = redis_store._run
    calls: list[str] = []

    async def changing(action: str, key: str, command: Any, *, every: bool = False) -> Any:
        result = await real(action, key, command)
        calls.append(action)
        if every or len(calls) == 1:  # a write landed between the two reads of the version
            result[-1] = b"a newer version"
        return result

    monkeypatch.setattr(redis_store, "_run", changing)
    assert run(redis_store.stat("k")) == Stat(5, version)
    assert calls == ["stat", "stat"]
    monkeypatch.setattr(redis_store, "_run", functools.partial(changing, every=True))
    with pytest.raises(StorageUnavailableError, match="replaced during each of 10 reads"):
        run(redis_store.open("k", start=1, end=3))


def test_readers_racing_a_writer_see_sizes_and_bytes_of_the_version_they_report(
    redis_store: Store,
) -> None:
    written: dict[str, bytes] = {}
    done = threading.Event()
    problems: list[str] = []

    def write() -> None:
        try:
            for i in range(400):
                value = bytes([i % 256]) * (1000 + (i * 7919) % 50_000)
                written[run(redis_store.write("k", Payload([value])))] = value
        finally:
            done.set()
            run(redis_store.aclose())

    def read() -> None:
        try:
            while not done.is_set():
                size, version = run(redis_store.stat("k"))
                data, reader = run(read_range(redis_store, "k", 500, None))
                for seen, got in [((size, version), None), ((reader.size, reader.version), data)]:
                    value = written.get(str(seen[1]))
                    if value is None:
                        continue  # written but not yet recorded by the writer thread
                    if seen[0] != len(value) or (got is not None and got != value[500:]):
                        problems.append(f"version {seen[1]} read back wrong")
        finally:
            run(redis_store.aclose())

    written[run(redis_store.write("k", Payload([b"x" * 1000])))] = b"x" * 1000
    threads = [threading.Thread(target=write)] + [threading.Thread(target=read) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert problems == []


# -- conditional writes -------------------------------------------------------------


@pytest.mark.parametrize("size", [5, 3 << 20])
def test_create_only_and_compare_and_swap(redis_store: Store, size: int) -> None:
    value, other = os.urandom(size), os.urandom(size)
    created = run(redis_store.write("k", Payload([value]), if_absent=True))
    assert run(redis_store.stat("k")) == Stat(size, created)

    with pytest.raises(ResultExistsError) as exists:
        run(redis_store.write("k", Payload([b"second"]), if_absent=True))
    assert exists.value.reason is Reason.EXISTS
    assert exists.value.key == "k" and exists.value.url == redis_store.url
    assert "\n" not in str(exists.value)
    assert run(read_all(redis_store, "k")) == value

    swapped = run(redis_store.write("k", Payload([other]), if_version=created))
    assert swapped != created and run(read_all(redis_store, "k")) == other
    with pytest.raises(VersionConflictError) as stale:
        run(redis_store.write("k", Payload([b"stale"]), if_version=created))
    assert stale.value.reason is Reason.CONFLICT and created in str(stale.value)
    with pytest.raises(VersionConflictError):  # a record not written before 0.2 is not legacy
        run(redis_store.write("k", Payload([b"stale"]), if_version=LEGACY_VERSION))
    assert run(read_all(redis_store, "k")) == other
    assert run(redis_store.stat("k")).version == swapped

    assert run(redis_store.delete("k")) is True
    with pytest.raises(VersionConflictError):
        run(redis_store.write("k", Payload([value]), if_version=swapped))
    with pytest.raises(ResultNotFoundError):
        run(redis_store.stat("k"))
    again = run(redis_store.write("k", Payload([value]), if_absent=True))
    with pytest.raises(VersionConflictError):
        run(redis_store.write("k", Payload([value]), if_version=created))
    assert run(redis_store.write("k", Payload([b"x"]), if_version=again)) != again


def test_if_absent_with_if_version_stores_nothing(redis_store: Store) -> None:
    with pytest.raises(VersionConflictError):
        run(redis_store.write("k", Payload([b"x"]), if_absent=True, if_version="v"))
    version = run(redis_store.write("k", Payload([b"old"])))
    with pytest.raises(ResultExistsError):
        run(redis_store.write("k", Payload([b"x"]), if_absent=True, if_version=version))
    assert run(redis_store.stat("k")) == Stat(3, version)


def test_a_conditional_write_sent_twice_reports_the_write_it_made(redis_store: Store) -> None:
    # The client resends a command whose connection failed; if the first one ran, the resend
    # finds its own new version and reports success, not a false "exists" or conflict.
    assert isinstance(redis_store, RedisStore)
    keys = list(names(redis_store, "k"))

    async def resend() -> list[int]:
        c = await redis_store._connections.get()
        return [
            await c.create(keys=keys, args=[b"v1", "t1"]),
            await c.create(keys=keys, args=[b"v1", "t1"]),  # the resend
            await c.create(keys=keys, args=[b"v2", "t2"]),  # another writer
            await c.swap(keys=keys, args=[b"v3", "t3", "t1", LEGACY_VERSION]),
            await c.swap(keys=keys, args=[b"v3", "t3", "t1", LEGACY_VERSION]),  # the resend
            await c.swap(keys=keys, args=[b"v4", "t4", "t1", LEGACY_VERSION]),  # stale
        ]

    assert run(resend()) == [1, 1, 0, 1, 1, 0]
    assert run(redis_store.stat("k")) == Stat(2, "t3")
    assert run(read_all(redis_store, "k")) == b"v3"


def test_a_version_left_without_its_record_is_ignored(redis_store: Store, raw: redis.Redis) -> None:
    # A 0.1 process deletes only the record: the version it leaves must not revive it.
    record, version = names(redis_store, "k")
    first = run(redis_store.write("k", Payload([b"v"])))
    raw.unlink(record)
    assert run(redis_store.exists("k")) is False
    with pytest.raises(ResultNotFoundError):
        run(redis_store.stat("k"))
    with pytest.raises(VersionConflictError):
        run(redis_store.write("k", Payload([b"x"]), if_version=first))
    assert run(redis_store.delete("k")) is False
    assert raw.exists(version) == 0
    assert run(redis_store.write("k", Payload([b"new"]), if_absent=True))


# -- races ---------------------------------------------------------------------


def _race(
    tmp_path: Path, mode: str, url: str, processes: int, threads: int, rounds: int = 1
) -> list[dict[str, object]]:
    """Run the race: in this process's threads (``processes == 0``) or in several processes."""
    go = tmp_path / f"go-{mode}-{time.monotonic_ns()}"
    if processes == 0:
        go.touch()
        return [race(mode, url, "race", threads, rounds, str(go), "main")]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                WORKER,
                mode,
                url,
                "race",
                str(threads),
                str(rounds),
                str(go),
                f"p{p}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in range(processes)
    ]
    time.sleep(0.5)  # let every interpreter start and import before they race
    go.touch()
    summaries = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        summaries.append(json.loads(out))
    return summaries


@pytest.mark.parametrize(("processes", "threads"), [(0, 32), (4, 8)], ids=["threads", "processes"])
def test_32_create_only_writers_exactly_one_wins(
    tmp_path: Path, redis_url: str, processes: int, threads: int
) -> None:
    summaries = _race(tmp_path, "create", redis_url, processes, threads)
    assert [s["errors"] for s in summaries] == [[]] * len(summaries)
    won = [value for s in summaries for value in s["won"]]  # type: ignore[attr-defined]
    assert len(won) == 1
    assert sum(s["lost"] for s in summaries) == 31  # type: ignore[misc]
    store = resolve_store(redis_url)
    assert run(read_all(store, "race")) == won[0].encode()
    run(store.aclose())


@pytest.mark.parametrize(
    ("processes", "threads", "legacy"),
    [(0, 20, False), (4, 5, False), (4, 5, True)],
    ids=["threads", "processes", "processes-on-a-0.1-record"],
)
def test_20_compare_and_swap_incrementers_lose_no_update(
    tmp_path: Path, redis_url: str, raw: redis.Redis, processes: int, threads: int, legacy: bool
) -> None:
    rounds = 5
    store = resolve_store(redis_url)
    record, _ = names(store, "race")
    if legacy:  # as plugin 0.1 wrote it: a plain SET, no version
        raw.set(record, b"0")
    else:
        run(store.write("race", Payload([b"0"])))
    summaries = _race(tmp_path, "increment", redis_url, processes, threads, rounds)
    assert [s["errors"] for s in summaries] == [[]] * len(summaries)
    assert sum(s["landed"] for s in summaries) == 20 * rounds  # type: ignore[misc]
    assert run(read_all(store, "race")) == b"%d" % (20 * rounds)
    run(store.aclose())


# -- records written by plugin 0.1 ---------------------------------------------------


def test_a_0_1_record_reads_and_takes_conditional_writes(
    redis_store: Store, raw: redis.Redis
) -> None:
    big = os.urandom(3 << 20)
    for key, value in [("a", b"old a"), ("big", big)]:
        raw.set(names(redis_store, key)[0], value)  # 0.1 wrote one SET, no version
    assert run(read_all(redis_store, "a")) == b"old a"
    got, reader = run(read_range(redis_store, "big", 10, 20))
    assert got == big[10:20] and reader.size == len(big) and reader.version == LEGACY_VERSION
    assert run(redis_store.stat("a")) == Stat(5, LEGACY_VERSION)
    assert run(_keys(redis_store)) == ["a", "big"]

    with pytest.raises(ResultExistsError):
        run(redis_store.write("a", Payload([b"new"]), if_absent=True))
    with pytest.raises(VersionConflictError):
        run(redis_store.write("a", Payload([b"new"]), if_version="some other version"))
    swapped = run(redis_store.write("a", Payload([b"new a"]), if_version=LEGACY_VERSION))
    assert swapped != LEGACY_VERSION and run(read_all(redis_store, "a")) == b"new a"
    with pytest.raises(VersionConflictError):  # the legacy version is gone with its record
        run(redis_store.write("a", Payload([b"lost"]), if_version=LEGACY_VERSION))
    assert run(redis_store.stat("a")) == Stat(5, swapped)
    assert run(redis_store.delete("big")) is True


def test_a_record_written_through_resultstore_by_0_1_reads(
    redis_url: str, redis_store: Store, raw: redis.Redis
) -> None:
    with ResultStore(redis_url) as results:
        results.write({"rows": 1200}, key="etl/1")
    raw.unlink(names(redis_store, "etl/1")[1])  # now exactly what 0.1 left: no version
    with ResultStore(redis_url) as results:
        assert results.read("etl/1", retry=False).result == {"rows": 1200}
        assert results.keys("etl/") == ["etl/1"]
    assert run(redis_store.stat("etl/1")).version == LEGACY_VERSION


# -- options and errors -------------------------------------------------------------


def test_unknown_options_are_refused_naming_the_valid_ones(redis_url: str) -> None:
    for make in [
        lambda: resolve_store(redis_url, sockettimeout=1),
        lambda: RedisStore(redis_url, sockettimeout=1),
        lambda: ResultStore(redis_url, storage_options={"sockettimeout": 1}),
    ]:
        with pytest.raises(ConfigurationError) as caught:
            make()
        message = str(caught.value)
        assert "'sockettimeout'" in message and "socket_timeout" in message
        assert "client_kwargs, password, retries, scan_count" in message
        assert "\n" not in message


@pytest.mark.parametrize(
    "options",
    [{"retries": "2"}, {"socket_timeout": None}, {"scan_count": True}, {"client_kwargs": [1]}],
)
def test_options_of_the_wrong_type_are_configuration_errors(options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError, match=next(iter(options))):
        resolve_store("redis://localhost", **options)


def _assert_one_line(error: BaseException, *parts: str) -> str:
    message = str(error)
    assert "\n" not in message and PASSWORD not in message
    for part in parts:
        assert part in message, (part, message)
    assert error.__cause__ is None and error.__suppress_context__
    return message


def test_refused_credentials_are_access_denied(redis_with_password: RedisServer) -> None:
    for store in [
        resolve_store(redis_with_password.url()),
        resolve_store(redis_with_password.url(), password="wrong"),
    ]:
        calls = [
            store.write("k", Payload([b"x"]), if_absent=True),
            store.write("k", Payload([b"x"])),
            store.stat("k"),
        ]
        for call in calls:
            with pytest.raises(AccessDeniedError) as caught:
                run(call)
            assert caught.value.reason is Reason.DENIED
            _assert_one_line(caught.value, store.url, "'k'", "credentials")
        run(store.aclose())


def test_a_user_without_permission_is_access_denied(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    raw.acl_setuser(
        "reader", enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], commands=["+@read"]
    )
    try:
        store = resolve_store(redis_server.url(), username="reader", password=PASSWORD)
        with pytest.raises(AccessDeniedError) as caught:
            run(store.write("k", Payload([b"x"]), if_absent=True))
        message = _assert_one_line(caught.value, store.url, "'k'", "write", "may not")
        assert "evalsha" in message.lower()
        with pytest.raises(AccessDeniedError, match="'multi'"):
            run(store.delete("k"))

        # Reading needs read commands only, as it did with plugin 0.1.
        writer = resolve_store(store.url)
        version = run(writer.write("k", Payload([b"0123456789"])))
        assert run(store.stat("k")) == Stat(10, version)
        got, reader = run(read_range(store, "k", 2, 4))
        assert got == b"23" and reader.version == version and reader.size == 10
        assert run(read_all(store, "k")) == b"0123456789"
        assert run(store.exists("k")) is True
        assert run(_keys(store)) == ["k"]
        with pytest.raises(ResultNotFoundError):
            run(store.stat("missing"))
        run(writer.delete("k"))
        run(writer.aclose())
        run(store.aclose())
    finally:
        raw.acl_deluser("reader")


def test_the_documented_acl_of_a_writer_suffices(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    # The README's rule, for this test's prefix: the records and their versions, read
    # commands, and those a write needs. Scripts are flushed so SCRIPT LOAD runs too.
    store = resolve_store(redis_server.url())
    assert isinstance(store, RedisStore)
    records = escape_glob(store.prefix)
    rule = ["on", f">{PASSWORD}", f"~{records}*", f"~\\\\version:{records}*", "+@read"]
    rule += ["+set", "+unlink", "+multi", "+exec", "+evalsha", "+script|load"]
    raw.execute_command("ACL", "SETUSER", "writer", *rule)
    raw.script_flush()
    try:
        writer = resolve_store(store.url, username="writer", password=PASSWORD)
        version = run(writer.write("k", Payload([b"1"])))
        swapped = run(writer.write("k", Payload([b"2"]), if_version=version))
        run(writer.write("n", Payload([b"x"]), if_absent=True))
        assert run(writer.stat("k")) == Stat(1, swapped)
        assert run(_keys(writer)) == ["k", "n"]
        assert run(writer.delete("k")) is True and run(writer.delete("n")) is True
        run(writer.aclose())

        # Without the versions' pattern, the error says which keys to grant.
        raw.execute_command("ACL", "SETUSER", "writer", "resetkeys", f"~{records}*")
        writer = resolve_store(store.url, username="writer", password=PASSWORD)
        with pytest.raises(AccessDeniedError) as caught:
            run(writer.write("k", Payload([b"1"])))
        message = _assert_one_line(caught.value, store.url, "'k'", "may not")
        assert f"~{records}* and ~\\\\version:{records}*" in message
        run(writer.aclose())
    finally:
        raw.acl_deluser("writer")


def test_a_key_of_another_type_is_a_one_line_error_without_the_command(
    redis_store: Store, raw: redis.Redis
) -> None:
    record, _ = names(redis_store, "h")
    raw.hset(record, "field", "value")
    try:
        for action, call in [
            ("read", lambda: redis_store.open("h", start=1, end=5)),
            ("stat", lambda: redis_store.stat("h")),
        ]:
            with pytest.raises(StorageError) as caught:
                run(call())
            assert not isinstance(caught.value, StorageUnavailableError)
            message = _assert_one_line(caught.value, redis_store.url, "'h'", action, "WRONGTYPE")
            assert "Command #" not in message
    finally:
        raw.delete(record)


def test_an_unreachable_server_is_unavailable_for_conditional_writes() -> None:
    from redis_testserver import free_port

    store = resolve_store(f"redis://127.0.0.1:{free_port()}/0", retries=0)
    for call in [
        lambda: store.write("k", Payload([b"x"]), if_absent=True),
        lambda: store.write("k", Payload([b"x"]), if_version="v"),
        lambda: store.open("k", start=1, end=2),
        lambda: store.stat("k"),
    ]:
        with pytest.raises(StorageUnavailableError) as caught:
            run(call())
        _assert_one_line(caught.value, store.url, "'k'", "unreachable")
    run(store.aclose())
