"""``s3://BUCKET/PREFIX`` with ``client="s3fs"``: records as S3 objects, through s3fs's async API.

Key ``a/b`` lives at ``s3://BUCKET/PREFIX/a/b`` (the layout, the ``s3://`` scheme and the
choice of client are in :mod:`resultstore.stores._s3common`). A record up to ``part_size``
is one PUT; a larger one is a multipart upload whose parts are cut from the
record's buffers and sent a few at a time, so memory stays bounded by
``part_size * max_concurrency`` whatever the record's size. S3 makes both
atomic for readers: a GET sees the old object or the new one, never a part.
An upload left unfinished by a killed writer is aborted by ``clean_abandoned``
(``resultstore gc``).

Interface v2 on S3's own terms: ``open(key, start=, end=)`` is one ranged GET (an empty
range is a HEAD), ``stat`` a HEAD, ``read_head`` a HEAD returning the header copy each
write puts in the object's user metadata (see ``_s3common``), versions are ETags (quoted,
as S3 returns them),
``write(if_absent=True)`` sends ``If-None-Match: *`` on the PUT or on the
CompleteMultipartUpload, ``write(if_version=etag)`` sends ``If-Match``, once the
endpoint has shown it honours them (see ``_s3common``); ``delete`` is one DeleteObject
(S3 does not say whether there was an object) and ``delete_many`` DeleteObjects batches
of 1,000.

Credentials and endpoint come from storage options (``key``, ``secret``,
``endpoint_url``, ``client_kwargs``, ... as for ``s3fs.S3FileSystem``) or the
standard AWS environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_PROFILE``, ...); they never appear in the store's URL, repr or errors.
botocore's exceptions are translated into one-line resultstore errors.

botocore and s3fs retry nothing: :class:`~resultstore.ResultStore`'s retry
policy is the one retry loop, bounded by its timeout. A connection attempt
gives up after 5 s (never more than ``RESULTSTORE_TIMEOUT``) and a request
that receives nothing for ``RESULTSTORE_STALL_TIMEOUT`` seconds fails.

Each event loop gets its own s3fs client (aiohttp sessions belong to a loop), kept by
:class:`~resultstore.stores.base.LoopLocal`: closed when the loop shuts down its async
generators (``asyncio.run``, ``anyio.run``, a thread's private loop), by
:meth:`S3Store.aclose`, when the store is dropped, or at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import anyio

from resultstore.errors import (
    AccessDeniedError,
    ConfigurationError,
    ContainerMissingError,
    ResultNotFoundError,
    ResultStoreError,
    StorageError,
    StorageUnavailableError,
    store_error,
)
from resultstore.serializers import Buffer
from resultstore.settings import get_settings
from resultstore.stores._s3common import (
    HEAD_METADATA,
    PROBE_FOLDER,
    BaseS3Store,
    ListingProgress,
    Verdict,
    check_endpoint,
    endpoint_from_environment,
    etag_md5,
    head_metadata,
    judge,
    kept_head,
    listed_size,
    s3_location,
)
from resultstore.stores.base import (
    BytesReader,
    Head,
    Listed,
    LoopLocal,
    Payload,
    RangeReader,
    Reader,
    Stat,
    check_options,
)

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["S3Store", "s3_location"]  # s3_location: from _s3common, kept here

_UNAVAILABLE_CODES = {"500", "502", "503", "504", "SlowDown", "ServiceUnavailable", "InternalError"}
_DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchUpload"}
# Bare HTTP statuses (no S3 error code in the body) that only a server other than S3 sends
# to a GET, PUT or POST: a wrong port, a web server. A HEAD's errors never have a body.
_NOT_S3_STATUSES = {"400", "404", "405", "501"}
# What a refused condition looks like: 412, AWS's 409 for a concurrent conditional write,
# and (AWS) 404 for an If-Match on a key that is gone.
_CONDITION_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_CAS_CODES = _CONDITION_CODES | {"NoSuchKey"}
# What a server that does not know the conditional headers answers to them.
_REFUSED_CONDITION = {"NotImplemented", "501", "InvalidRequest", "InvalidArgument", "400"}
_PROBE_BODY = b"resultstore conditional-write probe"
_CONNECT_TIMEOUT = 5.0  # seconds to open a connection (never above RESULTSTORE_TIMEOUT)
_ABORT_SECONDS = 5.0  # an abandoned multipart upload is aborted within this, or left to gc
# What S3Store sets itself on its s3fs clients: not storage options.
_OWN_FS_ARGUMENTS = {"self", "asynchronous", "loop", "skip_instance_cache", "kwargs"}


@functools.cache
def _s3fs_option_names() -> frozenset[str]:
    """The storage options s3fs takes: ``S3FileSystem``'s own, fsspec's and aiobotocore's.

    s3fs passes its ``**kwargs`` on to fsspec's listings cache and to
    ``aiobotocore.session.AioSession`` (``profile``, ...).
    """
    import inspect

    import aiobotocore.session  # type: ignore[import-untyped]
    import s3fs

    names = set(inspect.signature(s3fs.S3FileSystem.__init__).parameters)
    names |= {"use_listings_cache", "listings_expiry_time", "max_paths"}
    names |= set(inspect.signature(aiobotocore.session.AioSession.__init__).parameters)
    return frozenset(names - _OWN_FS_ARGUMENTS)


def _client_error_code(exc: BaseException) -> str | None:
    """The S3 error code behind ``exc`` (s3fs wraps botocore's ClientError)."""
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            if not code:  # no S3 error in the body (a HEAD, or not an S3 server): the status
                code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return None if code is None else str(code)
        seen = seen.__cause__ or seen.__context__
    return None


def _is_connection_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        name = type(seen).__name__
        if isinstance(seen, (ConnectionError, TimeoutError, asyncio.TimeoutError)) or any(
            word in name
            for word in (
                "Connect",
                "Timeout",
                "ServerDisconnected",
                "ClientOSError",
                # a response body cut short: aiohttp's ClientPayloadError, botocore's
                # IncompleteReadError / ResponseStreamingError
                "Payload",
                "IncompleteRead",
                "ResponseStreaming",
            )
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _parts(buffers: list[Buffer], part_size: int) -> Iterator[bytes]:
    """Cut the buffers into ``part_size`` chunks (the last may be shorter)."""
    pending: list[memoryview] = []
    pending_size = 0
    for buffer in buffers:
        view = memoryview(buffer).cast("B")
        while len(view):
            take = min(len(view), part_size - pending_size)
            pending.append(view[:take])
            pending_size += take
            view = view[take:]
            if pending_size == part_size:
                yield b"".join(pending)
                pending, pending_size = [], 0
    if pending_size:
        yield b"".join(pending)


class _S3Reader(Reader):
    """A GET's body; a connection lost while streaming it is translated like any S3 error."""

    def __init__(
        self, body: Any, store: S3Store, key: str, size: int | None, version: str | None
    ) -> None:
        self._body = body
        self._store = store
        self._key = key
        self.size = size
        self.version = version

    async def _chunk(self, n: int) -> bytes:
        try:
            return bytes(await self._body.read()) if n < 0 else await self._body.read(n)
        except Exception as exc:
            raise self._store._translate(exc, "read", self._key) from exc

    async def read(self, n: int = -1) -> bytes:
        if n < 0:
            return await self._chunk(-1)
        chunks: list[bytes] = []
        while n > 0:
            chunk = await self._chunk(n)
            if not chunk:
                break
            chunks.append(chunk)
            n -= len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def readinto(self, buffer: memoryview) -> int:
        total = 0
        while total < len(buffer):
            chunk = await self._chunk(min(len(buffer) - total, 1 << 20))
            if not chunk:
                break
            buffer[total : total + len(chunk)] = chunk
            total += len(chunk)
        return total

    async def aclose(self) -> None:
        self._body.close()


class _Refused(Exception):
    """An S3 error code the caller asked to handle itself (a condition, a range)."""

    def __init__(self, code: str, exc: BaseException) -> None:
        super().__init__(code)
        self.code = code
        self.exc = exc


def _content_range_total(value: str | None) -> int | None:
    """The whole object's size from a ``Content-Range: bytes a-b/total`` header."""
    total = (value or "").rpartition("/")[2]
    return int(total) if total.isdigit() else None


class S3Store(BaseS3Store):
    """Records stored as objects under a bucket and prefix, moved by s3fs."""

    client_name = "s3fs"

    def __init__(
        self,
        url: str,
        *,
        part_size: int = 16 * 1024 * 1024,
        max_concurrency: int = 4,
        client: object = None,
        **options: Any,
    ) -> None:
        self.bucket, self.prefix = s3_location(url, "s3", part_size)
        base = f"s3://{self.bucket}"
        super().__init__(f"{base}/{self.prefix}" if self.prefix else base)
        if client not in (None, "s3fs"):
            raise ConfigurationError(
                f"S3Store is the s3fs client of s3://, not client={client!r}; "
                "open s3:// URLs with resolve_store() to choose the client",
                url=self.url,
            )
        self.part_size = part_size
        self.max_concurrency = max(1, max_concurrency)
        check_options(
            self.url, options, {"part_size", "max_concurrency", "client", *_s3fs_option_names()}
        )
        endpoint = check_endpoint(
            (options.get("client_kwargs") or {}).get("endpoint_url"), "client_kwargs.endpoint_url"
        ) or check_endpoint(options.get("endpoint_url"), "storage option endpoint_url")
        self.endpoint = endpoint or endpoint_from_environment()[0] or "aws"
        settings = get_settings()
        config = dict(options.pop("config_kwargs", None) or {})
        # Our own xxh3 checksum covers every record; botocore's CRC on top costs CPU only.
        config.setdefault("request_checksum_calculation", "when_required")
        config.setdefault("response_checksum_validation", "when_required")
        config.setdefault("connect_timeout", min(_CONNECT_TIMEOUT, settings.timeout))
        config.setdefault("read_timeout", settings.stall_timeout)
        # One attempt per call: ResultStore's policy is the only retry loop.
        config.setdefault("retries", {"total_max_attempts": 1, "mode": "standard"})
        self._options = {"config_kwargs": config, **options}
        self._bucket_exists = False
        # One s3fs client per event loop; a store dropped without aclose() still closes them.
        self._clients: LoopLocal[Any] = LoopLocal(
            functools.partial(_open_fs, self._options), _close_fs
        )

    def __repr__(self) -> str:
        return f"S3Store({self.url!r})"

    async def _fs(self) -> Any:
        """The s3fs client of the running event loop (aiohttp sessions are per loop)."""
        return await self._clients.get()

    def _not_s3(self, where: str, code: str, key: str) -> StorageError:
        return StorageError(
            f"cannot {where}: {self.endpoint} is not an S3 endpoint (it answered HTTP {code} "
            "without an S3 error code); check the endpoint URL (AWS_ENDPOINT_URL or storage "
            "options) and its port",
            key=key,
            url=self.url,
        )

    def _translate(
        self, exc: BaseException, action: str, key: str, *, head: bool = False
    ) -> ResultStoreError:
        code = _client_error_code(exc)
        where = f"{action} key {key!r} in {self.url}"
        if code == "NoSuchBucket":
            return ContainerMissingError(
                f"cannot {where}: bucket {self.bucket!r} does not exist; create it or fix the URL",
                key=key,
                url=self.url,
            )
        if code in _NOT_S3_STATUSES and not head:
            return self._not_s3(where, code, key)
        if code in _MISSING_CODES:
            return self.not_found(key)
        if code in _DENIED_CODES:
            return AccessDeniedError(
                f"cannot {where}: access denied ({code}); check the credentials "
                "(storage options or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE)",
                key=key,
                url=self.url,
            )
        if code in _UNAVAILABLE_CODES or (code is None and _is_connection_failure(exc)):
            reason = code or type(exc).__name__
            return StorageUnavailableError(
                f"cannot {where}: the S3 endpoint is unavailable ({reason}); "
                "check the endpoint URL (AWS_ENDPOINT_URL or storage options) and the network",
                key=key,
                url=self.url,
            )
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return StorageError(
            f"cannot {where}: {code or type(exc).__name__}: {detail}", key=key, url=self.url
        )

    async def _call(
        self,
        method: str,
        action: str,
        key: str,
        *,
        refused: frozenset[str] | set[str] = frozenset(),
        **kwargs: Any,
    ) -> Any:
        """One S3 request; an error whose code is in ``refused`` raises :class:`_Refused`."""
        try:
            fs = await self._fs()
            return await fs._call_s3(method, Bucket=self.bucket, **kwargs)
        except ResultStoreError:
            raise
        except Exception as exc:
            code = _client_error_code(exc)
            if code is not None and code in refused:
                raise _Refused(code, exc) from None
            raise self._translate(exc, action, key, head=method.startswith("head")) from exc

    # -- writing -------------------------------------------------------------------------

    def _condition_failed(self, key: str, code: str, if_version: str | None) -> ResultStoreError:
        """The error of a write whose condition S3 refused with ``code``."""
        if if_version is not None:
            return self.conflict_error(key, if_version)
        if code in ("ConditionalRequestConflict", "409"):
            return self.conditional_in_progress(key)
        return self.exists_error(key)

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str | None:
        name = self._object(key)
        condition: dict[str, str] = {}
        if if_absent:
            condition["IfNoneMatch"] = "*"
        elif if_version is not None:
            condition["IfMatch"] = if_version
        refused = (_CONDITION_CODES if if_absent else _CAS_CODES) if condition else set()
        multipart = payload.size > self.part_size
        if condition:
            await self._require(key, if_absent=if_absent, multipart=multipart)
        metadata = head_metadata(payload)  # the header's copy, in the same request
        extra: dict[str, Any] = {} if metadata is None else {"Metadata": metadata}
        if not multipart:
            try:
                done = await self._call(
                    "put_object",
                    "write",
                    key,
                    refused=refused,
                    Key=name,
                    Body=payload.join(),
                    **condition,
                    **extra,
                )
            except _Refused as refusal:
                raise self._condition_failed(key, refusal.code, if_version) from None
            return _etag(done)
        return await self._write_multipart(
            key, name, payload, condition, refused, if_version, extra
        )

    async def _write_multipart(
        self,
        key: str,
        name: str,
        payload: Payload,
        condition: dict[str, str],
        refused: frozenset[str] | set[str],
        if_version: str | None,
        extra: dict[str, Any],
    ) -> str | None:
        # The object's metadata is set when the upload is created, and lands with it.
        upload = await self._call("create_multipart_upload", "write", key, Key=name, **extra)
        upload_id = upload["UploadId"]
        etags: dict[int, str] = {}
        limiter = anyio.CapacityLimiter(self.max_concurrency)

        async def send(number: int, body: bytes) -> None:
            try:
                done = await self._call(
                    "upload_part",
                    "write",
                    key,
                    Key=name,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=body,
                )
                etags[number] = done["ETag"]
            finally:
                limiter.release_on_behalf_of(number)

        try:
            try:
                async with anyio.create_task_group() as tg:
                    for number, body in enumerate(_parts(payload.buffers, self.part_size), 1):
                        await limiter.acquire_on_behalf_of(number)
                        tg.start_soon(send, number, body)
            except BaseExceptionGroup as group:
                raise group.exceptions[0] from None
            try:
                done = await self._call(
                    "complete_multipart_upload",
                    "write",
                    key,
                    refused=refused,
                    Key=name,
                    UploadId=upload_id,
                    MultipartUpload={
                        "Parts": [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
                    },
                    **condition,
                )
            except _Refused as refusal:
                raise self._condition_failed(key, refusal.code, if_version) from None
        except BaseException:
            # Shielded from cancellation (a timeout, say) but bounded: gc aborts the rest.
            await self._abort_upload(key, name, upload_id)
            raise
        return _etag(done)

    async def _abort_upload(self, key: str, name: str, upload_id: str) -> None:
        with anyio.move_on_after(_ABORT_SECONDS, shield=True):
            with contextlib.suppress(ResultStoreError):
                await self._call(
                    "abort_multipart_upload", "write", key, Key=name, UploadId=upload_id
                )

    # -- reading -------------------------------------------------------------------------

    async def open(self, key: str, *, start: int = 0, end: int | None = None) -> Reader:
        start = max(0, start)
        if end is not None and end <= start:  # nothing to fetch: a HEAD says size and version
            return await self._empty(key)
        ranged = start > 0 or end is not None
        request: dict[str, Any] = {"Key": self._object(key)}
        if ranged:
            request["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            response = await self._call(
                "get_object", "read", key, refused={"InvalidRange", "416"}, **request
            )
        except _Refused:  # the range starts at or after the end: nothing to read
            return await self._empty(key)
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        partial = ranged and status == 206
        size = (
            _content_range_total(response.get("ContentRange"))
            if partial
            else response.get("ContentLength")
        )
        reader = _S3Reader(response["Body"], self, key, size, response.get("ETag"))
        if ranged and not partial:  # the server sent the whole object: cut the range
            return RangeReader(reader, start, end)
        return reader

    async def _empty(self, key: str) -> Reader:
        stat = await self.stat(key)
        reader = BytesReader(b"", version=stat.version)
        reader.size = stat.size
        return reader

    async def _head(self, key: str, action: str) -> Any:
        """One HEAD of ``key``'s object; ``self.not_found(key)`` if there is none."""
        try:
            return await self._call(
                "head_object",
                action,
                key,
                refused={"404", "NoSuchKey", "NotFound"},
                Key=self._object(key),
            )
        except _Refused:
            # A HEAD has no error body: its 404 means no such key, no such bucket, or no S3.
            await self._check_bucket(action, key)
            raise self.not_found(key) from None

    async def stat(self, key: str) -> Stat:
        head = await self._head(key, "check")
        return Stat(int(head.get("ContentLength") or 0), head.get("ETag"))

    async def read_head(self, key: str) -> Head | None:
        """The header copy in the object's user metadata, with its size and ETag: one HEAD."""
        head = await self._head(key, "read")
        metadata = head.get("Metadata")
        data = kept_head(metadata.get(HEAD_METADATA) if isinstance(metadata, dict) else None)
        if data is None:
            return None
        return Head(data, int(head.get("ContentLength") or 0), head.get("ETag"))

    async def exists(self, key: str) -> bool:
        try:
            await self.stat(key)
        except ResultNotFoundError:
            return False
        return True

    async def _check_bucket(self, action: str, key: str) -> None:
        """Raise if the bucket does not exist or the endpoint is not S3; checked once."""
        if self._bucket_exists:
            return
        # A GET, whose errors have a body (a HEAD's 404 says nothing); without
        # s3:ListBucket permission the bucket is there, the key is not.
        with contextlib.suppress(AccessDeniedError):
            await self._call(
                "list_objects_v2",
                action,
                key,
                Prefix=self._object(PROBE_FOLDER) + "/",
                MaxKeys=1,
            )
        self._bucket_exists = True

    # -- deleting and listing ------------------------------------------------------------

    async def delete(self, key: str) -> None:
        # One request: S3 answers 204 whether or not there was an object.
        await self._call("delete_object", "delete", key, Key=self._object(key))
        return None

    async def delete_many(self, keys: Sequence[str]) -> None:
        keys = list(keys)

        async def delete(part: list[str]) -> None:
            done = await self._call(
                "delete_objects",
                "delete",
                part[0],
                Delete={"Objects": [{"Key": self._object(k)} for k in part], "Quiet": True},
            )
            errors = done.get("Errors") or []
            if errors:
                raise self._batch_error(errors, len(part))

        await self._delete_in_parts(keys, delete)

    def _batch_error(self, errors: list[dict[str, Any]], total: int) -> ResultStoreError:
        """The first per-key error of a DeleteObjects answer, in one line, counting the rest."""
        base = f"{self.prefix}/" if self.prefix else ""
        first = errors[0]
        key = str(first.get("Key", ""))[len(base) :]
        code = str(first.get("Code") or "error")
        kind: type[StorageError] = StorageError
        if code in _DENIED_CODES:
            kind = AccessDeniedError
        elif code in _UNAVAILABLE_CODES:
            kind = StorageUnavailableError
        more = f"; {len(errors) - 1} more of the {total} keys failed too" if len(errors) > 1 else ""
        why = f"{code}: {first.get('Message') or 'refused'}"
        return store_error(kind, "delete", key, self.url, why + more)

    async def list_pages(self, prefix: str = "") -> AsyncIterator[list[str]]:
        base = f"{self.prefix}/" if self.prefix else ""
        request: dict[str, Any] = {"Prefix": base + prefix}
        progress = ListingProgress(self, base, prefix)
        while True:
            page = await self._call("list_objects_v2", "list", prefix or "*", **request)
            keys = progress.keys([item.get("Key") for item in page.get("Contents", [])])
            if keys := [key for key in keys if self._listed(key)]:
                yield keys
            if not page.get("IsTruncated"):
                return
            request["ContinuationToken"] = progress.token(page.get("NextContinuationToken"))

    async def list_details(
        self, prefix: str = "", *, start_after: str | None = None
    ) -> AsyncIterator[list[Listed]]:
        """ListObjectsV2 pages with each object's size and MD5 (from its ETag), in key
        order, starting after ``start_after`` on the server (``StartAfter``)."""
        base = f"{self.prefix}/" if self.prefix else ""
        request: dict[str, Any] = {"Prefix": base + prefix}
        if start_after is not None:
            request["StartAfter"] = base + start_after
        progress = ListingProgress(self, base, prefix, start_after)
        while True:
            page = await self._call("list_objects_v2", "list", prefix or "*", **request)
            items = page.get("Contents", [])
            keys = progress.keys([item.get("Key") for item in items])
            found = [
                Listed(key, listed_size(item.get("Size")), etag_md5(item.get("ETag")))
                for key, item in zip(keys, items, strict=True)
                if self._listed(key)
            ]
            if found:
                yield found
            if not page.get("IsTruncated"):
                return
            request["ContinuationToken"] = progress.token(page.get("NextContinuationToken"))

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        async for page in self.list_pages(prefix):
            for key in page:
                yield key

    # -- the conditional-write probe (see _s3common) -------------------------------------

    async def _probe_request(
        self, name: str, key: str, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        condition = {"IfNoneMatch": "*"} if if_none_match else {}
        if if_match is not None:
            condition["IfMatch"] = if_match
        try:
            await self._call(
                "put_object",
                "write",
                key,
                refused=_CONDITION_CODES | _REFUSED_CONDITION,
                Key=name,
                Body=_PROBE_BODY,
                **condition,
            )
        except _Refused as refusal:
            if refusal.code in _CONDITION_CODES:
                return "precondition"
            return f"rejected {refusal.code}"
        return "ok"

    async def _probe_cleanup(self, name: str, key: str) -> None:
        with anyio.move_on_after(_ABORT_SECONDS, shield=True):
            with contextlib.suppress(ResultStoreError):
                await self._call("delete_object", "write", key, Key=name)

    async def _probe_multipart(self, name: str, key: str) -> Verdict:
        """Complete an upload over an existing probe object, create-only, then with a wrong
        If-Match: both must be refused."""
        await self._call("put_object", "write", key, Key=name, Body=_PROBE_BODY)
        upload_id: str | None = None
        try:
            upload = await self._call("create_multipart_upload", "write", key, Key=name)
            upload_id = upload["UploadId"]
            part = await self._call(
                "upload_part",
                "write",
                key,
                Key=name,
                UploadId=upload_id,
                PartNumber=1,
                Body=_PROBE_BODY,
            )
            parts = {"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]}
            outcomes = []
            for condition in ({"IfNoneMatch": "*"}, {"IfMatch": '"0"'}):
                try:
                    await self._call(
                        "complete_multipart_upload",
                        "write",
                        key,
                        refused=_CONDITION_CODES | _REFUSED_CONDITION,
                        Key=name,
                        UploadId=upload_id,
                        MultipartUpload=parts,
                        **condition,
                    )
                except _Refused as refusal:
                    precondition = refusal.code in _CONDITION_CODES
                    outcomes.append("precondition" if precondition else f"rejected {refusal.code}")
                else:
                    outcomes.append("ok")
                    upload_id = None  # completed: nothing left to abort
                    break
        finally:
            if upload_id is not None:
                await self._abort_upload(key, name, upload_id)
            await self._probe_cleanup(name, key)
        create = judge(
            outcomes[0], "If-None-Match", "a create-only CompleteMultipartUpload of a probe object"
        )
        if len(outcomes) < 2:  # the create went through: If-Match was not tried
            return Verdict(create=create, replace=create)
        replace = judge(
            outcomes[1],
            "If-Match",
            "a CompleteMultipartUpload of a probe object with a wrong If-Match",
        )
        return Verdict(create=create, replace=replace)

    # -- the rest ------------------------------------------------------------------------

    async def clean_abandoned(self, older_than: float, *, dry_run: bool = False) -> tuple[int, int]:
        """Abort multipart uploads under the prefix begun over ``older_than`` s ago.

        A writer killed mid-upload leaves its uploaded parts stored (and billed)
        until the upload is aborted; readers never see them.
        """
        base = f"{self.prefix}/" if self.prefix else ""
        cutoff = datetime.datetime.now(datetime.timezone.utc).timestamp() - older_than
        count = size = 0
        request: dict[str, Any] = {"Prefix": base}
        progress = ListingProgress(self, base, "")
        while True:
            page = await self._call("list_multipart_uploads", "clean", base or "*", **request)
            for upload in page.get("Uploads", []):
                initiated = upload.get("Initiated")
                if not isinstance(initiated, datetime.datetime) or initiated.timestamp() > cutoff:
                    continue  # possibly a write still in progress (or of no known age)
                name, upload_id = upload.get("Key"), upload.get("UploadId")
                key = progress.key(name)
                try:
                    stored = await self._uploaded_bytes(key, name, upload_id)
                    if not dry_run:
                        await self._call(
                            "abort_multipart_upload", "clean", key, Key=name, UploadId=upload_id
                        )
                except ResultNotFoundError:
                    continue  # completed or aborted meanwhile
                count, size = count + 1, size + stored
            if not page.get("IsTruncated"):
                return count, size
            request["KeyMarker"], request["UploadIdMarker"] = progress.markers(
                page.get("NextKeyMarker"), page.get("NextUploadIdMarker")
            )

    async def _uploaded_bytes(self, key: str, name: str, upload_id: str) -> int:
        """Bytes held by the parts of an unfinished multipart upload."""
        total = 0
        request: dict[str, Any] = {"Key": name, "UploadId": upload_id}
        progress = ListingProgress(self, name, "", what=key)
        while True:
            page = await self._call("list_parts", "clean", key, **request)
            total += sum(listed_size(part.get("Size")) or 0 for part in page.get("Parts", []))
            if not page.get("IsTruncated"):
                return total
            number = page.get("NextPartNumberMarker")
            valid = type(number) is int and number > 0
            (marker,) = progress.markers(str(number) if valid else None)
            request["PartNumberMarker"] = int(marker)

    async def aclose(self) -> None:
        """Close the s3fs clients of every loop; the store makes new ones on its next use."""
        await self._clients.aclose()


def _etag(response: Any) -> str | None:
    etag = response.get("ETag") if isinstance(response, dict) else None
    return str(etag) if etag else None


async def _open_fs(options: dict[str, Any]) -> Any:
    """A new s3fs client on the running event loop, its aiohttp session open."""
    import s3fs

    fs = s3fs.S3FileSystem(
        asynchronous=True, loop=asyncio.get_running_loop(), skip_instance_cache=True, **options
    )
    fs.retries = 1  # no retry loop of s3fs's own
    if fs.session is None:  # as s3fs would make it, but reading botocore's data files once
        import aiobotocore.session

        fs.session = aiobotocore.session.AioSession(**fs.kwargs)
        fs.session.register_component("data_loader", _data_loader(fs.session))
    await fs.set_session()
    return fs


_loaders: dict[str | None, Any] = {}


def _data_loader(session: Any) -> Any:
    """One botocore data loader per data path, shared by every session of the process.

    A new session reads and parses botocore's JSON models again (S3's service model,
    endpoint rules, partitions: 100-300 ms of CPU per new store here); the loader
    caches what it parsed, and the files are the same for every session. Credentials,
    profiles and configuration stay each session's own.
    """
    from botocore.loaders import create_loader  # type: ignore[import-untyped]

    path = session.get_config_variable("data_path")
    loader = _loaders.get(path)
    if loader is None:
        loader = _loaders.setdefault(path, create_loader(path))
    return loader


async def _close_fs(fs: Any) -> None:
    """Close an s3fs client's connections, on its loop."""
    s3 = getattr(fs, "_s3", None)
    if s3 is not None:
        await s3.close()
