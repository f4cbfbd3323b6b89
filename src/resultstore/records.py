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
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

import pydantic_core
import xxhash

from resultstore.errors import IntegrityError, SignatureError
from resultstore.serializers import Buffer

if TYPE_CHECKING:
    from resultstore.signing import Signer
    from resultstore.stores.base import Reader

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "ResultMetadata",
    "ResultRecord",
    "encode_record",
    "read_header",
    "read_record",
    "utc",
]

MAGIC = b"RSTR"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<4sHIQ")
_MAX_HEADER = 1 << 20
_FIRST_READ = 64 * 1024
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
    the signature covers ``key``, the storage key the record is written under,
    so a signed record moved to another key no longer verifies.
    """
    fields: dict[str, Any] = {
        "serializer": serializer,
        "created": utc(created or datetime.datetime.now(datetime.timezone.utc)).isoformat(),
        "expiration": None if expiration is None else utc(expiration).isoformat(),
        "segments": [memoryview(s).nbytes for s in segments],
        "checksum": _payload_checksum(segments),
    }
    core = json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()
    if signer is not None:
        fields["signature"] = signer.sign(key, core, segments)
        header = json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()
    else:
        header = core
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header), xxhash.xxh3_64_intdigest(header))
    return [prefix + header, *segments]


def _damaged(key: str, url: str | None, why: str) -> IntegrityError:
    where = f" in {url}" if url else ""
    return IntegrityError(
        f"record {key!r}{where} is damaged: {why}; rewrite or delete it", key=key, url=url
    )


def _parse_prefix(data: bytes, key: str, url: str | None) -> tuple[int, int]:
    if len(data) < _PREFIX.size:
        raise _damaged(key, url, f"only {len(data)} bytes, shorter than a record header")
    magic, version, header_len, header_hash = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise _damaged(key, url, "not a resultstore record (bad magic bytes)")
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


def _parse_header(raw: bytes, header_hash: int, key: str, url: str | None) -> _Header:
    if xxhash.xxh3_64_intdigest(raw) != header_hash:
        raise _damaged(key, url, "header checksum mismatch")
    try:
        fields = pydantic_core.from_json(raw)  # several times faster than json.loads here
        signature = fields.pop("signature", None)
        segments = [int(n) for n in fields["segments"]]
        if any(n < 0 for n in segments):
            raise ValueError("negative segment length")
        expiration = fields["expiration"]
        metadata = ResultMetadata(
            storage_key=key,
            storage_url=url,
            serializer=_text(fields["serializer"]),
            size=sum(segments),
            checksum=_text(fields["checksum"]),
            created=datetime.datetime.fromisoformat(_text(fields["created"])),
            expiration=None
            if expiration is None
            else datetime.datetime.fromisoformat(_text(expiration)),
            signed=signature is not None,
        )
    except Exception as exc:
        raise _damaged(key, url, f"unreadable header ({type(exc).__name__})") from None
    signed_bytes = (
        raw
        if signature is None
        else json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()
    )
    return _Header(metadata, segments, metadata.checksum, signature, signed_bytes)


async def read_header(reader: Reader, key: str, url: str | None) -> tuple[_Header, bytes, bool]:
    """Read and verify a record's header.

    Returns it with the payload bytes read so far, and whether the record's end
    was reached (a short read means the end, by the Reader contract).
    """
    first = await reader.read(_FIRST_READ)
    at_end = len(first) < _FIRST_READ
    header_len, header_hash = _parse_prefix(first, key, url)
    end = _PREFIX.size + header_len
    if len(first) < end:
        more = await reader.read(end - len(first))
        at_end = len(more) < end - len(first)
        first += more
        if len(first) < end:
            raise _damaged(key, url, "truncated inside the header")
    header = _parse_header(first[_PREFIX.size : end], header_hash, key, url)
    return header, first[end:], at_end


async def read_record(
    reader: Reader,
    key: str,
    url: str | None,
    verifier: Signer | None = None,
) -> tuple[ResultMetadata, list[Buffer]]:
    """Read a whole record, verify it, and return its metadata and payload segments.

    Large segments are read straight into fresh ``bytearray`` buffers (one copy
    from storage, and writable values once unpickled). With a ``verifier``, an
    unsigned or forged record raises :class:`SignatureError`.
    """
    header, rest, at_end = await read_header(reader, key, url)
    if verifier is not None and header.signature is None:
        raise SignatureError(
            f"record {key!r} is not signed but a signing key is configured; "
            "refusing to deserialize it (rewrite it with signing enabled)",
            key=key,
            url=url,
        )
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
        buffer = bytearray(length)
        buffer[:have] = view[offset : offset + have]
        offset += have
        got = await reader.readinto(memoryview(buffer)[have:]) if have < length else 0
        if have + got < length:
            raise _damaged(key, url, f"payload truncated ({header.metadata.size} bytes expected)")
        segments.append(buffer)
    if offset < len(view) or (not at_end and await reader.read(1)):
        raise _damaged(key, url, "trailing bytes after the payload")
    if verifier is not None and not verifier.verify(
        key, header.signed_bytes, segments, header.signature
    ):
        raise SignatureError(
            f"record {key!r} has a signature that does not verify with the configured keys "
            "(forged, or signed for another key); refusing to deserialize it",
            key=key,
            url=url,
        )
    if _payload_checksum(segments) != header.checksum:
        raise _damaged(key, url, "payload checksum mismatch")
    return header.metadata, segments
