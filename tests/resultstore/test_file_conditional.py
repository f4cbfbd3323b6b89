"""The file store speaking store interface v2 natively: ranges, ``stat``, versions,
create-only and compare-and-swap writes.

These tests double as examples of use. The concurrency checks race real threads and
real processes on one key: create-only writes must have exactly one winner, and
incrementers looping read-version / write-if-version / retry must never lose an update.
Symlink and FIFO refusals are checked again for the new code paths.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from resultstore import IntegrityError, ResultNotFoundError, ResultStore, StorageError
from resultstore.errors import ResultExistsError, VersionConflictError
from resultstore.stores import file as file_module
from resultstore.stores.base import Payload, Stat
from resultstore.stores.file import FileStore
from resultstore.testing import run

HERE = Path(__file__).resolve().parent
Event = tuple[str, str]


def _store(root: Path, fsync: bool = True) -> FileStore:
    return FileStore(root.as_uri(), fsync=fsync)


async def _read(store: FileStore, key: str, start: int = 0, end: int | None = None) -> bytes:
    reader = await store.open(key, start=start, end=end)
    try:
        return await reader.read()
    finally:
        await reader.aclose()


async def _keys(store: FileStore) -> list[str]:
    return sorted([key async for key in store.list()])


async def _read_versioned(store: FileStore, key: str) -> tuple[bytes, str | None]:
    """The value and its version, both from one open file."""
    reader = await store.open(key)
    try:
        return await reader.read(), reader.version
    finally:
        await reader.aclose()


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def _temp_files(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if name.endswith(".tmp")]


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[Event]:
    """Every fsync, replace, link and flock from now on, in order, as (call, path)."""
    seen: list[Event] = []
    real_fsync, real_replace, real_link, real_flock = os.fsync, os.replace, os.link, fcntl.flock

    def where(name: str, dir_fd: int | None) -> str:
        return os.path.join(_fd_path(dir_fd), name) if dir_fd is not None else name

    def fsync(fd: int) -> None:
        seen.append(("fsync", _fd_path(fd)))
        real_fsync(fd)

    def replace(src: str, dst: str, **kw: Any) -> None:
        seen.append(("replace", where(dst, kw.get("dst_dir_fd"))))
        real_replace(src, dst, **kw)

    def link(src: str, dst: str, **kw: Any) -> None:
        seen.append(("link", where(dst, kw.get("dst_dir_fd"))))
        real_link(src, dst, **kw)

    def flock(fd: int, operation: int) -> None:
        name = "lock" if operation & fcntl.LOCK_EX else "unlock"
        seen.append((name, _fd_path(fd)))
        real_flock(fd, operation)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(fcntl, "flock", flock)
    return seen


# -- ranged reads -------------------------------------------------------------------------

SMALL = bytes(range(256)) * 4  # 1 KiB: read whole, served from memory
LARGE = os.urandom(300_000)  # read through the file descriptor, range only


@pytest.mark.parametrize("data", [SMALL, LARGE], ids=["1KiB", "300KB"])
@pytest.mark.parametrize(
    ("start", "end"),
    [(0, None), (10, 20), (0, 0), (5, 5), (100, None), (1000, 5_000_000), (400_000, None)],
)
def test_a_range_reads_exactly_its_bytes_and_size_stays_the_whole_files(
    tmp_path: Path, data: bytes, start: int, end: int | None
) -> None:
    store = _store(tmp_path, fsync=False)
    version = run(store.write("k", Payload([data])))

    async def check() -> None:
        reader = await store.open("k", start=start, end=end)
        try:
            assert reader.size == len(data)  # the whole file, whatever the range
            assert reader.version == version
            assert await reader.read() == data[start:end]  # past the end: cut short
            assert await reader.read(5) == b""
        finally:
            await reader.aclose()

    run(check())


def test_a_range_read_in_steps_and_into_buffers(tmp_path: Path) -> None:
    store = _store(tmp_path, fsync=False)
    run(store.write("k", Payload([LARGE])))

    async def check() -> None:
        async with await store.open("k", start=70_000, end=72_000) as reader:
            assert await reader.read(500) == LARGE[70_000:70_500]
            into = bytearray(2000)
            assert await reader.readinto(memoryview(into)) == 1500  # the range ends first
            assert bytes(into[:1500]) == LARGE[70_500:72_000]

    run(check())


def test_a_range_of_a_large_record_reads_only_that_range_from_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path, fsync=False)
    run(store.write("k", Payload([os.urandom(8 * 1024 * 1024)])))
    read = [0]
    real_read, real_readv, real_pread = os.read, os.readv, os.pread

    def counted_read(fd: int, n: int) -> bytes:
        data = real_read(fd, n)
        read[0] += len(data)
        return data

    def counted_readv(fd: int, buffers: Any) -> int:
        got = real_readv(fd, buffers)
        read[0] += got
        return got

    def counted_pread(fd: int, n: int, offset: int) -> bytes:
        data = real_pread(fd, n, offset)
        read[0] += len(data)
        return data

    monkeypatch.setattr(os, "read", counted_read)
    monkeypatch.setattr(os, "readv", counted_readv)
    monkeypatch.setattr(os, "pread", counted_pread)
    assert len(run(_read(store, "k", 5_000_000, 5_000_100))) == 100
    assert read[0] <= 100 + 4096  # the range, and the first 4 KiB its version hashes


def test_a_range_of_a_missing_key_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(ResultNotFoundError, match="'nope'"):
        run(_store(tmp_path).open("nope", start=3, end=9))


def test_the_file_store_declares_what_it_does_natively(tmp_path: Path) -> None:
    store = ResultStore(tmp_path.as_uri()).store
    assert store.supports_ranged_read is True
    assert store.supports_conditional_write is True


# -- stat and versions ---------------------------------------------------------------------


def test_stat_write_and_readers_report_one_version_which_every_write_changes(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path, fsync=False)
    first = run(store.write("a/k", Payload([b"first"])))
    assert isinstance(first, str) and first
    assert run(store.stat("a/k")) == Stat(5, first)
    assert run(store.stat("a/k")) == Stat(5, first)  # reading changes nothing
    assert run(_read_versioned(store, "a/k")) == (b"first", first)

    second = run(store.write("a/k", Payload([b"other"])))  # same size
    assert second != first
    assert run(store.stat("a/k")) == Stat(5, second)
    assert run(_read_versioned(store, "a/k"))[1] == second
    big = run(store.write("big", Payload([LARGE])))
    assert run(store.stat("big")) == Stat(len(LARGE), big)
    assert run(store.write("e", Payload([]))) == run(store.stat("e")).version


def test_stat_of_a_missing_key_is_not_found_and_exists_stays_a_plain_stat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path)
    with pytest.raises(ResultNotFoundError, match="'nope'"):
        run(store.stat("nope"))
    with pytest.raises(ResultNotFoundError):
        run(store.stat("no/such/folder"))
    run(store.write("k", Payload([b"v"])))

    def no_open(*args: Any, **kwargs: Any) -> int:
        raise AssertionError("exists opened a file")

    monkeypatch.setattr(os, "open", no_open)
    assert run(store.exists("k")) is True
    assert run(store.exists("nope")) is False


class _FrozenClock:
    """An ``fstat`` result whose mtime never ticks: the worst a coarse timestamp can do."""

    st_mtime_ns = 1_700_000_000_000_000_000

    def __init__(self, info: os.stat_result) -> None:
        self._info = info

    def __getattr__(self, name: str) -> Any:
        return getattr(self._info, name)


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file looks written at the same instant (ext4 ticks every few ms; newer kernels
    tick finer once a timestamp was read, which would hide what these tests check)."""
    real_fstat = os.fstat
    monkeypatch.setattr(os, "fstat", lambda fd: _FrozenClock(real_fstat(fd)))


