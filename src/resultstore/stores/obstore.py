"""``s3://BUCKET/PREFIX`` with ``client="obstore"``: the S3 store on obstore's Rust client.

``s3+obstore://BUCKET/PREFIX`` is an alias of it (references record ``s3://``). Same layout
as the s3fs client (key ``a/b`` lives at ``PREFIX/a/b`` in ``BUCKET``), so either reads
what the other wrote; only the client differs. obstore
(Rust's ``object_store`` crate) does the HTTP work outside the GIL: in
``benchmarks/run.py`` it moves many small results several times faster than
s3fs. Install it with ``pip install "resultstore[obstore]"``.

Options are obstore's S3 settings (``access_key_id``, ``endpoint``, ``region``,
... and ``client_options`` / ``retry_config``); the s3fs names the ``s3://``
client takes (``key``, ``secret``, ``token``, ``endpoint_url``, ``client_kwargs``)
are accepted too, so switching is a change of one option. Unset settings come from
the standard ``AWS_*`` environment. Credentials never appear in the URL, repr
or errors; an unknown option is refused when the store is made.

obstore retries nothing (``max_retries: 0``): :class:`~resultstore.ResultStore`'s
retry policy is the one retry loop, bounded by its timeout. A connection attempt
gives up after 5 s (never more than ``RESULTSTORE_TIMEOUT``) and a response that
sends nothing for ``RESULTSTORE_STALL_TIMEOUT`` seconds fails.

Interface v2: ranged reads are obstore range gets (an empty range is a HEAD), ``stat`` a
HEAD, ``read_head`` a HEAD returning the header copy each write puts in the object's
user metadata (obstore attributes, see ``_s3common``), versions ETags; ``if_absent`` is
obstore's create mode and ``if_version`` its update mode with the ETag
(``If-None-Match: *`` / ``If-Match``, always one PUT), once the endpoint has shown it
honours them; ``delete`` is one request and ``delete_many``
DeleteObjects batches of 1,000. The process waits at exit until obstore's threads have
handed back their last results (see the end of this module).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import re
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from resultstore.errors import (
    AccessDeniedError,
    ConfigurationError,
    ContainerMissingError,
    ResultNotFoundError,
    ResultStoreError,
    StorageError,
    StorageUnavailableError,
)
from resultstore.settings import get_settings
from resultstore.stores._s3common import (
    HEAD_METADATA,
    PROBE_FOLDER,
    BaseS3Store,
    ListingProgress,
    check_endpoint,
    choose_client,
    etag_md5,
    head_metadata,
    kept_head,
    listed_size,
    s3_location,
)
from resultstore.stores.base import (
    BytesReader,
    Head,
    Listed,
    Payload,
    Reader,
    Stat,
    check_options,
)

__all__ = ["ObstoreS3Store"]

_ALIAS = "s3+obstore"
# Bytes per streamed chunk: obstore hands each over as a fresh ``bytes`` (a copy), which the
# reader copies again into the caller's buffer; at 1 MiB both copies stay in the CPU cache
# (100 MB read in 8 MiB chunks: about 10% slower), and a hand-off costs microseconds.
_CHUNK = 1 << 20
_READ_AHEAD = 16  # chunks fetched ahead of the reader (16 MiB at most)
_END = object()  # the stream's end, in the read-ahead queue
_SMALL = 1 << 20  # a body up to this is fetched whole, in one hand-off
_PROBE_BODY = b"resultstore conditional-write probe"
# The HTTP status in obstore's error text, and the bare ones only a server other than S3
# sends to a GET, PUT or POST (a wrong port, a web server); a HEAD's errors have no body.
_STATUS = re.compile(r"status code: (\d{3})")
_NOT_S3_STATUSES = {"400", "404", "405", "501"}
_FAILED_KEY = re.compile(r"(?:location|path|key)[: ]+'?([^\s':]+)", re.IGNORECASE)
_ENDPOINT_SETTINGS = ("endpoint", "endpoint_url")
_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT")
_S3FS_NAMES = {"key": "access_key_id", "secret": "secret_access_key", "token": "session_token"}
_UNAVAILABLE = re.compile(
    r"error sending request|timed ?out|kind: Timeout|connection|response body error"
    r"|status code: 5\d\d",
    re.IGNORECASE,
)
_CONNECT_TIMEOUT = 5.0  # seconds to open a connection (never above RESULTSTORE_TIMEOUT)
# obstore's S3 settings (its S3Config; each also spelt with an ``aws_`` prefix, in any case).
_OBSTORE_S3_CONFIG = frozenset(
    {
        "access_key_id",
        "checksum_algorithm",
        "conditional_put",
        "container_authorization_token_file",
        "container_credentials_full_uri",
        "container_credentials_relative_uri",
        "copy_if_not_exists",
        "default_region",
        "disable_bulk_delete",
        "disable_tagging",
        "endpoint",
        "metadata_endpoint",
        "region",
        "request_payer",
        "role_arn",
        "role_session_name",
        "secret_access_key",
        "server_side_encryption",
        "session_token",
        "skip_signature",
        "sse_bucket_key_enabled",
        "sse_kms_key_id",
        "sts_endpoint",
        "unsigned_payload",
        "virtual_hosted_style_request",
        "web_identity_token_file",
    }
)
_OWN_OPTIONS = frozenset(
    {"part_size", "max_concurrency", "client_options", "retry_config", "credential_provider"}
)
_S3FS_OPTIONS = frozenset({*_S3FS_NAMES, "endpoint_url", "client_kwargs", "config_kwargs"})
_RETRY_KEYS = frozenset({"backoff", "max_retries", "retry_timeout"})


def _unknown_key(message: str) -> str | None:
    """The setting named by obstore's "Configuration key: 'x' is not valid" error."""
    found = re.match(r"Configuration key: '([^']+)' is not valid", message)
    return found.group(1) if found else None


