"""Prefect result records: decoded by content, by the trust rules, and imported.

The records in tests/fixtures/prefect3/records were written by real Prefect 3.9.1
(see the README there); those in tests/fixtures/prefect2 are hand-made in Prefect
2.20's format.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import sys
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import pytest

from resultstore import ResultStore
from resultstore._loops import run_sync
from resultstore.errors import IntegrityError, SerializerNotAllowedError, SignatureError
from resultstore.prefect import (
    ImportOutcome,
    PrefectRecordError,
    aimport_prefect,
    decode_prefect_record,
    import_prefect,
    parse_prefect_record,
)
from resultstore.stores.base import Payload

FIXTURES = Path(__file__).parents[1] / "fixtures"
PREFECT3 = FIXTURES / "prefect3" / "records"
PREFECT2 = FIXTURES / "prefect2"
WHEN = datetime.datetime(2024, 5, 17, 12, 30, 45, 123456, tzinfo=datetime.timezone.utc)
ID = uuid.UUID("12345678-1234-5678-1234-567812345678")
FAILED = "77c57c81503741a4949fddee9d54dda4"
BARE = "54e3286517284566bed7a03ae84ee42a"

EXPECTED: dict[str, tuple[str, Any]] = {
    "int-pickle": ("pickle", 42),
    "int-json": ("json", 42),
    "dict-pickle": ("pickle", {"a": [1, 2, 3], "b": {"c": None}, "when": WHEN}),
    "dict-json": ("json", {"a": [1, 2, 3], "b": {"c": None}, "s": "text"}),
    "datetime-pickle": ("pickle", WHEN),
    "datetime-json": ("json", WHEN),
    "uuid-json": ("json", ID),
    "nested-json": ("json", {"when": WHEN, "id": ID, "day": WHEN.date()}),
    "dict-compressed-pickle": ("compressed/pickle", {"a": [1, 2, 3], "big": "x" * 1000}),
    "dict-compressed-json": ("compressed/json", {"a": [1, 2, 3], "big": "x" * 1000}),
}
PICKLED = [*sorted(k for k, (s, _) in EXPECTED.items() if "pickle" in s), "object-pickle", FAILED]


def _same(value: Any, expected: Any) -> None:
    assert value == expected
    assert type(value) is type(expected)
    if isinstance(expected, dict):
        for name in expected:
            _same(value[name], expected[name])
    if isinstance(expected, datetime.datetime):
        assert value.utcoffset() == expected.utcoffset()
        assert type(value.tzinfo) is datetime.timezone  # not pydantic's TzInfo


def _memory(name: str, files: list[Path], **kwargs: Any) -> ResultStore:
    """A memory store holding ``files``' bytes as is, under their names (as S3 would)."""
    store = ResultStore(f"memory://prefect-{name}-{uuid.uuid4().hex[:8]}", **kwargs)
    for path in files:
        run_sync(store.store.write(path.name, Payload([path.read_bytes()])))
    return store


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_prefect3_fixture_reads_in_place_as_its_value(name: str) -> None:
    serializer, expected = EXPECTED[name]
    store = _memory(name, [PREFECT3 / name])
    record = store.read(name)
    _same(record.result, expected)
    assert record.metadata.serializer == f"prefect:{serializer}"
    assert record.metadata.storage_key == name
    assert record.metadata.expiration is None


def test_an_object_pickled_by_value_and_a_failed_tasks_exception_decode() -> None:
    store = _memory("objects", [PREFECT3 / "object-pickle", PREFECT3 / FAILED])
    point: Any = store.read("object-pickle").result
    assert dataclasses.is_dataclass(point)
    assert dataclasses.astuple(point) == (3, 4)  # type: ignore[arg-type]
    exc = store.read(FAILED).result
    assert type(exc) is ValueError and str(exc) == "boom"


@pytest.mark.anyio
async def test_aread_reads_prefect_records_too() -> None:
    store = _memory("async", [PREFECT3 / "uuid-json"])
    assert (await store.aread("uuid-json")).result == ID


def test_prefect2_blobs_decode() -> None:
    store = _memory("p2", sorted(PREFECT2.glob("*-*")))
    record = store.read("int-pickle")
    assert record.result == 42 and record.metadata.serializer == "prefect:pickle"
    _same(store.read("datetime-json").result, {"when": WHEN, "n": 7})
    parsed = parse_prefect_record((PREFECT2 / "int-pickle").read_bytes(), "int-pickle")
    assert parsed is not None and parsed.format == "prefect2"
    assert parsed.prefect_version == "2.20.9"


