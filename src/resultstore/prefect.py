"""Read Prefect's result records, and import a Prefect result storage into a store.

Prefect 3 persists a task's result as a ``ResultRecord`` JSON document under its
storage key::

    {"metadata": {"storage_key": "...", "expiration": null | "<ISO 8601>",
                  "serializer": {"type": "pickle", "picklelib": "cloudpickle", ...},
                  "prefect_version": "3.x", "storage_block_id": ...},
     "result": "<the serializer's output, as text>"}

Prefect 2 wrote an older ``PersistedResultBlob``:
``{"serializer": {...}, "data": "<text>", "prefect_version": "2.x"}``.

The ``result`` text depends on the serializer: ``pickle`` is base64 of a
(cloud)pickle; ``json`` is JSON text in which values the standard library
cannot encode are ``{"__class__": "<module.Class>", "data": ...}`` and
exceptions ``{"__exc_type__": "<module.Class>", "message": ...}``;
``compressed/...`` is base64 of the inner serializer's output compressed (lzma
by default).

Decoding follows the trust rules of :class:`~resultstore.ResultStore` (see
docs/security.md): pickle-based records (``pickle``, ``compressed/pickle``)
are decoded only where pickle is allowed, JSON ones always, and a class named
in a record is **never imported**: only the fixed set of value types in
:data:`SAFE_JSON_TYPES` (datetimes, UUIDs, decimals, paths, ...) and built-in
exceptions are rebuilt; any other name is refused with an error naming it.
Every size is checked before memory is allocated for it: a record above
``max_bytes`` is refused before it is read whole, and base64 and decompressed
payloads are bounded the same way.

Where Prefect records can be read in place: ``ResultStore.read(key)`` decodes a
Prefect record it finds where a native record was expected, on stores that keep
a key's bytes under the key itself: ``s3://bucket/prefix`` (Prefect's
``<prefix>/<storage_key>`` object is our key ``storage_key``), ``memory://``
and the sqlite and redis plugins. The file store (and generic fsspec stores)
keep key ``k`` in a file ``k.rsr``, while Prefect names its file ``k``: import
such folders with :func:`import_prefect` (``resultstore import-prefect``), or
decode one file's bytes with :func:`decode_prefect_record`.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import datetime
import decimal
import errno
import json
import os
import pathlib
import pickle
import stat
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from resultstore import _json
from resultstore.errors import (
    ConfigurationError,
    IntegrityError,
    InvalidKeyError,
    ResultStoreError,
    SerializerNotAllowedError,
)
from resultstore.records import ResultMetadata, ResultRecord, utc

if TYPE_CHECKING:
    from resultstore.result_store import ResultStore
    from resultstore.stores.base import Reader

__all__ = [
    "DEFAULT_MAX_BYTES",
    "SAFE_JSON_TYPES",
    "ImportOutcome",
    "ImportSummary",
    "PrefectRecord",
    "PrefectRecordError",
    "aimport_prefect",
    "decode_prefect_record",
    "import_prefect",
    "parse_prefect_record",
]

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
"""Largest Prefect record (and decoded payload) read, in bytes: a record is JSON
that must be parsed whole, so this bounds the memory one record can take."""

_READ_CHUNK = 1024 * 1024
_PICKLE_LIBS = frozenset({"cloudpickle", "pickle"})  # both read by pickle.loads
_PREFECT_JSON_CODECS = {
    "object_encoder": "prefect.serializers.prefect_json_object_encoder",
    "object_decoder": "prefect.serializers.prefect_json_object_decoder",
}
_COMPRESSIONLIBS = {
    "lzma": "lzma",
    "bz2": "bz2",
    "zlib": "zlib",
    "gzip": "gzip",
    "zstandard": "zstd",
    "zstd": "zstd",
}

SAFE_JSON_TYPES: dict[str, type] = {
    "datetime.datetime": datetime.datetime,
    "pendulum.datetime.DateTime": datetime.datetime,  # Prefect 2's datetimes
    "pendulum.DateTime": datetime.datetime,
    "datetime.date": datetime.date,
    "pendulum.date.Date": datetime.date,
    "datetime.time": datetime.time,
    "datetime.timedelta": datetime.timedelta,
    "pendulum.duration.Duration": datetime.timedelta,
    "uuid.UUID": uuid.UUID,
    "decimal.Decimal": decimal.Decimal,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.bytes": bytes,
    "pathlib.Path": pathlib.Path,
    "pathlib.PosixPath": pathlib.PurePosixPath,
    "pathlib._local.PosixPath": pathlib.PurePosixPath,
    "pathlib.WindowsPath": pathlib.PureWindowsPath,
    "pathlib._local.WindowsPath": pathlib.PureWindowsPath,
    "pathlib.PurePath": pathlib.PurePath,
    "pathlib.PurePosixPath": pathlib.PurePosixPath,
    "pathlib._local.PurePosixPath": pathlib.PurePosixPath,
    "pathlib.PureWindowsPath": pathlib.PureWindowsPath,
    "pathlib._local.PureWindowsPath": pathlib.PureWindowsPath,
}
"""The ``__class__`` names of Prefect's JSON serializer decoded, each to a value type
built by pydantic from the encoded data, as Prefect does. No other class is ever
imported: a record naming one is refused (:class:`PrefectRecordError`)."""

_ADAPTERS: dict[type, Any] = {}


class PrefectRecordError(IntegrityError):
    """A Prefect record that cannot be decoded safely: an unsupported serializer, a
    class that would have to be imported, a payload past the size limit, bad base64."""


def unverifiable(key: str, url: str) -> PrefectRecordError:
    """The error of verifying a Prefect record read in place: it has no checksum."""
    return PrefectRecordError(
        f"record {key!r} in {url} is a Prefect result record: read() reads it, "
        "but it has no checksum to verify; import it (resultstore import-prefect) to get one",
        key=key,
        url=url,
    )


@dataclass(frozen=True, slots=True)
class PrefectRecord:
    """A Prefect result record, recognized but not decoded yet."""

    key: str
    """Where it was found (its storage key, or a file name)."""
    serializer: dict[str, Any]
    """Prefect's serializer configuration, as stored (``{"type": "pickle", ...}``)."""
    payload: str
    """The serializer's output as stored: base64 text, or JSON text."""
    expiration: datetime.datetime | None
    prefect_version: str | None
    format: Literal["prefect3", "prefect2"]
    size: int
    """Bytes of the whole record as stored."""

    @property
    def serializer_type(self) -> str:
        """Prefect's serializer type: ``pickle``, ``json``, ``compressed/pickle``, ..."""
        return str(self.serializer.get("type"))

    @property
    def runs_code(self) -> bool:
        """True when decoding unpickles (a pickle serializer, compressed or not)."""
        return _inner(self.serializer).get("type") == "pickle"

    @property
    def name(self) -> str:
        """The serializer name a read reports: ``prefect:<type>``."""
        return f"prefect:{self.serializer_type}"


