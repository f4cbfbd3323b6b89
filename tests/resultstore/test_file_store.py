"""The file store: durable writes, and a root that neither blocks nor lets anything escape it.

Durability is checked by recording, in order, every ``os.fsync`` and ``os.replace`` the
store makes, each named by the path its file descriptor refers to. The rest uses real
files: FIFOs, sockets, symbolic links, folders named like records, very deep trees.
Tests about symlinks run twice: with ``openat2`` (Linux 5.6+), and walking folder by
folder as on systems without it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from resultstore import (
    ConfigurationError,
    IntegrityError,
    ResultExistsError,
    ResultNotFoundError,
    ResultStore,
    RetryPolicy,
    StorageError,
)
from resultstore._loops import run_sync
from resultstore.stores import file as file_module

T = TypeVar("T")
Event = tuple[str, str]

ONCE = RetryPolicy(attempts=1, delay=0)


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


@pytest.fixture
def flushes(monkeypatch: pytest.MonkeyPatch) -> list[Event]:
    """Every os.fsync, and every os.replace and os.link that names a file, in order.

    As (call, path): a flush names the file or folder its descriptor refers to, a
    rename or link the path it gave a file.
    """
    events: list[Event] = []
    real_fsync, real_replace, real_link = os.fsync, os.replace, os.link

    def fsync(fd: int) -> None:
        events.append(("fsync", _fd_path(fd)))
        real_fsync(fd)

    def replace(src: str, dst: str, *, src_dir_fd: int | None = None, **kw: Any) -> None:
        real_replace(src, dst, src_dir_fd=src_dir_fd, **kw)
        events.append(("replace", _in_folder(kw.get("dst_dir_fd"), dst)))

    def link(src: str, dst: str, **kw: Any) -> None:
        real_link(src, dst, **kw)
        events.append(("link", _in_folder(kw.get("dst_dir_fd"), dst)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "link", link)
    return events


def _in_folder(folder: int | None, name: str) -> str:
    return os.path.join(_fd_path(folder), name) if folder is not None else name


def _is_temp_of(path: str, record: Path) -> bool:
    return (
        re.fullmatch(rf"\.{re.escape(record.name)}\.[0-9a-f]{{16}}\.tmp", Path(path).name)
        is not None
    )


def _is_new_file_for(path: str, record: Path) -> bool:
    """A file written for ``record``: its temporary name, or an unnamed file in its folder."""
    unnamed = Path(path).parent == record.parent and path.endswith(" (deleted)")
    return unnamed or _is_temp_of(path, record)


def _steps(events: list[Event], record: Path) -> list[str]:
    """What the events did for ``record``, in order; links to temporary names are not steps."""
    steps = []
    for call, path in events:
        if call == "fsync" and _is_new_file_for(path, record):
            steps.append("flush the new file")
        elif call == "fsync":
            steps.append(f"flush folder {path}")
        elif path == str(record):
            steps.append("name it")
        else:
            assert _is_temp_of(path, record), (call, path)
    return steps


def _within(seconds: float, fn: Callable[[], T]) -> T:
    """``fn()``, which must finish within ``seconds`` (run in a daemon thread, so a call that
    blocks forever fails the test instead of hanging it)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # handed back to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


# -- Job 1: a write with fsync on is durable when it returns -----------------------------


def test_a_write_flushes_the_record_then_names_it_then_flushes_its_folder(
    tmp_path: Path, flushes: list[Event], writer: str
) -> None:
    root = tmp_path / "results"
    root.mkdir()
    store = ResultStore(root.as_uri())  # fsync is on by default
    record = root / "k.rsr"

    store.write("first", key="k")  # a new key
    assert _steps(flushes, record) == ["flush the new file", "name it", f"flush folder {root}"]
    # An unnamed file is linked in as the record; a named one is renamed over it.
    assert flushes[1] == ("link" if writer == "unnamed" else "replace", str(record))

    flushes.clear()
    store.write("second", key="k")  # an overwrite: the same three steps
    assert _steps(flushes, record) == ["flush the new file", "name it", f"flush folder {root}"]
    assert flushes[-2] == ("replace", str(record))  # over the old record, atomically
    assert store.read("k").result == "second"