@pytest.mark.parametrize("name", PICKLED)
def test_pickle_records_are_refused_by_a_json_only_store(name: str) -> None:
    store = _memory("jsononly", [PREFECT3 / name], serializer="json")
    with pytest.raises(SerializerNotAllowedError, match=f"'{name}'.*allowed_serializers"):
        store.read(name)
    allowed = _memory(
        "allowed", [PREFECT3 / name], serializer="json", allowed_serializers=["pickle"]
    )
    allowed.read(name)


@pytest.mark.parametrize("name", ["int-json", "nested-json", "dict-compressed-json"])
def test_json_records_are_read_by_a_json_only_store(name: str) -> None:
    store = _memory("json", [PREFECT3 / name], serializer="json")
    _same(store.read(name).result, EXPECTED[name][1])


def test_a_signing_store_refuses_prefect_records_which_are_unsigned() -> None:
    store = _memory("signed", [PREFECT3 / "int-json"], signing_key="k" * 32)
    with pytest.raises(SignatureError, match="Prefect record, which is not signed"):
        store.read("int-json")


def test_the_expiration_is_kept() -> None:
    doc = json.loads((PREFECT3 / "int-json").read_text())
    doc["metadata"]["expiration"] = "2031-01-02T03:04:05Z"
    record = parse_prefect_record(json.dumps(doc).encode(), "k")
    assert record is not None
    assert record.expiration == datetime.datetime(2031, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)


def test_native_records_and_other_bytes_are_unchanged() -> None:
    store = ResultStore(f"memory://native-{uuid.uuid4().hex[:8]}")
    store.write({"x": 1}, "native")
    assert store.read("native").result == {"x": 1}
    run_sync(store.store.write("junk", Payload([b"not a record, not JSON either......"])))
    with pytest.raises(IntegrityError, match="not a resultstore record"):
        store.read("junk")
    run_sync(store.store.write("other-json", Payload([b'{"some": "json", "x": [1, 2, 3, 4, 5]}'])))
    with pytest.raises(IntegrityError, match="not a resultstore record"):
        store.read("other-json")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_read_metadata_describes_a_prefect_record_as_read_finds_it(name: str) -> None:
    serializer, _ = EXPECTED[name]
    store = _memory("meta", [PREFECT3 / name], serializer="json")  # even pickle ones
    metadata = store.read_metadata(name)
    assert metadata.serializer == f"prefect:{serializer}"
    assert metadata.size == (PREFECT3 / name).stat().st_size
    assert metadata.storage_key == name and metadata.checksum == "" and not metadata.signed
    assert metadata.expiration is None
    if "json" in serializer:
        assert metadata == store.read(name).metadata


def test_read_metadata_keeps_a_prefect_expiration_and_decodes_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "was-unpickled"
    doc = json.loads((PREFECT3 / "int-pickle").read_text())
    doc["metadata"]["expiration"] = "2031-01-02T03:04:05Z"
    doc["result"] = base64.b64encode(
        b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    ).decode()
    store = ResultStore(f"memory://prefect-meta-{uuid.uuid4().hex[:8]}")  # allows pickle
    run_sync(store.store.write("p", Payload([json.dumps(doc).encode()])))
    metadata = store.read_metadata("p")
    assert metadata.serializer == "prefect:pickle"
    assert metadata.expiration == datetime.datetime(
        2031, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc
    )
    assert not marker.exists()


def test_verify_of_a_prefect_record_says_it_has_no_checksum_not_that_it_is_damaged() -> None:
    store = ResultStore(f"memory://prefect-verify-{uuid.uuid4().hex[:8]}")
    run_sync(store.store.write("p", Payload([(PREFECT3 / "dict-json").read_bytes()])))
    run_sync(store.store.write("junk", Payload([b"not a record, not JSON either......"])))
    with pytest.raises(PrefectRecordError) as caught:
        store.verify("p")
    assert str(caught.value) == (
        f"record 'p' in {store.storage_url} is a Prefect result record: read() reads it, but "
        "it has no checksum to verify; import it (resultstore import-prefect) to get one"
    )
    with pytest.raises(IntegrityError, match=r"'junk'.*damaged"):
        store.verify("junk")