def _where(key: str, url: str | None) -> str:
    return f"{key!r} in {url}" if url else repr(key)


def _error(key: str, url: str | None, why: str) -> PrefectRecordError:
    return PrefectRecordError(
        f"Prefect record {_where(key, url)} cannot be decoded: {why}", key=key, url=url
    )


def _inner(config: dict[str, Any]) -> dict[str, Any]:
    """The serializer a compressed configuration wraps (itself when not compressed)."""
    kind = config.get("type")
    if kind == "compressed/pickle":
        inner = config.get("serializer", {"type": "pickle"})
    elif kind == "compressed/json":
        inner = config.get("serializer", {"type": "json"})
    elif kind == "compressed":
        inner = config.get("serializer")
    else:
        return config
    if isinstance(inner, str):  # Prefect accepts a type name here
        inner = {"type": inner}
    return inner if isinstance(inner, dict) else {}


def _looks_like_json_object(data: bytes | bytearray | memoryview) -> bool:
    head = bytes(data[:64]).lstrip()
    return head.startswith(b"{")


def parse_prefect_record(
    data: bytes | bytearray | memoryview,
    key: str = "",
    url: str | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> PrefectRecord | None:
    """Recognize a Prefect 3 ``ResultRecord`` or Prefect 2 result blob in ``data``.

    Returns None when ``data`` is not one (not JSON, or JSON of another shape), so
    callers can skip or report it; nothing is decoded or imported here. A record
    larger than ``max_bytes`` raises :class:`PrefectRecordError` before it is parsed.
    """
    if not _looks_like_json_object(data):
        return None
    if len(data) > max_bytes:
        raise _error(key, url, f"{len(data)} bytes, more than the limit of {max_bytes}")
    try:
        doc = _json.from_json(bytes(data))
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    metadata = doc.get("metadata")
    if isinstance(metadata, dict) and "result" in doc:
        fmt: Literal["prefect3", "prefect2"] = "prefect3"
        serializer, payload = metadata.get("serializer"), doc["result"]
        expiration, version = metadata.get("expiration"), metadata.get("prefect_version")
    elif "data" in doc and "serializer" in doc and "metadata" not in doc:
        fmt = "prefect2"
        serializer, payload = doc["serializer"], doc["data"]
        expiration, version = doc.get("expiration"), doc.get("prefect_version")
    else:
        return None
    if not isinstance(serializer, dict) or not isinstance(serializer.get("type"), str):
        return None
    if not isinstance(payload, str):
        raise _error(key, url, f"its result is {type(payload).__name__}, not text")
    return PrefectRecord(
        key=key,
        serializer=serializer,
        payload=payload,
        expiration=_expiration(expiration, key, url),
        prefect_version=version if isinstance(version, str) else None,
        format=fmt,
        size=len(data),
    )


def _expiration(value: object, key: str, url: str | None) -> datetime.datetime | None:
    if value is None:
        return None
    try:
        if not isinstance(value, str):
            raise TypeError(type(value).__name__)
        return utc(datetime.datetime.fromisoformat(value))
    except (TypeError, ValueError, OverflowError):
        raise _error(key, url, f"its expiration {value!r} is not an ISO 8601 time") from None


# -- decoding -----------------------------------------------------------------------------


def _unbase64(text: str, key: str, url: str | None, max_bytes: int) -> bytes:
    """``text`` base64-decoded, its decoded size bounded before anything is allocated."""
    if len(text) // 4 * 3 > max_bytes + 3:
        raise _error(
            key, url, f"its base64 payload decodes to more than the limit of {max_bytes} bytes"
        )
    try:
        return base64.b64decode(text.encode("ascii"), validate=False)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise _error(key, url, f"its payload is not base64 ({exc})") from None


def _decompress(lib: str, data: bytes, key: str, url: str | None, max_bytes: int) -> bytes:
    """``data`` decompressed by ``lib``; fails once the output passes ``max_bytes``."""
    name = _COMPRESSIONLIBS.get(lib)
    if name is None:
        raise _error(
            key,
            url,
            f"compressionlib {lib!r} is not supported (lzma, bz2, zlib, gzip, zstandard); "
            "resultstore never imports a module named by a record",
        )
    limit = max_bytes + 1
    try:
        if name == "zstd":
            import zstandard

            out = zstandard.ZstdDecompressor().stream_reader(data).read(limit)
        else:
            if name == "lzma":
                import lzma

                decompressor: Any = lzma.LZMADecompressor(memlimit=1 << 28)
            elif name == "bz2":
                import bz2

                decompressor = bz2.BZ2Decompressor()
            else:
                import zlib

                decompressor = zlib.decompressobj(31 if name == "gzip" else 15)
            out = decompressor.decompress(data, limit)
            if name != "zlib" and name != "gzip" and not decompressor.eof and len(out) < limit:
                raise ValueError("the compressed stream is truncated")
    except Exception as exc:
        raise _error(key, url, f"its {lib} payload does not decompress ({exc})") from None
    if len(out) > max_bytes:
        raise _error(key, url, f"its payload decompresses to more than {max_bytes} bytes")
    return bytes(out)


def _adapter(cls: type) -> Any:
    adapter = _ADAPTERS.get(cls)
    if adapter is None:
        import pydantic

        adapter = _ADAPTERS[cls] = pydantic.TypeAdapter(cls)
    return adapter


def _plain_tz(value: Any) -> Any:
    """A datetime or time with pydantic's ``TzInfo`` given a standard library timezone,
    so it pickles and compares without pydantic-core."""
    if isinstance(value, (datetime.datetime, datetime.time)) and value.tzinfo is not None:
        offset = value.utcoffset()
        if offset is not None:
            zone = datetime.timezone.utc if not offset else datetime.timezone(offset)
            return value.replace(tzinfo=zone)
    return value


def _json_hook(key: str, url: str | None) -> Callable[[dict[str, Any]], Any]:
    """An ``object_hook`` decoding Prefect's tagged objects, from the allow-list only."""

    def hook(obj: dict[str, Any]) -> Any:
        if "__class__" in obj:
            name = obj["__class__"]
            cls = SAFE_JSON_TYPES.get(name) if isinstance(name, str) else None
            if cls is None:
                raise _error(
                    key,
                    url,
                    f"it holds an object of class {name!r}, which resultstore does not "
                    "import (only datetimes, dates, times, timedeltas, UUIDs, decimals, "
                    "sets, bytes and paths are decoded); read it with Prefect itself",
                )
            try:
                return _plain_tz(_adapter(cls).validate_python(obj.get("data")))
            except Exception as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise _error(
                    key, url, f"its {name} value {obj.get('data')!r:.80} is invalid ({reason})"
                ) from None
        if "__exc_type__" in obj:
            name = obj["__exc_type__"]
            module, _, qualname = name.rpartition(".") if isinstance(name, str) else ("", "", "")
            exc_cls = getattr(builtins, qualname, None) if module == "builtins" else None
            if not (isinstance(exc_cls, type) and issubclass(exc_cls, Exception)):
                raise _error(  # SystemExit, KeyboardInterrupt: raised, they end the reader
                    key,
                    url,
                    f"it holds an exception of class {name!r}, which resultstore does not "
                    "import (only built-in Exception subclasses are decoded)",
                )
            try:  # some built-in exceptions take other arguments (UnicodeDecodeError: 5)
                return exc_cls(obj.get("message"))
            except Exception as exc:
                raise _error(
                    key, url, f"its {name} exception cannot be rebuilt ({type(exc).__name__})"
                ) from None
        return obj

    return hook


def _decode_json(text: str | bytes, key: str, url: str | None) -> Any:
    try:
        return json.loads(text, object_hook=_json_hook(key, url))
    except PrefectRecordError:
        raise
    except (ValueError, RecursionError) as exc:
        raise _error(key, url, f"its JSON payload is invalid ({exc})") from None
    except Exception as exc:  # whatever else a hostile payload provokes: never raw
        raise _error(key, url, f"its JSON payload is invalid ({type(exc).__name__})") from None


def _check_json_config(config: dict[str, Any], key: str, url: str | None) -> None:
    for option, prefect_default in _PREFECT_JSON_CODECS.items():
        if config.get(option) not in (None, prefect_default):
            raise _error(
                key,
                url,
                f"it was written with a custom JSON {option} {config[option]!r}, which "
                "resultstore does not import",
            )


def _unpickle(data: bytes, config: dict[str, Any], key: str, url: str | None) -> Any:
    lib = config.get("picklelib", "cloudpickle")
    if lib not in _PICKLE_LIBS:
        raise _error(
            key,
            url,
            f"picklelib {lib!r} is not supported (cloudpickle, pickle); "
            "resultstore never imports a module named by a record",
        )
    try:
        return pickle.loads(data)
    except Exception as exc:
        raise _error(
            key,
            url,
            f"unpickling failed ({type(exc).__name__}: {exc}); install the modules "
            "its classes live in",
        ) from None


def decode_prefect_record(
    record: PrefectRecord,
    *,
    allow_pickle: bool,
    url: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Any:
    """The value a Prefect record holds, decoded by the trust rules.

    ``allow_pickle=False`` refuses pickle-based records with
    :class:`SerializerNotAllowedError` before anything is decoded; JSON records
    are always decoded, rebuilding only :data:`SAFE_JSON_TYPES` and built-in
    exceptions. Other problems raise :class:`PrefectRecordError`.
    """
    key, config = record.key, record.serializer
    kind = record.serializer_type
    inner = _inner(config)
    inner_kind = inner.get("type")
    if kind not in ("pickle", "json", "compressed", "compressed/pickle", "compressed/json") or (
        inner_kind not in ("pickle", "json")
    ):
        raise _error(
            key,
            url,
            f"serializer {kind!r} is not supported (pickle, json, compressed/pickle, "
            "compressed/json)",
        )
    if inner_kind == "pickle" and not allow_pickle:
        raise SerializerNotAllowedError(
            f"Prefect record {_where(key, url)} was written with Prefect's {kind!r} "
            "serializer, which runs code when decoded and is not allowed here; if you trust "
            "everyone who can write to this storage, allow it with "
            "allowed_serializers=['pickle'] or RESULTSTORE_ALLOWED_SERIALIZERS=pickle",
            key=key,
            url=url,
        )
    if inner_kind == "json":
        _check_json_config(inner, key, url)
    if kind.startswith("compressed"):
        raw = _unbase64(record.payload, key, url, max_bytes)
        lib = config.get("compressionlib", "lzma")
        data = _decompress(str(lib), raw, key, url, max_bytes)
        del raw
        if inner_kind == "json":
            return _decode_json(data, key, url)
        return _unpickle(_unbase64(_ascii(data, key, url), key, url, max_bytes), inner, key, url)
    if inner_kind == "json":
        return _decode_json(record.payload, key, url)
    return _unpickle(_unbase64(record.payload, key, url, max_bytes), inner, key, url)


def _ascii(data: bytes, key: str, url: str | None) -> str:
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise _error(key, url, "its decompressed pickle is not base64 text") from None


def prefect_result_record(record: PrefectRecord, value: Any, url: str | None) -> ResultRecord[Any]:
    """A :class:`ResultRecord` for a decoded Prefect record, as ``ResultStore.read`` returns.

    Its serializer is ``prefect:<type>``; Prefect records carry no creation time, so
    ``created`` is the Unix epoch (unknown), and no checksum (``checksum`` is empty).
    """
    metadata = ResultMetadata(
        storage_key=record.key,
        serializer=record.name,
        size=record.size,
        checksum="",
        created=datetime.datetime.fromtimestamp(0, datetime.timezone.utc),
        expiration=record.expiration,
        storage_url=url,
    )
    return ResultRecord(value, metadata)


async def read_bounded(reader: Reader, key: str, url: str | None, max_bytes: int) -> bytes:
    """All of ``reader``'s bytes, refusing (before reading them) more than ``max_bytes``."""
    if reader.size is not None and reader.size > max_bytes:
        raise _error(key, url, f"{reader.size} bytes, more than the limit of {max_bytes}")
    chunks: list[bytes] = []
    total = 0
    while True:
        want = min(_READ_CHUNK, max_bytes + 1 - total)
        chunk = await reader.read(want)
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise _error(key, url, f"more than the limit of {max_bytes} bytes")
        if len(chunk) < want:
            return b"".join(chunks)


def allows_pickle(store: ResultStore) -> bool:
    """True when ``store`` decodes pickle records (its serializer, or allowed_serializers)."""
    return any(name == "pickle" or name.startswith("pickle+") for name in store._allowed)


async def _in_place(
    store: ResultStore, key: str, native: IntegrityError, action: str, *, refuse_signed: bool
) -> PrefectRecord:
    """The Prefect record under ``key`` (parsed, not decoded), or ``native`` raised again.

    ``native`` is the error of the native read, raised again when the bytes are a
    native record after all (damaged) or not a Prefect record. With ``refuse_signed``
    a store with a signing key refuses the (unsigned) record before reading it whole.
    """
    from resultstore.errors import SignatureError
    from resultstore.records import MAGIC

    url = store.storage_url
    with store._guard(action, key):
        reader = await store.store.open(key)
        try:
            head = await reader.read(64)
            if head.startswith(MAGIC) or not _looks_like_json_object(head):
                raise native
            if refuse_signed and store.signed:
                raise SignatureError(
                    f"record {key!r} in {url} is a Prefect record, which is not signed, but a "
                    "signing key is configured; refusing to decode it (import it with "
                    "resultstore import-prefect from a store without a key, if you trust it)",
                    key=key,
                    url=url,
                )
            rest = (
                b""
                if len(head) < 64
                else await read_bounded(reader, key, url, DEFAULT_MAX_BYTES - len(head))
            )
        finally:
            await reader.aclose()
    record = parse_prefect_record(head + rest, key, url)
    if record is None:
        raise native
    return record


async def read_in_place(store: ResultStore, key: str, native: IntegrityError) -> ResultRecord[Any]:
    """``store.read(key)`` of bytes that are not a native record: a Prefect record, decoded.

    Called only after the native read failed with ``native``, which is raised again
    when the bytes are a native record after all (damaged) or not a Prefect record.
    Unsigned, a Prefect record is refused by a store with a signing key, before it is
    read whole.
    """
    record = await _in_place(store, key, native, "read", refuse_signed=True)
    url = store.storage_url
    value = decode_prefect_record(record, allow_pickle=allows_pickle(store), url=url)
    return prefect_result_record(record, value, url)


async def metadata_in_place(store: ResultStore, key: str, native: IntegrityError) -> ResultMetadata:
    """``store.read_metadata(key)`` of bytes that are not a native record.

    The same detection as :func:`read_in_place` (so ``read_metadata`` describes
    what ``read`` reads): a Prefect record gets metadata whose serializer is
    ``prefect:<type>``, its size, its expiration, ``created`` the Unix epoch
    (unknown) and an empty checksum (Prefect records have none); anything else
    raises ``native``. Nothing is decoded, so no pickle is ever run here. A record
    is JSON, so it is read whole (at most :data:`DEFAULT_MAX_BYTES`).
    """
    record = await _in_place(store, key, native, "inspect", refuse_signed=False)
    return prefect_result_record(record, None, store.storage_url).metadata


# -- importing ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImportOutcome:
    """What :func:`aimport_prefect` did with one file or object, for ``progress``."""

    key: str
    outcome: Literal["imported", "skipped", "failed"]
    reason: str | None = None


@dataclass(slots=True)
class ImportSummary:
    """What :func:`aimport_prefect` did: counts, and why each failure failed."""

    source_url: str
    destination_url: str
    imported: int = 0
    skipped: list[str] = field(default_factory=list)
    """Keys of files or objects that are not Prefect records (left alone)."""
    failed: dict[str, str] = field(default_factory=dict)
    """Prefect records that could not be decoded or written, with the reason."""
    bytes_read: int = 0

    @property
    def ok(self) -> bool:
        """True when no record failed."""
        return not self.failed


def _folder(source: str) -> str | None:
    """The local folder a source names (a path or a ``file://`` URL), else None."""
    if source.startswith("file://"):
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(source)
        if parts.netloc not in ("", "localhost"):
            raise ConfigurationError(f"cannot import from {source}: a file:// URL names no host")
        return os.path.expanduser(unquote(parts.path))
    if "://" in source:
        return None
    return os.path.expanduser(source)


def _open_regular(path: str) -> BinaryIO | None:
    """``path`` open for reading if it is a regular file, else None; a link is not followed.

    A folder of Prefect files is untrusted like a store's: a symbolic link there may
    lead outside it, and opening a FIFO would wait for a writer forever, so only the
    regular files themselves are read (``O_NOFOLLOW | O_NONBLOCK``, then ``fstat``).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EOPNOTSUPP):  # a link, a socket
            return None
        raise
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    if not regular:
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


def _walk(root: str) -> Iterator[tuple[str, str]]:
    """``(key, path)`` of every file below ``root``, in a stable order; hidden ones skipped."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = os.path.join(folder, name)
            yield os.path.relpath(path, root).replace(os.sep, "/"), path


async def _import_one(
    key: str,
    data: bytes,
    dest: ResultStore,
    source_url: str,
    allow_pickle: bool,
    max_bytes: int,
) -> ImportOutcome:
    from resultstore.keys import validate_key

    try:
        record = parse_prefect_record(data, key, source_url, max_bytes=max_bytes)
        if record is None:
            return ImportOutcome(key, "skipped", "not a Prefect result record")
        value = decode_prefect_record(
            record, allow_pickle=allow_pickle, url=source_url, max_bytes=max_bytes
        )
        validate_key(key)
        await dest.awrite(value, key, expiration=record.expiration)
    except InvalidKeyError as exc:
        return ImportOutcome(key, "failed", f"its name is not a valid key: {exc}")
    except ResultStoreError as exc:
        return ImportOutcome(key, "failed", str(exc))
    return ImportOutcome(key, "imported")


def _record(summary: ImportSummary, outcome: ImportOutcome) -> None:
    if outcome.outcome == "imported":
        summary.imported += 1
    elif outcome.outcome == "skipped":
        summary.skipped.append(outcome.key)
    else:
        summary.failed[outcome.key] = outcome.reason or "failed"


async def aimport_prefect(
    source: str,
    destination: ResultStore | str,
    *,
    allow_pickle: bool | None = None,
    storage_options: dict[str, Any] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    progress: Callable[[ImportOutcome], None] | None = None,
) -> ImportSummary:
    """Import every Prefect result record under ``source`` into ``destination``.

    ``source`` is a Prefect result-storage folder (a path or ``file://`` URL: every
    file below it, hidden ones aside), or an ``s3://bucket/prefix`` URL (every object
    below the prefix, read with ``storage_options``; ``memory://`` works too). Each
    record is decoded (pickle only with ``allow_pickle``, which defaults to whether
    ``destination`` allows pickle: yes with its default serializer), then written to
    ``destination`` with its serializer under the same key, keeping its expiration.
    Files that are not Prefect records are skipped; records that fail are reported
    with the reason and the import goes on. Unreachable storage raises.
    """
    from resultstore.result_store import ResultStore

    dest = destination if isinstance(destination, ResultStore) else ResultStore(destination)
    if allow_pickle is None:
        allow_pickle = allows_pickle(dest)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ConfigurationError(f"max_bytes must be a positive integer, not {max_bytes!r}")
    folder = _folder(source)
    summary = ImportSummary(source, dest.storage_url)

    def done(outcome: ImportOutcome) -> None:
        _record(summary, outcome)
        if progress is not None:
            progress(outcome)

    if folder is not None:
        if not os.path.isdir(folder):
            raise ConfigurationError(
                f"cannot import from {source}: {folder!r} is not a folder; give the "
                "basepath of Prefect's LocalFileSystem result storage"
            )
        source_url = pathlib.Path(folder).resolve().as_uri()
        summary.source_url = source_url
        for key, path in _walk(folder):
            try:
                handle = _open_regular(path)
                if handle is None:
                    done(ImportOutcome(key, "skipped", "not a regular file (never followed)"))
                    continue
                with handle:
                    size = os.fstat(handle.fileno()).st_size
                    data = handle.read(64 if size > max_bytes else max_bytes + 1)
                if size > max_bytes:
                    if _looks_like_json_object(data):
                        done(
                            ImportOutcome(
                                key,
                                "failed",
                                str(
                                    _error(
                                        key,
                                        source_url,
                                        f"{size} bytes, more than the limit of {max_bytes}",
                                    )
                                ),
                            )
                        )
                    else:
                        done(ImportOutcome(key, "skipped", "not a Prefect result record"))
                    continue
            except OSError as exc:
                done(ImportOutcome(key, "failed", f"cannot read {path}: {exc}"))
                continue
            summary.bytes_read += len(data)
            done(await _import_one(key, data, dest, source_url, allow_pickle, max_bytes))
        return summary
    from resultstore.registry import scheme_of

    scheme = scheme_of(source)
    if scheme not in ("s3", "s3+obstore", "memory"):
        raise ConfigurationError(
            f"cannot import from {source}: import-prefect reads a folder (a path or "
            "file:// URL) or an s3://bucket/prefix URL"
        )
    src = ResultStore(source, storage_options=storage_options, allowed_serializers=())
    try:
        source_url = src.storage_url
        summary.source_url = source_url
        async for key in src.store.list(""):
            try:
                reader = await src.store.open(key)
                try:
                    data = await read_bounded(reader, key, source_url, max_bytes)
                finally:
                    await reader.aclose()
            except PrefectRecordError as exc:
                done(ImportOutcome(key, "failed", str(exc)))
                continue
            summary.bytes_read += len(data)
            done(await _import_one(key, data, dest, source_url, allow_pickle, max_bytes))
    finally:
        await src.aclose()
    return summary


def import_prefect(
    source: str,
    destination: ResultStore | str,
    *,
    allow_pickle: bool | None = None,
    storage_options: dict[str, Any] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    progress: Callable[[ImportOutcome], None] | None = None,
) -> ImportSummary:
    """Sync twin of :func:`aimport_prefect`."""
    from resultstore._loops import run_sync

    return run_sync(
        aimport_prefect(
            source,
            destination,
            allow_pickle=allow_pickle,
            storage_options=storage_options,
            max_bytes=max_bytes,
            progress=progress,
        )
    )
