"""Serializers turn a value into a list of byte segments and back.

Segments let large values stream without copies: the ``pickle`` serializer
uses pickle protocol 5 with out-of-band buffers, so a 200 MB array becomes a
small pickle stream plus one segment that *is* the array's memory, written as
is and read back into a fresh, writable buffer.

Built-ins: ``pickle`` (cloudpickle, the default), ``json`` (lossless tagged
JSON, readable from other languages: see :mod:`resultstore.json_codec`),
their compressed forms ``pickle+zstd``, ``pickle+lzma``, ``pickle+bz2``,
``pickle+zlib``, ``json+zstd``, ``json+lzma``, ``json+bz2``, ``json+zlib``,
and the code-free array and table serializers ``npy`` and ``arrow`` with the
``auto`` dispatcher (``auto-json``, ``auto-strict``): see
:mod:`resultstore.array_serializers`.
Others are found through the entry-point group ``resultstore.serializers``.

Wherever a serializer is named, Prefect's identifiers work too: ``"pickle"``,
``"json"``, ``"compressed/pickle"`` and ``"compressed/json"`` (lzma, Prefect's
default), and configurations such as ``{"type": "pickle", "picklelib":
"pickle"}``, ``{"type": "json", "jsonlib": "orjson"}`` or ``{"type":
"compressed/pickle", "compressionlib": "bz2"}``, given as a dict or as its
JSON text (``RESULTSTORE_SERIALIZER``, ``--serializer``). A record stores the
serializer's :attr:`~Serializer.name`, which says how to decode it; options
that change only how it is written (``picklelib``, ``jsonlib``, ``level``) are
not part of the name.
"""

from __future__ import annotations

import functools
import json
import pickle
import struct
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from resultstore import _json, json_codec
from resultstore.errors import (
    ConfigurationError,
    PluginError,
    SerializationError,
    UnknownSerializerError,
)
from resultstore.json_codec import register_json_type
from resultstore.plugins import discover, dist_name, providers

__all__ = [
    "COMPRESSIONLIBS",
    "SERIALIZER_GROUP",
    "Buffer",
    "CompressedJSONSerializer",
    "CompressedPickleSerializer",
    "CompressedSerializer",
    "JSONSerializer",
    "PickleSerializer",
    "Serializer",
    "available_serializers",
    "get_serializer",
    "register_json_type",
]

SERIALIZER_GROUP = "resultstore.serializers"

Buffer = bytes | bytearray | memoryview
"""A contiguous block of bytes that can be written without conversion."""

COMPRESSIONLIBS = ("zstd", "lzma", "bz2", "zlib")
"""The compression libraries of the compressed serializers, as ``compressionlib`` names them."""
_PICKLELIBS = ("cloudpickle", "pickle")
_JSONLIBS = ("json", "orjson")
_PICKLE_NAMES = frozenset({"pickle", *(f"pickle+{lib}" for lib in COMPRESSIONLIBS)})
_LEVELS = {"zstd": (-7, 22, 3), "lzma": (0, 9, 6), "bz2": (1, 9, 9), "zlib": (-1, 9, 6)}
_SIZE = struct.Struct("<Q")  # the uncompressed length before an lzma, bz2 or zlib stream
_CHUNK = 1 << 20
_LZMA_MEMLIMIT = 72 << 20