def _equal_size_rewrites(store: FileStore, count: int, tail_only: bool) -> list[str]:
    versions = []
    for i in range(count):
        value = b"x" * 8000 + b"%04d" % i if tail_only else b"%04d" % i + b"x" * 1020
        versions.append(run(store.write("k", Payload([value]))))
        assert run(store.stat("k")).version == versions[-1]
    return versions


def test_200_quick_equal_size_rewrites_all_get_distinct_versions(
    tmp_path: Path, frozen_clock: None
) -> None:
    # On ext4 the kernel hands the freed inode number straight back and timestamps may
    # not tick between two writes: the token still changes (generation, first bytes).
    # (A token of inode number, mtime and size alone gives 2 distinct values here.)
    store = _store(tmp_path, fsync=False)
    versions = _equal_size_rewrites(store, 200, tail_only=False)
    assert len(set(versions)) == 200


def test_distinct_versions_hold_where_the_file_system_reports_no_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, frozen_clock: None
) -> None:
    # As on tmpfs, overlayfs or NFS: the first bytes (a record's header hash) tell them apart.
    monkeypatch.setattr(file_module, "_generation", lambda fd, device: 0)
    store = _store(tmp_path, fsync=False)
    assert len(set(_equal_size_rewrites(store, 200, tail_only=False))) == 200
    records = ResultStore(tmp_path.as_uri(), storage_options={"fsync": False})
    seen = set()
    for i in range(200):  # equal-size records of equal-size values
        records.write(f"{i:04d}", key="r")
        seen.add(run(records.store.stat("r")).version)
    assert len(seen) == 200