def _is_missing(exc: BaseException) -> bool:
    # A GET or HEAD of a missing object raises the builtin FileNotFoundError; obstore's own
    # NotFoundError class is accepted too.
    return isinstance(exc, FileNotFoundError) or type(exc).__name__ == "NotFoundError"


def _check_options(url: str, options: dict[str, Any]) -> None:
    """Refuse an option neither this store, s3fs's names nor obstore's S3 settings know."""
    unknown = {
        name: value
        for name, value in options.items()
        if name not in _OWN_OPTIONS
        and name not in _S3FS_OPTIONS
        and name.lower().removeprefix("aws_") not in _OBSTORE_S3_CONFIG
    }
    check_options(url, unknown, _OWN_OPTIONS | _S3FS_OPTIONS | _OBSTORE_S3_CONFIG)


def _no_equivalent(option: str) -> ConfigurationError:
    return ConfigurationError(
        f"storage option {option} has no obstore equivalent; use obstore's S3 settings, "
        "client_options or retry_config"
    )


def _obstore_config(options: dict[str, Any]) -> dict[str, Any]:
    """obstore S3 settings from ``options``, translating the s3fs spellings."""
    config: dict[str, Any] = {}
    for name, value in options.items():
        if name in _S3FS_NAMES:
            config[_S3FS_NAMES[name]] = value
        elif name == "endpoint_url":
            config["endpoint"] = value
        elif name == "client_kwargs":
            for inner, setting in dict(value or {}).items():
                if inner not in ("endpoint_url", "region_name"):
                    raise _no_equivalent(f"client_kwargs[{inner!r}]")
                config["endpoint" if inner == "endpoint_url" else "region"] = setting
        elif name == "config_kwargs":  # botocore's Config: only the addressing style maps
            for inner, setting in dict(value or {}).items():
                extra = set(setting or {}) - {"addressing_style"} if inner == "s3" else {inner}
                if extra:
                    raise _no_equivalent(f"config_kwargs[{sorted(extra)[0]!r}]")
                style = (setting or {}).get("addressing_style")
                config["virtual_hosted_style_request"] = style == "virtual"
        else:
            config[name] = value
    return config