def test_read_metadata_of_other_bytes_still_reports_damage() -> None:
    store = ResultStore(f"memory://prefect-junk-{uuid.uuid4().hex[:8]}")
    run_sync(store.store.write("junk", Payload([b"not a record, not JSON either......"])))
    run_sync(store.store.write("json", Payload([b'{"some": "json", "x": [1, 2, 3, 4, 5]}'])))
    run_sync(store.store.write("short", Payload([b"{}"])))
    for key in ("junk", "json", "short"):
        with pytest.raises(IntegrityError, match=f"'{key}'.*damaged"):
            store.read_metadata(key)
        with pytest.raises(IntegrityError, match=f"'{key}'.*damaged"):
            store.read(key)
    store.write(1, key="native")
    raw = bytearray(run_sync(store._read_raw("native"))[1][0])
    raw[-1] ^= 0xFF  # a damaged native record is not mistaken for anything else
    run_sync(store.store.write("native", Payload([bytes(raw)])))
    store.read_metadata("native")  # the header is intact
    with pytest.raises(IntegrityError, match=r"'native'.*checksum"):
        store.read("native")


def test_scan_check_and_gc_see_prefect_records_for_what_they_are() -> None:
    doc = json.loads((PREFECT3 / "int-json").read_text())
    doc["metadata"]["expiration"] = "2001-01-01T00:00:00Z"  # long expired
    store = _memory("bulk", [PREFECT3 / "uuid-json"])
    run_sync(store.store.write("expired", Payload([json.dumps(doc).encode()])))
    store.write(7, key="native")
    entries = {entry.key: entry for entry in store.scan()}
    assert sorted(entries) == ["expired", "native", "uuid-json"]
    assert not any(entry.damaged for entry in entries.values())
    assert entries["uuid-json"].metadata is not None
    assert entries["uuid-json"].metadata.serializer == "prefect:json"

    summary = store.verify_all()
    assert summary.ok == 1 and sorted(summary.failed) == ["expired", "uuid-json"]
    assert isinstance(summary.failed["uuid-json"], PrefectRecordError)
    assert "is a Prefect result record" in str(summary.failed["uuid-json"])
    assert "no checksum" in str(summary.failed["uuid-json"])

    gc = store.delete_expired(full=True)
    assert gc.expired == 0 and gc.damaged == []
    assert store.read("expired").result == 42  # another tool's record: never deleted


# -- adversarial --------------------------------------------------------------------------


def _json_record(payload: str) -> bytes:
    doc = json.loads((PREFECT3 / "int-json").read_text())
    doc["result"] = payload
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "payload",
    [
        '{"__class__": "os.system", "data": "touch /tmp/pwned"}',
        '{"a": [{"__class__": "subprocess.Popen", "data": ["id"]}]}',
        '{"__exc_type__": "os.system", "message": "x"}',
        '{"__exc_type__": "resultstore.errors.IntegrityError", "message": "x"}',
    ],
)
def test_a_class_named_in_a_json_record_is_never_imported(payload: str) -> None:
    before = set(sys.modules)
    sys.modules.pop("subprocess", None) if "subprocess" not in before else None
    store = _memory("evil", [], serializer="json")
    run_sync(store.store.write("evil", Payload([_json_record(payload)])))
    with pytest.raises(PrefectRecordError, match="resultstore does not import") as caught:
        store.read("evil")
    name = json.loads(payload)
    name = name.get("__class__") or name.get("__exc_type__") or name["a"][0]["__class__"]
    assert repr(name) in str(caught.value) and "'evil'" in str(caught.value)
    assert set(sys.modules) - before == set()


def test_a_custom_json_decoder_is_refused_not_imported() -> None:
    doc = json.loads((PREFECT3 / "int-json").read_text())
    doc["metadata"]["serializer"]["object_decoder"] = "os.system"
    record = parse_prefect_record(json.dumps(doc).encode(), "custom")
    assert record is not None
    with pytest.raises(PrefectRecordError, match=r"custom JSON object_decoder 'os\.system'"):
        decode_prefect_record(record, allow_pickle=True)


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [("picklelib", "os", "picklelib 'os'"), ("type", "evil.Serializer", "'evil.Serializer'")],
)
def test_unknown_pickle_libraries_and_serializers_are_refused(
    field: str, value: str, says: str
) -> None:
    doc = json.loads((PREFECT3 / "int-pickle").read_text())
    doc["metadata"]["serializer"][field] = value
    record = parse_prefect_record(json.dumps(doc).encode(), "k")
    assert record is not None
    with pytest.raises(PrefectRecordError, match=says):
        decode_prefect_record(record, allow_pickle=True)


