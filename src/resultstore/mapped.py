"""Reads that load less than a whole record: memory-mapped records, and some columns of a table.

``ResultStore.read(key, mmap=True)`` (file store only) maps the record file
read-only and decodes from the mapping: an ``npy`` array is a read-only view of
the file's pages (``numpy.frombuffer`` over the map), an ``arrow`` table's
buffers likewise, so a 2 GB array opens without 2 GB of memory. Checksums:
by default (``verify=None`` or ``True``) the payload's xxh3-128 (and, with a
signing key, its SHA-256) is verified when the record is opened, by reading the
file once in 4 MiB chunks through one reused buffer: the cost is one
sequential read of the file (from the page cache if it is there), and no copy
is kept. ``verify=False`` skips that read; it is refused with a signing key
(a signed record is never decoded unverified).

``ResultStore.read(key, columns=[...])`` on an ``arrow`` record reads the
record's header, the IPC footer and the buffers of those columns only, with
ranged opens of the record (any store whose ``open(key, start=, end=)`` is
ranged). The payload checksum covers the whole payload, so such a read cannot
check it: it checks the header (hash, lengths, allowed serializer) and
validates the Arrow data it read in full (offsets, lengths), so damage gives an
error or wrong values in those columns, never an out-of-bounds read. With
``verify=True`` the whole record is read and verified, then the columns are
selected; with a signing key that is required.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import io
import mmap as _mmap
import os
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import xxhash

from resultstore.errors import (
    ConfigurationError,
    SerializationError,
    UnknownSerializerError,
    UnsupportedOperationError,
)
from resultstore.records import (
    HEADER_PROBE,
    HeaderBeyond,
    ResultMetadata,
    ResultRecord,
    _damaged,
    _forged,
    _Header,
    _unsigned,
    read_header,
)
from resultstore.serializers import Buffer, record_serializer
from resultstore.stores.base import BytesReader

if TYPE_CHECKING:
    from resultstore.result_store import ResultStore

__all__ = ["partial_read"]

T = TypeVar("T")
_CHUNK = 4 << 20
_PREFIX_SIZE = 18


def partial_read(
    store: ResultStore,
    key: str,
    *,
    mmap: bool,
    columns: Sequence[str] | None,
    verify: bool | None,
) -> Callable[[], Awaitable[ResultRecord[Any]]]:
    """The one attempt of a memory-mapped or column read of ``key`` (for the retry loop)."""
    if columns is not None:
        if mmap:
            raise ConfigurationError("pass mmap=True or columns=, not both")
        if isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
            raise ConfigurationError(f"columns must be a list of column names, not {columns!r}")
        names = list(columns)
        return lambda: _read_columns(store, key, names, verify)
    return lambda: _read_mapped(store, key, verify)


def _check_signature(store: ResultStore, key: str, header: _Header) -> None:
    """The header's signature, checked as ``read_record`` checks it before the payload."""
    verifier = store._signer
    if verifier is None:
        return
    signature = header.signature
    if signature is None:
        raise _unsigned(key, store.storage_url)
    if not verifier.is_v2(signature) and (
        header.digest is None or not verifier.verify_header(key, header.signed_bytes, signature)
    ):
        raise _forged(key, store.storage_url)


def _decode(store: ResultStore, metadata: ResultMetadata, segments: Sequence[Buffer]) -> Any:
    try:
        return record_serializer(metadata.serializer).loads(segments)
    except (SerializationError, UnknownSerializerError) as exc:
        raise type(exc)(
            f"record {metadata.storage_key!r} in {store.storage_url}: {exc}",
            key=metadata.storage_key,
            url=store.storage_url,
        ) from None


# -- memory-mapped reads ----------------------------------------------------------------


def _hash_file(fd: int, start: int, size: int, sha256: bool) -> tuple[str, str | None]:
    """xxh3-128 (and SHA-256) of ``size`` bytes of ``fd`` from ``start``, through one buffer."""
    digest = xxhash.xxh3_128()
    sha = hashlib.sha256() if sha256 else None
    buffer = bytearray(min(_CHUNK, max(size, 1)))
    view = memoryview(buffer)
    at, end = start, start + size
    while at < end:
        got = os.preadv(fd, [view[: min(len(view), end - at)]], at)
        if got <= 0:
            break
        digest.update(view[:got])
        if sha is not None:
            sha.update(view[:got])
        at += got
    return "xxh3_128:" + digest.hexdigest(), None if sha is None else "sha256:" + sha.hexdigest()


