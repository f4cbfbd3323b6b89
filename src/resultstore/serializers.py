"""Serializers turn a value into a list of byte segments and back.

Segments let large values stream without copies: the ``pickle`` serializer
uses pickle protocol 5 with out-of-band buffers, so a 200 MB array becomes a
small pickle stream plus one segment that *is* the array's memory, written as
is and read back into a fresh, writable buffer.

Built-ins: ``pickle`` (cloudpickle, the default), ``json`` (pydantic-aware,
readable from other languages) and ``pickle+zstd`` (compressed). Others are
found through the entry-point group ``resultstore.serializers``.
"""

from __future__ import annotations

import functools
import json
import pickle
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import pydantic_core

from resultstore.errors import PluginError, SerializationError, UnknownSerializerError
from resultstore.plugins import discover, providers

__all__ = [
    "SERIALIZER_GROUP",
    "Buffer",
    "CompressedPickleSerializer",
    "JSONSerializer",
    "PickleSerializer",
    "Serializer",
    "available_serializers",
    "get_serializer",
]

SERIALIZER_GROUP = "resultstore.serializers"

Buffer = bytes | bytearray | memoryview
"""A contiguous block of bytes that can be written without conversion."""


class Serializer(ABC):
    """Encode values to byte segments and decode them back.

    ``dumps`` must raise :class:`SerializationError` naming the value's type
    when it cannot encode it, before anything is written.

    ``code_free`` tells readers whether decoding can run code chosen by the
    bytes' writer (pickle can, JSON cannot). A reader decodes records of a
    serializer that is not code-free only when it is configured to (see
    ``ResultStore(allowed_serializers=...)``), so a plugin serializer is taken to
    run code unless it sets ``code_free = True``. ``also_reads`` names
    serializers whose records a store configured with this one may decode as
    well, because they decode through the same machinery and so carry no more
    risk (``pickle`` and ``pickle+zstd``).
    """

    name: ClassVar[str]
    code_free: ClassVar[bool] = False
    also_reads: ClassVar[frozenset[str]] = frozenset()

    @abstractmethod
    def dumps(self, obj: Any) -> list[Buffer]:
        """Encode ``obj`` into one or more segments."""

    @abstractmethod
    def loads(self, segments: Sequence[Buffer]) -> Any:
        """Decode the segments produced by :meth:`dumps`."""

    def _cannot_encode(self, obj: Any, exc: BaseException) -> SerializationError:
        return SerializationError(
            f"{self.name} serializer cannot encode object of type {type(obj).__name__}: {exc}"
        )

    def _cannot_decode(self, exc: BaseException) -> SerializationError:
        return SerializationError(f"{self.name} serializer cannot decode the payload: {exc}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _raw(buffer: pickle.PickleBuffer) -> Buffer:
    try:
        return buffer.raw()
    except BufferError:  # not contiguous: copy once, rare
        return bytes(buffer)


class PickleSerializer(Serializer):
    """cloudpickle with protocol 5 out-of-band buffers: large arrays are never copied."""

    name = "pickle"
    also_reads = frozenset({"pickle+zstd"})

    def dumps(self, obj: Any) -> list[Buffer]:
        import cloudpickle  # imported on first write: keeps `import resultstore` light

        buffers: list[pickle.PickleBuffer] = []
        try:
            stream = cloudpickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
        except Exception as exc:
            raise self._cannot_encode(obj, exc) from None
        return [stream, *(_raw(b) for b in buffers)]

    def loads(self, segments: Sequence[Buffer]) -> Any:
        try:
            return pickle.loads(segments[0], buffers=segments[1:])
        except Exception as exc:
            raise self._cannot_decode(exc) from None


class CompressedPickleSerializer(Serializer):
    """cloudpickle, compressed with zstandard: smaller records for compressible values."""

    name = "pickle+zstd"
    also_reads = frozenset({"pickle"})

    def __init__(self, level: int = 3) -> None:
        self.level = level

    def dumps(self, obj: Any) -> list[Buffer]:
        import cloudpickle
        import zstandard

        try:
            stream = cloudpickle.dumps(obj, protocol=5)
        except Exception as exc:
            raise self._cannot_encode(obj, exc) from None
        return [zstandard.ZstdCompressor(level=self.level).compress(stream)]

    def loads(self, segments: Sequence[Buffer]) -> Any:
        import zstandard

        try:
            data = b"".join(segments) if len(segments) != 1 else segments[0]
            declared = zstandard.frame_content_size(data)
            if declared < 0:
                raise ValueError("the zstd frame does not declare its decompressed size")
            # Unpickle from the decompressing stream: memory follows what the pickle
            # really asks for, and never passes the size the (checksummed) frame declares,
            # so a small frame that inflates to gigabytes of junk fails at its first bytes.
            stream = _BoundedStream(zstandard.ZstdDecompressor().stream_reader(data), declared)
            return pickle.Unpickler(stream).load()
        except Exception as exc:
            raise self._cannot_decode(exc) from None


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


class JSONSerializer(Serializer):
    """JSON via pydantic: models, dataclasses, datetimes and UUIDs encode; values
    come back as plain JSON types, readable from any language."""

    name = "json"
    code_free = True

    def dumps(self, obj: Any) -> list[Buffer]:
        try:
            return [pydantic_core.to_json(obj)]
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise self._cannot_encode(obj, Exception(reason)) from None

    def loads(self, segments: Sequence[Buffer]) -> Any:
        try:
            data = segments[0] if len(segments) == 1 else b"".join(segments)
            return json.loads(bytes(data) if isinstance(data, memoryview) else data)
        except Exception as exc:
            raise self._cannot_decode(exc) from None


@functools.cache
def _load_serializer_class(name: str) -> type[Serializer]:
    found = discover(SERIALIZER_GROUP).get(name, [])
    if not found:
        raise UnknownSerializerError(
            f"unknown serializer {name!r}; installed serializers: "
            f"{', '.join(sorted(available_serializers()))}"
        )
    if len({ep.value for ep in found}) > 1:
        owners = ", ".join(
            sorted(f"{ep.dist.name if ep.dist else '?'} ({ep.value})" for ep in found)
        )
        raise PluginError(f"serializer {name!r} is registered twice: {owners}; uninstall one")
    cls = found[0].load()
    if not (isinstance(cls, type) and issubclass(cls, Serializer)):
        raise PluginError(
            f"serializer entry point {name!r} ({found[0].value}) is not a Serializer subclass"
        )
    return cls


def available_serializers() -> dict[str, str]:
    """Installed serializer names, each with the distribution providing it."""
    return providers(SERIALIZER_GROUP)


def get_serializer(serializer: str | Serializer) -> Serializer:
    """Return a serializer instance for a name or instance."""
    if isinstance(serializer, Serializer):
        return serializer
    if not isinstance(serializer, str):
        raise UnknownSerializerError(
            f"serializer must be a name or a Serializer, not {type(serializer).__name__}"
        )
    return _instance(serializer)


@functools.cache
def _instance(name: str) -> Serializer:
    return _load_serializer_class(name)()