def _endpoint(options: dict[str, Any]) -> str | None:
    """The endpoint obstore will use (a storage option, else the environment), checked.

    obstore panics on an endpoint without a scheme (a Rust backtrace, at the first
    request): refuse it here in one line instead.
    """
    inner = (options.get("client_kwargs") or {}).get("endpoint_url")
    if inner:
        return check_endpoint(inner, "client_kwargs.endpoint_url")
    for name, value in options.items():
        if name.lower().removeprefix("aws_") in _ENDPOINT_SETTINGS:
            return check_endpoint(value, f"storage option {name}")
    for variable in _ENDPOINT_VARIABLES:
        if os.environ.get(variable):
            return check_endpoint(os.environ[variable], variable)
    return None


class _BodyReader(Reader):
    """A small GET's body, fetched whole: read from memory, one copy per read.

    What :class:`BytesReader` does for one buffer, less its generality (several buffers,
    a range to cut): a small read is about 300 us of which the core's share is counted in
    microseconds (``benchmarks/run.py``, 1,000 small operations against raw obstore), and
    BytesReader's set-up was 2 of them.
    """

    def __init__(self, body: Any, size: int, version: str | None) -> None:
        self._body = memoryview(body)  # obstore's Bytes is a buffer of unsigned bytes
        self._pos = 0
        self.size = size
        self.version = version

    async def read(self, n: int = -1) -> bytes:
        body, pos = self._body, self._pos
        end = len(body) if n < 0 else min(pos + n, len(body))
        self._pos = end
        return bytes(body[pos:end])

    async def readinto(self, buffer: memoryview) -> int:
        body, pos = self._body, self._pos
        take = min(len(buffer), len(body) - pos)
        buffer[:take] = body[pos : pos + take]
        self._pos = pos + take
        return take


class _StreamReader(Reader):
    """A GET's body as obstore streams it, fetched ahead of the reader.

    A task keeps pulling chunks from obstore's stream (up to :data:`_READ_AHEAD` of them
    wait in a queue), so the transfer goes on in obstore's threads while the reader's
    caller works: zero-filling the record's buffer (about 50 ms for 100 MB here) and
    copying chunks into it. Without it the HTTP body is pulled only when the caller
    asks, and the socket sits idle meanwhile. Each chunk is copied once, into the
    caller's buffers, while it is still in the CPU cache (hence 1 MiB chunks).
    """

    def __init__(
        self, stream: Any, store: ObstoreS3Store, key: str, size: int, version: str | None
    ) -> None:
        import asyncio  # obstore's futures are asyncio's

        self._store = store
        self._key = key
        self._chunk = memoryview(b"")
        self._queue: asyncio.Queue[Any] = asyncio.Queue(_READ_AHEAD)
        self._done = False
        self._pump: asyncio.Task[None] | None = asyncio.get_running_loop().create_task(
            self._fetch(stream)
        )
        self.size = size
        self.version = version

    async def _fetch(self, stream: Any) -> None:
        """Move the stream's chunks into the queue; its end or failure comes last."""
        try:
            while True:
                await self._queue.put(await stream.__anext__())
        except StopAsyncIteration:
            await self._queue.put(_END)
        except Exception as exc:  # handed to the reader, which raises it translated
            await self._queue.put(exc)

    async def _fill(self) -> bool:
        """Make the current chunk non-empty; False at the end of the body."""
        while not self._chunk:
            if self._done:  # the end was reached, or the reader closed
                return False
            item = await self._queue.get()
            if item is _END:
                self._done = True
                return False
            if isinstance(item, BaseException):
                self._done = True
                raise self._store._translate(item, "read", self._key) from item
            self._chunk = memoryview(item).cast("B")
        return True

    async def read(self, n: int = -1) -> bytes:
        parts: list[bytes] = []
        while n != 0 and await self._fill():
            take = len(self._chunk) if n < 0 else min(n, len(self._chunk))
            parts.append(bytes(self._chunk[:take]))
            self._chunk = self._chunk[take:]
            if n > 0:
                n -= take
        return b"".join(parts)  # one part comes back as is

    async def readinto(self, buffer: memoryview) -> int:
        total = 0
        while total < len(buffer) and await self._fill():
            take = min(len(buffer) - total, len(self._chunk))
            buffer[total : total + take] = self._chunk[:take]
            self._chunk = self._chunk[take:]
            total += take
        return total

    async def aclose(self) -> None:
        # Stopping the task drops the stream, which ends the GET at once (read_metadata
        # stops after the header); the chunks fetched ahead are dropped with the queue.
        import asyncio

        pump, self._pump = self._pump, None
        self._done, self._chunk = True, memoryview(b"")
        if pump is not None and not pump.done():
            pump.cancel()
            await asyncio.wait({pump})  # raises nothing of the task's; our own cancellation yes


