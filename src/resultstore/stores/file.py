"""``file://PATH``: records as files under a local folder, the embedded default.

Key ``a/b`` lives at ``PATH/a/b.rsr``; the reserved suffix keeps a key ``a``
and a key ``a/b`` from colliding as file and folder. A write goes to a unique
temporary file in the target folder, is flushed to disk (``fsync``), then
renamed over the target: readers see the old record or the new one, never a
part, and concurrent writers of one key each leave a whole record.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from resultstore.errors import ConfigurationError, StorageError
from resultstore.keys import RESERVED_SUFFIX
from resultstore.serializers import Buffer
from resultstore.stores.base import Payload, Reader, Store, run_blocking

__all__ = ["FileStore"]

_IOV_MAX = 512
_UNKNOWN_SIZE = 1 << 30  # read-to-end of unknown length: never inline on a shared loop
_TMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"\..+\.rsr\.[0-9a-f]{16}\.tmp")  # see FileStore._write


def _root_from_url(url: str) -> Path:
    if "://" in url:
        parts = urlsplit(url)
        if parts.scheme != "file":
            raise ConfigurationError(f"not a file URL: {url!r}", url=url)
        raw = unquote(parts.netloc + parts.path)
    else:
        raw = url
    if not raw:
        raise ConfigurationError(
            f"file URL {url!r} has no path; use file:///absolute/path", url=url
        )
    return Path(os.path.expanduser(raw)).resolve()


def _write_all(fd: int, buffers: list[Buffer]) -> None:
    views = [memoryview(b).cast("B") for b in buffers if memoryview(b).nbytes]
    while views:
        written = os.writev(fd, views[:_IOV_MAX])
        while written and views:
            head = views[0]
            if written >= len(head):
                written -= len(head)
                views.pop(0)
            else:
                views[0] = head[written:]
                written = 0


class _FileReader(Reader):
    """Reads a record through its file descriptor: no buffering layer, no extra copies."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def _descriptor(self) -> int:
        if self._fd is None:
            raise ValueError("read from a closed record reader")
        return self._fd

    def _read(self, n: int) -> bytes:
        fd = self._descriptor()
        chunks = []
        wanted = n if n >= 0 else 1 << 20
        while wanted > 0:
            chunk = os.read(fd, wanted)
            if not chunk:
                break
            chunks.append(chunk)
            if n >= 0:
                wanted -= len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _readinto(self, buffer: memoryview) -> int:
        fd = self._descriptor()
        total = 0
        while total < len(buffer):
            got = os.readv(fd, [buffer[total:]])
            if not got:
                break
            total += got
        return total

    async def read(self, n: int = -1) -> bytes:
        return await run_blocking(self._read, n, nbytes=n if n >= 0 else _UNKNOWN_SIZE)

    async def readinto(self, buffer: memoryview) -> int:
        return await run_blocking(self._readinto, buffer, nbytes=len(buffer))

    async def aclose(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class FileStore(Store):
    """Records stored as files below a root folder (created on first write)."""

    interface_version = 1

    def __init__(self, url: str, *, fsync: bool = True, **options: Any) -> None:
        self.root = _root_from_url(url)
        self._prefix = f"{self.root}{os.sep}"
        super().__init__(self.root.as_uri())
        self.fsync = fsync

    def _path(self, key: str) -> str:
        return f"{self._prefix}{key}{RESERVED_SUFFIX}"

    def _error(self, action: str, key: str, exc: OSError) -> StorageError:
        return StorageError(
            f"cannot {action} key {key!r} in {self.url}: {exc.strerror or exc}",
            key=key,
            url=self.url,
        )

    def _write(self, key: str, buffers: list[Buffer]) -> None:
        path = self._path(key)
        folder, name = os.path.split(path)
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(8)}{_TMP_SUFFIX}")
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileNotFoundError:
                os.makedirs(folder, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                _write_all(fd, buffers)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise self._error("write", key, exc) from None

    async def write(self, key: str, payload: Payload) -> None:
        await run_blocking(self._write, key, payload.buffers, nbytes=payload.size)

    async def open(self, key: str) -> Reader:
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except FileNotFoundError:
            raise self.not_found(key) from None
        except OSError as exc:
            raise self._error("read", key, exc) from None
        return _FileReader(fd)

    async def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    async def delete(self, key: str) -> bool:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise self._error("delete", key, exc) from None
        return True

    def _walk(self, folder: str, rel: str) -> Iterator[str]:
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            name = rel + entry.name
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(entry.path, name + "/")
            elif entry.name.endswith(RESERVED_SUFFIX):
                yield name[: -len(RESERVED_SUFFIX)]

    def _abandoned(self, older_than: float, dry_run: bool) -> tuple[int, int]:
        cutoff = time.time() - older_than
        count = size = 0
        for folder, _, names in os.walk(self.root):
            for name in names:
                if not _TEMP_NAME.fullmatch(name):
                    continue
                path = os.path.join(folder, name)
                try:
                    stat = os.stat(path)
                    if stat.st_mtime >= cutoff:
                        continue  # possibly a write still in progress
                    if not dry_run:
                        os.unlink(path)
                except FileNotFoundError:
                    continue  # renamed into place or removed meanwhile
                count, size = count + 1, size + stat.st_size
        return count, size

    async def clean_abandoned(self, older_than: float, *, dry_run: bool = False) -> tuple[int, int]:
        """Remove temporary files of writers killed before their rename."""
        return await run_blocking(self._abandoned, older_than, dry_run, may_wait=True)

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        base = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
        for key in self._walk(os.path.join(self.root, base), base):
            if key.startswith(prefix):
                yield key