def test_a_create_only_write_flushes_the_record_then_links_it_then_flushes_its_folder(
    tmp_path: Path, flushes: list[Event], writer: str
) -> None:
    store = ResultStore(tmp_path.as_uri())
    record = tmp_path / "k.rsr"

    store.write("first", key="k", if_absent=True)
    assert _steps(flushes, record) == ["flush the new file", "name it", f"flush folder {tmp_path}"]
    assert ("link", str(record)) in flushes  # a link fails if anything is there: never replaced


def test_a_write_into_new_folders_also_flushes_the_parent_of_each_folder_it_made(
    tmp_path: Path, flushes: list[Event], resolver: str, writer: str
) -> None:
    root = tmp_path / "results"
    root.mkdir()
    (root / "runs").mkdir()
    store = ResultStore(root.as_uri())
    record = root / "runs" / "7" / "model" / "weights.rsr"

    store.write(b"w", key="runs/7/model/weights")
    # "runs" existed; "runs/7" and "runs/7/model" are new, so their parents gain an entry.
    assert _steps(flushes, record) == [
        f"flush folder {root / 'runs'}",
        f"flush folder {root / 'runs' / '7'}",
        "flush the new file",
        "name it",
        f"flush folder {record.parent}",
    ]
    assert store.read("runs/7/model/weights").result == b"w"


def test_the_first_write_flushes_the_folders_it_made_up_to_the_root_and_above(
    tmp_path: Path, flushes: list[Event], writer: str
) -> None:
    root = tmp_path / "new" / "results"  # neither exists yet
    store = ResultStore(root.as_uri())

    store.write(1, key="a/k")
    assert _steps(flushes, root / "a" / "k.rsr") == [
        f"flush folder {tmp_path}",
        f"flush folder {tmp_path / 'new'}",
        f"flush folder {root}",
        "flush the new file",
        "name it",
        f"flush folder {root / 'a'}",
    ]


def test_a_delete_with_fsync_on_flushes_the_folder_it_deleted_from(
    tmp_path: Path, flushes: list[Event]
) -> None:
    store = ResultStore(tmp_path.as_uri())
    store.write(1, key="jobs/a")
    store.write(2, key="jobs/b")
    flushes.clear()

    assert store.delete("jobs/a") is True
    assert flushes == [("fsync", str(tmp_path / "jobs"))]  # so a returned delete stays done


def test_with_fsync_off_nothing_is_flushed(
    tmp_path: Path, flushes: list[Event], writer: str
) -> None:
    store = ResultStore(tmp_path.as_uri(), storage_options={"fsync": False})
    store.write(1, key="new/folders/k")
    store.write(2, key="new/folders/k")
    store.write(3, key="top")
    assert store.delete("top") is True
    assert [call for call, _ in flushes if call == "fsync"] == []
    assert [path for call, path in flushes if path.endswith(".rsr")] == [
        str(tmp_path / "new" / "folders" / "k.rsr"),
        str(tmp_path / "new" / "folders" / "k.rsr"),
        str(tmp_path / "top.rsr"),
    ]
    assert store.read("new/folders/k").result == 2


