"""The record format: framing, metadata, checksums, and what a damaged record does.

``encode_record`` frames serialized segments as ``prefix + header`` followed by
the segments themselves; ``read_record`` verifies everything before returning
a byte. Any damage raises :class:`IntegrityError` naming the key: a damaged
record never yields data.
"""

from __future__ import annotations

import datetime
import json
import struct
import zoneinfo
from typing import Any

import numpy as np
import pytest
import xxhash
from hypothesis import example, given, settings
from hypothesis import strategies as st

from resultstore import IntegrityError, SignatureError
from resultstore._loops import run_sync
from resultstore.records import (
    FORMAT_VERSION,
    MAGIC,
    _iso_utc,
    encode_record,
    read_header,
    read_record,
)
from resultstore.serializers import Buffer
from resultstore.signing import Signer
from resultstore.stores.base import BytesReader

KEY = "runs/42/result"
URL = "memory://records"
PREFIX = struct.Struct("<4sHIQ")  # magic, format version, header length, xxh3-64 of header
UTC = datetime.timezone.utc


def stored(segments: list[Buffer], **options: Any) -> bytes:
    """The bytes a store would hold for ``segments`` under ``KEY``."""
    options.setdefault("serializer", "pickle")
    options.setdefault("key", KEY)
    return b"".join(bytes(b) for b in encode_record(segments, **options))


def read(data: bytes, verifier: Signer | None = None, key: str = KEY) -> tuple[Any, list[bytes]]:
    metadata, segments = run_sync(read_record(BytesReader(data), key, URL, verifier))
    return metadata, [bytes(s) for s in segments]


def header_end(data: bytes) -> int:
    return PREFIX.size + PREFIX.unpack_from(data)[2]


def assert_damaged(data: bytes, reason: str = "") -> IntegrityError:
    with pytest.raises(IntegrityError) as caught:
        read(data)
    message = str(caught.value)
    assert message.startswith(f"record {KEY!r} in {URL} is damaged: ")
    assert reason in message
    assert "\n" not in message
    assert caught.value.key == KEY
    assert caught.value.url == URL
    return caught.value


def pseudo_random(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).bytes(size)


small_segments = st.binary(max_size=300)
# Around the 64 KiB first read, so segments are split between what the header read
# fetched and what is read straight into a fresh buffer.
large_segments = st.builds(pseudo_random, st.integers(60_000, 140_000), st.integers(0, 2**32))
segment_lists = st.lists(small_segments | large_segments, max_size=5)
aware_datetimes = st.datetimes(
    min_value=datetime.datetime(1970, 1, 1),
    max_value=datetime.datetime(9000, 1, 1),
    timezones=st.timezones(),
)


# -- round trips -----------------------------------------------------------------


# 23:00 on 2012-04-28 happened twice in Punta Arenas (clocks went back at midnight).
_TWICE = datetime.datetime(2012, 4, 28, 23, 0, tzinfo=zoneinfo.ZoneInfo("America/Punta_Arenas"))


@given(segments=segment_lists, expiration=st.none() | aware_datetimes)
@example(segments=[], expiration=_TWICE)
@example(segments=[], expiration=_TWICE.replace(fold=1))
@settings(max_examples=60, deadline=None)
def test_segments_round_trip_byte_exact_with_metadata(
    segments: list[bytes], expiration: datetime.datetime | None
) -> None:
    before = datetime.datetime.now(UTC)
    data = stored(segments, serializer="json", expiration=expiration)
    metadata, back = read(data)

    assert back == segments
    assert metadata.storage_key == KEY
    assert metadata.storage_url == URL
    assert metadata.serializer == "json"
    assert metadata.size == sum(len(s) for s in segments)
    assert metadata.checksum.startswith("xxh3_128:")
    assert metadata.signed is False
    if expiration is None:
        assert metadata.expiration is None
    else:  # the same instant, kept as UTC; compared as timestamps because PEP 495 makes
        # == False across zones for a local time that occurs twice, even at the same instant
        assert metadata.expiration is not None
        assert metadata.expiration.timestamp() == expiration.timestamp()
        assert metadata.expiration.utcoffset() == datetime.timedelta(0)
    assert metadata.created.utcoffset() == datetime.timedelta(0)
    assert before - datetime.timedelta(seconds=1) <= metadata.created
    assert metadata.created <= datetime.datetime.now(UTC)