class Serializer(ABC):
    """Encode values to byte segments and decode them back.

    ``dumps`` must raise :class:`SerializationError` naming the value's type
    when it cannot encode it, before anything is written.

    ``name`` is what a record stores: another process decodes the record with
    ``get_serializer(name)``. ``code_free`` tells readers whether decoding can
    run code chosen by the bytes' writer (pickle can, JSON cannot). A reader
    decodes records of a serializer that is not code-free only when it is
    configured to (see ``ResultStore(allowed_serializers=...)``), so a plugin
    serializer is taken to run code unless it sets ``code_free = True``.
    ``also_reads`` names serializers whose records a store configured with this
    one may decode as well, because they decode through the same machinery and
    so carry no more risk (``pickle`` and its compressed forms).

    Two built-in serializers with the same :attr:`configuration` are equal and
    hash alike; a serializer without a configuration equals only itself.
    """

    name: str
    code_free: ClassVar[bool] = False
    also_reads: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def dumps(self, obj: Any) -> list[Buffer]:
        """Encode ``obj`` into one or more segments."""

    @abstractmethod
    def loads(self, segments: Sequence[Buffer]) -> Any:
        """Decode the segments produced by :meth:`dumps`."""

    def encode(self, obj: Any) -> tuple[str, list[Buffer]]:
        """The name a record of ``obj`` stores, and its segments.

        This serializer's :attr:`name` and :meth:`dumps`, unless it dispatches:
        ``auto`` names the serializer it chose (``npy``, ``arrow``, ``pickle``),
        so the record decodes with that one.
        """
        return self.name, self.dumps(obj)

    @property
    def configuration(self) -> dict[str, Any] | None:
        """A configuration ``get_serializer`` turns back into an equal serializer, or None."""
        return None

    def _cannot_encode(self, obj: Any, exc: BaseException) -> SerializationError:
        return SerializationError(
            f"{self.name} serializer cannot encode object of type {type(obj).__name__}: {exc}"
        )

    def _cannot_decode(self, exc: BaseException) -> SerializationError:
        return SerializationError(f"{self.name} serializer cannot decode the payload: {exc}")

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Serializer)
        mine = self.configuration
        return mine is not None and mine == other.configuration

    def __hash__(self) -> int:
        config = self.configuration
        if config is None:
            return id(self)
        return hash((type(self), json.dumps(config, sort_keys=True)))

    def __repr__(self) -> str:
        config = self.configuration or {}
        shown = ", ".join(
            f"{k}={v!r}" for k, v in config.items() if k not in ("type", "serializer")
        )
        return f"{type(self).__name__}({shown})"


def _joined(segments: Sequence[Buffer]) -> Buffer:
    return segments[0] if len(segments) == 1 else b"".join(segments)


def _raw(buffer: pickle.PickleBuffer) -> Buffer:
    try:
        return buffer.raw()
    except BufferError:  # not contiguous: copy once, rare
        return bytes(buffer)


