"""``s3+obstore://BUCKET/PREFIX``: the S3 store on obstore's Rust client (optional).

Same layout as ``s3://`` (key ``a/b`` lives at ``PREFIX/a/b`` in ``BUCKET``), so
either store reads what the other wrote; only the client differs. obstore
(Rust's ``object_store`` crate) does the HTTP work outside the GIL: in
``benchmarks/run.py`` it moves many small results several times faster than
s3fs. Install it with ``pip install "resultstore[obstore]"``.

Options are obstore's S3 settings (``access_key_id``, ``endpoint``, ``region``,
... and ``client_options`` / ``retry_config``); the s3fs names the ``s3://``
store takes (``key``, ``secret``, ``token``, ``endpoint_url``, ``client_kwargs``)
are accepted too, so switching is a change of URL. Unset settings come from
the standard ``AWS_*`` environment. Credentials never appear in the URL, repr
or errors; an unknown option is refused when the store is made.

obstore retries nothing (``max_retries: 0``): :class:`~resultstore.ResultStore`'s
retry policy is the one retry loop, bounded by its timeout. A connection attempt
gives up after 5 s (never more than ``RESULTSTORE_TIMEOUT``) and a response that
sends nothing for ``RESULTSTORE_STALL_TIMEOUT`` seconds fails.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import AsyncIterator
from typing import Any

from resultstore.errors import (
    AccessDeniedError,
    ConfigurationError,
    ContainerMissingError,
    ResultStoreError,
    StorageError,
    StorageUnavailableError,
)
from resultstore.settings import get_settings
from resultstore.stores.base import Payload, RangeReader, Reader, Store, check_options
from resultstore.stores.s3 import s3_location

__all__ = ["ObstoreS3Store"]

_SCHEME = "s3+obstore"
_CHUNK = 8 << 20  # bytes per streamed chunk: fewer Rust->Python hand-offs, bounded memory
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
_PROBE = "bucket-check.rsr"  # a folder no key can be in: listing it only checks the bucket


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
        f"storage option {option} has no {_SCHEME} equivalent; use obstore's S3 settings, "
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


class _StreamReader(Reader):
    """A GET's body as obstore streams it, each chunk copied once into the caller's buffers."""

    def __init__(self, stream: Any, store: ObstoreS3Store, key: str) -> None:
        self._stream = stream
        self._store = store
        self._key = key
        self._chunk = memoryview(b"")

    async def _fill(self) -> bool:
        """Make the current chunk non-empty; False at the end of the body."""
        while not self._chunk:
            if self._stream is None:  # closed
                return False
            try:
                self._chunk = memoryview(await self._stream.__anext__()).cast("B")
            except StopAsyncIteration:
                return False
            except Exception as exc:
                raise self._store._translate(exc, "read", self._key) from exc
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
        # Dropping the stream ends the GET at once (read_metadata stops after the header).
        self._stream, self._chunk = None, memoryview(b"")


class ObstoreS3Store(Store):
    """Records stored as S3 objects, moved by obstore."""

    interface_version = 2

    def __init__(
        self,
        url: str,
        *,
        part_size: int = 16 * 1024 * 1024,
        max_concurrency: int = 8,
        client_options: dict[str, Any] | None = None,
        retry_config: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        try:
            from obstore.store import S3Store as _ObstoreS3
        except ImportError:
            raise ConfigurationError(
                f"{url!r} needs obstore: pip install 'resultstore[obstore]'", url=url
            ) from None
        self.bucket, self.prefix = s3_location(url, _SCHEME, part_size)
        base = f"{_SCHEME}://{self.bucket}"
        super().__init__(f"{base}/{self.prefix}" if self.prefix else base)
        self.part_size = part_size
        self.max_concurrency = max(1, max_concurrency)
        _check_options(self.url, options)
        check_options(f"{self.url} (retry_config)", retry_config or {}, _RETRY_KEYS)
        limits = get_settings()
        # An http:// endpoint is the user's explicit choice (a local server, say), as with s3fs.
        # Timeouts match the s3:// store's: a stall fails after RESULTSTORE_STALL_TIMEOUT
        # without data, not obstore's 30 s for a whole request (too short for a large record
        # on a slow link); ResultStore's timeout bounds the whole operation.
        client = {
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
        settings: dict[str, Any] = {
            "prefix": self.prefix or None,
            "client_options": {**client, **(client_options or {})},
            "retry_config": retry,
            **_obstore_config(options),
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

    def __repr__(self) -> str:
        return f"ObstoreS3Store({self.url!r})"

    def _translate(self, exc: BaseException, action: str, key: str) -> ResultStoreError:
        from obstore.exceptions import PermissionDeniedError, UnauthenticatedError

        text = str(exc)
        where = f"{action} key {key!r} in {self.url}"
        if "NoSuchBucket" in text:
            return ContainerMissingError(
                f"cannot {where}: bucket {self.bucket!r} does not exist; create it or fix the URL",
                key=key,
                url=self.url,
            )
        if _is_missing(exc):
            return self.not_found(key)
        if isinstance(exc, (PermissionDeniedError, UnauthenticatedError)):
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

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str | None:
        if if_absent or if_version is not None:
            raise self.unsupported("conditional writes")
        import obstore

        multipart = payload.size > self.part_size
        try:
            await obstore.put_async(
                self._client,
                key,
                payload.buffers if multipart else payload.join(),
                use_multipart=multipart,
                chunk_size=self.part_size,
                max_concurrency=self.max_concurrency,
            )
        except Exception as exc:
            raise self._translate(exc, "write", key) from exc
        return None

    async def open(self, key: str, *, start: int = 0, end: int | None = None) -> Reader:
        reader = await self._open_whole(key)
        return reader if start == 0 and end is None else RangeReader(reader, start, end)

    async def _open_whole(self, key: str) -> Reader:
        import obstore

        try:
            result = await obstore.get_async(self._client, key)
        except Exception as exc:
            raise self._translate(exc, "read", key) from exc
        return _StreamReader(result.stream(min_chunk_size=_CHUNK), self, key)

    async def exists(self, key: str) -> bool:
        import obstore

        try:
            await obstore.head_async(self._client, key)
        except Exception as exc:
            if not _is_missing(exc) or "NoSuchBucket" in str(exc):
                raise self._translate(exc, "check", key) from exc
            # A HEAD has no error body: its 404 means no such key or no such bucket.
            await self._check_bucket("check", key)
            return False
        return True

    async def _check_bucket(self, action: str, key: str) -> None:
        """Raise if the bucket does not exist; checked once (a tiny listing), then remembered."""
        if self._bucket_exists:
            return
        import obstore
        from obstore.exceptions import PermissionDeniedError

        try:
            await anext(aiter(obstore.list(self._client, _PROBE, chunk_size=1)), None)
        except PermissionDeniedError:
            pass  # no s3:ListBucket permission: the bucket is there, the key is not
        except Exception as exc:
            raise self._translate(exc, action, key) from exc
        self._bucket_exists = True

    async def delete(self, key: str) -> bool:
        import obstore

        if not await self.exists(key):
            return False
        try:
            await obstore.delete_async(self._client, key)
        except Exception as exc:
            raise self._translate(exc, "delete", key) from exc
        return True

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        import obstore

        # obstore lists whole path segments; list the folder holding ``prefix``, then filter.
        folder = prefix.rpartition("/")[0]
        try:
            async for batch in obstore.list(self._client, folder or None, chunk_size=1000):
                for meta in batch:
                    if meta["path"].startswith(prefix):
                        yield meta["path"]
        except Exception as exc:
            raise self._translate(exc, "list", prefix or "*") from exc