# Up to the year 9999, in nanoseconds, with whole seconds and whole microseconds drawn
# often (isoformat leaves out a zero microsecond).
_MAX_NS = int((datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()) * 10**9)


@given(
    st.one_of(
        st.integers(0, _MAX_NS),
        st.integers(0, _MAX_NS // 10**9).map(lambda s: s * 10**9),
        st.integers(0, _MAX_NS // 1000).map(lambda us: us * 1000),
    )
)
@example(0)
@example(999)  # under a microsecond: truncated, as datetime's own microseconds are
def test_a_records_creation_time_is_written_as_datetime_would_write_it(ns: int) -> None:
    expected = datetime.datetime(1970, 1, 1, tzinfo=UTC) + datetime.timedelta(
        microseconds=ns // 1000
    )
    assert _iso_utc(ns) == expected.isoformat()
    assert _iso_utc(ns) == expected.isoformat()  # again, from the cached second
    assert datetime.datetime.fromisoformat(_iso_utc(ns)) == expected


def test_any_kind_of_buffer_can_be_a_segment() -> None:
    array = np.arange(10, dtype=np.int64)
    data = stored([b"bytes", bytearray(b"bytearray"), memoryview(array)])
    assert read(data)[1] == [b"bytes", b"bytearray", array.tobytes()]


def test_payload_segments_are_framed_without_copies() -> None:
    segments: list[Buffer] = [b"stream", bytearray(100), memoryview(b"x" * 10)]
    framed = encode_record(segments, serializer="pickle")
    assert len(framed) == 1 + len(segments)
    assert all(a is b for a, b in zip(framed[1:], segments, strict=True))
    assert bytes(framed[0]).startswith(MAGIC)


def test_naive_datetimes_are_taken_as_utc() -> None:
    created = datetime.datetime(2024, 3, 1, 12, 0)
    expiration = datetime.datetime(2024, 3, 2, 12, 0)
    metadata, _ = read(stored([b"x"], created=created, expiration=expiration))
    assert metadata.created == created.replace(tzinfo=UTC)
    assert metadata.expiration == expiration.replace(tzinfo=UTC)
    assert metadata.is_expired(now=datetime.datetime(2024, 3, 2, 12, 0, tzinfo=UTC))
    assert not metadata.is_expired(now=datetime.datetime(2024, 3, 2, 11, 59, tzinfo=UTC))


def test_the_header_is_readable_json() -> None:
    when = datetime.datetime(2024, 1, 1, tzinfo=UTC)
    data = stored([b"ab", b"cde"], serializer="json", created=when)
    magic, version, length, _ = PREFIX.unpack_from(data)
    assert (magic, version) == (MAGIC, FORMAT_VERSION)
    header = json.loads(data[PREFIX.size : PREFIX.size + length])
    assert header == {
        "serializer": "json",
        "created": "2024-01-01T00:00:00+00:00",
        "expiration": None,
        "segments": [2, 3],
        "checksum": "xxh3_128:" + xxhash.xxh3_128(b"abcde").hexdigest(),
    }
    assert data[PREFIX.size + length :] == b"abcde"


def test_read_header_returns_metadata_without_the_payload() -> None:
    payload = pseudo_random(300_000, seed=1)
    data = stored([b"stream", payload])
    header, rest, at_end = run_sync(read_header(BytesReader(data), KEY, URL))
    assert header.metadata.size == len(payload) + len(b"stream")
    assert header.segments == [len(b"stream"), len(payload)]
    assert len(rest) < len(payload)  # only the first read, not the whole record
    assert not at_end


def test_read_header_knows_when_a_small_record_was_read_whole() -> None:
    data = stored([b"tiny"])
    header, rest, at_end = run_sync(read_header(BytesReader(data), KEY, URL))
    assert header.segments == [4]
    assert (rest, at_end) == (b"tiny", True)


# -- damage ------------------------------------------------------------------------

RECORD = stored([b"pickle stream", pseudo_random(100_000, seed=2), b"tail"])


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("empty", "only 0 bytes, shorter than a record header"),
        ("inside the prefix", "shorter than a record header"),
        ("inside the header", "truncated inside the header"),
        ("right after the header", "payload truncated"),
        ("inside the first segment", "payload truncated"),
        ("inside the large segment", "payload truncated"),
        ("one byte short", "payload truncated"),
    ],
)
def test_truncated_records_are_damaged(where: str, reason: str) -> None:
    end = header_end(RECORD)
    cut = {
        "empty": 0,
        "inside the prefix": PREFIX.size // 2,
        "inside the header": end - 5,
        "right after the header": end,
        "inside the first segment": end + 3,
        "inside the large segment": end + 50_000,
        "one byte short": len(RECORD) - 1,
    }[where]
    assert_damaged(RECORD[:cut], reason)