async def _read_mapped(store: ResultStore, key: str, verify: bool | None) -> ResultRecord[Any]:
    from resultstore.stores.file import FileStore

    file_store = store.store
    if not isinstance(file_store, FileStore):
        raise UnsupportedOperationError(
            f"{store.storage_url} cannot memory-map records (mmap=True needs the file store, "
            f"this is {type(file_store).__name__}); read without mmap=True",
            key=key,
            url=store.storage_url,
        )
    if verify is False and store._signer is not None:
        raise ConfigurationError(
            f"verify=False cannot skip the signature check of {key!r}: this store has a signing "
            "key, and signed records are decoded only once verified; leave verify at its default"
        )
    url = store.storage_url
    with store._guard("read", key):
        fd, info = file_store._open_record(key, "read")
        try:
            if info.st_size == 0:
                raise _damaged(key, url, "the record file is empty")
            mapped = _mmap.mmap(fd, 0, access=_mmap.ACCESS_READ)
            whole = memoryview(mapped)
            header, _, _ = await read_header(BytesReader(whole), key, url)
            _check_signature(store, key, header)
            store._check_serializer(header.metadata)
            start = info.st_size - header.metadata.size
            segments: list[Buffer] = []
            at = start
            for length in header.segments:
                segments.append(whole[at : at + length])
                at += length
            signer, signature = store._signer, header.signature
            if (  # v2 signed the payload itself (earlier releases): checked over the map
                signer is not None
                and signature is not None
                and signer.is_v2(signature)
                and not signer.verify_v2(key, header.signed_bytes, segments, signature)
            ):
                raise _forged(key, url)
            if verify is not False:
                checksum, sha = _hash_file(
                    fd, start, header.metadata.size, sha256=header.digest is not None
                )
                if sha is not None and store._signer is not None and sha != header.digest:
                    raise _forged(key, url)
                if checksum != header.checksum:
                    raise _damaged(key, url, "payload checksum mismatch")
        finally:
            os.close(fd)  # the map stays valid without the descriptor
    return ResultRecord(_decode(store, header.metadata, segments), header.metadata)


# -- column reads -----------------------------------------------------------------------