def test_a_huge_base64_field_is_refused_before_decoding() -> None:
    doc = json.loads((PREFECT3 / "int-pickle").read_text())
    doc["result"] = "A" * (8 * 1024 * 1024)
    data = json.dumps(doc).encode()
    record = parse_prefect_record(data, "huge", max_bytes=16 * 1024 * 1024)
    assert record is not None
    tracemalloc.start()
    try:
        with pytest.raises(PrefectRecordError, match="decodes to more than the limit"):
            decode_prefect_record(record, allow_pickle=True, max_bytes=1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024
    with pytest.raises(PrefectRecordError, match="more than the limit of 1048576"):
        parse_prefect_record(data, "huge", max_bytes=1024 * 1024)


def test_a_record_larger_than_the_limit_is_refused_before_it_is_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from resultstore import prefect

    monkeypatch.setattr(prefect, "DEFAULT_MAX_BYTES", 4096)
    doc = json.loads((PREFECT3 / "int-pickle").read_text())
    doc["result"] = base64.b64encode(b"\0" * 8192).decode()
    store = _memory("big", [])
    run_sync(store.store.write("big", Payload([json.dumps(doc).encode()])))
    with pytest.raises(PrefectRecordError, match=r"'big'.*more than the limit"):
        store.read("big")


def test_a_compression_bomb_is_bounded() -> None:
    import lzma

    bomb = base64.encodebytes(lzma.compress(b"\0" * (64 * 1024 * 1024))).decode()
    doc = json.loads((PREFECT3 / "dict-compressed-json").read_text())
    doc["result"] = bomb
    record = parse_prefect_record(json.dumps(doc).encode(), "bomb")
    assert record is not None
    tracemalloc.start()
    try:
        with pytest.raises(PrefectRecordError, match="decompresses to more than 1048576"):
            decode_prefect_record(record, allow_pickle=False, max_bytes=1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024  # lzma's 8 MiB dictionary + 1 MiB: not the 64 MiB


# -- importing ----------------------------------------------------------------------------


def test_import_a_prefect_folder(tmp_path: Path) -> None:
    seen: list[ImportOutcome] = []
    dest = ResultStore((tmp_path / "dest").as_uri())
    summary = import_prefect(str(PREFECT3), dest, progress=seen.append)
    assert summary.imported == 12 and summary.skipped == [BARE] and summary.failed == {}
    assert summary.ok and len(seen) == 13
    for name, (_, expected) in EXPECTED.items():
        record = dest.read(name)
        _same(record.result, expected)
        assert record.metadata.serializer == "pickle"  # native now
    assert type(dest.read(FAILED).result) is ValueError


def test_import_keeps_expirations_and_reports_failures(tmp_path: Path) -> None:
    src = tmp_path / "prefect"
    (src / "sub").mkdir(parents=True)
    doc = json.loads((PREFECT3 / "int-json").read_text())
    doc["metadata"]["expiration"] = "2031-01-02T03:04:05+00:00"
    (src / "sub" / "expiring").write_text(json.dumps(doc))
    (src / "evil").write_bytes(_json_record('{"__class__": "os.system", "data": "x"}'))
    (src / "notes.txt").write_text("hello")
    (src / "int-pickle").write_bytes((PREFECT3 / "int-pickle").read_bytes())
    dest = ResultStore((tmp_path / "dest").as_uri(), serializer="json")
    summary = import_prefect(src.as_uri(), dest)
    assert summary.imported == 1 and summary.skipped == ["notes.txt"]
    assert set(summary.failed) == {"evil", "int-pickle"}
    assert "'os.system'" in summary.failed["evil"]
    assert "allowed_serializers" in summary.failed["int-pickle"]
    assert dest.read_metadata("sub/expiring").expiration == datetime.datetime(
        2031, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc
    )
    assert not dest.exists("evil") and not dest.exists("notes.txt")
    # allowed explicitly, the pickle record imports into the json store as JSON
    again = import_prefect(str(src), dest, allow_pickle=True)
    assert "int-pickle" not in again.failed and dest.read("int-pickle").result == 42


@pytest.mark.anyio
async def test_aimport_from_a_bucket_like_store(tmp_path: Path) -> None:
    src = _memory("bucket", [PREFECT3 / "int-json", PREFECT3 / "dict-pickle"])
    dest = ResultStore((tmp_path / "dest").as_uri())
    summary = await aimport_prefect(src.storage_url, dest)
    assert summary.imported == 2, summary
    assert (await dest.aread("int-json")).result == 42


def test_import_from_s3(s3_url: str, tmp_path: Path) -> None:
    src = ResultStore(s3_url)
    for name in ("int-json", "dict-compressed-pickle"):
        run_sync(src.store.write(f"runs/{name}", Payload([(PREFECT3 / name).read_bytes()])))
    assert src.read("runs/int-json").result == 42  # read in place on S3
    dest = ResultStore((tmp_path / "dest").as_uri())
    summary = import_prefect(s3_url, dest)
    assert summary.imported == 2 and not summary.failed
    _same(dest.read("runs/dict-compressed-pickle").result, EXPECTED["dict-compressed-pickle"][1])