@given(st.data())
@settings(max_examples=200)
def test_a_truncated_record_never_reads(data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(RECORD) - 1), label="cut")
    assert_damaged(RECORD[:cut])


@given(st.data())
@settings(max_examples=300)
def test_a_flipped_byte_anywhere_is_detected(data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(RECORD) - 1), label="position")
    flip = data.draw(st.integers(1, 255), label="xor")
    damaged = bytearray(RECORD)
    damaged[position] ^= flip
    assert_damaged(bytes(damaged))


@pytest.mark.parametrize(
    ("region", "reason"),
    [
        ("magic", "bad magic bytes"),
        ("version", "format version"),
        ("header length", ""),
        ("header hash", "header checksum mismatch"),
        ("header", "header checksum mismatch"),
        ("payload start", "payload checksum mismatch"),
        ("payload end", "payload checksum mismatch"),
    ],
)
def test_a_flipped_byte_in_each_region_says_what_is_wrong(region: str, reason: str) -> None:
    position = {
        "magic": 0,
        "version": 4,
        "header length": 6,
        "header hash": 10,
        "header": PREFIX.size + 3,
        "payload start": header_end(RECORD),
        "payload end": len(RECORD) - 1,
    }[region]
    damaged = bytearray(RECORD)
    damaged[position] ^= 0x01
    assert_damaged(bytes(damaged), reason)


def test_wrong_magic() -> None:
    assert_damaged(b"PK\x03\x04" + RECORD[4:], "not a resultstore record (bad magic bytes)")


@pytest.mark.parametrize("version", [0, FORMAT_VERSION + 1, 0xFFFF])
def test_unsupported_format_versions(version: int) -> None:
    data = bytearray(RECORD)
    struct.pack_into("<H", data, 4, version)
    assert_damaged(
        bytes(data),
        f"format version {version} is not supported (expected {FORMAT_VERSION})",
    )


def test_implausible_header_length() -> None:
    data = bytearray(RECORD)
    struct.pack_into("<I", data, 6, 2**31)
    assert_damaged(bytes(data), f"header length {2**31} is implausible")


@given(garbage=st.binary(max_size=2000))
def test_garbage_is_damaged(garbage: bytes) -> None:
    assert_damaged(garbage)


@given(extra=st.binary(min_size=1, max_size=100))
def test_trailing_bytes_are_damaged(extra: bytes) -> None:
    assert_damaged(RECORD + extra, "trailing bytes after the payload")


def _with_header(header: bytes, payload: bytes = b"") -> bytes:
    """A record whose header passes its hash check but says ``header``: a buggy writer."""
    prefix = PREFIX.pack(MAGIC, FORMAT_VERSION, len(header), xxhash.xxh3_64_intdigest(header))
    return prefix + header + payload


def _header(**changes: Any) -> bytes:
    fields = {
        "serializer": "pickle",
        "created": "2024-01-01T00:00:00+00:00",
        "expiration": None,
        "segments": [3],
        "checksum": "xxh3_128:" + xxhash.xxh3_128(b"abc").hexdigest(),
        **changes,
    }
    return json.dumps({k: v for k, v in fields.items() if v is not ...}).encode()