class _RangedFile(io.RawIOBase):
    """A read-only, seekable file over bytes ``[base, base + size)`` of a record.

    Every read is one ranged ``open`` of the record, run on the store's event loop
    from the worker thread pyarrow reads in; ``fetched`` counts the bytes read.
    """

    def __init__(
        self,
        store: ResultStore,
        key: str,
        base: int,
        size: int,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__()
        self._store, self._key, self._base, self._size, self._loop = store, key, base, size, loop
        self._pos = 0
        self.fetched = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        origin = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, origin + offset)
        return self._pos

    def size(self) -> int:
        return self._size

    async def _fetch(self, start: int, buffer: memoryview) -> int:
        reader = await self._store.store.open(
            self._key, start=self._base + start, end=self._base + start + len(buffer)
        )
        try:
            return await reader.readinto(buffer)
        finally:
            await reader.aclose()

    def _wait(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the store's loop and wait for it, at most the store's timeout
        (the operation's own deadline cancels the read; this bounds the worker thread)."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout=self._store.timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer within {self._store.timeout} s") from None

    async def _fetch_bytes(self, start: int, n: int) -> bytes:
        reader = await self._store.store.open(
            self._key, start=self._base + start, end=self._base + start + n
        )
        try:
            return await reader.read(n)
        finally:
            await reader.aclose()

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes from the position: one ranged open, the bytes not copied again."""
        left = self._size - self._pos
        wanted = left if size is None or size < 0 else min(size, left)
        if wanted <= 0:
            return b""
        data = self._wait(self._fetch_bytes(self._pos, wanted))
        self._pos += len(data)
        self.fetched += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        wanted = max(0, min(len(view), self._size - self._pos))
        if wanted == 0:
            return 0
        got = self._wait(self._fetch(self._pos, view[:wanted]))
        self._pos += got
        self.fetched += got
        return got


async def _table_header(store: ResultStore, key: str) -> _Header:
    """The record's verified header, opened for the header alone (as ``read_metadata``)."""
    end = HEADER_PROBE
    while True:
        reader = await store.store.open(key, end=end)
        try:
            header, _, _ = await read_header(reader, key, store.storage_url, end)
            return header
        except HeaderBeyond as beyond:
            end = beyond.end
        finally:
            await reader.aclose()


def _select(store: ResultStore, key: str, value: Any, columns: list[str]) -> Any:
    """Only ``columns`` of a table or DataFrame read whole."""
    try:
        if hasattr(value, "select") and hasattr(value, "schema"):  # pyarrow.Table
            return value.select(columns)
        return value[columns]  # pandas and polars DataFrames
    except Exception as exc:
        raise ConfigurationError(
            f"record {key!r} in {store.storage_url} has no column(s) {columns!r} ({exc})",
            key=key,
            url=store.storage_url,
        ) from None


async def _read_columns(
    store: ResultStore, key: str, columns: list[str], verify: bool | None
) -> ResultRecord[Any]:
    from resultstore.array_serializers import ArrowSerializer, _pyarrow

    url = store.storage_url
    if verify:
        record = await store._read_once(key)
        if record.metadata.serializer != "arrow":
            raise _not_a_table(key, url, record.metadata.serializer)
        return ResultRecord(_select(store, key, record.result, columns), record.metadata)
    if store._signer is not None:
        raise ConfigurationError(
            f"columns= cannot verify the signature of {key!r} without reading the whole "
            "record (the signed SHA-256 covers all of it); pass verify=True to read and "
            "verify it whole, then select the columns",
            key=key,
            url=url,
        )
    with store._guard("read", key):
        header = await _table_header(store, key)
        metadata = header.metadata
        if metadata.serializer != "arrow":
            raise _not_a_table(key, url, metadata.serializer)
        store._check_serializer(metadata)
        stored = (await store.store.stat(key)).size
        base = stored - metadata.size
        pa = _pyarrow()
        loop = asyncio.get_running_loop()
        source = _RangedFile(store, key, base, metadata.size, loop)

        def load() -> Any:
            with pa.PythonFile(source, mode="r") as file:
                schema = pa.ipc.open_file(file).schema
                missing = [c for c in columns if c not in schema.names]
                if missing:
                    raise ConfigurationError(
                        f"record {key!r} in {url} has no column(s) {missing!r}; its columns: "
                        f"{', '.join(schema.names)}",
                        key=key,
                        url=url,
                    )
                wanted = [*columns, *_index_columns(schema, columns)]
                fields = [schema.get_field_index(c) for c in wanted]
                options = pa.ipc.IpcReadOptions(included_fields=fields)
                return pa.ipc.open_file(file, options=options).read_all()

        try:
            table = await loop.run_in_executor(None, load)
        except (ConfigurationError, SerializationError):
            raise
        except Exception as exc:
            raise _damaged(key, url, f"its Arrow data cannot be read ({exc})") from None
    value = ArrowSerializer().restore(
        table.select([*columns, *_index_columns(table.schema, columns)])
    )
    return ResultRecord(value, metadata)


def _index_columns(schema: Any, columns: list[str]) -> list[str]:
    """A pandas frame's stored index columns (read along with the columns asked for)."""
    try:
        stored = (schema.pandas_metadata or {}).get("index_columns", [])
    except Exception:  # not JSON: restore() reports a damaged frame
        return []
    return [c for c in stored if isinstance(c, str) and c in schema.names and c not in columns]


def _not_a_table(key: str, url: str, serializer: str) -> ConfigurationError:
    return ConfigurationError(
        f"columns= reads tables: record {key!r} in {url} was written with {serializer!r}, "
        "not 'arrow'; read it without columns=",
        key=key,
        url=url,
    )
