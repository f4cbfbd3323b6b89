"""Whole-store operations: scan, verify_all, copy_all and delete_expired, on every built-in
backend, with damaged records, records deleted meanwhile and storage that cannot be reached.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from ports import free_port
from resultstore import (
    ConfigurationError,
    IntegrityError,
    ResultStore,
    RetryPolicy,
    SignatureError,
    StorageUnavailableError,
)
from resultstore.bulk import RecordOutcome, ScanEntry

NOW = datetime.datetime.now(datetime.timezone.utc)
PAST = NOW - datetime.timedelta(hours=1)
# A day ahead, not an hour: these are taken once, when the module is imported, and the
# index files an entry under its hour; an hour ahead would be the current hour for a
# test that runs after the next hour began, and be listed (though not deleted) by gc.
FUTURE = NOW + datetime.timedelta(days=1)


@pytest.fixture(params=["file", "memory", "s3"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return f"file://{tmp_path}/store"
    if request.param == "memory":
        return f"memory://bulk-{uuid.uuid4().hex}"
    s3_url: str = request.getfixturevalue("s3_url")
    return s3_url


@pytest.fixture
def store(url: str) -> Iterator[ResultStore]:
    with ResultStore(url) as results:
        yield results


def _damage(store: ResultStore, key: str) -> None:
    """Overwrite a record with bytes that are not a record, through the store itself."""
    from resultstore.stores.base import Payload

    anyio.run(store.store.write, key, Payload([b"not a record at all"]))


def test_scan_yields_every_record_with_its_metadata_and_damaged_ones_with_their_error(
    store: ResultStore,
) -> None:
    for i in range(300):  # more than one batch
        store.write({"i": i}, key=f"runs/{i:03d}")
    store.write("elsewhere", key="other/x")
    _damage(store, "runs/007")

    entries = list(store.scan("runs/"))
    assert sorted(entry.key for entry in entries) == [f"runs/{i:03d}" for i in range(300)]
    damaged = [entry for entry in entries if entry.damaged]
    assert [entry.key for entry in damaged] == ["runs/007"]
    assert isinstance(damaged[0].error, IntegrityError) and damaged[0].metadata is None
    fine = next(entry for entry in entries if entry.key == "runs/042")
    assert fine.metadata is not None and fine.metadata.storage_key == "runs/042"
    assert fine.metadata.serializer == "pickle" and fine.error is None


@pytest.mark.parametrize("bad", ["runs/\u202etxt.exe", "runs/a\\b", "runs/x\x85y"])
def test_a_record_stored_under_a_key_no_key_may_be_is_reported_not_fatal(
    store: ResultStore, bad: str
) -> None:
    # Storage holds keys resultstore would never write (another tool wrote them, or an
    # older release had another key rule); a scan, check, copy or gc goes on past them.
    # The file store does not list such names at all; the others list every key.
    from resultstore.stores.base import Payload

    store.write(1, key="runs/good")
    store.write(2, key="runs/old", expiration=PAST)
    anyio.run(store.store.write, bad, Payload([b"anything"]))
    before = store.keys("runs/")
    listed = bad in before

    entries = {entry.key: entry for entry in store.scan("runs/")}
    assert entries["runs/good"].metadata is not None
    if listed:
        error = entries[bad].error
        assert isinstance(error, IntegrityError) and error.key == bad
        assert "invalid key" in str(error) and "storage's own tools" in str(error)
        assert list(store.verify_all("runs/").failed) == [bad]
        copied = store.copy_all(ResultStore(f"memory://copy-{uuid.uuid4().hex}"), "runs/")
        assert list(copied.damaged) == [bad] and copied.copied == 2
    else:
        assert bad not in entries
    assert store.delete_expired("runs/", full=True).deleted == 1
    assert store.keys("runs/") == [key for key in before if key != "runs/old"]


def test_scan_is_async_too_and_can_stop_early(store: ResultStore) -> None:
    for i in range(50):
        store.write(i, key=f"k/{i}")

    async def first_five() -> list[ScanEntry]:
        found = []
        async for entry in store.ascan("k/", concurrency=4):
            found.append(entry)
            if len(found) == 5:
                break
        return found

    assert len(anyio.run(first_five)) == 5
    scan = store.scan("k/")
    assert next(scan).key.startswith("k/")
    scan.close()  # a sync scan dropped half-way closes its listing


def test_the_file_store_lists_in_order(tmp_path: Path) -> None:
    store = ResultStore(tmp_path.as_uri())
    for key in ["b", "a/2", "a/1", "c/x/y", "a0"]:
        store.write(1, key=key)
    assert [entry.key for entry in store.scan()] == ["a0", "b", "a/1", "a/2", "c/x/y"]


def test_a_bad_concurrency_is_refused(store: ResultStore) -> None:
    with pytest.raises(ConfigurationError, match="concurrency must be an integer"):
        list(store.scan(concurrency=0))


def test_verify_all_reports_damaged_and_unsigned_records(store: ResultStore) -> None:
    for i in range(5):
        store.write(i, key=f"k{i}")
    _damage(store, "k3")
    seen: list[RecordOutcome] = []

    summary = store.verify_all(progress=seen.append)
    assert (summary.checked, summary.ok) == (5, 4)
    assert list(summary.failed) == ["k3"] and isinstance(summary.failed["k3"], IntegrityError)
    assert sorted(done.outcome for done in seen) == ["damaged", "ok", "ok", "ok", "ok"]
    assert summary.bytes_checked == sum(done.size for done in seen if done.outcome == "ok")

    strict = store.verify_all(require_signed=True)
    assert strict.ok == 0 and len(strict.failed) == 5
    assert all(isinstance(error, SignatureError) for k, error in strict.failed.items() if k != "k3")


def test_copy_all_copies_then_skips_what_is_unchanged(store: ResultStore, tmp_path: Path) -> None:
    for i in range(20):
        store.write({"i": i}, key=f"r/{i}")
    _damage(store, "r/5")
    destination = ResultStore(f"file://{tmp_path}/copy")

    first = store.copy_all(destination)
    assert (first.copied, first.skipped, list(first.damaged)) == (19, 0, ["r/5"])
    assert destination.read("r/7").result == {"i": 7}

    store.write({"i": "changed"}, key="r/7")
    again = store.copy_all(destination)
    assert (again.copied, again.skipped) == (1, 18)  # only the changed record moves
    assert destination.read("r/7").result == {"i": "changed"}

    store.write("new", key="r/new")
    dry = store.copy_all(destination, dry_run=True)
    assert (dry.copied, dry.skipped, dry.dry_run) == (1, 19, True)
    assert not destination.exists("r/new")
    forced = store.copy_all(destination, skip_existing=False)
    assert forced.copied == 20


def test_copy_all_refuses_a_store_onto_itself_or_inside_itself(tmp_path: Path) -> None:
    store = ResultStore(f"file://{tmp_path}/a")
    store.write(1, key="k")
    for target in (f"file://{tmp_path}/a", f"file://{tmp_path}/a/inner", f"file://{tmp_path}"):
        with pytest.raises(ConfigurationError, match="one is inside the other"):
            store.copy_all(ResultStore(target))
    assert ResultStore(f"file://{tmp_path}/a").keys() == ["k"]


@pytest.mark.parametrize("full", [False, True], ids=["indexed", "full"])
def test_delete_expired_deletes_only_expired_records_and_keeps_damaged_ones(
    store: ResultStore, full: bool
) -> None:
    for i in range(30):
        expiration = PAST if i % 3 == 0 else FUTURE if i % 3 == 1 else None
        store.write(i, key=f"e/{i}", expiration=expiration)
    _damage(store, "e/3")  # was expired; now unreadable: kept, and reported
    deleted: list[str] = []

    dry = store.delete_expired(dry_run=True, full=full)
    assert (dry.expired, dry.deleted, dry.damaged) == (9, 0, ["e/3"])
    assert len(store.keys()) == 30

    summary = store.delete_expired(full=full, progress=lambda done: deleted.append(done.key))
    assert (summary.expired, summary.deleted, summary.indexed) == (9, 9, not full)
    # The index names only the 10 records due by now; a full pass reads all 30 headers.
    assert summary.scanned == (30 if full else 10)
    assert summary.bytes_freed > 0
    assert sorted(deleted) == sorted(f"e/{i}" for i in range(0, 30, 3) if i != 3)
    assert sorted(store.keys()) == sorted(f"e/{i}" for i in range(30) if i % 3 != 0 or i == 3)
    assert store.delete_expired(full=full).deleted == 0  # nothing left to do


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "deleting"])
def test_a_record_that_several_due_entries_name_is_counted_once(
    store: ResultStore, dry_run: bool
) -> None:
    """Written again with another expiration, both past: two index entries come due for
    one record. gc reports it once (and its bytes once), and removes both entries."""
    for minutes in (5, 10, 15):
        store.write(
            f"v{minutes}", key="a/twice", expiration=NOW - datetime.timedelta(minutes=minutes)
        )
    store.write("once", key="b/single", expiration=PAST)
    for minutes in (5, 10):
        store.write("x", key="c/broken", expiration=NOW - datetime.timedelta(minutes=minutes))
    _damage(store, "c/broken")  # each folder has under 4 due: headers read
    reported: list[RecordOutcome] = []
    sizes = sum(store.read_metadata(key).size for key in ("a/twice", "b/single"))

    summary = store.delete_expired(dry_run=dry_run, progress=reported.append)
    assert (summary.scanned, summary.expired, summary.damaged) == (6, 2, ["c/broken"])
    assert summary.deleted == (0 if dry_run else 2)
    assert summary.bytes_freed == sizes
    assert sorted(outcome.key for outcome in reported) == ["a/twice", "b/single"]
    if dry_run:
        assert sorted(store.keys()) == ["a/twice", "b/single", "c/broken"]
        assert len(_index_entries(store)) == 6
    else:
        assert store.keys() == ["c/broken"]
        assert len(_index_entries(store)) == 2  # the damaged record keeps its entries


def test_gc_deletes_the_records_before_their_index_entries(store: ResultStore) -> None:
    for i in range(12):
        store.write(i, key=f"o/{i}", expiration=PAST)
    calls: list[list[str]] = []
    delete_many = store.store.delete_many

    async def seen(keys: list[str]) -> None:
        calls.append(list(keys))
        await delete_many(keys)

    store.store.delete_many = seen  # type: ignore[method-assign]
    assert store.delete_expired().deleted == 12
    # An interrupted gc leaves entries without records (removed later), never the reverse.
    assert sorted(calls[0]) == sorted(f"o/{i}" for i in range(12))
    assert len(calls) == 2 and all(key.startswith(".resultstore/") for key in calls[1])
    assert _index_entries(store) == [] and store.keys() == []


def _index_entries(store: ResultStore) -> list[str]:
    from resultstore.expiry import INDEX_PREFIX, WATERMARK_KEY

    async def listed() -> list[str]:
        return [name async for name in store._alisting(INDEX_PREFIX, hide_reserved=False)]

    return sorted(name for name in anyio.run(listed) if name != WATERMARK_KEY)


def test_the_index_never_deletes_a_record_its_entry_no_longer_describes(
    store: ResultStore,
) -> None:
    store.write("v1", key="k", expiration=PAST)
    store.write("v2", key="k")  # overwritten without an expiration: its old entry is stale
    store.write("w1", key="j", expiration=PAST)
    store.write("w2", key="j", expiration=FUTURE)  # a later expiration: indexed elsewhere
    store.write("gone", key="d", expiration=PAST)
    store.delete("d")
    assert len(_index_entries(store)) == 4

    summary = store.delete_expired()
    assert (summary.expired, summary.deleted) == (0, 0)
    assert store.read("k").result == "v2" and store.read("j").result == "w2"
    assert len(_index_entries(store)) == 1  # only j's entry for its future expiration is left
    (left,) = _index_entries(store)
    assert left.startswith(".resultstore/expiry/") and "/e/j." in left


def test_a_forged_index_entry_deletes_nothing(store: ResultStore) -> None:
    from resultstore.expiry import entry_key
    from resultstore.stores.base import Payload

    store.write("precious", key="live")
    forged = entry_key("live", PAST, PAST)
    anyio.run(store.store.write, forged, Payload([b"{}"]))
    lease = ".resultstore/locks/live"  # an entry naming resultstore's own record: ignored
    anyio.run(store.store.write, lease, Payload([b"{}"]))
    anyio.run(store.store.write, entry_key(lease, PAST, PAST), Payload([b"{}"]))
    anyio.run(store.store.write, forged.replace("/e/live.", "/e/live.x"), Payload([b"{}"]))

    assert store.delete_expired().deleted == 0
    assert store.read("live").result == "precious"
    assert anyio.run(store.store.exists, lease)


def test_records_the_index_does_not_know_are_found_by_a_full_collection(
    store: ResultStore,
) -> None:
    from resultstore.records import encode_record
    from resultstore.stores.base import Payload

    # Written as an older release (or another tool) would: a record with no index entry.
    record = encode_record(store.serializer.dumps("old"), serializer="pickle", expiration=PAST)
    anyio.run(store.store.write, "legacy", Payload(record))
    assert store.delete_expired().deleted == 0  # the index does not know it
    full = store.delete_expired(full=True)
    assert (full.deleted, full.indexed) == (1, False)
    assert not store.exists("legacy")


def test_collections_after_the_first_list_only_the_hours_since(store: ResultStore) -> None:
    from resultstore.expiry import WATERMARK_KEY

    store.write(1, key="a", expiration=PAST)
    assert store.delete_expired().deleted == 1
    assert anyio.run(store.store.exists, WATERMARK_KEY)
    # An entry in an hour the watermark has passed is not listed again...
    ancient = NOW - datetime.timedelta(days=3)
    store.write(2, key="b", expiration=ancient)
    from resultstore.expiry import entry_key
    from resultstore.stores.base import Payload

    moved = entry_key("b", ancient, ancient)
    anyio.run(store.store.write, moved, Payload([b"{}"]))
    assert store.delete_expired().deleted == 1  # b was also indexed in the hour it was written
    assert store.delete_expired(full=True).deleted == 0
    assert store.keys() == []


def test_copies_are_indexed_in_their_destination(store: ResultStore, tmp_path: Path) -> None:
    store.write(1, key="soon", expiration=PAST)
    destination = ResultStore(f"file://{tmp_path}/copy")
    assert store.copy_all(destination).copied == 1
    assert destination.delete_expired().deleted == 1
    assert destination.keys() == []


def test_delete_many_deletes_in_batches_and_ignores_missing_keys(store: ResultStore) -> None:
    for i in range(1200):  # more than one DeleteObjects request on S3
        store.write(i, key=f"d/{i}")
    store.delete_many([f"d/{i}" for i in range(1100)] + ["d/never-written"])
    assert sorted(store.keys()) == sorted(f"d/{i}" for i in range(1100, 1200))


def test_bulk_operations_on_unreachable_storage_raise_instead_of_reporting_nothing(
    tmp_path: Path,
) -> None:
    url = "s3://bucket/prefix"
    options = {
        "endpoint_url": f"http://127.0.0.1:{free_port()}",
        "key": "k",
        "secret": "s",
    }
    quick = RetryPolicy(attempts=2, delay=0.01)
    with ResultStore(url, storage_options=options, retry=quick, timeout=5) as dead:
        for operation in (
            lambda: list(dead.scan()),
            lambda: dead.verify_all(),
            lambda: dead.delete_expired(),
            lambda: dead.copy_all(ResultStore(tmp_path.as_uri())),
        ):
            with pytest.raises(StorageUnavailableError):
                operation()


# -- what listings settle without reads (S3: content MD5s), and what they never may -------


@pytest.fixture(params=["file", "s3fs", "obstore"])
def listed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResultStore]:
    """A store on the file system, or on S3 through either client (whose listings show
    each object's MD5, so gc and copy_all settle records by listing)."""
    if request.param == "file":
        url, options = f"file://{tmp_path}/store", {}
    else:
        url, options = request.getfixturevalue("s3_url"), {"client": request.param}
    with ResultStore(url, storage_options=options) as results:
        yield results


class _Reads:
    """Counts the headers a ResultStore reads (a spy on the real call: no mock)."""

    def __init__(self, store: ResultStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.keys: list[str] = []
        real = store.aread_metadata

        async def counted(key: str) -> object:
            self.keys.append(key)
            return await real(key)

        monkeypatch.setattr(store, "aread_metadata", counted)


def _lists_md5s(store: ResultStore) -> bool:
    from resultstore.stores.base import Payload

    return store.store.listed_md5(Payload([b"x"])) is not None


def test_gc_deletes_what_expired_and_nothing_its_entries_no_longer_describe(
    listed: ResultStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from resultstore.expiry import entry_key, expected_entries
    from resultstore.stores.base import Payload

    for i in range(12):  # expired, unchanged since: on S3 settled by the listings alone
        listed.write(f"old {i}", key=f"g/expired-{i:02d}", expiration=PAST)
    for i in range(4):  # rewritten without an expiration: their entries are stale
        listed.write("v1", key=f"g/rewritten-{i}", expiration=PAST)
        listed.write("v2", key=f"g/rewritten-{i}")
    for i in range(4):  # rewritten with a later expiration
        listed.write("w1", key=f"g/later-{i}", expiration=PAST)
        listed.write("w2", key=f"g/later-{i}", expiration=FUTURE)
    for i in range(4):  # live records with forged entries saying they expired
        listed.write("precious", key=f"g/live-{i}")
        forged = entry_key(f"g/live-{i}", PAST, PAST)
        body = [b"{}", b"not json", b'{"key":"g/live-%d","md5":null}' % i, b""][i]
        anyio.run(listed.store.write, forged, Payload([body]))
    for i in range(2):  # expired, with a damaged entry: the header still says expired
        listed.write("gone", key=f"g/damaged-entry-{i}", expiration=PAST)
        name = expected_entries(listed.read_metadata(f"g/damaged-entry-{i}"))[0]  # its own
        anyio.run(listed.store.write, name, Payload([b"\x00garbage"]))
    reads = _Reads(listed, monkeypatch)

    summary = listed.delete_expired()
    assert (summary.expired, summary.deleted) == (14, 14)
    kept = sorted(listed.keys("g/"))
    assert kept == sorted(
        [f"g/rewritten-{i}" for i in range(4)]
        + [f"g/later-{i}" for i in range(4)]
        + [f"g/live-{i}" for i in range(4)]
    )
    assert all(listed.read(key).result in ("v2", "w2", "precious") for key in kept)
    settled_by_listing = {f"g/expired-{i:02d}" for i in range(12)}
    if _lists_md5s(listed):  # none of those headers read: the listings proved them
        assert not settled_by_listing & set(reads.keys)
    else:
        assert settled_by_listing <= set(reads.keys)
    # Every other entry was read, and settled by its header.
    assert {f"g/rewritten-{i}" for i in range(4)} <= set(reads.keys)
    assert {f"g/live-{i}" for i in range(4)} <= set(reads.keys)
    entries = _index_entries(listed)
    assert len(entries) == 4 and all("/g/later-" in name for name in entries)


def test_a_forged_entry_naming_the_record_s_md5_is_refused_on_a_signed_store(
    s3_url: str,
) -> None:
    """On S3 an entry can name a record's MD5 (its listed ETag): with a signing key the
    entry must also carry its signature, which a forger without the key cannot make."""
    import hashlib
    import json

    from resultstore.expiry import entry_key
    from resultstore.stores.base import Payload

    key = "k" * 32
    with ResultStore(s3_url, signing_key=key, storage_options={"client": "obstore"}) as store:
        for i in range(6):
            store.write("precious", key=f"s/live-{i}")

        async def md5s() -> dict[str, str | None]:
            return {
                item.key: item.md5 async for page in store.store.list_details("s/") for item in page
            }

        for name, md5 in anyio.run(md5s).items():
            expiration = PAST.replace(microsecond=0)
            body = {"expiration": expiration.isoformat(), "key": name, "md5": md5}
            text = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
            assert hashlib.md5(text).hexdigest()  # what an unsigned store would accept
            anyio.run(store.store.write, entry_key(name, expiration, PAST), Payload([text]))
        assert store.delete_expired().deleted == 0
        assert len(store.keys("s/")) == 6


def test_a_signed_store_s_own_entries_are_settled_by_listing(
    s3_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ResultStore(s3_url, signing_key="k" * 32, storage_options={"client": "obstore"}) as store:
        for i in range(8):
            store.write(i, key=f"s/{i}", expiration=PAST)
        reads = _Reads(store, monkeypatch)
        assert store.delete_expired().deleted == 8
        assert reads.keys == [] and store.keys("s/") == []


def test_copy_all_never_skips_a_changed_record(
    listed: ResultStore, tmp_path: Path, s3_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    destination = ResultStore(f"{s3_url}-copy", storage_options={"client": "obstore"})
    for i in range(20):
        listed.write({"i": i}, key=f"c/{i:02d}")
    assert listed.copy_all(destination).copied == 20

    reads = _Reads(listed, monkeypatch)
    again = listed.copy_all(destination)
    assert (again.copied, again.skipped) == (0, 20)
    if _lists_md5s(listed):  # S3 to S3: the two listings said so, nothing was read
        assert reads.keys == []

    listed.write({"i": 99}, key="c/07")  # same size, other bytes
    listed.write({"i": 3}, key="c/03")  # the same value again: other bytes (its header)
    destination.write({"i": 11}, key="c/12")  # changed in the destination
    destination.delete("c/15")
    reads.keys.clear()
    again = listed.copy_all(destination)
    # c/03 is compared by its headers (the same payload and checksum: skipped, as before).
    assert (again.copied, again.skipped) == (3, 17)
    assert {"c/07", "c/03", "c/12", "c/15"} <= set(reads.keys)
    if _lists_md5s(listed):
        assert len(reads.keys) == 4
    for key in ("c/07", "c/03", "c/12", "c/15"):
        assert destination.read(key).result == listed.read(key).result
    destination.close()


def test_a_damaged_watermark_makes_gc_list_the_whole_index(listed: ResultStore) -> None:
    from resultstore.expiry import WATERMARK_KEY
    from resultstore.stores.base import Payload

    listed.write(1, key="w/a", expiration=PAST)
    assert listed.delete_expired().deleted == 1
    anyio.run(listed.store.write, WATERMARK_KEY, Payload([b"\xff not json"]))
    for i in range(5):
        listed.write(i, key=f"w/{i}", expiration=PAST)
    listed.write("live", key="w/live", expiration=FUTURE)
    assert listed.delete_expired().deleted == 5
    assert listed.keys("w/") == ["w/live"]


@pytest.mark.parametrize(
    "odd",
    [
        "a..b.rsr",
        "x.rsr.rsr",
        "p.rsr\nq.rsr",
        ".hidden.rsr",
        "-dash.rsr",
        "sp ace.rsr",
        "é.rsr",
        "n" * 201 + ".rsr",
        "trailing.rsr\n",
        "notarecord",
    ],
)
def test_the_file_store_lists_a_folder_with_one_odd_name_as_it_lists_names_one_by_one(
    tmp_path: Path, odd: str
) -> None:
    """A folder of plain record names is listed in a few passes over the joined names;
    one odd name among them must send it back to the checks of each name."""
    from resultstore.keys import is_storable

    folder = tmp_path / "store" / "f"
    folder.mkdir(parents=True)
    names = [f"{i}.rsr" for i in range(50)] + [odd]
    for name in names:
        (folder / name).write_bytes(b"")
    store = ResultStore((tmp_path / "store").as_uri())
    expected = sorted(
        f"f/{name[:-4]}"
        for name in names
        if name.endswith(".rsr") and is_storable(f"f/{name[:-4]}")
    )
    assert sorted(store.keys("f/")) == expected