class ObstoreS3Store(BaseS3Store):
    """Records stored as S3 objects, moved by obstore."""

    client_name = "obstore"

    def __init__(
        self,
        url: str,
        *,
        part_size: int = 16 * 1024 * 1024,
        max_concurrency: int = 8,
        client_options: dict[str, Any] | None = None,
        retry_config: dict[str, Any] | None = None,
        client: object = None,
        **options: Any,
    ) -> None:
        try:
            from obstore.store import S3Store as _ObstoreS3
        except ImportError:
            raise ConfigurationError(
                f"{url!r} needs obstore: pip install 'resultstore[obstore]'", url=url
            ) from None
        self.bucket, self.prefix = s3_location(url, ("s3", _ALIAS), part_size)
        base = f"s3://{self.bucket}"  # the alias too: references record s3://
        super().__init__(f"{base}/{self.prefix}" if self.prefix else base)
        if url.startswith(f"{_ALIAS}://"):
            choose_client(client, _ALIAS)  # the alias is obstore: refuses another client
        elif client not in (None, "obstore"):
            raise ConfigurationError(
                f"ObstoreS3Store is the obstore client of s3://, not client={client!r}; "
                "open s3:// URLs with resolve_store() to choose the client",
                url=self.url,
            )
        self.part_size = part_size
        self.max_concurrency = max(1, max_concurrency)
        _check_options(self.url, options)
        check_options(f"{self.url} (retry_config)", retry_config or {}, _RETRY_KEYS)
        limits = get_settings()
        # An http:// endpoint is the user's explicit choice (a local server, say), as with s3fs.
        # Timeouts match the s3fs client's: a stall fails after RESULTSTORE_STALL_TIMEOUT
        # without data, not obstore's 30 s for a whole request (too short for a large record
        # on a slow link); ResultStore's timeout bounds the whole operation.
        client_settings = {
            "allow_http": True,
            "connect_timeout": datetime.timedelta(seconds=min(_CONNECT_TIMEOUT, limits.timeout)),
            "read_timeout": datetime.timedelta(seconds=limits.stall_timeout),
            "timeout": datetime.timedelta(days=1),
        }
        # No retries: ResultStore's policy is the only retry loop.
        retry: dict[str, Any] = {"max_retries": 0}
        retry.update(retry_config or {})
        if isinstance(retry.get("retry_timeout"), (int, float)):  # seconds, as JSON gives it
            retry["retry_timeout"] = datetime.timedelta(seconds=retry["retry_timeout"])
        self._bucket_exists = False
        config = _obstore_config(options)
        self.endpoint = _endpoint(options) or "aws"
        settings: dict[str, Any] = {
            "prefix": self.prefix or None,
            "client_options": {**client_settings, **(client_options or {})},
            "retry_config": retry,
            **config,
        }
        try:
            self._client = _ObstoreS3(self.bucket, **settings)
        except Exception as exc:  # obstore validates settings eagerly
            key = getattr(exc, "key", None) or _unknown_key(str(exc))
            if key is not None:  # a setting this obstore does not know (another version's)
                check_options(self.url, {key: None}, _OWN_OPTIONS | _OBSTORE_S3_CONFIG)
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigurationError(
                f"invalid storage options for {self.url}: {detail}", url=self.url
            ) from None
        _guard_exit()

    def __repr__(self) -> str:
        return f"ObstoreS3Store({self.url!r})"

    def _translate(
        self, exc: BaseException, action: str, key: str, *, head: bool = False
    ) -> ResultStoreError:
        from obstore.exceptions import PermissionDeniedError, UnauthenticatedError

        text = str(exc)
        where = f"{action} key {key!r} in {self.url}"
        if "NoSuchBucket" in text:
            return ContainerMissingError(
                f"cannot {where}: bucket {self.bucket!r} does not exist; create it or fix the URL",
                key=key,
                url=self.url,
            )
        status = _STATUS.search(text)
        if status and not head and status.group(1) in _NOT_S3_STATUSES and "<Code>" not in text:
            return StorageError(
                f"cannot {where}: {self.endpoint} is not an S3 endpoint (it answered HTTP "
                f"{status.group(1)} without an S3 error code); check the endpoint URL "
                "(AWS_ENDPOINT_URL or storage options) and its port",
                key=key,
                url=self.url,
            )
        if _is_missing(exc):
            return self.not_found(key)
        # obstore raises a GenericError for a refused listing: its status and S3 code say it.
        refused = status is not None and status.group(1) == "403"
        if refused or isinstance(exc, (PermissionDeniedError, UnauthenticatedError)):
            return AccessDeniedError(
                f"cannot {where}: access denied; check the credentials "
                "(storage options or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)",
                key=key,
                url=self.url,
            )
        if _UNAVAILABLE.search(text):
            return StorageUnavailableError(
                f"cannot {where}: the S3 endpoint is unavailable; check the endpoint "
                "(AWS_ENDPOINT_URL or storage options) and the network",
                key=key,
                url=self.url,
            )
        detail = text.splitlines()[0] if text else type(exc).__name__
        return StorageError(f"cannot {where}: {detail}", key=key, url=self.url)

    # -- writing -------------------------------------------------------------------------

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str | None:
        import obstore

        mode: Any = "create" if if_absent else None
        if if_version is not None and not if_absent:
            mode = {"e_tag": if_version}
        if mode is not None:
            # obstore sends a conditional write as one PUT, whatever its size.
            await self._require(key, if_absent=if_absent)
        multipart = mode is None and payload.size > self.part_size
        try:
            done = await obstore.put_async(
                self._client,
                key,
                payload.buffers if multipart else payload.join(),
                use_multipart=multipart,
                chunk_size=self.part_size,
                max_concurrency=self.max_concurrency,
                mode=mode,
                # The header's copy, in the same PUT (a multipart upload's creation).
                attributes=head_metadata(payload),
            )
        except Exception as exc:
            if mode is not None:
                refused = self._condition_failed(exc, key, if_version)
                if refused is not None:
                    raise refused from None
            raise self._translate(exc, "write", key) from exc
        return done.get("e_tag") if isinstance(done, dict) else None

    def _condition_failed(
        self, exc: BaseException, key: str, if_version: str | None
    ) -> ResultStoreError | None:
        """The error of a write whose condition S3 refused, or None for another failure."""
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        conflict = "409 Conflict" in str(exc) and "ConditionalRequestConflict" in str(exc)
        if if_version is not None:
            # If-Match on a key deleted meanwhile: 412 (SeaweedFS) or 404 (AWS).
            if isinstance(exc, (PreconditionError, AlreadyExistsError)) or conflict:
                return self.conflict_error(key, if_version)
            if _is_missing(exc):
                return self.conflict_error(key, if_version)
            return None
        if isinstance(exc, (AlreadyExistsError, PreconditionError)):
            return self.exists_error(key)
        if conflict:
            return self.conditional_in_progress(key)
        return None

    # -- reading -------------------------------------------------------------------------

    async def open(self, key: str, *, start: int = 0, end: int | None = None) -> Reader:
        import obstore

        start = max(0, start)
        if end is not None and end <= start:  # nothing to fetch: a HEAD says size and version
            return await self._empty(key)
        options: Any = {}
        if end is not None:
            options["range"] = (start, end)
        elif start > 0:
            options["range"] = {"offset": start}
        try:
            result = await obstore.get_async(self._client, key, options=options or None)
        except Exception as exc:
            if options and "416" in str(exc):  # the range starts at or after the end
                return await self._empty(key)
            raise self._translate(exc, "read", key) from exc
        meta = result.meta
        size, version = int(meta["size"]), meta.get("e_tag")
        if options:
            low, high = result.range
            length = high - low
        else:
            length = size  # the whole object: no need to ask obstore for the range
        if length <= _SMALL:  # one hand-off for the whole body, as a raw get does
            try:
                body = await result.bytes_async()
            except Exception as exc:
                raise self._translate(exc, "read", key) from exc
            return _BodyReader(body, size, version)
        return _StreamReader(result.stream(min_chunk_size=_CHUNK), self, key, size, version)

    async def _empty(self, key: str) -> Reader:
        stat = await self.stat(key)
        reader = BytesReader(b"", version=stat.version)
        reader.size = stat.size
        return reader

    async def stat(self, key: str) -> Stat:
        import obstore

        try:
            meta = await obstore.head_async(self._client, key)
        except Exception as exc:
            if not _is_missing(exc) or "NoSuchBucket" in str(exc):
                raise self._translate(exc, "check", key, head=True) from exc
            # A HEAD has no error body: its 404 means no such key, no such bucket, or no S3.
            await self._check_bucket("check", key)
            raise self.not_found(key) from None
        return Stat(int(meta["size"]), meta.get("e_tag"))

    async def read_head(self, key: str) -> Head | None:
        """The header copy in the object's user metadata, with its size and ETag: one HEAD.

        obstore's ``head`` returns no attributes; a get with ``head=True`` is the same
        HEAD request and does.
        """
        import obstore

        try:
            result = await obstore.get_async(self._client, key, options={"head": True})
        except Exception as exc:
            if not _is_missing(exc) or "NoSuchBucket" in str(exc):
                raise self._translate(exc, "read", key, head=True) from exc
            await self._check_bucket("read", key)
            raise self.not_found(key) from None
        try:
            data = kept_head(result.attributes.get(HEAD_METADATA))
        except Exception:  # attributes obstore cannot decode: no copy, the object will tell
            return None
        if data is None:
            return None
        meta = result.meta
        return Head(data, int(meta["size"]), meta.get("e_tag"))

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
        import obstore
        from obstore.exceptions import PermissionDeniedError

        try:  # a tiny listing of a folder no key can be in
            await anext(aiter(obstore.list(self._client, PROBE_FOLDER, chunk_size=1)), None)
        except PermissionDeniedError:
            pass  # no s3:ListBucket permission: the bucket is there, the key is not
        except Exception as exc:
            raise self._translate(exc, action, key) from exc
        self._bucket_exists = True

    # -- deleting and listing ------------------------------------------------------------

    async def delete(self, key: str) -> None:
        import obstore

        # One request (obstore sends it as a one-key DeleteObjects); S3 does not say
        # whether there was an object.
        try:
            await obstore.delete_async(self._client, key)
        except Exception as exc:
            raise self._translate(exc, "delete", key) from exc
        return None

    async def delete_many(self, keys: Sequence[str]) -> None:
        import obstore

        async def delete(part: list[str]) -> None:
            try:
                await obstore.delete_async(self._client, part)
            except Exception as exc:
                failed = _FAILED_KEY.search(str(exc))
                key = failed.group(1) if failed else part[0]
                if self.prefix and key.startswith(f"{self.prefix}/"):
                    key = key[len(self.prefix) + 1 :]
                raise self._translate(exc, "delete", key) from exc

        await self._delete_in_parts(list(keys), delete)

    async def list_pages(self, prefix: str = "") -> AsyncIterator[list[str]]:
        import obstore

        # obstore lists whole path segments; list the folder holding ``prefix``, then filter.
        folder = prefix.rpartition("/")[0]
        progress = ListingProgress(self, "", f"{folder}/" if folder else "")
        try:
            async for batch in obstore.list(self._client, folder or None, chunk_size=1000):
                paths = progress.keys([meta.get("path") for meta in batch])
                if page := [p for p in paths if p.startswith(prefix) and self._listed(p)]:
                    yield page
        except ResultStoreError:
            raise
        except Exception as exc:
            raise self._translate(exc, "list", prefix or "*") from exc

    async def list_details(
        self, prefix: str = "", *, start_after: str | None = None
    ) -> AsyncIterator[list[Listed]]:
        """ListObjectsV2 pages with each object's size and MD5 (from its ETag), in key
        order, starting after ``start_after`` on the server (``StartAfter``)."""
        import obstore

        folder = prefix.rpartition("/")[0]
        progress = ListingProgress(self, "", f"{folder}/" if folder else "", start_after)
        try:
            async for batch in obstore.list(
                self._client, folder or None, offset=start_after, chunk_size=1000
            ):
                paths = progress.keys([meta.get("path") for meta in batch])
                page = [
                    Listed(path, listed_size(meta.get("size")), etag_md5(meta.get("e_tag")))
                    for meta, path in zip(batch, paths, strict=True)
                    if path.startswith(prefix) and self._listed(path)
                ]
                if page:
                    yield page
        except ResultStoreError:
            raise
        except Exception as exc:
            raise self._translate(exc, "list", prefix or "*") from exc

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        async for page in self.list_pages(prefix):
            for key in page:
                yield key

    # -- the conditional-write probe (see _s3common) -------------------------------------

    def _relative(self, name: str) -> str:
        """A bucket-level object name as a path below this store's prefix (obstore's paths)."""
        return name[len(self.prefix) + 1 :] if self.prefix else name

    async def _probe_request(
        self, name: str, key: str, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        mode: Any = "create" if if_none_match else {"e_tag": if_match}
        try:
            await obstore.put_async(self._client, self._relative(name), _PROBE_BODY, mode=mode)
        except (AlreadyExistsError, PreconditionError):
            return "precondition"
        except Exception as exc:
            status = _STATUS.search(str(exc))
            if status and status.group(1) in ("400", "501"):
                return f"rejected {status.group(1)}"
            raise self._translate(exc, "write", key) from exc
        return "ok"

    async def _probe_cleanup(self, name: str, key: str) -> None:
        import anyio
        import obstore

        with anyio.move_on_after(5.0, shield=True), contextlib.suppress(Exception):
            await obstore.delete_async(self._client, self._relative(name))


# -- interpreter exit ---------------------------------------------------------------------
#
# obstore's async calls complete on its Rust (tokio) threads: a thread hands the result to
# the event loop with ``loop.call_soon_threadsafe`` (a write to the loop's self-pipe, the
# GIL released around it), then takes the GIL back to return. The loop may run the
# callback, and a short program may reach ``Py_FinalizeEx``, before that thread has
# returned; taking the GIL during finalization ends the thread with ``pthread_exit``,
# whose unwinding through Rust frames aborts the process ("Fatal Python error: Aborted",
# exit 134, in about 5 of 100 runs of ``resultstore get`` here). So at exit, before
# finalization, wait (bounded) until no thread is inside that hand-off: while this hook
# holds the GIL such a thread shows a Python frame of ``call_soon_threadsafe``, and each
# ``time.sleep`` lets it take the GIL, return and let go.

_HAND_OFF = frozenset({"call_soon_threadsafe", "_write_to_self"})
_EXIT_WAIT = 2.0  # seconds at most that exit waits for hand-offs to finish
_guarded = False


def _in_hand_off() -> bool:
    """True while a thread other than this one is inside an event loop's thread-safe call."""
    me = threading.get_ident()
    for ident, frame in sys._current_frames().items():
        seen: Any = frame
        while ident != me and seen is not None:
            if seen.f_code.co_name in _HAND_OFF:
                return True
            seen = seen.f_back
    return False


def _settle_hand_offs() -> None:
    """Wait until obstore's threads have handed back every result (atexit, bounded)."""
    deadline = time.monotonic() + _EXIT_WAIT
    time.sleep(0.001)  # let a thread waiting for the GIL take it
    while _in_hand_off() and time.monotonic() < deadline:
        time.sleep(0.001)


def _guard_exit() -> None:
    global _guarded
    if not _guarded:
        _guarded = True
        atexit.register(_settle_hand_offs)