def test_a_well_formed_hand_made_record_reads() -> None:
    metadata, segments = read(_with_header(_header(), b"abc"))
    assert segments == [b"abc"]
    assert metadata.created == datetime.datetime(2024, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (b"{not json", "unreadable header (ValueError)"),
        (b"", "unreadable header (ValueError)"),
        (_header(segments=[-1, 4]), "unreadable header (ValueError)"),
        (_header(checksum=...), "unreadable header (KeyError)"),
        (_header(created="yesterday"), "unreadable header (ValueError)"),
        (_header(segments=[5]), "payload truncated"),
        (_header(segments=[1]), "trailing bytes after the payload"),
        (_header(checksum="xxh3_128:" + "0" * 32), "payload checksum mismatch"),
    ],
)
def test_headers_that_lie_are_damaged(header: bytes, reason: str) -> None:
    assert_damaged(_with_header(header, b"abc"), reason)


# -- signatures ----------------------------------------------------------------------


def test_signed_records_verify_with_current_and_former_keys() -> None:
    data = stored([b"payload"], signer=Signer("old-0123456789abcdef"))
    metadata, segments = read(data, verifier=Signer("old-0123456789abcdef"))
    assert segments == [b"payload"]
    assert metadata.signed is True
    assert read(data, verifier=Signer("new-0123456789abcdef", old_keys=["old-0123456789abcdef"]))[
        1
    ] == [b"payload"]
    # Without a verifier the signature is not checked, but the checksums still are.
    assert read(data)[1] == [b"payload"]


@pytest.mark.parametrize(
    ("data", "verifier", "reason"),
    [
        (
            stored([b"payload"]),
            Signer("k-0123456789abcdef"),
            "is not signed but a signing key is configured",
        ),
        (
            stored([b"payload"], signer=Signer("other-0123456789abcdef")),
            Signer("k-0123456789abcdef"),
            "does not verify",
        ),
    ],
    ids=["unsigned", "signed-with-another-key"],  # the records hold their creation time
)
def test_unsigned_or_foreign_records_are_refused(
    data: bytes, verifier: Signer, reason: str
) -> None:
    with pytest.raises(SignatureError, match=reason) as caught:
        read(data, verifier=verifier)
    assert caught.value.key == KEY
    assert isinstance(caught.value, IntegrityError)


def test_a_signed_record_moved_to_another_key_is_refused() -> None:
    # Someone with write access copies a signed record of yours under a key you will read.
    data = stored([b"payload"], signer=Signer("k-0123456789abcdef"))
    assert read(data, verifier=Signer("k-0123456789abcdef"))[1] == [b"payload"]

    with pytest.raises(SignatureError, match="signed for another key") as caught:
        read(data, verifier=Signer("k-0123456789abcdef"), key="runs/43/result")
    assert caught.value.key == "runs/43/result"


def test_a_tampered_signed_payload_is_refused() -> None:
    data = bytearray(stored([b"payload"], signer=Signer("k-0123456789abcdef")))
    data[-1] ^= 0x20
    with pytest.raises(
        SignatureError, match=f"record {KEY!r} in {URL} has a signature that does not"
    ):
        read(bytes(data), verifier=Signer("k-0123456789abcdef"))


@given(
    serializer=st.text(min_size=1, max_size=30),
    lengths=st.lists(st.integers(min_value=0, max_value=2**40), min_size=1, max_size=5),
    expiration=st.none() | st.datetimes(timezones=st.just(datetime.timezone.utc)),
)
def test_the_fast_unsigned_header_is_exactly_what_json_dumps_writes(
    serializer: str, lengths: list[int], expiration: datetime.datetime | None
) -> None:
    from resultstore.records import _unsigned_header

    fields = {
        "serializer": serializer,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "expiration": None if expiration is None else expiration.isoformat(),
        "segments": lengths,
        "checksum": "xxh3_128:" + "0f" * 16,
    }
    expected = json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()
    assert _unsigned_header(fields) == expected