def _choice(key: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ConfigurationError(
            f"{key} must be one of {', '.join(map(repr, choices))}, not {value!r}"
        )
    assert isinstance(value, str)
    return value


class PickleSerializer(Serializer):
    """Pickle protocol 5 with out-of-band buffers: large arrays are never copied.

    ``picklelib`` is ``"cloudpickle"`` (the default: functions and classes
    defined in ``__main__`` or a notebook pickle by value) or ``"pickle"``
    (the standard library's, by reference only). Both write the same format,
    named ``pickle`` in records, which the standard library reads.
    """

    name = "pickle"
    also_reads = _PICKLE_NAMES - {"pickle"}

    def __init__(self, picklelib: str = "cloudpickle") -> None:
        self.picklelib = _choice("picklelib", picklelib, _PICKLELIBS)

    @property
    def configuration(self) -> dict[str, Any]:
        return {"type": "pickle", "picklelib": self.picklelib}

    def _pickle(
        self,
        obj: Any,
        buffers: list[pickle.PickleBuffer] | None = None,
        owner: Serializer | None = None,
    ) -> bytes:
        """The pickle stream of ``obj``; errors name ``owner`` (a compressed form) or this one."""
        callback = None if buffers is None else buffers.append
        try:
            if self.picklelib == "pickle":
                return pickle.dumps(obj, protocol=5, buffer_callback=callback)
            import cloudpickle  # imported on first write: keeps `import resultstore` light

            stream: bytes = cloudpickle.dumps(obj, protocol=5, buffer_callback=callback)
            return stream
        except Exception as exc:
            raise (owner or self)._cannot_encode(obj, exc) from None

    def dumps(self, obj: Any) -> list[Buffer]:
        buffers: list[pickle.PickleBuffer] = []
        stream = self._pickle(obj, buffers)
        return [stream, *(_raw(b) for b in buffers)]

    def loads(self, segments: Sequence[Buffer]) -> Any:
        try:
            return pickle.loads(segments[0], buffers=segments[1:])
        except Exception as exc:
            raise self._cannot_decode(exc) from None


class JSONSerializer(Serializer):
    """Lossless JSON: every value it accepts comes back equal and of the same type.

    JSON-native values are written as plain JSON; datetimes, UUIDs, decimals,
    bytes, tuples, sets, non-string keys, paths and allowed enums, dataclasses,
    pydantic models and exceptions as tagged objects (see
    :mod:`resultstore.json_codec`); anything else is refused by ``dumps``.
    Decoding cannot run code: classes come only from the allow-list
    (:func:`register_json_type`, ``RESULTSTORE_JSON_MODULES``).

    ``jsonlib`` picks the JSON engine: ``"json"`` (the default, pydantic-core's
    Rust encoder and decoder with the standard library for tagged records) or
    ``"orjson"`` (needs the orjson package). Both write the same records.
    """

    name = "json"
    code_free = True

    def __init__(self, jsonlib: str = "json") -> None:
        self.jsonlib = _choice("jsonlib", jsonlib, _JSONLIBS)
        self._orjson: Any = None
        if jsonlib == "orjson":
            try:
                import orjson
            except ImportError:
                raise ConfigurationError(
                    "jsonlib 'orjson' needs the orjson package: pip install orjson, "
                    "or use jsonlib 'json'"
                ) from None
            self._orjson = orjson

    @property
    def configuration(self) -> dict[str, Any]:
        return {"type": "json", "jsonlib": self.jsonlib}

    def _text(self, obj: Any, owner: Serializer | None = None) -> bytes:
        """The JSON text of ``obj``; errors name ``owner`` (a compressed form) or this one."""
        owner = owner or self
        name = owner.name
        tree = obj if json_codec.is_plain(obj, name) else json_codec.encode(obj, name)
        try:
            if self._orjson is not None:
                data: bytes = self._orjson.dumps(tree)
                return data
            return _json.to_json(tree)
        except Exception as exc:  # a str holding a lone surrogate, say
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise owner._cannot_encode(obj, Exception(reason)) from None

    def dumps(self, obj: Any) -> list[Buffer]:
        return [self._text(obj)]

    def _parse(self, data: Buffer, owner: Serializer | None = None) -> Any:
        """The value of JSON text ``data``; errors name ``owner`` or this serializer."""
        owner = owner or self
        text = bytes(data) if isinstance(data, memoryview) else data
        try:
            # No "$" (and no escaped one) means no tag: the fast Rust parser, no hook.
            if text.find(b"$") < 0 and (text.find(b"\\") < 0 or text.find(b"\\u0024") < 0):
                try:
                    if self._orjson is not None:
                        return self._orjson.loads(text)
                    return _json.from_json(text)
                except ValueError as exc:
                    if "recursion" not in str(exc).lower():
                        raise
                    # deeper than the Rust parser's limit: the standard library's is larger
            return json.loads(text, object_pairs_hook=json_codec.decode_pairs)
        except RecursionError:
            raise owner._cannot_decode(
                Exception("it nests deeper than this interpreter's recursion limit")
            ) from None
        except Exception as exc:
            raise owner._cannot_decode(exc) from None

    def loads(self, segments: Sequence[Buffer]) -> Any:
        return self._parse(_joined(segments))


# -- compression ----------------------------------------------------------------------


def _compress(lib: str, level: int, data: bytes) -> bytes:
    """``data`` compressed by ``lib``; every format says its uncompressed length."""
    if lib == "zstd":
        import zstandard

        # A zstd frame declares its content size in its own header.
        compressed: bytes = zstandard.ZstdCompressor(level=level).compress(data)
        return compressed
    size = _SIZE.pack(len(data))
    if lib == "lzma":
        import lzma

        return size + lzma.compress(data, format=lzma.FORMAT_XZ, preset=level)
    if lib == "bz2":
        import bz2

        return size + bz2.compress(data, compresslevel=level)
    import zlib

    return size + zlib.compress(data, level)


class _BoundedStream:
    """A read-only stream that refuses to yield more than ``limit`` bytes in all."""

    __slots__ = ("_left", "_stream")

    def __init__(self, stream: Any, limit: int) -> None:
        self._stream = stream
        self._left = limit

    def _take(self, n: int) -> int:
        if n < 0 or n > self._left:
            raise ValueError("the payload inflates past the size it declares")
        return n

    def read(self, n: int = -1) -> bytes:
        data: bytes = self._stream.read(self._take(n))
        self._left -= len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        got: int = self._stream.readinto(view[: self._take(len(view))])
        self._left -= got
        return got

    def readline(self) -> bytes:
        raise ValueError("text-protocol pickles are not produced by this serializer")


class _Inflater:
    """A stream over an lzma, bz2 or zlib payload, decompressed only as it is read.

    Each read asks the decompressor for at most the bytes requested
    (``max_length``), so memory follows what the reader really consumes, and a
    stream that inflates past the length it declares fails at that point.
    """

    __slots__ = ("_decompressor", "_input", "_zlib")

    def __init__(self, lib: str, data: memoryview) -> None:
        if lib == "lzma":
            import lzma

            # The dictionary the stream's header asks for is allocated up front: bounded
            # to what the largest preset (9, a 64 MiB dictionary) needs.
            self._decompressor: Any = lzma.LZMADecompressor(
                format=lzma.FORMAT_XZ, memlimit=_LZMA_MEMLIMIT
            )
        elif lib == "bz2":
            import bz2

            self._decompressor = bz2.BZ2Decompressor()
        else:
            import zlib

            self._decompressor = zlib.decompressobj()
        self._zlib = lib == "zlib"
        self._input: Any = data

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            raise ValueError("unbounded reads are refused")
        parts: list[bytes] = []
        want, idle = n, 0
        while want > 0 and not self._decompressor.eof and idle < 2:
            if self._zlib:
                chunk = self._decompressor.decompress(self._input, want)
                self._input = self._decompressor.unconsumed_tail
                if not chunk and not self._input:
                    break
            else:
                if self._input is None and self._decompressor.needs_input:
                    break  # all input given, and the stream wants more: truncated
                chunk = self._decompressor.decompress(
                    b"" if self._input is None else self._input, want
                )
                self._input = None
            idle = 0 if chunk else idle + 1
            parts.append(chunk)
            want -= len(chunk)
        return b"".join(parts)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def readline(self) -> bytes:
        raise ValueError("text-protocol pickles are not produced by this serializer")


def _inflating(lib: str, data: Buffer) -> _BoundedStream:
    """A stream of ``data`` decompressed, bounded by the length the payload declares."""
    view = memoryview(data)
    if lib == "zstd":
        import zstandard

        declared = zstandard.frame_content_size(view)
        if declared < 0:
            raise ValueError("the zstd frame does not declare its decompressed size")
        return _BoundedStream(zstandard.ZstdDecompressor().stream_reader(view), declared)
    if len(view) < _SIZE.size:
        raise ValueError(f"the {lib} payload is shorter than its length prefix")
    (declared,) = _SIZE.unpack_from(view)
    return _BoundedStream(_Inflater(lib, view[_SIZE.size :]), declared)


def _read_all(stream: _BoundedStream) -> bytes:
    parts = []
    while chunk := stream.read(min(_CHUNK, stream._left)):
        parts.append(chunk)
    if stream._left:
        raise ValueError("the payload is shorter than the size it declares")
    if stream._stream.read(1):
        raise ValueError("the payload inflates past the size it declares")
    return b"".join(parts)


class CompressedSerializer(Serializer):
    """A pickle or JSON serializer whose single stream is compressed.

    ``compressionlib`` is one of :data:`COMPRESSIONLIBS`; ``level`` its
    compression level (None: the library's default). The record names both:
    ``pickle+lzma``, ``json+zstd``. Decompression is bounded: every payload
    declares its uncompressed length (a zstd frame's content size, or a
    little-endian u64 before an lzma, bz2 or zlib stream), the stream is
    inflated only as it is read and never past that length, so a small
    record that inflates to gigabytes of junk fails at its first bytes.
    """

    _inner: PickleSerializer | JSONSerializer
    _prefect_type: ClassVar[str]

    def __init__(
        self, inner: PickleSerializer | JSONSerializer, compressionlib: str, level: int | None
    ) -> None:
        lib = _choice("compressionlib", compressionlib, COMPRESSIONLIBS)
        low, high, default = _LEVELS[lib]
        if level is None:
            level = default
        if type(level) is not int or not low <= level <= high:
            raise ConfigurationError(
                f"level for compressionlib {lib!r} must be an integer from {low} to {high}, "
                f"not {level!r}"
            )
        self._inner = inner
        self.compressionlib = lib
        self.level = level
        self.name = f"{inner.name}+{lib}"

    @property
    def configuration(self) -> dict[str, Any]:
        return {
            "type": self._prefect_type,
            "compressionlib": self.compressionlib,
            "level": self.level,
            "serializer": self._inner.configuration,
        }


class CompressedPickleSerializer(CompressedSerializer):
    """Pickle, compressed (zstandard by default): smaller records for compressible values.

    Decoding runs code like ``pickle``; a store that reads ``pickle`` reads
    every compressed pickle too, and the other way round.
    """

    also_reads = _PICKLE_NAMES
    _prefect_type = "compressed/pickle"

    def __init__(
        self, level: int | None = None, compressionlib: str = "zstd", picklelib: str = "cloudpickle"
    ) -> None:
        super().__init__(PickleSerializer(picklelib), compressionlib, level)

    def dumps(self, obj: Any) -> list[Buffer]:
        assert isinstance(self._inner, PickleSerializer)
        return [_compress(self.compressionlib, self.level, self._inner._pickle(obj, owner=self))]

    def loads(self, segments: Sequence[Buffer]) -> Any:
        try:
            # Unpickle from the decompressing stream: memory follows what the pickle
            # really asks for, and never passes the size the (checksummed) payload
            # declares, so a small payload that inflates to gigabytes fails early.
            stream = _inflating(self.compressionlib, _joined(segments))
            return pickle.Unpickler(stream).load()
        except Exception as exc:
            raise self._cannot_decode(exc) from None


class CompressedJSONSerializer(CompressedSerializer):
    """Lossless JSON, compressed (zstandard by default). Code-free, like ``json``."""

    code_free = True
    _prefect_type = "compressed/json"

    def __init__(
        self, level: int | None = None, compressionlib: str = "zstd", jsonlib: str = "json"
    ) -> None:
        super().__init__(JSONSerializer(jsonlib), compressionlib, level)

    def dumps(self, obj: Any) -> list[Buffer]:
        assert isinstance(self._inner, JSONSerializer)
        return [_compress(self.compressionlib, self.level, self._inner._text(obj, self))]

    def loads(self, segments: Sequence[Buffer]) -> Any:
        assert isinstance(self._inner, JSONSerializer)
        try:
            text = _read_all(_inflating(self.compressionlib, _joined(segments)))
        except Exception as exc:
            raise self._cannot_decode(exc) from None
        return self._inner._parse(text, self)


# -- names and configurations ---------------------------------------------------------


def _array_serializer(name: str) -> Serializer:
    """The array, table and dispatching serializers (imported on first use)."""
    from resultstore import array_serializers as arrays

    classes: dict[str, Any] = {
        "npy": arrays.NpySerializer,
        "arrow": arrays.ArrowSerializer,
        "auto": arrays.AutoSerializer,
        "auto-json": arrays.CodeFreeAutoSerializer,
        "auto-strict": arrays.StrictAutoSerializer,
    }
    made: Serializer = classes[name]()
    return made


_AUTO_FALLBACKS = {"pickle": "auto", "json": "auto-json", "none": "auto-strict"}

# Built in beside the entry points: the compressed forms and Prefect's names for them,
# the array and table serializers, and the dispatcher choosing among them.
_BUILTIN: dict[str, Any] = {
    **{
        name: functools.partial(_array_serializer, name)
        for name in ("npy", "arrow", "auto", "auto-json", "auto-strict")
    },
    "compressed/pickle": lambda: CompressedPickleSerializer(compressionlib="lzma"),
    "compressed/json": lambda: CompressedJSONSerializer(compressionlib="lzma"),
    **{
        f"pickle+{lib}": functools.partial(CompressedPickleSerializer, compressionlib=lib)
        for lib in COMPRESSIONLIBS
        if lib != "zstd"  # pickle+zstd is an entry point, as it always was
    },
    **{
        f"json+{lib}": functools.partial(CompressedJSONSerializer, compressionlib=lib)
        for lib in COMPRESSIONLIBS
    },
}

_PREFECT_ENCODERS = {
    "object_encoder": "prefect.serializers.prefect_json_object_encoder",
    "object_decoder": "prefect.serializers.prefect_json_object_decoder",
}
_KEYS: dict[str, frozenset[str]] = {
    "pickle": frozenset({"type", "picklelib", "picklelib_version"}),
    "json": frozenset(
        {"type", "jsonlib", "object_encoder", "object_decoder", "dumps_kwargs", "loads_kwargs"}
    ),
    "compressed": frozenset({"type", "serializer", "compressionlib", "level"}),
    "compressed/pickle": frozenset({"type", "serializer", "compressionlib", "level"}),
    "compressed/json": frozenset({"type", "serializer", "compressionlib", "level"}),
    "auto": frozenset({"type", "fallback"}),
}


def _from_config(config: Mapping[str, Any]) -> Serializer:
    """The serializer a Prefect-style configuration describes; every key is checked."""
    kind = config.get("type")
    if not isinstance(kind, str):
        raise UnknownSerializerError(
            "a serializer configuration needs a 'type': pickle, json, compressed, "
            f"compressed/pickle, compressed/json or a serializer name; got {dict(config)!r}"
        )
    valid = _KEYS.get(kind)
    if valid is None:
        if set(config) == {"type"}:
            return get_serializer(kind)
        raise ConfigurationError(
            f"serializer {kind!r} takes no options in a configuration; "
            f"got {sorted(set(config) - {'type'})}"
        )
    unknown = set(config) - valid
    if unknown:
        raise ConfigurationError(
            f"unknown key(s) {', '.join(map(repr, sorted(unknown)))} in the {kind!r} serializer "
            f"configuration; valid keys: {', '.join(sorted(valid))}"
        )
    if kind == "auto":
        fallback = _choice("fallback", config.get("fallback", "pickle"), tuple(_AUTO_FALLBACKS))
        return get_serializer(_AUTO_FALLBACKS[fallback])
    if kind == "pickle":
        version = config.get("picklelib_version")
        if version is not None and not isinstance(version, str):
            raise ConfigurationError(f"picklelib_version must be a string, not {version!r}")
        return PickleSerializer(config.get("picklelib", "cloudpickle"))
    if kind == "json":
        for key, prefect_default in _PREFECT_ENCODERS.items():
            if config.get(key) not in (None, prefect_default):
                raise ConfigurationError(
                    f"{key}={config[key]!r} is not supported: resultstore never imports code "
                    "named by a configuration; json already keeps datetimes, UUIDs, bytes, "
                    "sets and tuples, and register_json_type() allows your classes"
                )
        for key in ("dumps_kwargs", "loads_kwargs"):
            if config.get(key):
                raise ConfigurationError(
                    f"{key} is not supported: the json record format is fixed so every "
                    "reader decodes it; leave it empty"
                )
        return JSONSerializer(config.get("jsonlib", "json"))
    lib = config.get("compressionlib", "lzma")  # Prefect's default
    if lib == "zstandard":  # the module's name, as a Prefect import path gives it
        lib = "zstd"
    level = config.get("level")
    default_inner = {"compressed/pickle": "pickle", "compressed/json": "json"}.get(kind)
    inner_spec = config.get("serializer", default_inner)
    if inner_spec is None:
        raise ConfigurationError(
            "a 'compressed' serializer configuration needs 'serializer': pickle or json"
        )
    inner = get_serializer(inner_spec)
    wanted = {"compressed/pickle": PickleSerializer, "compressed/json": JSONSerializer}.get(kind)
    if type(inner) not in (PickleSerializer, JSONSerializer) or (
        wanted is not None and type(inner) is not wanted
    ):
        allowed = "pickle or json" if wanted is None else wanted.name
        raise ConfigurationError(
            f"the {kind!r} serializer compresses {allowed}, not {inner.name!r}"
        )
    if isinstance(inner, PickleSerializer):
        return CompressedPickleSerializer(level, lib, inner.picklelib)
    assert isinstance(inner, JSONSerializer)
    return CompressedJSONSerializer(level, lib, inner.jsonlib)


@functools.cache
def _load_serializer_class(name: str) -> type[Serializer]:
    found = discover(SERIALIZER_GROUP).get(name, [])
    if not found:
        raise UnknownSerializerError(
            f"unknown serializer {name!r}; installed serializers: "
            f"{', '.join(sorted(available_serializers()))} (or a configuration such as "
            '{"type": "compressed/pickle", "compressionlib": "bz2"})'
        )
    if len({ep.value for ep in found}) > 1:
        owners = ", ".join(
            sorted(f"{ep.dist.name if ep.dist else '?'} ({ep.value})" for ep in found)
        )
        raise PluginError(f"serializer {name!r} is registered twice: {owners}; uninstall one")
    try:
        cls = found[0].load()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit or a BaseException of its own, too
        raise PluginError(
            f"serializer plugin {dist_name(found[0])} for {name!r} ({found[0].value}) failed "
            f"to import: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            f"; fix or reinstall {dist_name(found[0])}, or uninstall it"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Serializer)):
        raise PluginError(
            f"serializer entry point {name!r} ({found[0].value}) is not a Serializer subclass"
        )
    return cls


def available_serializers() -> dict[str, str]:
    """Installed serializer names, each with the distribution providing it."""
    return {**dict.fromkeys(_BUILTIN, "resultstore"), **providers(SERIALIZER_GROUP)}


def get_serializer(serializer: str | Mapping[str, Any] | Serializer) -> Serializer:
    """Return a serializer for a name, a configuration or an instance.

    A name is a record's serializer name (``"pickle+lzma"``), a plugin's, or
    one of Prefect's (``"compressed/pickle"``); a configuration is a dict or
    its JSON text (``'{"type": "json", "jsonlib": "orjson"}'``). Instances are
    returned as given; a name always gives the same shared instance.
    """
    if isinstance(serializer, Serializer):
        return serializer
    if isinstance(serializer, Mapping):
        return _from_config(serializer)
    if not isinstance(serializer, str):
        raise UnknownSerializerError(
            f"serializer must be a name or a Serializer, not {type(serializer).__name__}"
        )
    if serializer.lstrip().startswith("{"):
        try:
            config = json.loads(serializer)
        except ValueError as exc:
            raise ConfigurationError(
                f"serializer configuration {serializer[:60]!r} is not valid JSON ({exc})"
            ) from None
        if not isinstance(config, dict):
            raise ConfigurationError("a serializer configuration must be a JSON object")
        return _from_config(config)
    return _instance(serializer)


def record_serializer(name: str) -> Serializer:
    """The serializer a record's header names, by name only.

    A record's serializer name is untrusted data: it is looked up among the
    installed names (built-in and entry points) and nothing else. A
    configuration (JSON text), which only settings and code may give, is an
    unknown name here, so a record cannot pick options, nest configurations or
    reach errors meant for settings. Long names are cut short in the message.
    """
    if not name.lstrip().startswith("{"):
        try:
            return _instance(name)
        except UnknownSerializerError:
            pass
    shown = name if len(name) <= 80 else name[:80] + "..."
    raise UnknownSerializerError(
        f"unknown serializer {shown!r}; installed serializers: "
        f"{', '.join(sorted(available_serializers()))}"
    )


@functools.cache
def _instance(name: str) -> Serializer:
    builtin = _BUILTIN.get(name)
    if builtin is not None:
        made: Serializer = builtin()
        return made
    return _load_serializer_class(name)()
