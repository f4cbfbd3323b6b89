"""resultstore-sqlite: the conformance kit, several processes at once, discovery, errors."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import resultstore
from resultstore import (
    ConfigurationError,
    PersistedResult,
    ResultNotFoundError,
    ResultStore,
    StorageError,
    StorageUnavailableError,
    available_stores,
    resolve_store,
)
from resultstore.stores.base import Payload, Store
from resultstore.testing import MultiProcessConformance, StoreConformance, read_all
from resultstore.testing import run as run_sync

import resultstore_sqlite
from resultstore_sqlite import TABLE, SQLiteStore


class TestSQLiteConformance(StoreConformance, MultiProcessConformance):
    """The core's checks, unchanged, on a store opened by URL through the entry point.

    With the opt-in checks of a second process, and a forked child, using the same
    database file at once.
    """

    @pytest.fixture
    def store(self, sqlite_store: Store) -> Store:
        assert isinstance(sqlite_store, SQLiteStore)
        return sqlite_store


class TestSQLiteConformanceStreamingEveryValue(StoreConformance):
    """The same checks with every value, however small, streamed through blob I/O."""

    @pytest.fixture
    def store(self, sqlite_store: Store, monkeypatch: pytest.MonkeyPatch) -> Store:
        monkeypatch.setattr(resultstore_sqlite, "_SMALL_VALUE", -1)
        return sqlite_store


# -- several processes writing one database --------------------------------------

_WORKER = textwrap.dedent(
    """
    import os, sys, time
    from resultstore import ResultStore

    url, worker, count, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    store = ResultStore(url)
    deadline = time.monotonic() + 60
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.005)
    for i in range(count):
        store.write({"worker": worker, "i": i}, key=f"proc/{worker}/{i}")
        store.write({"worker": worker, "i": i, "blob": bytes([worker]) * (100_000 + i)}, key="same")
    store.close()
    """
)


def test_concurrent_writers_from_several_processes_all_land(tmp_path: Path, db_url: str) -> None:
    workers, count = 4, 50
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, db_url, str(w), str(count), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(workers)
    ]
    time.sleep(0.5)  # let every interpreter start and import before they race
    go.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        assert err == ""

    results = ResultStore(db_url)
    expected = sorted(f"proc/{w}/{i}" for w in range(workers) for i in range(count))
    assert results.keys("proc/") == expected
    for w in range(workers):
        for i in range(count):
            assert results.read(f"proc/{w}/{i}", retry=False).result == {"worker": w, "i": i}
    same = results.read("same", retry=False).result  # checksums verified: the record is whole
    assert same["blob"] == bytes([same["worker"]]) * (100_000 + same["i"])
    results.close()


def test_threads_sharing_one_store_all_land(db_url: str) -> None:
    results = ResultStore(db_url)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(20):
                results.write(t * 100 + i, key=f"t/{t}/{i}")
                assert results.read(f"t/{t}/{i}", retry=False).result == t * 100 + i
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(results.keys("t/")) == 160
    results.close()


# -- found through the entry point only -------------------------------------------


def test_the_sqlite_scheme_is_registered_by_this_distribution() -> None:
    assert available_stores()["sqlite"] == "resultstore-sqlite"
    (ep,) = importlib.metadata.entry_points(group="resultstore.stores", name="sqlite")
    assert ep.value == "resultstore_sqlite:SQLiteStore"
    assert ep.dist is not None and ep.dist.metadata["Name"] == "resultstore-sqlite"


def _code_without_prose(source: Path) -> str:
    """The module's code as the interpreter sees it: docstrings and comments dropped."""
    tree = ast.parse(source.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            body[0] = ast.Pass()
    return ast.unparse(tree)


def test_the_core_does_not_know_this_plugin() -> None:
    # No code of the core names it (prose may use the scheme as an example of a plugin's).
    core = Path(resultstore.__file__).parent
    for source in core.rglob("*.py"):
        assert "sqlite" not in _code_without_prose(source).lower(), source


def test_resolve_store_and_result_store_find_the_plugin_by_url(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(resolve_store(db_url), SQLiteStore)
    with ResultStore(db_url) as results:
        assert isinstance(results.store, SQLiteStore)
        key = results.write({"rows": 1200}, key="etl/2026-11-28")
        assert results.read(key).result == {"rows": 1200}
        assert results.storage_url == db_url

        # A persisted result travels as JSON with the URL only, and reopens the store by it
        # in a process that allows references to it.
        monkeypatch.setenv("RESULTSTORE_REFERENCE_URLS", db_url)
        reference = results.create_result([1, 2, 3], key="ref")
        reference.write()
        again = PersistedResult.from_reference(json.loads(json.dumps(reference.to_reference())))
        assert again.storage_url == db_url
        assert again.get() == [1, 2, 3]


def test_a_fresh_interpreter_loads_the_plugin_only_when_the_url_asks(db_url: str) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        from resultstore import ResultStore
        assert "resultstore_sqlite" not in sys.modules, "imported before it was asked for"
        with ResultStore({db_url!r}) as results:
            assert type(results.store).__module__ == "resultstore_sqlite"
            results.write({{"x": 1}}, key="k")
            print(results.read("k").result)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "{'x': 1}"


# -- errors --------------------------------------------------------------------


def _assert_one_line_naming(error: BaseException, *parts: str) -> str:
    message = str(error)
    assert "\n" not in message
    assert "Traceback" not in message
    for part in parts:
        assert part in message, (part, message)
    assert error.__cause__ is None and error.__suppress_context__
    return message


def test_a_folder_that_cannot_be_created_is_a_one_line_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    url = f"sqlite://{blocker}/sub/results.db"
    store = resolve_store(url)
    with pytest.raises(StorageError) as caught:
        run_sync(store.write("k", Payload([b"x"])))
    assert not isinstance(caught.value, StorageUnavailableError)
    _assert_one_line_naming(caught.value, url, "'k'", "write")
    assert caught.value.url == url and caught.value.key == "k"

    with ResultStore(url) as results, pytest.raises(StorageError) as through_core:
        results.write(1, key="through/core")
    _assert_one_line_naming(through_core.value, url, "'through/core'")


def test_a_file_that_is_not_a_database_is_a_one_line_storage_error(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is a text file, not an SQLite database\n" * 100)
    url = f"sqlite://{db_path}"
    store = resolve_store(url)
    for action, call in [
        ("write", lambda: store.write("k", Payload([b"x"]))),
        ("read", lambda: store.open("k")),
        ("check", lambda: store.exists("k")),
        ("delete", lambda: store.delete("k")),
        ("list", lambda: read_keys(store, "p/")),
    ]:
        with pytest.raises(StorageError) as caught:
            run_sync(call())
        message = _assert_one_line_naming(caught.value, url, action, "not a database")
        assert "point the URL at another file" in message
    with ResultStore(url, retry=None) as results, pytest.raises(StorageError, match="not a data"):
        results.read("k", retry=False)


async def read_keys(store: Store, prefix: str = "") -> list[str]:
    return sorted([key async for key in store.list(prefix)])


def test_a_lock_held_past_the_timeout_is_storage_unavailable(db_url: str, db_path: Path) -> None:
    store = resolve_store(db_url, timeout=0.2)
    run_sync(store.write("k", Payload([b"old"])))
    blocker = sqlite3.connect(db_path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # holds the write lock
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError) as caught:
            run_sync(store.write("k", Payload([b"new"])))
        assert time.monotonic() - started < 5
        _assert_one_line_naming(caught.value, db_url, "'k'", "timeout")
        # Readers are not blocked by a writer (WAL).
        assert run_sync(read_all(store, "k")) == b"old"
    finally:
        blocker.close()
    run_sync(store.write("k", Payload([b"new"])))
    assert run_sync(read_all(store, "k")) == b"new"
    run_sync(store.aclose())


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("sqlite://", "has no path"),
        ("sqlite:///data/r.db?mode=ro", "takes no query"),
        ("sqlite:///data/r.db#x", "takes no query"),
        ("sqlite://:memory:", "memory://"),
    ],
)
def test_bad_urls_are_configuration_errors(url: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment) as caught:
        resolve_store(url)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("timeout", [-1, "30", None, True])
def test_a_bad_timeout_is_a_configuration_error(db_url: str, timeout: object) -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        resolve_store(db_url, timeout=timeout)


# -- URLs and options -------------------------------------------------------------


def test_relative_and_home_urls_become_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_store("sqlite://rel.db").url == f"sqlite://{tmp_path}/rel.db"
    assert resolve_store("sqlite://sub/rel.db").url == f"sqlite://{tmp_path}/sub/rel.db"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_store("sqlite://~/r.db").url == f"sqlite://{tmp_path}/home/r.db"


def test_the_store_url_reopens_the_same_file(tmp_path: Path) -> None:
    first = resolve_store(f"sqlite://{tmp_path}/with space/r%25.db")
    assert isinstance(first, SQLiteStore)
    assert first.path == tmp_path / "with space" / "r%.db"
    assert first.url == f"sqlite://{tmp_path}/with%20space/r%25.db"
    run_sync(first.write("k", Payload([b"v"])))
    second = resolve_store(first.url)
    assert isinstance(second, SQLiteStore) and second.path == first.path
    assert run_sync(read_all(second, "k")) == b"v"
    assert repr(second) == f"SQLiteStore({first.url!r})"


def test_options_set_the_lock_timeout_and_durability(db_url: str) -> None:
    def synchronous(store: Store) -> int:
        assert isinstance(store, SQLiteStore)
        run_sync(store.write("k", Payload([b"v"])))
        with store._pool.connection(create=False) as conn:
            assert conn is not None
            return int(conn.execute("PRAGMA synchronous").fetchone()[0])

    assert synchronous(resolve_store(db_url)) == 2  # FULL
    assert synchronous(resolve_store(db_url, fsync=False)) == 1  # NORMAL
    store = resolve_store(db_url, timeout=5)
    assert isinstance(store, SQLiteStore) and store.timeout == 5.0


# -- how records are kept ---------------------------------------------------------


def test_the_database_is_in_wal_mode_with_one_table(sqlite_store: Store, db_path: Path) -> None:
    run_sync(sqlite_store.write("a/b", Payload([b"value"])))
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute(f"SELECT key, value FROM {TABLE}").fetchall() == [("a/b", b"value")]
    finally:
        conn.close()


def test_reads_of_a_database_not_yet_written_create_nothing(
    sqlite_store: Store, db_path: Path
) -> None:
    with pytest.raises(ResultNotFoundError):
        run_sync(sqlite_store.open("k"))
    assert run_sync(sqlite_store.exists("k")) is False
    assert run_sync(sqlite_store.delete("k")) is False
    assert run_sync(read_keys(sqlite_store)) == []
    assert not db_path.parent.exists()


def test_a_database_shared_with_other_tables_keeps_them(db_path: Path, db_url: str) -> None:
    db_path.parent.mkdir(parents=True)
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE mine (x)")
    conn.execute("INSERT INTO mine VALUES (42)")
    conn.commit()
    conn.close()
    with ResultStore(db_url) as results:
        results.write("v", key="k")
        assert results.read("k").result == "v"
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT x FROM mine").fetchall() == [(42,)]
    conn.close()


def test_an_open_reader_keeps_its_version_while_another_process_replaces_it(
    sqlite_store: Store, db_url: str
) -> None:
    old, new = os.urandom(2 << 20), os.urandom(3 << 20)
    run_sync(sqlite_store.write("big", Payload([old[:1000], old[1000:]])))
    other = resolve_store(db_url)  # its own connections, as another process would have

    async def check() -> None:
        reader = await sqlite_store.open("big")
        try:
            head = await reader.read(1000)
            await other.write("big", Payload([new]))  # not blocked by the open reader
            assert await read_all(other, "big") == new
            assert head + await reader.read() == old
        finally:
            await reader.aclose()
        assert await read_all(sqlite_store, "big") == new

    run_sync(check())
    run_sync(other.aclose())


def test_listing_pages_through_batches_and_stops_past_the_prefix(
    sqlite_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resultstore_sqlite, "_LIST_BATCH", 3)
    keys = ["a", "a/1", "a/2", "a/3", "a/4", "a/5", "a/6/x", "a0", "a\U0001f642", "b", "b/1"]
    for key in keys:
        run_sync(sqlite_store.write(key, Payload([key.encode()])))
    assert run_sync(read_keys(sqlite_store)) == sorted(keys)
    assert run_sync(read_keys(sqlite_store, "a/")) == [k for k in keys if k.startswith("a/")]
    assert run_sync(read_keys(sqlite_store, "a")) == [k for k in keys if k.startswith("a")]
    assert run_sync(read_keys(sqlite_store, "b/")) == ["b/1"]
    assert run_sync(read_keys(sqlite_store, "c")) == []


def test_the_store_reconnects_after_aclose(sqlite_store: Store) -> None:
    run_sync(sqlite_store.write("k", Payload([b"1"])))
    run_sync(sqlite_store.aclose())
    assert run_sync(read_all(sqlite_store, "k")) == b"1"
    run_sync(sqlite_store.write("k", Payload([b"2"])))
    assert run_sync(read_all(sqlite_store, "k")) == b"2"


def test_connections_are_not_reused_across_fork(
    sqlite_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(sqlite_store, SQLiteStore)
    run_sync(sqlite_store.write("k", Payload([b"1"])))
    with sqlite_store._pool.connection(create=False) as before:
        pass
    parked = len(resultstore_sqlite._inherited)
    real_pid = os.getpid()
    monkeypatch.setattr(resultstore_sqlite.os, "getpid", lambda: real_pid + 1)
    with sqlite_store._pool.connection(create=False) as after:
        assert after is not None and after is not before
    assert len(resultstore_sqlite._inherited) == parked + 1  # parked, neither used nor closed
    assert run_sync(read_all(sqlite_store, "k")) == b"1"


def test_a_payload_of_many_large_buffers_round_trips(sqlite_store: Store) -> None:
    # Several buffers of 1 MiB or more are written in place through blob I/O on 3.11+.
    views = [memoryview(os.urandom(700_000))[1:] for _ in range(3)]
    run_sync(sqlite_store.write("k", Payload(views)))
    assert run_sync(read_all(sqlite_store, "k")) == b"".join(views)
