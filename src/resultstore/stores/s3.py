"""``s3://BUCKET/PREFIX``: records as S3 objects, through s3fs's async API.

Key ``a/b`` lives at ``s3://BUCKET/PREFIX/a/b``. A record up to ``part_size``
is one PUT; a larger one is a multipart upload whose parts are cut from the
record's buffers and sent a few at a time, so memory stays bounded by
``part_size * max_concurrency`` whatever the record's size. S3 makes both
atomic for readers: a GET sees the old object or the new one, never a part.
An upload left unfinished by a killed writer is aborted by ``clean_abandoned``
(``resultstore gc``).

Credentials and endpoint come from storage options (``key``, ``secret``,
``endpoint_url``, ``client_kwargs``, ... as for ``s3fs.S3FileSystem``) or the
standard AWS environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_PROFILE``, ...); they never appear in the store's URL, repr or errors.
botocore's exceptions are translated into one-line resultstore errors.

botocore and s3fs retry nothing: :class:`~resultstore.ResultStore`'s retry
policy is the one retry loop, bounded by its timeout. A connection attempt
gives up after 5 s (never more than ``RESULTSTORE_TIMEOUT``) and a request
that receives nothing for ``RESULTSTORE_STALL_TIMEOUT`` seconds fails.

Each event loop gets its own s3fs client (aiohttp sessions belong to a loop),
closed when the loop shuts down its async generators (``asyncio.run``,
``anyio.run``), by :meth:`S3Store.aclose`, when the store is dropped, or at exit.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import datetime
import functools
import re
import sys
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import anyio

from resultstore.errors import (
    AccessDeniedError,
    ConfigurationError,
    ContainerMissingError,
    ResultNotFoundError,
    ResultStoreError,
    StorageError,
    StorageUnavailableError,
)
from resultstore.serializers import Buffer
from resultstore.settings import get_settings
from resultstore.stores.base import Payload, RangeReader, Reader, Store, check_options
from states.concurrency import in_async_context

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["S3Store", "s3_location"]

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_MIN_PART = 5 * 1024 * 1024
_UNAVAILABLE_CODES = {"500", "502", "503", "504", "SlowDown", "ServiceUnavailable", "InternalError"}
_DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden"}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound", "NoSuchUpload"}
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


def s3_location(url: str, scheme: str, part_size: int) -> tuple[str, str]:
    """The (bucket, prefix) of an S3 store URL, checked; shared by the S3 stores."""
    parts = urlsplit(url)
    if parts.scheme != scheme:
        raise ConfigurationError(f"not an {scheme}:// URL: {url!r}", url=url)
    if "@" in parts.netloc or parts.query or parts.fragment:
        raise ConfigurationError(
            f"{scheme} URLs take the form {scheme}://bucket/prefix; pass credentials as "
            "storage options or AWS_* environment variables, never in the URL"
        )
    if not _BUCKET.match(parts.netloc):
        raise ConfigurationError(
            f"invalid S3 bucket name {parts.netloc!r} in {url!r}: use 3-63 lowercase letters, "
            "digits, dots or dashes",
            url=url,
        )
    if part_size < _MIN_PART:
        raise ConfigurationError(f"part_size must be at least {_MIN_PART} bytes (S3's minimum)")
    return parts.netloc, parts.path.strip("/")


def _client_error_code(exc: BaseException) -> str | None:
    """The S3 error code behind ``exc`` (s3fs wraps botocore's ClientError)."""
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            if code is None:
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

    def __init__(self, body: Any, store: S3Store, key: str) -> None:
        self._body = body
        self._store = store
        self._key = key

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


class S3Store(Store):
    """Records stored as objects under a bucket and prefix."""

    interface_version = 2

    def __init__(
        self,
        url: str,
        *,
        part_size: int = 16 * 1024 * 1024,
        max_concurrency: int = 4,
        **options: Any,
    ) -> None:
        self.bucket, self.prefix = s3_location(url, "s3", part_size)
        base = f"s3://{self.bucket}"
        super().__init__(f"{base}/{self.prefix}" if self.prefix else base)
        self.part_size = part_size
        self.max_concurrency = max(1, max_concurrency)
        check_options(self.url, options, {"part_size", "max_concurrency", *_s3fs_option_names()})
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
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Client] = (
            weakref.WeakKeyDictionary()
        )
        _open_stores.add(self)
        # A store dropped without aclose() still closes its connections (at exit, the
        # atexit hook below does it, before the loops go).
        weakref.finalize(self, _close_clients, self._clients).atexit = False

    def __repr__(self) -> str:
        return f"S3Store({self.url!r})"

    async def _fs(self) -> Any:
        """The s3fs client of the running event loop (aiohttp sessions are per loop)."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            import s3fs

            fs = s3fs.S3FileSystem(
                asynchronous=True, loop=loop, skip_instance_cache=True, **self._options
            )
            fs.retries = 1  # no retry loop of s3fs's own
            await fs.set_session()
            if self._clients.get(loop) is not None:  # another task made one meanwhile
                await fs._s3.close()
                return self._clients[loop].fs
            client = self._clients[loop] = _Client(fs, self._clients, loop)
            await client.start()
        return client.fs

    def _object(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _translate(self, exc: BaseException, action: str, key: str) -> ResultStoreError:
        code = _client_error_code(exc)
        where = f"{action} key {key!r} in {self.url}"
        if code == "NoSuchBucket":
            return ContainerMissingError(
                f"cannot {where}: bucket {self.bucket!r} does not exist; create it or fix the URL",
                key=key,
                url=self.url,
            )
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

    async def _call(self, method: str, action: str, key: str, **kwargs: Any) -> Any:
        try:
            fs = await self._fs()
            return await fs._call_s3(method, Bucket=self.bucket, **kwargs)
        except ResultStoreError:
            raise
        except Exception as exc:
            raise self._translate(exc, action, key) from exc

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str | None:
        if if_absent or if_version is not None:
            raise self.unsupported("conditional writes")
        name = self._object(key)
        if payload.size <= self.part_size:
            await self._call("put_object", "write", key, Key=name, Body=payload.join())
            return None
        upload = await self._call("create_multipart_upload", "write", key, Key=name)
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
            await self._call(
                "complete_multipart_upload",
                "write",
                key,
                Key=name,
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
                },
            )
        except BaseException:
            # Shielded from cancellation (a timeout, say) but bounded: gc aborts the rest.
            with anyio.move_on_after(_ABORT_SECONDS, shield=True):
                with contextlib.suppress(ResultStoreError):
                    await self._call(
                        "abort_multipart_upload", "write", key, Key=name, UploadId=upload_id
                    )
            raise
        return None

    async def open(self, key: str, *, start: int = 0, end: int | None = None) -> Reader:
        reader = await self._open_whole(key)
        return reader if start == 0 and end is None else RangeReader(reader, start, end)

    async def _open_whole(self, key: str) -> Reader:
        response = await self._call("get_object", "read", key, Key=self._object(key))
        return _S3Reader(response["Body"], self, key)

    async def exists(self, key: str) -> bool:
        try:
            await self._call("head_object", "check", key, Key=self._object(key))
        except ResultNotFoundError:
            # A HEAD has no error body: its 404 means no such key or no such bucket.
            await self._check_bucket("check", key)
            return False
        return True

    async def _check_bucket(self, action: str, key: str) -> None:
        """Raise if the bucket does not exist; checked once, then remembered."""
        if self._bucket_exists:
            return
        try:
            await self._call("head_bucket", action, key)
        except ResultNotFoundError:
            raise ContainerMissingError(
                f"cannot {action} key {key!r} in {self.url}: bucket {self.bucket!r} does not "
                "exist; create it or fix the URL",
                key=key,
                url=self.url,
            ) from None
        except AccessDeniedError:
            pass  # no s3:ListBucket permission: the bucket is there, the key is not
        self._bucket_exists = True

    async def delete(self, key: str) -> bool:
        if not await self.exists(key):
            return False
        await self._call("delete_object", "delete", key, Key=self._object(key))
        return True

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        request: dict[str, Any] = {"Prefix": base + prefix}
        while True:
            page = await self._call("list_objects_v2", "list", prefix or "*", **request)
            for item in page.get("Contents", []):
                yield item["Key"][len(base) :]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            request["ContinuationToken"] = token

    async def clean_abandoned(self, older_than: float, *, dry_run: bool = False) -> tuple[int, int]:
        """Abort multipart uploads under the prefix begun over ``older_than`` s ago.

        A writer killed mid-upload leaves its uploaded parts stored (and billed)
        until the upload is aborted; readers never see them.
        """
        base = f"{self.prefix}/" if self.prefix else ""
        cutoff = datetime.datetime.now(datetime.timezone.utc).timestamp() - older_than
        count = size = 0
        request: dict[str, Any] = {"Prefix": base}
        while True:
            page = await self._call("list_multipart_uploads", "clean", base or "*", **request)
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() > cutoff:
                    continue  # possibly a write still in progress
                key, name, upload_id = upload["Key"][len(base) :], upload["Key"], upload["UploadId"]
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
            request["KeyMarker"] = page["NextKeyMarker"]
            request["UploadIdMarker"] = page["NextUploadIdMarker"]

    async def _uploaded_bytes(self, key: str, name: str, upload_id: str) -> int:
        """Bytes held by the parts of an unfinished multipart upload."""
        total = 0
        request: dict[str, Any] = {"Key": name, "UploadId": upload_id}
        while True:
            page = await self._call("list_parts", "clean", key, **request)
            total += sum(int(part["Size"]) for part in page.get("Parts", []))
            if not page.get("IsTruncated"):
                return total
            request["PartNumberMarker"] = page["NextPartNumberMarker"]

    async def aclose(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        client = self._clients.pop(loop, None)
        if client is not None:
            await client.close()


class _Client:
    """One loop's s3fs client, closed when that loop shuts down its async generators.

    ``asyncio.run``, ``anyio.run`` and ``asyncio.Runner`` call
    ``loop.shutdown_asyncgens()`` before closing their loop: the suspended generator
    made by :meth:`_keep` is then closed, and closes the client's connections with it.
    """

    __slots__ = ("_keeper", "clients", "fs", "loop")

    def __init__(
        self,
        fs: Any,
        clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Client],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.fs = fs
        self.clients = weakref.ref(clients)
        self.loop = loop
        self._keeper = self._keep()

    async def start(self) -> None:
        await anext(self._keeper)  # now suspended, and known to the loop

    async def _keep(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            clients = self.clients()
            if clients is not None and clients.get(self.loop) is self:
                del clients[self.loop]
            s3 = getattr(self.fs, "_s3", None)
            if s3 is not None:
                await s3.close()

    async def close(self) -> None:
        """Close the connections; on this client's loop."""
        await self._keeper.aclose()