def test_rewrites_differing_only_after_4_kib_differ_where_generations_exist(
    tmp_path: Path, frozen_clock: None
) -> None:
    # Without a generation these would share versions: the risk the module documents.
    store = _store(tmp_path, fsync=False)
    run(store.write("probe", Payload([b"."])))
    fd = os.open(tmp_path / "probe.rsr", os.O_RDONLY)
    try:
        if file_module._generation(fd, os.fstat(fd).st_dev) == 0:
            pytest.skip("this file system reports no inode generation (the documented risk)")
    finally:
        os.close(fd)
    assert len(set(_equal_size_rewrites(store, 200, tail_only=True))) == 200
    same = {run(store.write("same", Payload([b"identical"]))) for _ in range(50)}
    assert len(same) == 50  # even identical bytes: each write is a new inode


# -- create-only writes --------------------------------------------------------------------


def test_if_absent_creates_once_then_refuses_and_creates_again_after_a_delete(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    version = run(store.write("jobs/1", Payload([b"mine"]), if_absent=True))
    assert run(store.stat("jobs/1")) == Stat(4, version)
    with pytest.raises(ResultExistsError) as caught:
        run(store.write("jobs/1", Payload([b"theirs"]), if_absent=True))
    assert str(caught.value) == (
        f"cannot create key 'jobs/1' in {tmp_path.as_uri()}: a record already exists "
        "there; read it, or write without if_absent to replace it"
    )
    assert caught.value.key == "jobs/1" and caught.value.url == tmp_path.as_uri()
    assert run(_read(store, "jobs/1")) == b"mine"
    assert _temp_files(tmp_path / "jobs") == []  # the loser's temporary file is gone

    assert run(store.delete("jobs/1")) is True
    assert os.listdir(tmp_path) == []  # the folder went with its last record
    run(store.write("jobs/1", Payload([b"again"]), if_absent=True))
    assert run(_read(store, "jobs/1")) == b"again"


def test_if_absent_into_new_folders_is_durable(
    tmp_path: Path, events: list[Event], writer: str
) -> None:
    root = tmp_path / "results"
    store = _store(root)
    record = root / "runs" / "7" / "k.rsr"
    run(store.write("runs/7/k", Payload([b"v"]), if_absent=True))
    flushed = [path for call, path in events if call == "fsync"]
    # Each folder made is flushed in its parent, then the record, then its folder.
    assert flushed[:3] == [str(tmp_path), str(root), str(root / "runs")]
    new_file = Path(flushed[3])  # named, or unnamed (O_TMPFILE) in the record's folder
    assert new_file.parent == record.parent
    if writer == "named":
        assert re.fullmatch(r"\.k\.rsr\.[0-9a-f]{16}\.tmp", new_file.name)
    else:
        assert new_file.name.endswith(" (deleted)")
    assert events[-2:] == [("link", str(record)), ("fsync", str(record.parent))]
    assert os.listdir(record.parent) == ["k.rsr"]
    assert run(_read(store, "runs/7/k")) == b"v"


def test_conditional_writes_with_fsync_off_flush_nothing(
    tmp_path: Path, events: list[Event], writer: str
) -> None:
    store = _store(tmp_path, fsync=False)
    first = run(store.write("new/folder/k", Payload([b"1"]), if_absent=True))
    run(store.write("new/folder/k", Payload([b"2"]), if_version=first))
    assert [call for call, _ in events] == ["link", "lock", "replace", "unlock"]
    assert run(_read(store, "new/folder/k")) == b"2"


@pytest.mark.parametrize("concurrency", ["threads", "processes"])
def test_racing_create_only_writers_have_exactly_one_winner(
    tmp_path: Path, concurrency: str
) -> None:
    root = tmp_path / "results"
    if concurrency == "threads":
        store = _store(root)
        count = 32
        barrier = threading.Barrier(count)
        outcomes: list[str] = [""] * count

        def create(i: int) -> None:
            barrier.wait()
            try:
                run(store.write("race/one", Payload([b"writer %d" % i]), if_absent=True))
                outcomes[i] = "won"
            except ResultExistsError:
                outcomes[i] = "exists"
            except BaseException as exc:
                outcomes[i] = repr(exc)

        threads = [threading.Thread(target=create, args=(i,)) for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        count = 4
        outcomes = [line.split()[0] for line in _in_processes(root, count, "create", "1")]
    assert sorted(outcomes) == ["exists"] * (count - 1) + ["won"]
    winner = outcomes.index("won")
    assert run(_read(_store(root), "race/one")) == b"writer %d" % winner
    assert os.listdir(root / "race") == ["one.rsr"]


# -- compare-and-swap -----------------------------------------------------------------------


def test_if_version_replaces_only_the_version_it_names(tmp_path: Path) -> None:
    store = _store(tmp_path)
    v1 = run(store.write("k", Payload([b"1"])))
    v2 = run(store.write("k", Payload([b"2"]), if_version=v1))
    assert v2 != v1 and run(store.stat("k")) == Stat(1, v2)
    with pytest.raises(VersionConflictError) as caught:
        run(store.write("k", Payload([b"stale"]), if_version=v1))
    assert str(caught.value) == (
        f"cannot replace key 'k' in {tmp_path.as_uri()}: it is no longer at version {v1!r} "
        "(written or deleted meanwhile); read it again and retry"
    )
    assert caught.value.key == "k"
    assert run(_read(store, "k")) == b"2"
    assert _temp_files(tmp_path) == []

    assert run(store.delete("k")) is True
    with pytest.raises(VersionConflictError):  # deleted meanwhile
        run(store.write("k", Payload([b"3"]), if_version=v2))
    assert os.listdir(tmp_path) == []


def test_if_version_of_a_missing_key_or_folder_creates_nothing(tmp_path: Path) -> None:
    root = tmp_path / "results"
    store = _store(root)
    for key in ("k", "new/folders/k"):
        with pytest.raises(VersionConflictError, match=re.escape(f"key {key!r}")):
            run(store.write(key, Payload([b"v"]), if_version="0123456789abcdef"))
    assert not root.exists()  # not even the root
    run(store.write("other", Payload([b"v"])))
    (root / "plain").write_bytes(b"a file where a folder would be")
    with pytest.raises(VersionConflictError):
        run(store.write("plain/k", Payload([b"v"]), if_version="0123456789abcdef"))
    with pytest.raises(VersionConflictError):
        run(store.write("new/folders/k", Payload([b"v"]), if_version="0123456789abcdef"))
    assert sorted(os.listdir(root)) == ["other.rsr", "plain"]


def test_if_version_holds_the_folder_lock_until_the_record_is_durable(
    tmp_path: Path, events: list[Event]
) -> None:
    store = _store(tmp_path)
    (tmp_path / "a").mkdir()
    version = run(store.write("a/k", Payload([b"1"])))
    events.clear()
    run(store.write("a/k", Payload([b"2"]), if_version=version))
    folder, record = str(tmp_path / "a"), str(tmp_path / "a" / "k.rsr")
    (flush, temp), *rest = events
    assert flush == "fsync" and temp.endswith(".tmp")  # flushed before the lock is taken
    assert rest == [
        ("lock", folder),
        ("replace", record),
        ("fsync", folder),
        ("unlock", folder),
    ]


def test_if_absent_and_if_version_together_require_both(tmp_path: Path) -> None:
    store = _store(tmp_path)  # as the memory store: never both true, so always refused
    with pytest.raises(VersionConflictError):
        run(store.write("k", Payload([b"v"]), if_absent=True, if_version="x"))
    version = run(store.write("k", Payload([b"v"])))
    with pytest.raises(ResultExistsError):
        run(store.write("k", Payload([b"w"]), if_absent=True, if_version=version))
    assert run(_read(store, "k")) == b"v"


def test_a_compare_and_swap_waits_for_the_folder_lock_and_an_unconditional_write_does_not(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path, fsync=False)
    version = run(store.write("k", Payload([b"0"])))
    done = threading.Event()
    outcome: list[BaseException | str] = []

    def swap() -> None:
        try:
            outcome.append(str(run(store.write("k", Payload([b"cas"]), if_version=version))))
        except BaseException as exc:
            outcome.append(exc)
        done.set()

    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what another compare-and-swap writer holds
        thread = threading.Thread(target=swap)
        thread.start()
        assert not done.wait(0.3)  # the compare-and-swap waits
        # Unconditional writers take no lock: this one lands meanwhile...
        run(store.write("k", Payload([b"plain"])))
        assert run(_read(store, "k")) == b"plain"
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    thread.join(10)
    # ... and the compare-and-swap, which compares under the lock, sees it and refuses.
    assert len(outcome) == 1 and isinstance(outcome[0], VersionConflictError)
    assert run(_read(store, "k")) == b"plain"


def _increment(store: FileStore, key: str, times: int) -> int:
    """Add 1 to the number under ``key`` ``times`` times; returns the conflicts retried."""
    with contextlib.suppress(ResultExistsError):
        run(store.write(key, Payload([b"0"]), if_absent=True))
    conflicts = 0
    for _ in range(times):
        while True:
            value, version = run(_read_versioned(store, key))
            assert version is not None
            try:
                run(store.write(key, Payload([b"%d" % (int(value) + 1)]), if_version=version))
                break
            except VersionConflictError:
                conflicts += 1
    return conflicts


@pytest.mark.parametrize("fsync", [True, False], ids=["fsync", "no-fsync"])
def test_20_threads_incrementing_one_counter_lose_no_update(tmp_path: Path, fsync: bool) -> None:
    store = _store(tmp_path / "results", fsync=fsync)
    workers, times = 20, 10 if fsync else 25
    conflicts: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(workers)

    def work() -> None:
        barrier.wait()
        try:
            conflicts.append(_increment(store, "counters/n", times))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert run(_read(store, "counters/n")) == b"%d" % (workers * times)
    assert sum(conflicts) > 0  # they did race
    assert os.listdir(tmp_path / "results" / "counters") == ["n.rsr"]


def test_20_processes_incrementing_one_counter_lose_no_update(tmp_path: Path) -> None:
    root = tmp_path / "results"
    workers, times = 20, 10
    lines = _in_processes(root, workers, "increment", str(times))
    assert len(lines) == workers
    assert run(_read(_store(root), "counters/n")) == b"%d" % (workers * times)
    assert os.listdir(root / "counters") == ["n.rsr"]


def test_tasks_on_a_shared_event_loop_incrementing_one_counter_lose_no_update(
    tmp_path: Path,
) -> None:
    # On the caller's own loop a compare-and-swap may wait on the lock, so it runs in a
    # worker thread: tasks of one loop never block each other (or the loop) on it.
    store = _store(tmp_path, fsync=False)
    run(store.write("n", Payload([b"0"])))

    async def increment(times: int) -> None:
        for _ in range(times):
            while True:
                value, version = await _read_versioned(store, "n")
                assert version is not None
                try:
                    await store.write("n", Payload([b"%d" % (int(value) + 1)]), if_version=version)
                    break
                except VersionConflictError:
                    await anyio.sleep(0)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(increment, 10)

    anyio.run(main)
    assert run(_read(store, "n")) == b"200"


def test_through_result_store_a_read_version_guards_the_next_write(tmp_path: Path) -> None:
    results = ResultStore(tmp_path.as_uri())
    results.write({"n": 0}, key="jobs/counter", if_absent=True)
    with pytest.raises(ResultExistsError):
        results.write({"n": -1}, key="jobs/counter", if_absent=True)
    record = results.read("jobs/counter")
    seen = record.metadata.version
    assert seen is not None and seen == run(results.store.stat("jobs/counter")).version
    assert results.read_metadata("jobs/counter").version == seen  # a header-range read
    results.write({"n": record.result["n"] + 1}, key="jobs/counter", if_version=seen)
    with pytest.raises(VersionConflictError):  # a second writer holding the same read
        results.write({"n": record.result["n"] + 1}, key="jobs/counter", if_version=seen)
    assert results.read("jobs/counter").result == {"n": 1}


# -- symlinks, FIFOs and folders stay refused on the new paths ----------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside the store's root, holding a valid record ``x`` of its own."""
    folder = tmp_path / "elsewhere"
    run(_store(folder).write("x", Payload([b"outside"])))
    return folder


@pytest.mark.parametrize("condition", ["if_absent", "if_version"])
def test_conditional_writes_never_go_through_a_symlinked_folder(
    tmp_path: Path, outside: Path, resolver: str, condition: str
) -> None:
    root = tmp_path / "results"
    store = _store(root)
    run(store.write("kept", Payload([b"inside"])))
    (root / "link").symlink_to(outside)
    version = run(_store(outside).stat("x")).version
    kwargs: dict[str, Any] = (
        {"if_absent": True} if condition == "if_absent" else {"if_version": version}
    )
    said = f"{root / 'link'} is a symbolic link, which the file store does not follow"
    with pytest.raises(StorageError, match="cannot write key 'link/x' in ") as caught:
        run(store.write("link/x", Payload([b"escaped?"]), **kwargs))
    assert said in str(caught.value)
    with pytest.raises(IntegrityError, match=re.escape(said)):
        run(store.stat("link/x"))
    with pytest.raises(IntegrityError, match=re.escape(said)):
        run(store.open("link/x", start=1, end=3))
    assert sorted(os.listdir(outside)) == ["x.rsr"]
    assert run(_read(_store(outside), "x")) == b"outside"


@pytest.mark.parametrize("condition", ["if_absent", "if_version"])
def test_conditional_writes_refuse_a_symlinked_record_and_leave_its_target(
    tmp_path: Path, outside: Path, resolver: str, condition: str
) -> None:
    root = tmp_path / "results"
    store = _store(root)
    run(store.write("a/own", Payload([b"own"])))
    (root / "a" / "y.rsr").symlink_to(outside / "x.rsr")
    version = run(_store(outside).stat("x")).version  # what following the link would see
    kwargs: dict[str, Any] = (
        {"if_absent": True} if condition == "if_absent" else {"if_version": version}
    )
    with pytest.raises(StorageError) as caught:
        run(store.write("a/y", Payload([b"escaped?"]), **kwargs))
    assert str(caught.value) == (
        f"cannot write key 'a/y' in {root.as_uri()}: {root / 'a' / 'y.rsr'} is a symbolic "
        "link, which the file store does not follow below its root; remove it"
    )
    with pytest.raises(IntegrityError, match="is a symbolic link"):
        run(store.stat("a/y"))
    assert (root / "a" / "y.rsr").is_symlink() and _temp_files(root / "a") == []
    assert run(_read(_store(outside), "x")) == b"outside"


@pytest.mark.parametrize("condition", ["if_absent", "if_version"])
def test_conditional_writes_over_a_fifo_or_a_folder_say_what_to_remove(
    tmp_path: Path, condition: str
) -> None:
    store = _store(tmp_path)
    os.mkfifo(tmp_path / "f.rsr")
    (tmp_path / "d.rsr").mkdir()
    kwargs: dict[str, Any] = (
        {"if_absent": True} if condition == "if_absent" else {"if_version": "v"}
    )

    with pytest.raises(StorageError) as fifo:
        _within(5, lambda: run(store.write("f", Payload([b"v"]), **kwargs)))
    assert str(fifo.value) == (
        f"cannot write key 'f' in {tmp_path.as_uri()}: {tmp_path / 'f.rsr'} is not a regular "
        "file (a FIFO); remove it"
    )
    with pytest.raises(StorageError) as folder:
        run(store.write("d", Payload([b"v"]), **kwargs))
    assert str(folder.value) == (
        f"cannot write key 'd' in {tmp_path.as_uri()}: {tmp_path / 'd.rsr'} is a directory, "
        "not a record; remove it"
    )
    assert sorted(os.listdir(tmp_path)) == ["d.rsr", "f.rsr"]  # no temporary file left


def test_stat_and_ranges_refuse_a_fifo_at_once(tmp_path: Path, resolver: str) -> None:
    store = _store(tmp_path)
    (tmp_path / "a").mkdir()
    os.mkfifo(tmp_path / "a" / "x.rsr")
    with pytest.raises(IntegrityError) as caught:
        _within(5, lambda: run(store.stat("a/x")))
    assert str(caught.value) == (
        f"cannot stat key 'a/x' in {tmp_path.as_uri()}: {tmp_path / 'a' / 'x.rsr'} is not a "
        "regular file (a FIFO); remove it"
    )
    with pytest.raises(IntegrityError, match=r"cannot read key 'a/x' .*\(a FIFO\); remove it"):
        _within(5, lambda: run(store.open("a/x", start=10, end=20)))


# -- what conditional writes leave behind ------------------------------------------------------


def test_conditional_writes_leave_no_lock_files_and_deletes_still_prune_folders(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    version = run(store.write("a/b/k", Payload([b"1"]), if_absent=True))
    run(store.write("a/b/k", Payload([b"2"]), if_version=version))
    assert os.listdir(tmp_path / "a" / "b") == ["k.rsr"]
    assert run(_keys(store)) == ["a/b/k"]
    assert run(store.delete("a/b/k")) is True
    assert os.listdir(tmp_path) == []


def test_gc_removes_the_temporary_name_a_killed_create_only_writer_left_linked(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    run(store.write("k", Payload([b"v" * 100]), if_absent=True))
    # Killed between its link and its unlink: the temporary name still names the record.
    stale = tmp_path / ".k.rsr.00112233aabbccdd.tmp"
    os.link(tmp_path / "k.rsr", stale)
    os.utime(stale, (0, 0))
    results = ResultStore(tmp_path.as_uri())
    assert results.clean_abandoned() == (1, 0)  # one item, no bytes freed: still linked
    assert not stale.exists()
    assert run(_read(store, "k")) == b"v" * 100


# -- helpers: blocking calls, processes ---------------------------------------------------------


def _within(seconds: float, fn: Any) -> Any:
    """``fn()``, which must finish within ``seconds`` (a blocked call fails the test)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


_CHILD = """
import os, sys, time
sys.path.insert(0, {here!r})
from test_file_conditional import _child
_child(*sys.argv[1:])
"""


def _child(root: str, job: str, arg: str, ready: str, go: str) -> None:
    """One racing process: signal ready, wait for the start, run ``job``, print its outcome."""
    store = FileStore(Path(root).as_uri())
    Path(ready).touch()
    deadline = time.monotonic() + 120
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            raise SystemExit("never told to start")
        time.sleep(0.001)
    if job == "create":
        try:
            run(store.write("race/one", Payload([b"writer %s" % arg.encode()]), if_absent=True))
            print("won", flush=True)
        except ResultExistsError:
            print("exists", flush=True)
    else:
        print("conflicts", _increment(store, "counters/n", int(arg)), flush=True)


def _in_processes(root: Path, count: int, job: str, arg: str) -> list[str]:
    """Run ``count`` processes of ``job`` started together; their outputs, by index."""
    sync = root.parent / f"sync-{job}"
    sync.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESULTSTORE_")}
    go = sync / "go"
    procs = []
    for i in range(count):
        child_arg = str(i) if job == "create" else arg
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _CHILD.format(here=str(HERE)),
                    str(root),
                    job,
                    child_arg,
                    str(sync / f"ready-{i}"),
                    str(go),
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        deadline = time.monotonic() + 120
        while len([p for p in sync.iterdir() if p.name.startswith("ready-")]) < count:
            assert time.monotonic() < deadline, "the processes never got ready"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.01)
        go.touch()
        outputs = []
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
            outputs.append(out.strip())
        return outputs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
