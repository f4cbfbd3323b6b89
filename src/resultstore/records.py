"""Result records: the on-storage format, and the objects a read returns.

A record is a small header followed by the raw serialized payload, with no
base64 and no JSON around the payload::

    prefix   18 bytes  magic b"RSTR", format version (u16), header length (u32),
                       xxh3-64 of the header (u64), little endian
    header   JSON      serializer, created, expiration, segment lengths,
                       xxh3-128 of the payload, optional HMAC signature
    payload  bytes     the serializer's segments, back to back

Every read verifies the header hash, the payload length and the payload
checksum before anything is deserialized, so a damaged record raises
:class:`IntegrityError` naming its key instead of returning wrong data.
xxh3 is used because it hashes at memory speed (>10 GB/s), so a 200 MB result
costs milliseconds to verify; it guards against corruption, and the optional
HMAC-SHA256 signature (see :mod:`resultstore.signing`) guards against forgery.
"""

from __future__ import annotations

import datetime
import functools
import json
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

import xxhash

from resultstore._json import from_json
from resultstore.errors import IntegrityError, SignatureError
from resultstore.serializers import Buffer

if TYPE_CHECKING:
    from resultstore.signing import Signer
    from resultstore.stores.base import Reader

__all__ = [
    "FORMAT_VERSION",
    "HEADER_PROBE",
    "HeaderBeyond",
    "MAGIC",
    "ResultMetadata",
    "ResultRecord",
    "encode_record",
    "read_header",
    "read_record",
    "record_head",
    "utc",
]

MAGIC = b"RSTR"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<4sHIQ")
_MAX_HEADER = 1 << 20
_FIRST_READ = 64 * 1024
# A header is a few hundred bytes plus a few per payload segment, so 8 KiB holds that of a
# record of a thousand segments or so; a larger one costs a second ranged read (HeaderBeyond).
# Not 64 KiB: a store reading a large value's prefix page by page (an SQL blob) and every
# store copying what it fetched paid for 64 KiB where a header needs a few hundred bytes.
HEADER_PROBE = 8 * 1024
"""Bytes a metadata read opens: the prefix and header of any usual record."""
_FREE_SEGMENTS = 64  # empty segments allowed beyond one per payload byte (empty buffers)
_MAX_STEP = 16 * 1024 * 1024  # largest buffer grown ahead of bytes read, size unknown
_CHECKSUM_ALGO = "xxh3_128"
_CHECKSUM_PREFIX = _CHECKSUM_ALGO + ":"

R = TypeVar("R")


class ResultMetadata(NamedTuple):
    """What is known about a stored result without loading its payload.

    An immutable named tuple: one is built for every read, cheaply, and the
    header it comes from was already verified, so there is nothing to validate.
    """

    storage_key: str
    serializer: str
    size: int
    checksum: str
    created: datetime.datetime
    expiration: datetime.datetime | None = None
    storage_url: str | None = None
    signed: bool = False
    version: str | None = None
    """The stored record's version (an ETag, a generation), for ``write(if_version=...)``."""

    def is_expired(self, now: datetime.datetime | None = None) -> bool:
        """True once the expiration time has passed."""
        if self.expiration is None:
            return False
        return utc(now or datetime.datetime.now(datetime.timezone.utc)) >= utc(self.expiration)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (datetimes in ISO 8601)."""
        data = self._asdict()
        for name in ("created", "expiration"):
            if data[name] is not None:
                data[name] = data[name].isoformat()
        return data


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ is several times slower
class ResultRecord(Generic[R]):
    """A result read back from storage: the value and its metadata."""

    result: R
    metadata: ResultMetadata


@dataclass
class _Header:
    metadata: ResultMetadata
    segments: list[int]
    checksum: str
    signature: str | None
    signed_bytes: bytes = field(repr=False)
    digest: str | None = None


class HeaderBeyond(Exception):
    """A record's header ends past the range a metadata read opened; open up to ``end``."""

    def __init__(self, end: int) -> None:
        super().__init__(end)
        self.end = end