_open_stores: weakref.WeakSet[S3Store] = weakref.WeakSet()
_closing: set[asyncio.Task[None]] = set()
_close_at_exit: list[_Client] = []


def _close_on_loop(client: _Client) -> None:
    """Run on its own loop: close a client there, keeping the task alive till done."""
    task = asyncio.get_running_loop().create_task(client.close())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


def _close_now(client: _Client) -> None:
    """Close a client on its idle loop, from a thread where no loop runs."""
    loop = client.loop
    if not loop.is_closed() and not loop.is_running():
        with contextlib.suppress(Exception):
            loop.run_until_complete(client.close())


def _close_clients(clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Client]) -> None:
    """Close each s3fs client on its loop: now if the loop is idle, soon if it runs.

    An idle loop cannot run while another loop runs in this thread (a store dropped
    inside async code); its client is then kept and closed at exit.
    """
    for loop, client in list(clients.items()):
        clients.pop(loop, None)
        if loop.is_closed():
            continue
        if loop.is_running():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_close_on_loop, client)
        elif in_async_context():
            _close_at_exit.append(client)
        else:
            _close_now(client)


@atexit.register
def _close_clients_at_exit() -> None:
    """Sync callers never await aclose(); close their connections before the loops go."""
    for store in list(_open_stores):
        _close_clients(store._clients)
    while _close_at_exit:
        _close_now(_close_at_exit.pop())
