"""resultstore-sqlite and store interface 2: ranges, stat, versions, conditional writes,
races between threads and processes, databases made by plugin 0.1, options."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
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

import resultstore_sqlite
from resultstore_sqlite import LEGACY_VERSION, TABLE, SQLiteStore
from sqlite_raceworker import race

WORKER = str(Path(__file__).with_name("sqlite_raceworker.py"))

_V1_SCHEMA = f"CREATE TABLE {TABLE} (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL)"
"""The table plugin 0.1 made: no version column."""


def make_v1_database(path: Path, rows: dict[str, bytes]) -> None:
    """A database exactly as plugin 0.1 left it (WAL, the old table, its rows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(_V1_SCHEMA)
        for key, value in rows.items():
            conn.execute(f"INSERT OR REPLACE INTO {TABLE} (key, value) VALUES (?, ?)", (key, value))
    finally:
        conn.close()


async def read_range(store: Store, key: str, start: int, end: int | None) -> tuple[bytes, Reader]:
    reader = await store.open(key, start=start, end=end)
    try:
        return await reader.read(), reader
    finally:
        await reader.aclose()


@pytest.fixture(params=["queried", "streamed"])
def any_store(request: pytest.FixtureRequest, sqlite_store: Store) -> Iterator[Store]:
    """The store as it is, and with every value, however small, read through blob I/O."""
    if request.param == "streamed":
        monkeypatch = pytest.MonkeyPatch()
        monkeypatch.setattr(resultstore_sqlite, "_SMALL_VALUE", -1)
        yield sqlite_store
        monkeypatch.undo()
    else:
        yield sqlite_store


# -- capabilities ----------------------------------------------------------------


def test_the_store_declares_interface_2_with_ranges_and_conditions(sqlite_store: Store) -> None:
    assert isinstance(sqlite_store, SQLiteStore)
    assert SQLiteStore.interface_version == 2
    assert sqlite_store.supports_ranged_read is True
    assert sqlite_store.supports_conditional_write is True


# -- ranged reads --------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1000, 3 << 20])
def test_ranged_reads_return_exactly_the_range_with_size_and_version(
    any_store: Store, size: int
) -> None:
    data = os.urandom(size)
    version = run(any_store.write("r", Payload([data])))
    ranges = [(0, None), (0, 0), (0, 10), (5, None), (7, 7), (10, 5), (size, None)]
    ranges += [(size // 2, size // 2 + 100), (max(size - 3, 0), size + 100), (size + 5, None)]
    ranges += [(1, size - 1), (100, 300_000)]
    for start, end in ranges:
        got, reader = run(read_range(any_store, "r", start, end))
        assert got == data[start:end], (start, end)
        assert reader.size == size, (start, end)  # the whole value's length
        assert reader.version == version


def test_a_range_reads_in_pieces_and_into_buffers(any_store: Store) -> None:
    data = os.urandom(2 << 20)
    run(any_store.write("r", Payload([data[:1000], data[1000:]])))

    async def check() -> None:
        reader = await any_store.open("r", start=1000, end=1_500_000)
        try:
            assert await reader.read(10) == data[1000:1010]
            into = bytearray(600_000)
            assert await reader.readinto(memoryview(into)) == 600_000
            assert bytes(into) == data[1010:601_010]
            assert await reader.read() == data[601_010:1_500_000]
            assert await reader.read(5) == b""
            assert await reader.readinto(memoryview(bytearray(8))) == 0
        finally:
            await reader.aclose()

    run(check())


def test_a_small_range_of_a_large_value_does_not_hold_a_connection(sqlite_store: Store) -> None:
    data = os.urandom(4 << 20)
    run(sqlite_store.write("big", Payload([data])))

    async def open_range(start: int, end: int | None) -> tuple[str, bytes]:
        reader = await sqlite_store.open("big", start=start, end=end)
        try:
            return type(reader).__name__, await reader.read()
        finally:
            await reader.aclose()

    # A header-sized range is fetched at once; a large range streams from the offset.
    assert run(open_range(0, 64 * 1024)) == ("BytesReader", data[: 64 * 1024])
    kind, got = run(open_range(1 << 20, None))
    assert got == data[1 << 20 :]
    assert kind == ("_BlobReader" if sys.version_info >= (3, 11) else "BytesReader")


def test_an_open_range_keeps_the_value_it_opened(sqlite_store: Store, db_url: str) -> None:
    old, new = os.urandom(3 << 20), os.urandom(1 << 20)
    first = run(sqlite_store.write("k", Payload([old])))
    other = resolve_store(db_url)

    async def check() -> None:
        reader = await sqlite_store.open("k", start=1 << 20)
        try:
            head = await reader.read(1000)
            await other.write("k", Payload([new]))
            assert reader.version == first
            assert head + await reader.read() == old[1 << 20 :]
        finally:
            await reader.aclose()

    run(check())
    run(other.aclose())
    assert run(read_all(sqlite_store, "k")) == new


def test_ranges_of_a_missing_key_or_database(sqlite_store: Store, db_path: Path) -> None:
    with pytest.raises(ResultNotFoundError, match="'k'"):
        run(sqlite_store.open("k", start=5, end=10))
    assert not db_path.parent.exists()
    run(sqlite_store.write("other", Payload([b"x"])))
    with pytest.raises(ResultNotFoundError, match="'k'"):
        run(sqlite_store.open("k", start=5, end=10))


def test_read_metadata_of_a_large_record_works_through_ranges(db_url: str) -> None:
    with ResultStore(db_url) as results:
        key = results.write(os.urandom(5 << 20), key="big")
        assert results.read_metadata(key).size == results.read(key).metadata.size


# -- stat and versions ------------------------------------------------------------------


def test_stat_gives_size_and_the_version_every_write_returns(sqlite_store: Store) -> None:
    first = run(sqlite_store.write("k", Payload([b"hello"])))
    assert isinstance(first, str) and len(first) == 32
    assert run(sqlite_store.stat("k")) == Stat(5, first)
    second = run(sqlite_store.write("k", Payload([b"hello"])))  # same bytes, new version
    assert second != first
    assert run(sqlite_store.stat("k")) == Stat(5, second)
    run(sqlite_store.write("e", Payload([])))
    assert run(sqlite_store.stat("e")).size == 0
    big = run(sqlite_store.write("big", Payload([memoryview(os.urandom(700_000))] * 3)))
    assert run(sqlite_store.stat("big")) == Stat(2_100_000, big)


def test_versions_are_read_from_the_index_never_past_a_large_value(
    sqlite_store: Store, db_path: Path
) -> None:
    # The version column follows the value in each row; reading it there would walk all of a
    # large value's overflow pages. Finds, stats and compares read the covering index.
    run(sqlite_store.write("k", Payload([b"v"])))
    conn = sqlite3.connect(db_path)
    try:
        for sql, args in [
            (resultstore_sqlite._FIND, (1, 0, 10, "k")),
            (resultstore_sqlite._STAT, ("k",)),
            (resultstore_sqlite._SWAP, (b"x", "new", "k", "old")),
        ]:
            plan = " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args))
            assert f"COVERING INDEX {TABLE}_key_version" in plan, (sql, plan)
    finally:
        conn.close()


def test_stat_of_a_missing_key_or_database(sqlite_store: Store, db_path: Path) -> None:
    with pytest.raises(ResultNotFoundError, match="'nope'"):
        run(sqlite_store.stat("nope"))
    assert not db_path.parent.exists()  # created nothing
    run(sqlite_store.write("k", Payload([b"v"])))
    assert run(sqlite_store.delete("k")) is True
    with pytest.raises(ResultNotFoundError):
        run(sqlite_store.stat("k"))


def test_versions_never_repeat_across_deletes(sqlite_store: Store) -> None:
    seen = set()
    for _ in range(50):
        seen.add(run(sqlite_store.write("k", Payload([b"same"]))))
        assert run(sqlite_store.delete("k")) is True
        assert run(sqlite_store.delete("k")) is False
    assert len(seen) == 50


# -- conditional writes -------------------------------------------------------------


@pytest.mark.parametrize(
    "buffers",
    [[b"small"], [memoryview(os.urandom(700_000))[1:] for _ in range(3)]],
    ids=["small", "blob-io"],
)
def test_create_only_and_compare_and_swap(sqlite_store: Store, buffers: list[bytes]) -> None:
    value = b"".join(buffers)
    created = run(sqlite_store.write("k", Payload(buffers), if_absent=True))
    assert run(sqlite_store.stat("k")) == Stat(len(value), created)

    with pytest.raises(ResultExistsError) as exists:
        run(sqlite_store.write("k", Payload([b"second"]), if_absent=True))
    assert exists.value.reason is Reason.EXISTS
    assert exists.value.key == "k" and exists.value.url == sqlite_store.url
    assert "\n" not in str(exists.value) and "'k'" in str(exists.value)
    assert run(read_all(sqlite_store, "k")) == value

    swapped = run(sqlite_store.write("k", Payload(buffers[::-1]), if_version=created))
    assert swapped != created
    assert run(read_all(sqlite_store, "k")) == b"".join(buffers[::-1])
    with pytest.raises(VersionConflictError) as stale:
        run(sqlite_store.write("k", Payload([b"stale"]), if_version=created))
    assert stale.value.reason is Reason.CONFLICT and created in str(stale.value)
    assert run(read_all(sqlite_store, "k")) == b"".join(buffers[::-1])
    assert run(sqlite_store.stat("k")).version == swapped

    # A version does not survive its record: after a delete and a new write it conflicts.
    assert run(sqlite_store.delete("k")) is True
    with pytest.raises(VersionConflictError):
        run(sqlite_store.write("k", Payload(buffers), if_version=swapped))
    with pytest.raises(ResultNotFoundError):
        run(sqlite_store.stat("k"))
    again = run(sqlite_store.write("k", Payload(buffers), if_absent=True))
    with pytest.raises(VersionConflictError):
        run(sqlite_store.write("k", Payload(buffers), if_version=created))
    assert run(sqlite_store.write("k", Payload([b"x"]), if_version=again)) != again


def test_conditional_writes_on_a_database_not_yet_made(sqlite_store: Store) -> None:
    with pytest.raises(VersionConflictError):
        run(sqlite_store.write("k", Payload([b"x"]), if_version="abc"))
    assert run(sqlite_store.write("k", Payload([b"x"]), if_absent=True))


def test_if_absent_with_if_version_stores_nothing(sqlite_store: Store) -> None:
    with pytest.raises(VersionConflictError):
        run(sqlite_store.write("k", Payload([b"x"]), if_absent=True, if_version="v"))
    version = run(sqlite_store.write("k", Payload([b"old"])))
    with pytest.raises(ResultExistsError):
        run(sqlite_store.write("k", Payload([b"x"]), if_absent=True, if_version=version))
    assert run(sqlite_store.stat("k")) == Stat(3, version)


def test_a_refused_conditional_write_keeps_the_connection(sqlite_store: Store) -> None:
    assert isinstance(sqlite_store, SQLiteStore)
    run(sqlite_store.write("k", Payload([b"x"])))
    with sqlite_store._pool.connection(create=False) as conn:
        pass
    for _ in range(3):
        with pytest.raises(ResultExistsError):
            run(sqlite_store.write("k", Payload([b"y"] * 2), if_absent=True))
        with pytest.raises(VersionConflictError):
            run(sqlite_store.write("k", Payload([b"y"]), if_version="old"))
    with sqlite_store._pool.connection(create=False) as again:
        assert again is conn and not again.in_transaction


def test_a_conditional_write_waiting_on_a_lock_is_storage_unavailable(
    db_url: str, db_path: Path
) -> None:
    store = resolve_store(db_url, timeout=0.2)
    version = run(store.write("k", Payload([b"old"])))
    blocker = sqlite3.connect(db_path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        for conditions in [{"if_absent": True}, {"if_version": version}]:
            with pytest.raises(StorageUnavailableError, match="timeout"):
                run(store.write("k", Payload([b"new"]), **conditions))  # type: ignore[arg-type]
    finally:
        blocker.close()
    assert run(store.write("k", Payload([b"new"]), if_version=version))
    run(store.aclose())


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
    tmp_path: Path, db_url: str, processes: int, threads: int
) -> None:
    summaries = _race(tmp_path, "create", db_url, processes, threads)
    assert [s["errors"] for s in summaries] == [[]] * len(summaries)
    won = [value for s in summaries for value in s["won"]]  # type: ignore[attr-defined]
    assert len(won) == 1
    assert sum(s["lost"] for s in summaries) == 31  # type: ignore[misc]
    store = resolve_store(db_url)
    assert run(read_all(store, "race")) == won[0].encode()
    run(store.aclose())


@pytest.mark.parametrize(
    ("processes", "threads", "legacy"),
    [(0, 20, False), (4, 5, False), (4, 5, True)],
    ids=["threads", "processes", "processes-on-a-0.1-database"],
)
def test_20_compare_and_swap_incrementers_lose_no_update(
    tmp_path: Path, db_url: str, db_path: Path, processes: int, threads: int, legacy: bool
) -> None:
    rounds = 5
    if legacy:  # every process migrates the same database at once, then races on it
        make_v1_database(db_path, {"race": b"0"})
    else:
        store = resolve_store(db_url)
        run(store.write("race", Payload([b"0"])))
        run(store.aclose())
    summaries = _race(tmp_path, "increment", db_url, processes, threads, rounds)
    assert [s["errors"] for s in summaries] == [[]] * len(summaries)
    assert sum(s["landed"] for s in summaries) == 20 * rounds  # type: ignore[misc]
    store = resolve_store(db_url)
    assert run(read_all(store, "race")) == b"%d" % (20 * rounds)
    run(store.aclose())


# -- databases made by plugin 0.1 -----------------------------------------------------


def test_a_0_1_database_reads_and_takes_conditional_writes_after_migration(
    db_path: Path, db_url: str
) -> None:
    big = os.urandom(3 << 20)
    make_v1_database(db_path, {"a": b"old a", "b": b"old b", "big": big})
    store = resolve_store(db_url)
    assert run(read_all(store, "a")) == b"old a"
    got, reader = run(read_range(store, "big", 10, 20))
    assert got == big[10:20] and reader.size == len(big) and reader.version == LEGACY_VERSION
    assert run(store.stat("a")) == Stat(5, LEGACY_VERSION)

    with pytest.raises(ResultExistsError):
        run(store.write("a", Payload([b"new"]), if_absent=True))
    swapped = run(store.write("a", Payload([b"new a"]), if_version=LEGACY_VERSION))
    assert swapped != LEGACY_VERSION and run(read_all(store, "a")) == b"new a"
    with pytest.raises(VersionConflictError):  # the legacy version is gone with its record
        run(store.write("a", Payload([b"lost"]), if_version=LEGACY_VERSION))
    assert run(store.write("big", Payload([big[:1], big[1:]]), if_version=LEGACY_VERSION))
    assert run(sorted_keys(store)) == ["a", "b", "big"]
    run(store.aclose())

    conn = sqlite3.connect(db_path)
    try:
        columns = [row[1] for row in conn.execute(f"PRAGMA table_info({TABLE})")]
        assert columns == ["key", "value", "version"]
        objects = conn.execute(
            "SELECT type, name FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL "
            "ORDER BY type, name",
            (TABLE,),
        ).fetchall()
        assert objects == [
            ("index", f"{TABLE}_key_version"),
            ("table", TABLE),
            ("trigger", f"{TABLE}_new_version"),
        ]
        # A writer still running plugin 0.1 inserts without a version: the row gets a
        # fresh one, never the legacy version a stale reader may still hold.
        conn.execute(f"INSERT OR REPLACE INTO {TABLE} (key, value) VALUES ('b', x'00')")
        conn.commit()
        (version,) = conn.execute(f"SELECT version FROM {TABLE} WHERE key = 'b'").fetchone()
        # ... and so do its large writes, a zeroblob filled through blob I/O afterwards.
        rowid = conn.execute(
            f"INSERT OR REPLACE INTO {TABLE} (key, value) VALUES ('big', zeroblob(?))", (len(big),)
        ).lastrowid
        if sys.version_info >= (3, 11):
            with conn.blobopen(TABLE, "value", rowid) as blob:
                blob.write(big[::-1])
        else:
            conn.execute(f"UPDATE {TABLE} SET value = ? WHERE rowid = ?", (big[::-1], rowid))
        conn.commit()
    finally:
        conn.close()
    assert len(version) == 32 and version != LEGACY_VERSION
    store = resolve_store(db_url)
    assert run(store.stat("b")) == Stat(1, version)
    assert run(read_all(store, "big")) == big[::-1]
    assert run(store.stat("big")).version not in (LEGACY_VERSION, version)
    with pytest.raises(VersionConflictError):
        run(store.write("b", Payload([b"x"]), if_version=LEGACY_VERSION))
    run(store.aclose())


def test_a_record_written_through_resultstore_by_0_1_reads_after_migration(
    tmp_path: Path, db_path: Path, db_url: str
) -> None:
    # Records a 0.1 store wrote (full framing and checksums) are bytes in the old table:
    # move them there by hand and read them through the migrated store.
    with ResultStore(f"sqlite://{tmp_path / 'v2.db'}") as results:
        results.write({"rows": 1200}, key="etl/1")
    source = sqlite3.connect(tmp_path / "v2.db")
    (record,) = source.execute(f"SELECT value FROM {TABLE} WHERE key = 'etl/1'").fetchone()
    source.close()
    make_v1_database(db_path, {"etl/1": record})
    with ResultStore(db_url) as results:
        assert results.read("etl/1", retry=False).result == {"rows": 1200}
        assert results.keys("etl/") == ["etl/1"]


async def sorted_keys(store: Store, prefix: str = "") -> list[str]:
    return sorted([key async for key in store.list(prefix)])


def test_a_current_database_is_not_migrated_again(sqlite_store: Store, db_path: Path) -> None:
    run(sqlite_store.write("k", Payload([b"v"])))
    blocker = sqlite3.connect(db_path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # a new process's setup must not need the lock
        other = resolve_store(f"sqlite://{db_path}", timeout=0.2)
        assert run(read_all(other, "k")) == b"v"
        run(other.aclose())
    finally:
        blocker.close()


# -- options and errors -------------------------------------------------------------


def test_unknown_options_are_refused_naming_the_valid_ones(db_url: str) -> None:
    for make in [
        lambda: resolve_store(db_url, fsnyc=False),
        lambda: SQLiteStore(db_url, fsnyc=False),
        lambda: ResultStore(db_url, storage_options={"fsnyc": False}),
    ]:
        with pytest.raises(ConfigurationError) as caught:
            make()
        message = str(caught.value)
        assert "'fsnyc'" in message and "fsync, timeout" in message and db_url in message
        assert "\n" not in message


@pytest.mark.parametrize("fsync", ["no", 0, None])
def test_a_bad_fsync_is_a_configuration_error(db_url: str, fsync: object) -> None:
    with pytest.raises(ConfigurationError, match="fsync"):
        resolve_store(db_url, fsync=fsync)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (sqlite3.OperationalError("database is locked"), StorageUnavailableError),
        (sqlite3.OperationalError("attempt to write a readonly database"), AccessDeniedError),
        (sqlite3.DatabaseError("file is not a database"), StorageError),
        (PermissionError(13, "Permission denied"), AccessDeniedError),
        (NotADirectoryError(20, "Not a directory"), StorageError),
    ],
)
def test_errors_are_classed_by_cause(
    sqlite_store: Store, error: BaseException, kind: type[StorageError]
) -> None:
    assert isinstance(sqlite_store, SQLiteStore)
    translated = sqlite_store._translate(error, "write", "etl/1")
    assert type(translated) is kind
    message = str(translated)
    assert message.startswith(f"cannot write key 'etl/1' in {sqlite_store.url}: ")
    assert "\n" not in message
    assert translated.key == "etl/1" and translated.url == sqlite_store.url