def test_fsync_off_from_the_environment_reaches_the_writes(
    tmp_path: Path, flushes: list[Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESULTSTORE_FSYNC", "false")
    ResultStore(tmp_path.as_uri()).write(1, key="k")
    assert [call for call, _ in flushes if call == "fsync"] == []
    assert [path for _, path in flushes] == [str(tmp_path / "k.rsr")]


def test_a_new_record_leaves_no_temporary_name_behind_even_for_a_moment(
    tmp_path: Path, flushes: list[Event]
) -> None:
    """Where the system allows unnamed files, a new record gets its name in one link."""
    store = ResultStore(tmp_path.as_uri(), storage_options={"fsync": False})
    store.write(1, key="k")
    assert flushes == [("link", str(tmp_path / "k.rsr"))]


def test_a_file_system_refusing_unnamed_files_gets_named_ones(
    tmp_path: Path, flushes: list[Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def no_tmpfile(path: str, flags: int, *args: Any, **kw: Any) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", no_tmpfile)
    store = ResultStore(tmp_path.as_uri(), storage_options={"fsync": False})
    store.write(1, key="k")
    store.write(2, key="k", if_absent=False)
    with pytest.raises(ResultExistsError):
        store.write(3, key="k", if_absent=True)
    assert [call for call, _ in flushes] == ["replace", "replace"]
    assert store.read("k").result == 2
    assert sorted(os.listdir(tmp_path)) == ["k.rsr"]  # no temporary file left


def test_an_overwrite_is_one_rename_of_a_named_file_over_the_record(
    tmp_path: Path, flushes: list[Event]
) -> None:
    """A record already there is replaced as a hand-written write would: no links."""
    store = ResultStore(tmp_path.as_uri(), storage_options={"fsync": False})
    store.write(1, key="k")
    flushes.clear()
    store.write(2, key="k")
    assert flushes == [("replace", str(tmp_path / "k.rsr"))]
    assert store.read("k").result == 2
    assert sorted(os.listdir(tmp_path)) == ["k.rsr"]


def test_a_record_appearing_after_the_writer_looked_is_replaced_all_the_same(
    tmp_path: Path, flushes: list[Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The look for a record is a hint: a record there by the time of the link is replaced."""
    store = ResultStore(tmp_path.as_uri())
    store.write(1, key="k")
    monkeypatch.setattr(file_module, "_present", lambda name, dir_fd: False)
    flushes.clear()
    store.write(2, key="k")
    record = tmp_path / "k.rsr"
    assert _steps(flushes, record) == ["flush the new file", "name it", f"flush folder {tmp_path}"]
    assert flushes[-2] == ("replace", str(record))
    assert store.read("k").result == 2
    assert sorted(os.listdir(tmp_path)) == ["k.rsr"]
    with pytest.raises(ResultExistsError):
        store.write(3, key="k", if_absent=True)  # a create-only write never looks: it links
    assert store.read("k").result == 2


@pytest.mark.parametrize("count", [1, 3, file_module._IOV_MAX + 5])
def test_short_writes_are_resumed_until_every_byte_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    """A ``writev`` may write less than asked: the rest follows, in order, to the last byte."""
    buffers: list[Any] = [bytes([i % 251]) * (i % 7) for i in range(count)]
    buffers.append(memoryview(bytearray(b"tail" * 100)))
    expected = b"".join(bytes(b) for b in buffers)
    real_writev = os.writev
    calls = []

    def stingy(fd: int, views: Any) -> int:
        views = list(views)
        calls.append(len(views))
        first = next((memoryview(v).cast("B") for v in views if memoryview(v).nbytes), None)
        return real_writev(fd, [first[:3]]) if first is not None else 0

    monkeypatch.setattr(os, "writev", stingy)
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        file_module._write_all(fd, buffers, len(expected))
    finally:
        os.close(fd)
    assert path.read_bytes() == expected
    assert max(calls) <= file_module._IOV_MAX


# -- storage options ---------------------------------------------------------------------


def test_a_misspelled_storage_option_is_refused_naming_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        ResultStore(tmp_path.as_uri(), storage_options={"fsnyc": False})
    message = str(caught.value)
    assert message == (
        f"unknown storage option 'fsnyc' for {tmp_path.as_uri()}; valid options: fsync"
    )
    assert "\n" not in message


def test_a_misspelled_storage_option_in_the_environment_is_refused_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESULTSTORE_STORAGE_URL", tmp_path.as_uri())
    monkeypatch.setenv("RESULTSTORE_STORAGE_OPTIONS", '{"fsync": false, "fsnyc": false}')
    with pytest.raises(ConfigurationError, match="unknown storage option 'fsnyc'"):
        ResultStore()


# -- Job 2: records that are not regular files are refused at once -------------------------


def _make_fifo(path: Path) -> None:
    os.mkfifo(path)


def _make_socket(path: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()  # the socket file stays


def _make_folder(path: Path) -> None:
    path.mkdir()
    (path / "inner.rsr").write_bytes(b"x")


@pytest.mark.parametrize(
    ("make", "kind"),
    [(_make_fifo, "a FIFO"), (_make_socket, "a socket"), (_make_folder, "a directory")],
)
def test_a_record_path_holding_no_regular_file_is_refused_at_once(
    tmp_path: Path, make: Callable[[Path], None], kind: str
) -> None:
    store = ResultStore(tmp_path.as_uri(), retry=RetryPolicy(attempts=3, delay=0.01))
    make(tmp_path / "x.rsr")

    with pytest.raises(IntegrityError) as caught:
        _within(5, lambda: store.read("x"))
    assert str(caught.value) == (
        f"cannot read key 'x' in {tmp_path.as_uri()}: {tmp_path / 'x.rsr'} is not a regular "
        f"file ({kind}); remove it"
    )
    assert caught.value.key == "x" and caught.value.url == tmp_path.as_uri()
    with pytest.raises(IntegrityError, match=re.escape(f"({kind}); remove it")):
        _within(5, lambda: store.read_metadata("x"))
    assert store.exists("x") is True  # something is there; reading says what
    assert store.keys() == ["x"]  # listed, so `ls` and `check` report it


def test_a_fifo_in_a_folder_is_refused_through_either_resolver(
    tmp_path: Path, resolver: str
) -> None:
    store = ResultStore(tmp_path.as_uri())
    (tmp_path / "a").mkdir()
    os.mkfifo(tmp_path / "a" / "x.rsr")
    with pytest.raises(IntegrityError, match=r"is not a regular file \(a FIFO\); remove it"):
        _within(5, lambda: store.read("a/x", retry=False))


def test_a_fifo_can_be_deleted_like_a_record(tmp_path: Path) -> None:
    store = ResultStore(tmp_path.as_uri())
    os.mkfifo(tmp_path / "x.rsr")
    assert store.delete("x") is True
    assert not os.path.lexists(tmp_path / "x.rsr")


def _cli(url: str, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("RESULTSTORE_")}
    return subprocess.run(
        [sys.executable, "-m", "resultstore", "--storage", url, *args],
        env={**env, "HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,  # a command blocked on the FIFO fails the test instead of hanging it
        check=False,
    )


def test_ls_check_and_gc_report_a_fifo_named_like_a_record_and_carry_on(tmp_path: Path) -> None:
    root = tmp_path / "results"
    store = ResultStore(root.as_uri())
    store.write({"rows": 1}, key="good")
    os.mkfifo(root / "x.rsr")

    listed = _cli(root.as_uri(), "ls", home=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^good .* pickle ", listed.stdout, re.MULTILINE), listed.stdout
    assert re.search(r"^x +- +DAMAGED ", listed.stdout, re.MULTILINE), listed.stdout
    assert "1 damaged record(s)" in listed.stderr

    checked = _cli(root.as_uri(), "check", home=tmp_path)
    assert checked.returncode == 5
    assert "is not a regular file (a FIFO); remove it" in checked.stdout
    assert "checked 2 record(s)" in checked.stdout and "1 ok, 1 failed" in checked.stdout

    collected = _cli(root.as_uri(), "gc", home=tmp_path)
    assert collected.returncode == 0, collected.stderr
    assert "0 expired record(s)" in collected.stdout
    assert store.read("good").result == {"rows": 1}


# -- Job 2: nothing below the root is followed -----------------------------------------------


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside the store's root, holding a valid record ``x`` of its own."""
    folder = tmp_path / "elsewhere"
    ResultStore(folder.as_uri()).write("outside", key="x")
    return folder


def test_a_symlinked_folder_is_never_followed(tmp_path: Path, outside: Path, resolver: str) -> None:
    root = tmp_path / "results"
    store = ResultStore(root.as_uri(), retry=ONCE)
    store.write("inside", key="kept")
    (root / "link").symlink_to(outside)
    link = root / "link"
    said = (
        f"{root.as_uri()}: {link} is a symbolic link, which the file store does not follow "
        "below its root; remove it"
    )

    with pytest.raises(StorageError) as written:
        store.write("escaped?", key="link/y")
    assert str(written.value) == f"cannot write key 'link/y' in {said}"
    assert written.value.key == "link/y" and written.value.url == root.as_uri()
    with pytest.raises(IntegrityError) as read:
        store.read("link/x")
    assert str(read.value) == f"cannot read key 'link/x' in {said}"
    with pytest.raises(StorageError, match=re.escape(f"key 'link/x' in {said}")):
        store.delete("link/x")  # ResultStore checks presence first: 'cannot check key ...'
    with pytest.raises(StorageError, match=re.escape(f"cannot delete key 'link/x' in {said}")):
        run_sync(store.store.delete("link/x"))
    with pytest.raises(StorageError, match=re.escape(f"cannot check key 'link/x' in {said}")):
        store.exists("link/x")
    assert store.keys() == ["kept"]  # not listed

    assert sorted(os.listdir(outside)) == ["x.rsr"]  # nothing written, nothing deleted
    assert ResultStore(outside.as_uri()).read("x").result == "outside"


def test_a_symlinked_folder_deeper_down_is_found_too(
    tmp_path: Path, outside: Path, resolver: str
) -> None:
    root = tmp_path / "results"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "c").symlink_to(outside)
    store = ResultStore(root.as_uri(), retry=ONCE)
    with pytest.raises(StorageError, match=re.escape(f"{root}/a/b/c is a symbolic link")):
        store.write(1, key="a/b/c/x")
    with pytest.raises(IntegrityError, match=re.escape(f"{root}/a/b/c is a symbolic link")):
        store.read("a/b/c/x")
    assert sorted(os.listdir(outside)) == ["x.rsr"]


def test_a_symlinked_record_is_refused_on_read_and_only_the_link_is_replaced_or_deleted(
    tmp_path: Path, outside: Path, resolver: str
) -> None:
    root = tmp_path / "results"
    store = ResultStore(root.as_uri(), retry=ONCE)
    store.write(1, key="a/own")
    (root / "x.rsr").symlink_to(outside / "x.rsr")
    (root / "a" / "y.rsr").symlink_to(outside / "x.rsr")

    for key, path in (("x", root / "x.rsr"), ("a/y", root / "a" / "y.rsr")):
        with pytest.raises(IntegrityError, match=re.escape(f"{path} is a symbolic link")):
            store.read(key)
    assert sorted(store.keys()) == ["a/own", "a/y", "x"]  # reported, so `check` flags them

    store.write("replaced", key="x")  # the rename replaces the link itself
    assert not (root / "x.rsr").is_symlink() and store.read("x").result == "replaced"
    assert store.delete("a/y") is True  # the link goes, not what it points to
    assert not os.path.lexists(root / "a" / "y.rsr")
    assert ResultStore(outside.as_uri()).read("x").result == "outside"


def test_gc_never_deletes_through_a_symlinked_folder(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "results"
    store = ResultStore(root.as_uri())
    store.write(1, key="k")
    stale = outside / ".z.rsr.00112233aabbccdd.tmp"  # looks like an abandoned temp file
    stale.write_bytes(b"z" * 10)
    os.utime(stale, (0, 0))
    (root / "link").symlink_to(outside)

    assert store.clean_abandoned() == (0, 0)
    assert stale.exists()


def test_a_root_that_is_itself_a_symlink_is_fine(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "configured").symlink_to(real)
    store = ResultStore((tmp_path / "configured").as_uri())  # resolved once, here
    store.write("v", key="a/b")
    assert store.storage_url == real.as_uri()
    assert (real / "a" / "b.rsr").is_file()
    assert store.read("a/b").result == "v" and store.keys() == ["a/b"]
    assert store.delete("a/b") is True


# -- Job 2: listing survives hostile trees ---------------------------------------------------


def test_ls_reports_a_folder_named_like_a_record_and_lists_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "results"
    store = ResultStore(root.as_uri())
    store.write(1, key="a/ok")
    (root / "a" / "bad.rsr").mkdir()
    (root / "a" / "bad.rsr" / "inner.rsr").write_bytes(b"never a key: 'a/bad.rsr/inner'")

    assert store.keys() == ["a/bad", "a/ok"]
    with pytest.raises(IntegrityError, match=r"a/bad.rsr is not a regular file \(a directory\)"):
        store.read_metadata("a/bad")
    listed = _cli(root.as_uri(), "ls", "--json", home=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert '"key": "a/ok"' in listed.stdout
    assert '"key": "a/bad", "error": "cannot read key' in listed.stdout


def test_names_that_are_no_valid_key_are_not_listed(tmp_path: Path) -> None:
    store = ResultStore(tmp_path.as_uri())
    store.write(1, key="ok")
    (tmp_path / "bad\x01name.rsr").write_bytes(b"x")  # a control character
    (tmp_path / "ctl\x02").mkdir()
    (tmp_path / "ctl\x02" / "inner.rsr").write_bytes(b"x")
    assert store.keys() == ["ok"]
    assert [m.storage_key for m in store.list()] == ["ok"]


def _remove_chain(top: Path) -> None:
    """Remove ``top/d/d/...`` however deep (``shutil.rmtree``, and pytest, would recurse)."""
    spare = top.with_name(top.name + ".next")
    while os.path.lexists(top):
        for entry in os.scandir(top):
            if entry.name != "d":
                os.unlink(entry.path)
        if os.path.lexists(top / "d"):
            os.rename(top / "d", spare)
            os.rmdir(top)
            os.rename(spare, top)
        else:
            os.rmdir(top)


def test_a_tree_1100_levels_deep_is_listed_without_recursion_error(tmp_path: Path) -> None:
    root = tmp_path / "results"
    store = ResultStore(root.as_uri())
    store.write(1, key="d/d/shallow")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(1100):  # d/d/d/... 1,100 folders; keys stop at 1024 bytes (512 levels)
            with contextlib.suppress(FileExistsError):  # d/d/ holds the record written above
                os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(os.open("bottom.rsr", os.O_WRONLY | os.O_CREAT, dir_fd=fd))  # too deep: no key
        os.close(fd)
        deepest = "/".join(["d"] * 511) + "/k"  # the deepest key there can be: 1023 bytes
        store.write(2, key=deepest)

        assert store.keys() == sorted([deepest, "d/d/shallow"])
        assert store.clean_abandoned() == (0, 0)
        assert store.read(deepest).result == 2
    finally:
        _remove_chain(root / "d")


def test_listing_does_not_follow_a_symlink_loop(tmp_path: Path, resolver: str) -> None:
    root = tmp_path / "results"
    store = ResultStore(root.as_uri())
    store.write(1, key="a/k")
    (root / "a" / "loop").symlink_to(root)
    (root / "up").symlink_to("..")
    assert store.keys() == ["a/k"]
    assert store.keys("a/loop/") == []


# -- Job 2: exists() answers honestly ----------------------------------------------------------


def test_exists_is_false_below_a_file_and_raises_on_a_permission_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ResultStore(tmp_path.as_uri())
    store.write(1, key="k")
    (tmp_path / "plain").write_bytes(b"a file, not a folder")
    assert store.exists("plain/k") is False  # NotADirectoryError: nothing there
    assert store.exists("missing") is False

    def denied(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        raise PermissionError(13, "Permission denied", path)

    store.write(2, key="a/k")
    monkeypatch.setattr(os, "stat", denied)  # as for a user who may not search the folder
    with pytest.raises(StorageError) as caught:
        store.exists("k")
    assert str(caught.value) == f"cannot check key 'k' in {tmp_path.as_uri()}: Permission denied"
    with pytest.raises(StorageError, match="cannot check key 'a/k'"):
        store.exists("a/k")


# -- Job 2: deletes leave no empty folders behind ----------------------------------------------


def test_a_delete_removes_the_folders_it_leaves_empty_up_to_the_root(
    tmp_path: Path, resolver: str
) -> None:
    root = tmp_path / "results"
    store = ResultStore(root.as_uri())
    store.write(1, key="runs/7/a/model")
    store.write(2, key="runs/8")

    assert store.delete("runs/7/a/model") is True
    assert sorted(os.listdir(root)) == ["runs"]  # runs/7 and runs/7/a are gone
    assert os.listdir(root / "runs") == ["8.rsr"]
    assert store.delete("runs/8") is True
    assert root.is_dir() and os.listdir(root) == []  # the root stays
    assert store.delete("runs/8") is False


def test_a_writer_whose_folder_a_delete_removed_makes_it_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: str
) -> None:
    store = ResultStore(tmp_path.as_uri())
    real_open = os.open
    removed: list[str] = []

    def open_after_a_concurrent_delete(path: str, flags: int, *args: Any, **kw: Any) -> int:
        new_file = str(path).endswith(".tmp") or flags & os.O_TMPFILE == os.O_TMPFILE
        if not removed and new_file and kw.get("dir_fd") is not None:
            folder = _fd_path(kw["dir_fd"])
            os.rmdir(folder)  # what a delete of the folder's last record does meanwhile
            removed.append(folder)
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", open_after_a_concurrent_delete)
    store.write("v", key="jobs/1/result")
    assert removed == [str(tmp_path / "jobs" / "1")]
    monkeypatch.undo()
    assert store.read("jobs/1/result").result == "v"


def test_writers_and_deleters_racing_on_one_folder_all_succeed(tmp_path: Path) -> None:
    store = ResultStore(tmp_path.as_uri(), storage_options={"fsync": False})
    errors: list[BaseException] = []

    def churn(name: str) -> None:
        try:
            for i in range(300):
                store.write(i, key=f"shared/deep/{name}")
                assert store.read(f"shared/deep/{name}", retry=False).result == i
                assert store.delete(f"shared/deep/{name}") is True
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert os.listdir(tmp_path) == []  # every folder went with its last record


# -- reads -------------------------------------------------------------------------------------


def test_bytes_appended_to_a_record_file_are_refused(tmp_path: Path) -> None:
    store = ResultStore(tmp_path.as_uri())
    store.write(list(range(10)), key="k")
    with open(tmp_path / "k.rsr", "ab") as fh:
        fh.write(b"trailing")
    with pytest.raises(IntegrityError, match="'k'"):
        store.read("k")


def test_a_missing_key_below_a_plain_file_is_not_found(tmp_path: Path, resolver: str) -> None:
    store = ResultStore(tmp_path.as_uri(), retry=ONCE)
    (tmp_path / "plain").write_bytes(b"x")
    with pytest.raises(ResultNotFoundError):
        store.read("plain/k")
    assert store.delete("plain/k") is False


@pytest.fixture
def prefixed(tmp_path: Path) -> Iterator[ResultStore]:
    store = ResultStore(tmp_path.as_uri(), storage_options={"fsync": False})
    for i in range(30):
        store.write(i, key=f"p{i % 3}/k{i}")
    yield store


def test_list_with_a_prefix_enters_only_matching_folders(prefixed: ResultStore) -> None:
    assert prefixed.keys("p1/") == sorted(f"p1/k{i}" for i in range(1, 30, 3))
    assert prefixed.keys("p2/k2") == sorted(
        key for key in (f"p2/k{i}" for i in range(2, 30, 3)) if key.startswith("p2/k2")
    )
    assert len(prefixed.keys("p")) == 30
    assert prefixed.keys("q") == []


def test_a_write_or_delete_over_a_folder_named_like_the_record_says_what_to_remove(
    tmp_path: Path,
) -> None:
    store = ResultStore(tmp_path.as_uri())
    (tmp_path / "x.rsr").mkdir()
    said = f"{tmp_path.as_uri()}: {tmp_path / 'x.rsr'} is a directory, not a record; remove it"
    with pytest.raises(StorageError) as written:
        store.write(1, key="x")
    assert str(written.value) == f"cannot write key 'x' in {said}"
    with pytest.raises(StorageError) as deleted:
        store.delete("x")
    assert str(deleted.value) == f"cannot delete key 'x' in {said}"
    assert os.listdir(tmp_path) == ["x.rsr"]  # no temporary file left behind