def utc(value: datetime.datetime) -> datetime.datetime:
    """``value`` as an aware UTC datetime; a naive one is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=datetime.timezone.utc)
    return value.astimezone(datetime.timezone.utc)


def _payload_checksum(segments: Sequence[Buffer]) -> str:
    if len(segments) == 1:  # the common small record: one call, no hasher object
        return _CHECKSUM_PREFIX + xxhash.xxh3_128_hexdigest(segments[0])
    digest = xxhash.xxh3_128()
    for segment in segments:
        digest.update(segment)
    return _CHECKSUM_PREFIX + digest.hexdigest()


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_second: tuple[int, str] = (-1, "")  # the last whole second stamped, and its ISO text


def _iso_utc(ns: int) -> str:
    """``(_EPOCH + timedelta(microseconds=ns // 1000)).isoformat()``, for ``ns`` >= 0.

    Every write stamps its record with the time, and the datetime round trip
    (``now(timezone.utc).isoformat()``) was ~4 us of a ~100 us 1 KB write; the text
    up to the second is made once a second, the microseconds are appended.
    """
    global _second
    second, micro = divmod(ns // 1000, 1_000_000)
    cached, text = _second
    if cached != second:
        text = (_EPOCH + datetime.timedelta(seconds=second)).isoformat()[:-6]  # less "+00:00"
        _second = (second, text)
    return f"{text}.{micro:06d}+00:00" if micro else f"{text}+00:00"


def encode_record(
    segments: Sequence[Buffer],
    *,
    serializer: str,
    expiration: datetime.datetime | None = None,
    created: datetime.datetime | None = None,
    signer: Signer | None = None,
    key: str = "",
) -> list[Buffer]:
    """Frame serialized segments as a record: returns the buffers to write, in order.

    The payload segments are returned as given, never copied. With a ``signer``,
    the header also records the payload's SHA-256 and is signed together with
    ``key``, the storage key the record is written under, so a signed record
    moved to another key no longer verifies.
    """
    fields: dict[str, Any] = {
        "serializer": serializer,
        "created": _iso_utc(time.time_ns()) if created is None else utc(created).isoformat(),
        "expiration": None if expiration is None else utc(expiration).isoformat(),
        "segments": [memoryview(s).nbytes for s in segments],
        "checksum": _payload_checksum(segments),
    }
    if signer is None:
        header = _unsigned_header(fields)
    else:
        from resultstore.signing import payload_digest

        fields["sha256"] = payload_digest(segments)
        core = json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()
        fields["signature"] = signer.sign(key, core)
        header = json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header), xxhash.xxh3_64_intdigest(header))
    return [prefix + header, *segments]


def record_head(first: Buffer) -> bytes | None:
    """The bytes a record whose first bytes are ``first`` starts with: prefix and header.

    What ``Payload.head`` carries when the core copies a record it read (copy_to); None
    when ``first`` does not hold them whole or does not start like a record. Nothing is
    verified here: whoever reads the copy back verifies it (``read_header``).
    """
    view = memoryview(first).cast("B")
    if len(view) < _PREFIX.size:
        return None
    magic, _, header_len, _ = _PREFIX.unpack_from(view)
    end = _PREFIX.size + header_len
    if magic != MAGIC or end > len(view):
        return None
    return bytes(view[:end])


@functools.lru_cache(maxsize=64)
def _json_text(name: str) -> str:
    return json.dumps(name)


def _unsigned_header(fields: dict[str, Any]) -> bytes:
    """``json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()``, faster.

    Every write frames a header, and for a 1 KB result the generic encoder is a
    tenth of the write. The fields are known: ASCII text (a checksum, ISO
    dates) and integers, and the serializer's name, which is escaped as JSON.
    """
    expiration = "null" if fields["expiration"] is None else f'"{fields["expiration"]}"'
    segments = ",".join(map(str, fields["segments"]))
    return (
        f'{{"checksum":"{fields["checksum"]}","created":"{fields["created"]}",'
        f'"expiration":{expiration},"segments":[{segments}],'
        f'"serializer":{_json_text(fields["serializer"])}}}'
    ).encode()


def _damaged(key: str, url: str | None, why: str) -> IntegrityError:
    where = _in(url)
    return IntegrityError(
        f"record {key!r}{where} is damaged: {why}; rewrite or delete it", key=key, url=url
    )


class NotARecordError(IntegrityError):
    """The bytes under a key do not start like a resultstore record at all.

    Unlike other damage, they may be another tool's result (a Prefect record),
    which ``ResultStore.read`` then tries to read in place.
    """


def _not_a_record(key: str, url: str | None, why: str) -> NotARecordError:
    return NotARecordError(
        f"record {key!r}{_in(url)} is damaged: {why}; rewrite or delete it", key=key, url=url
    )


def _parse_prefix(data: bytes, key: str, url: str | None) -> tuple[int, int]:
    if len(data) < _PREFIX.size:
        raise _not_a_record(key, url, f"only {len(data)} bytes, shorter than a record header")
    magic, version, header_len, header_hash = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise _not_a_record(key, url, "not a resultstore record (bad magic bytes)")
    if version != FORMAT_VERSION:
        raise _damaged(
            key, url, f"format version {version} is not supported (expected {FORMAT_VERSION})"
        )
    if header_len > _MAX_HEADER:
        raise _damaged(key, url, f"header length {header_len} is implausible")
    return header_len, header_hash


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


_MAX_NAME = 256
_NAME_BAD = frozenset(map(chr, [*range(0x20), *range(0x7F, 0xA0)]))


def _name(value: object) -> str:
    """A serializer name: text of at most 256 characters, none of them control characters.

    Names reach messages, ``ls`` and ``inspect``: a newline or a terminal escape
    sequence in one is damage, never shown raw.
    """
    name = _text(value)
    if len(name) > _MAX_NAME or not _NAME_BAD.isdisjoint(name):
        raise ValueError("the serializer name is too long or holds control characters")
    return name


def _length(value: object) -> int:
    if type(value) is not int or value < 0:  # not bool, float or a numeric string
        raise ValueError("a segment length is not a non-negative integer")
    return value


def _instant(value: object) -> datetime.datetime:
    # utc() also rejects dates that cannot be normalised (year 1 minus an offset, ...),
    # so no OverflowError waits for whoever compares them later.
    return utc(datetime.datetime.fromisoformat(_text(value)))


def _parse_header(
    raw: bytes, header_hash: int, key: str, url: str | None, version: str | None = None
) -> _Header:
    if xxhash.xxh3_64_intdigest(raw) != header_hash:
        raise _damaged(key, url, "header checksum mismatch")
    try:
        fields = from_json(raw)  # several times faster than json.loads here
        if not isinstance(fields, dict):
            raise TypeError("the header is not a JSON object")
        signature = fields.pop("signature", None)
        lengths = fields["segments"]
        if not isinstance(lengths, list):
            raise TypeError("segments is not a list")
        segments = [_length(n) for n in lengths]
        size = sum(segments)
        if len(segments) > size + _FREE_SEGMENTS:
            raise ValueError("more segments than payload bytes")
        expiration = fields["expiration"]
        # Positional: a named tuple's keywords cost more than the rest of this line.
        metadata = ResultMetadata(
            key,  # storage_key
            _name(fields["serializer"]),
            size,
            _text(fields["checksum"]),
            _instant(fields["created"]),
            None if expiration is None else _instant(expiration),
            url,  # storage_url
            signature is not None,  # signed
            version,
        )
        digest = fields.get("sha256")
        if digest is not None:
            _text(digest)
    except Exception as exc:
        raise _damaged(key, url, f"unreadable header ({type(exc).__name__})") from None
    if signature is not None and not isinstance(signature, str):
        raise SignatureError(
            f"record {key!r}{_in(url)} has a signature of the wrong type "
            f"({type(signature).__name__}); refusing to deserialize it",
            key=key,
            url=url,
        )
    signed_bytes = (
        raw
        if signature is None
        else json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()
    )
    return _Header(metadata, segments, metadata.checksum, signature, signed_bytes, digest)


def _in(url: str | None) -> str:
    return f" in {url}" if url else ""


async def read_header(
    reader: Reader, key: str, url: str | None, opened_to: int | None = None
) -> tuple[_Header, bytes, bool]:
    """Read and verify a record's header.

    Returns it with the payload bytes read so far, and whether the record's end
    was reached (a short read means the end, by the Reader contract). When the
    reader knows the record's size, the lengths the header claims are checked
    against it here, before anyone allocates a buffer for them.
    """
    first = await reader.read(_FIRST_READ)
    at_end = len(first) < _FIRST_READ
    header_len, header_hash = _parse_prefix(first, key, url)
    end = _PREFIX.size + header_len
    stored = reader.size
    if stored is not None and end > stored:
        raise _damaged(key, url, "truncated inside the header")
    if opened_to is not None and end > opened_to and (stored is None or stored > opened_to):
        raise HeaderBeyond(end)  # the reader was opened for less than the header
    if len(first) < end:
        more = await reader.read(end - len(first))
        at_end = len(more) < end - len(first)
        first += more
        if len(first) < end:
            raise _damaged(key, url, "truncated inside the header")
    header = _parse_header(first[_PREFIX.size : end], header_hash, key, url, reader.version)
    if stored is not None and end + header.metadata.size != stored:
        claimed, held = header.metadata.size, stored - end
        why = "payload truncated" if held < claimed else "trailing bytes after the payload"
        raise _damaged(
            key, url, f"{why} (its header claims {claimed} bytes, the store holds {held})"
        )
    return header, first[end:], at_end


def _unsigned(key: str, url: str | None) -> SignatureError:
    return SignatureError(
        f"record {key!r}{_in(url)} is not signed but a signing key is configured; "
        "refusing to deserialize it (rewrite it with signing enabled)",
        key=key,
        url=url,
    )


def _forged(key: str, url: str | None) -> SignatureError:
    return SignatureError(
        f"record {key!r}{_in(url)} has a signature that does not verify with the configured "
        "keys (forged, or signed for another key); refusing to deserialize it",
        key=key,
        url=url,
    )


async def _read_segment(
    reader: Reader, length: int, have: memoryview, known_size: bool, key: str, url: str | None
) -> tuple[Buffer, bool]:
    """Read one segment of ``length`` bytes whose first bytes are ``have``.

    Returns the segment and whether it is complete. With the record's size
    known (and checked against the header), one buffer of the full length is
    filled in place. Otherwise the buffer grows only as bytes really arrive,
    doubling from 64 KiB, so a header claiming terabytes costs nothing.
    """
    if known_size:
        try:
            buffer = bytearray(length)
        except MemoryError:  # a sparse file, say: the store "holds" bytes it never stored
            raise IntegrityError(
                f"record {key!r}{_in(url)} claims a {length}-byte payload segment, more "
                "memory than this process can allocate; nothing was decoded (a sparse or "
                "hostile file, or a record too large for this machine)",
                key=key,
                url=url,
            ) from None
        buffer[: len(have)] = have
        got = await reader.readinto(memoryview(buffer)[len(have) :])
        return buffer, len(have) + got == length
    chunks: list[Buffer] = [bytes(have)]
    filled, step = len(have), _FIRST_READ
    while filled < length:
        chunk = bytearray(min(step, length - filled))
        got = await reader.readinto(memoryview(chunk))
        if got < len(chunk):
            return b"", False
        chunks.append(chunk)
        filled += got
        step = min(step * 2, _MAX_STEP)
    return (chunks[-1] if len(chunks) == 1 else bytearray().join(chunks)), True


async def read_record(
    reader: Reader,
    key: str,
    url: str | None,
    verifier: Signer | None = None,
    accept: Callable[[ResultMetadata], None] | None = None,
) -> tuple[ResultMetadata, list[Buffer]]:
    """Read a whole record, verify it, and return its metadata and payload segments.

    Nothing the header says is acted on before it is checked: with a
    ``verifier``, an unsigned or forged record raises :class:`SignatureError`
    before its payload is read; ``accept(metadata)`` may refuse the record
    (an unallowed serializer, say) at the same point; the lengths the header
    claims are checked against the store's size of the record, or read
    incrementally. Large segments are read straight into fresh ``bytearray``
    buffers (one copy from storage, and writable values once unpickled).
    """
    header, rest, at_end = await read_header(reader, key, url)
    signature = header.signature
    if verifier is not None:
        if signature is None:
            raise _unsigned(key, url)
        if not verifier.is_v2(signature) and (
            header.digest is None or not verifier.verify_header(key, header.signed_bytes, signature)
        ):
            raise _forged(key, url)
    if accept is not None:
        accept(header.metadata)
    known_size = reader.size is not None
    segments: list[Buffer] = []
    view = memoryview(rest)
    offset = 0
    for index, length in enumerate(header.segments):
        have = min(length, len(view) - offset)
        if have == length and (index == 0 or length < _FIRST_READ):
            segments.append(
                view[offset : offset + length]
                if index == 0
                else bytearray(view[offset : offset + length])
            )
            offset += length
            continue
        segment, whole = await _read_segment(
            reader, length, view[offset : offset + have], known_size, key, url
        )
        offset += have
        if not whole:
            raise _damaged(key, url, f"payload truncated ({header.metadata.size} bytes expected)")
        segments.append(segment)
    if offset < len(view) or (not at_end and await reader.read(1)):
        raise _damaged(key, url, "trailing bytes after the payload")
    if verifier is not None and signature is not None:
        if verifier.is_v2(signature):
            if not verifier.verify_v2(key, header.signed_bytes, segments, signature):
                raise _forged(key, url)
        else:
            from resultstore.signing import payload_digest

            if payload_digest(segments) != header.digest:
                raise _forged(key, url)
    if _payload_checksum(segments) != header.checksum:
        raise _damaged(key, url, "payload checksum mismatch")
    return header.metadata, segments
