"""``file://PATH``: records as files under a local folder, the embedded default.

Key ``a/b`` lives at ``PATH/a/b.rsr``; the reserved suffix keeps a key ``a``
and a key ``a/b`` from colliding as file and folder.

**Writes** go to a new file in the target folder that gets the record's name
only once it is whole: readers see the old record or the new one, never a
part, and concurrent writers of one key each leave a whole record. On Linux the
new file is unnamed (``O_TMPFILE``) and a new record is one ``link`` into place
(half the directory work of a temporary name renamed, and a crash leaves no
temporary file); a record already there (one ``faccessat`` tells) is replaced by
a named temporary file renamed over it, one rename as a hand-written write does.
Elsewhere (or on a file system refusing unnamed files) every write is a unique
temporary file renamed over the target. With ``fsync`` (``RESULTSTORE_FSYNC``,
the default) the new file is flushed before it is named and the folder after
it, and so is the parent of every folder the write created: a write returns only
once the record and every directory entry leading to it are on disk. Without
``fsync`` a write that returned survives a crash of the process (the kernel
holds it) but maybe not a power loss. A delete with ``fsync`` flushes the folder
too, then removes the folders it left empty, up to the root.

**Nothing below the root is followed.** A symbolic link in place of a folder or
a record is refused, never followed, by every operation (the root itself may
be a link: it is resolved once, when the store is made); a record's path that
holds anything but a regular file (a FIFO, socket, device or folder) is refused
at once, without blocking, with an :class:`~resultstore.errors.IntegrityError`
naming the key. On Linux 5.6+ the path of a key in folders is opened in one
``openat2`` call that refuses every symlink; elsewhere (or when a link is
found) folder by folder, each opened with ``O_NOFOLLOW`` relative to its parent.

**Ranged reads** (``open(key, start=, end=)``) read only that range from the file
(records up to 64 KiB are read whole, in one call, and served from memory); the
reader's ``size`` is the whole file's.

**Versions.** ``stat``, every reader and every write report the version of a
record: an opaque token hashing (xxh3-64) the file's inode number, its inode
generation (``FS_IOC_GETVERSION``), its modification time in nanoseconds, its size
and its first 4 KiB. Every write makes a new file (linked or renamed into place), so
the token changes with each write even when the kernel hands the freed inode number
straight back and the timestamp has not ticked (ext4 timestamps can be several
milliseconds coarse): ext4, XFS and btrfs give each new inode a fresh generation
(random on current ext4 and XFS, the creating transaction on btrfs, which also does
not reuse inode numbers while mounted). Residual risk: where the generation is not
available (tmpfs, overlayfs, NFS, FUSE, macOS: it counts as 0), two writes of one
key get the same token only if the second reuses the first's inode number within one
timestamp tick with the same size and the same first 4 KiB. Records cannot collide
that way unless they are identical (their first bytes hash a header holding the
microsecond of their creation and the payload's checksum); raw payloads differing
only after their first 4 KiB can. Renaming, linking and ``fsync`` keep the token.

**Conditional writes** are atomic on the file system, never check-then-write. With
``if_absent`` the new file is written (and flushed) as usual, then hard-linked to the
record's name (``link`` fails if anything is there: ``ResultExistsError``, or the error
saying a folder, a symbolic link or another odd file is in the way; a named temporary
file is then unlinked), and the folder flushed. With ``if_version`` (compare-and-swap)
the writer takes an exclusive ``flock`` on the record's folder, compares the current
record's version with the expected one (a missing record or folder is a
``VersionConflictError``: nothing is created), renames the temporary file into place,
flushes the folder and only then releases the lock; the temporary file is written and
flushed before the lock is taken. Compare-and-swap writers of a folder (threads or
processes) are serialized, so among themselves they never lose an update. Unconditional
writes and deletes take no lock: one landing between a compare-and-swap writer's check
and its rename is silently replaced (a delete undone) by the compare-and-swap write.
``flock`` must work on folders and be shared by every writer: NFS emulates it with
byte-range locks that need a file open for writing, so compare-and-swap writes fail there
with a ``StorageError`` (and a mount with ``local_lock=flock`` would not share the lock
between machines).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import platform
import re
import stat
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

import xxhash

from resultstore.errors import (
    ConfigurationError,
    IntegrityError,
    InvalidKeyError,
    ResultStoreError,
    StorageError,
    VersionConflictError,
)
from resultstore.keys import (
    MAX_KEY_BYTES,
    MAX_SEGMENT_BYTES,
    RESERVED_PREFIX,
    RESERVED_SUFFIX,
    is_storable,
    validate_prefix,
)
from resultstore.serializers import Buffer
from resultstore.stores.base import Payload, Reader, Stat, Store, run_blocking

__all__ = ["FileStore"]

_IOV_MAX = 512
_TMP_SUFFIX = ".tmp"
_RESERVED_FOLDER = RESERVED_PREFIX.rstrip("/")  # resultstore's own records (see _prune)
# A key segment that needs no more checks (see keys.py): letters, digits, '_', '-', inner dots.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*")
# The characters of plain names, and newlines: what _plain_records checks joined names with.
_PLAIN_CHARS = re.compile(r"[A-Za-z0-9_\-.\n]*")
_SUFFIX_NL = RESERVED_SUFFIX + "\n"  # the end of a record's name, in joined names
_TWICE = RESERVED_SUFFIX * 2  # the end of a name whose stem ends in the suffix: not a key's
_TWICE_NL = _TWICE + "\n"
_TEMP_NAME = re.compile(r"\..+\.rsr\.[0-9a-f]{16}\.tmp")  # see FileStore._write
_WRITE_ATTEMPTS = 100  # a folder removed under a writer (by a delete emptying it) is made again

_ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_DIR_FLAGS = _ROOT_FLAGS | os.O_NOFOLLOW
# O_NONBLOCK: opening a FIFO (or a device) must not wait for a writer; regular files ignore it.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# An unnamed file in a folder, linked in later (see FileStore._write_unnamed); Linux only.
_UNNAMED_FLAGS = getattr(os, "O_TMPFILE", 0) | os.O_WRONLY | os.O_CLOEXEC
# O_TMPFILE or linking it refused: not supported by this file system, kernel or /proc.
_NO_UNNAMED = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.EPERM, errno.EXDEV)
# Errors meaning "not there (any more)" while walking a tree: skipped by list and gc.
_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
_READS = ("read", "stat")  # actions whose odd files are IntegrityErrors (a damaged record)

_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFLNK: "a symbolic link",
}

# openat2(2), Linux 5.6+: the same syscall number on every architecture listed.
_SYS_OPENAT2 = 437
_OPENAT2_MACHINES = frozenset(
    {"x86_64", "amd64", "aarch64", "arm64", "armv7l", "i686", "ppc64le", "s390x", "riscv64"}
)
_AT_FDCWD = -100
_RESOLVE_NO_SYMLINKS = 0x04

_HEAD = 4096  # the first bytes of a record, hashed into its version
_WHOLE = 64 * 1024  # records up to this size are read in one call and served from memory
_TOKEN = struct.Struct("<QIqQ")  # inode number, generation, mtime (ns), size
# FS_IOC_GETVERSION = _IOR('v', 1, long) in the generic Linux ioctl encoding (not on the
# architectures with their own: powerpc, mips, sparc, alpha, parisc).
_GETVERSION: int | None = (
    0x80000000 | (struct.calcsize("l") << 16) | (ord("v") << 8) | 1
    if sys.platform == "linux"
    and not platform.machine().startswith(("ppc", "mips", "sparc", "alpha", "parisc"))
    else None
)
_NO_GENERATION_ERRNOS = frozenset(
    {errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS, errno.EPERM, errno.EACCES}
)
_GENERATION = struct.Struct("=I")
_GENERATION_ARG = bytes(8)  # room for a long; the kernel fills the first unsigned int
_no_generation: set[int] = set()  # st_dev of file systems without FS_IOC_GETVERSION


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


@functools.cache
def _openat2() -> Callable[[str, int], int] | None:
    """``open(path, flags)`` that refuses a symlink anywhere in ``path`` (``ELOOP``).

    ``None`` where the kernel (before 5.6), a seccomp filter or the platform lacks
    ``openat2``; callers then walk the path folder by folder. Loaded on first use (ctypes
    costs a millisecond to import), which keys without folders never need.
    """
    if sys.platform != "linux" or platform.machine() not in _OPENAT2_MACHINES:
        return None
    import ctypes

    try:
        syscall = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    syscall.restype = ctypes.c_long

    class OpenHow(ctypes.Structure):
        _fields_ = [
            ("flags", ctypes.c_uint64),
            ("mode", ctypes.c_uint64),
            ("resolve", ctypes.c_uint64),
        ]

    number, cwd = ctypes.c_long(_SYS_OPENAT2), ctypes.c_long(_AT_FDCWD)
    size = ctypes.c_size_t(ctypes.sizeof(OpenHow))
    structs = {
        flags: OpenHow(flags, 0, _RESOLVE_NO_SYMLINKS) for flags in (_READ_FLAGS, _DIR_FLAGS)
    }
    hows = {flags: ctypes.byref(struct) for flags, struct in structs.items()}  # keeps structs
    encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    get_errno = ctypes.get_errno

    def openat2(path: str, flags: int) -> int:
        fd: int = syscall(number, cwd, path.encode(encoding, errors), hows[flags], size)
        if fd < 0:
            code = get_errno()
            raise OSError(code, os.strerror(code), path)
        return fd

    try:
        os.close(openat2("/", _DIR_FLAGS))
    except OSError:  # ENOSYS, or EPERM from a seccomp filter
        return None
    return openat2


@functools.cache
def _unnamed_files() -> bool:
    """Whether writes may use unnamed files: ``O_TMPFILE``, and ``/proc/self/fd`` to link them."""
    return hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")


def _generation(fd: int, device: int) -> int:
    """The inode generation of ``fd`` (``FS_IOC_GETVERSION``), 0 where the file system has none."""
    if _GETVERSION is None or device in _no_generation:
        return 0
    try:
        raw = fcntl.ioctl(fd, _GETVERSION, _GENERATION_ARG)
    except OSError as exc:
        if exc.errno not in _NO_GENERATION_ERRNOS:
            raise
        _no_generation.add(device)  # asked once per file system: every file answers alike
        return 0
    generation: int = _GENERATION.unpack_from(raw)[0]  # the kernel writes an unsigned int
    return generation


def _version(fd: int, info: os.stat_result, head: bytes) -> str:
    """The version token of the file open as ``fd``; ``head`` is its first bytes (_HEAD at most).

    See the module docstring: every write makes a new inode, and the token tells
    them apart by number, generation, mtime, size and first bytes.
    """
    fields = _TOKEN.pack(info.st_ino, _generation(fd, info.st_dev), info.st_mtime_ns, info.st_size)
    return xxhash.xxh3_64_hexdigest(fields + head[:_HEAD])


def _head(buffers: list[Buffer], size: int) -> bytes:
    """The first ``_HEAD`` bytes of ``buffers`` back to back (what the file will start with).

    ``size`` is their total length. A small record of ``bytes`` (a header and a pickle)
    is joined in one call, without a view per buffer.
    """
    if size <= _HEAD and all(type(b) is bytes for b in buffers):
        return b"".join(buffers)
    parts, left = [], _HEAD
    for buffer in buffers:
        view = memoryview(buffer).cast("B")
        parts.append(view[:left])
        left -= len(parts[-1])
        if not left:
            break
    return b"".join(parts)


def _write_all(fd: int, buffers: list[Buffer], size: int) -> None:
    """Write ``buffers`` (``size`` bytes in all) to ``fd``, resuming after short writes.

    Most records take one ``writev`` of the buffers as they are; views are made only
    to resume a short write or to split more than ``_IOV_MAX`` buffers.
    """
    skip = 0
    if len(buffers) <= _IOV_MAX:
        skip = os.writev(fd, buffers)
        if skip == size:
            return
    views = [memoryview(b).cast("B") for b in buffers if memoryview(b).nbytes]
    while skip and views:  # what the first writev wrote
        if skip >= len(views[0]):
            skip -= len(views.pop(0))
        else:
            views[0], skip = views[0][skip:], 0
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


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def _temp_name(name: str) -> str:
    """A unique temporary name for a new file of the record ``name`` (see _TEMP_NAME)."""
    return f".{name}.{os.urandom(8).hex()}{_TMP_SUFFIX}"  # secrets.token_hex, less its import


def _present(name: str, dir_fd: int) -> bool:
    """Whether anything is named ``name`` in the folder ``dir_fd`` (a link is not followed).

    One ``faccessat``: cheaper than a stat, and nothing to build from its answer.
    """
    return os.access(name, os.F_OK, dir_fd=dir_fd, follow_symlinks=False)


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _is_folder(name: str, dir_fd: int) -> bool:
    """True when ``name`` in the folder ``dir_fd`` is a folder (a link to one is not)."""
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False  # gone meanwhile


def _plain_records(joined: str, names: list[str], room: int) -> bool:
    """True when every one of ``names`` (``joined`` by newlines) is a plain record name.

    That is ``_PLAIN_NAME`` plus ``.rsr`` (a stem of letters, digits, ``_`` and ``-``
    in segments joined by single dots, not itself ending in ``.rsr``) of at most
    ``room`` bytes: what makes a valid key segment with no further check. Checked on
    the joined names, a few passes in C instead of a regular expression per name.
    """
    return (
        _PLAIN_CHARS.fullmatch(joined) is not None
        and joined.count("\n") == len(names) - 1  # no name holds a newline
        and joined.count(_SUFFIX_NL) == len(names) - 1  # each name ends with .rsr
        and joined.endswith(RESERVED_SUFFIX)
        and not joined.startswith(".")
        and "\n." not in joined
        and ".." not in joined
        and _TWICE_NL not in joined
        and not joined.endswith(_TWICE)
        and max(map(len, names)) <= room + len(RESERVED_SUFFIX)
    )


def _is_valid_folder(folder: str) -> bool:
    try:
        validate_prefix(folder)
    except InvalidKeyError:
        return False
    return True


class _MemoryReader(Reader):
    """Bytes ``[start, stop)`` of a small record, read whole when it was opened.

    Its file is already closed: nothing to release, no system call per read.
    """

    def __init__(self, data: bytes, version: str, start: int, stop: int) -> None:
        self.size = len(data)
        self.version = version
        self._data = data
        self._pos = start
        self._stop = min(stop, len(data))

    async def read(self, n: int = -1) -> bytes:
        pos = self._pos
        end = self._stop if n < 0 else min(pos + n, self._stop)
        if end <= pos:
            return b""
        self._pos = end
        return self._data[pos:end]  # the whole value itself when the range is all of it

    async def readinto(self, buffer: memoryview) -> int:
        pos = self._pos
        n = min(len(buffer), self._stop - pos)
        if n <= 0:
            return 0
        buffer[:n] = memoryview(self._data)[pos : pos + n]
        self._pos = pos + n
        return n


class _FileReader(Reader):
    """Reads bytes ``[start, end)`` of a record through its file descriptor: no buffering
    layer, no extra copies.

    ``size`` is the file's size when it was opened: a record file is never written to
    after its rename, so reads stop there without asking the kernel for an end. The
    descriptor is positioned at ``start`` once, when the reader is made.
    """

    def __init__(self, fd: int, size: int, version: str, start: int, end: int) -> None:
        self._fd: int | None = fd
        self.size = size
        self.version = version
        self._left = max(0, end - start)
        if start and self._left:
            os.lseek(fd, start, os.SEEK_SET)

    def _descriptor(self) -> int:
        if self._fd is None:
            raise ValueError("read from a closed record reader")
        return self._fd

    def _read(self, n: int) -> bytes:
        fd = self._fd
        if fd is None:
            raise ValueError("read from a closed record reader")
        wanted = self._left if n < 0 else min(n, self._left)
        chunks = []
        while wanted > 0:
            chunk = os.read(fd, wanted)
            if not chunk:
                break
            chunks.append(chunk)
            wanted -= len(chunk)
            self._left -= len(chunk)
        if not chunks:
            return b""
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _readinto(self, buffer: memoryview) -> int:
        fd = self._descriptor()
        limit = min(len(buffer), self._left)
        total = 0
        while total < limit:
            got = os.readv(fd, [buffer[total:limit]])
            if not got:
                break
            total += got
        self._left -= total
        return total

    async def read(self, n: int = -1) -> bytes:
        return await run_blocking(
            self._read, n, nbytes=min(n, self._left) if n >= 0 else self._left
        )

    async def readinto(self, buffer: memoryview) -> int:
        return await run_blocking(self._readinto, buffer, nbytes=min(len(buffer), self._left))

    async def aclose(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class FileStore(Store):
    """Records stored as files below a root folder (created on first write).

    ``fsync`` (default ``True``): a write returns once the record and its directory
    entries are on disk; ``False`` keeps writes across a process crash only.
    Ranged reads and conditional writes are native (see the module docstring).
    """

    interface_version = 2
    supports_ranged_read = True
    supports_conditional_write = True

    def __init__(self, url: str, *, fsync: bool = True) -> None:
        self.root = _root_from_url(url)
        self._root = str(self.root)
        self._prefix = self._root.rstrip(os.sep) + os.sep
        super().__init__(self.root.as_uri())
        self.fsync = fsync
        self._unnamed = _unnamed_files()  # turned off on the first file system refusing them

    def _path(self, key: str) -> str:
        return f"{self._prefix}{key}{RESERVED_SUFFIX}"

    @staticmethod
    def _split(key: str) -> tuple[list[str], str]:
        """The folders of ``key``'s record and its file name."""
        *folders, last = key.split("/")
        return folders, last + RESERVED_SUFFIX

    # -- errors ----------------------------------------------------------------

    def _error(self, action: str, key: str, exc: OSError) -> StorageError | IntegrityError:
        """The one-line error for a failed ``action``; links and odd files say what they are."""
        if exc.errno == errno.ELOOP:
            kind = IntegrityError if action in _READS else StorageError
            return kind(
                f"cannot {action} key {key!r} in {self.url}: {exc.filename} is a symbolic "
                "link, which the file store does not follow below its root; remove it",
                key=key,
                url=self.url,
            )
        if exc.errno == errno.EISDIR:  # a folder named like the record: no rename or unlink
            return StorageError(
                f"cannot {action} key {key!r} in {self.url}: {self._path(key)} is a directory, "
                "not a record; remove it",
                key=key,
                url=self.url,
            )
        if action in _READS:  # e.g. ENXIO: a socket cannot be opened
            with contextlib.suppress(OSError):
                mode = os.stat(self._path(key), follow_symlinks=False).st_mode
                if not stat.S_ISREG(mode):
                    return self._not_regular(key, mode, action)
        return StorageError(
            f"cannot {action} key {key!r} in {self.url}: {exc.strerror or exc}",
            key=key,
            url=self.url,
        )

    def _not_regular(
        self, key: str, mode: int, action: str = "read"
    ) -> StorageError | IntegrityError:
        """What an odd file at a record's path raises: IntegrityError when reading it."""
        kind = IntegrityError if action in _READS else StorageError
        return kind(
            f"cannot {action} key {key!r} in {self.url}: {self._path(key)} is not a regular "
            f"file ({_kind(mode)}); remove it",
            key=key,
            url=self.url,
        )

    def _in_the_way(self, key: str, mode: int) -> StorageError | IntegrityError:
        """What a conditional write raises for something other than a record at its path."""
        path = self._path(key)
        if stat.S_ISDIR(mode):
            return self._error("write", key, OSError(errno.EISDIR, "is a directory", path))
        if stat.S_ISLNK(mode):
            return self._error("write", key, OSError(errno.ELOOP, "is a symbolic link", path))
        return self._not_regular(key, mode, "write")

    # -- folders, never through a symlink ------------------------------------------

    def _make_root(self) -> None:
        """Create the root and its missing parents; with fsync, flush each new entry."""
        missing, path = [], self._root
        while not os.path.lexists(path):
            missing.append(path)
            path = os.path.dirname(path)
        for path in reversed(missing):
            with contextlib.suppress(FileExistsError):
                os.mkdir(path)
            if self.fsync:
                _fsync_folder(os.path.dirname(path))

    def _open_root(self, create: bool) -> int:
        try:
            return os.open(self._root, _ROOT_FLAGS)
        except FileNotFoundError:
            if not create:
                raise
        self._make_root()
        return os.open(self._root, _ROOT_FLAGS)

    def _walk(self, folders: Sequence[str], create: bool) -> int:
        """The folder ``ROOT/folders...``, each opened with O_NOFOLLOW relative to its parent.

        A symlink on the way raises ``ELOOP`` with its path. With ``create``, missing
        folders are made, and with fsync each parent is flushed once it gained one, so
        the new entries are durable (even when a concurrent writer made the folder).
        """
        fd = self._open_root(create)
        try:
            for depth, part in enumerate(folders):
                try:
                    try:
                        child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                    except FileNotFoundError:
                        if not create:
                            raise
                        with contextlib.suppress(FileExistsError):
                            os.mkdir(part, dir_fd=fd)
                        if self.fsync:
                            os.fsync(fd)
                        child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    path = os.path.join(self._root, *folders[: depth + 1])
                    # ENOTDIR is also what O_DIRECTORY | O_NOFOLLOW gives for a link.
                    if exc.errno == errno.ENOTDIR and _is_link(part, fd):
                        raise OSError(errno.ELOOP, "is a symbolic link", path) from None
                    exc.filename = path
                    raise
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _folder(self, folders: Sequence[str], create: bool = False) -> int:
        """An fd of the folder ``ROOT/folders...``, reached without following a symlink."""
        if folders:
            opener = _openat2()
            if opener is not None:
                try:
                    return opener(self._prefix + "/".join(folders), _DIR_FLAGS)
                except OSError as exc:
                    # Walk to make what is missing, or to name the link found (ELOOP or
                    # ENOTDIR; a link above the root, set up since, is followed as before).
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR) and not (
                        create and exc.errno == errno.ENOENT
                    ):
                        raise
        return self._walk(folders, create)

    def _open_nested(self, key: str, path: str) -> int:
        """Open the record file of ``key``, which is in folders, at ``path``."""
        opener = _openat2()
        if opener is not None:
            try:
                return opener(path, _READ_FLAGS)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
        folders, name = self._split(key)
        folder = self._walk(folders, create=False)
        try:
            return os.open(name, _READ_FLAGS, dir_fd=folder)
        except OSError as exc:
            exc.filename = path
            raise
        finally:
            os.close(folder)

    # -- the store interface ---------------------------------------------------------

    def _write(
        self, key: str, buffers: list[Buffer], if_absent: bool, if_version: str | None, size: int
    ) -> str:
        """Write the record of ``key``: ``buffers``, ``size`` bytes in all."""
        folders, name = self._split(key)
        tmp = ""  # a temporary name, made when first needed (a new record needs none)
        swap = if_version is not None
        vanished: OSError | None = None
        for _ in range(_WRITE_ATTEMPTS):
            try:
                # A compare-and-swap needs its record there, so it makes no folder.
                folder = self._folder(folders, create=not swap)
            except (FileNotFoundError, NotADirectoryError) as exc:
                if swap:
                    raise self._conflict(key, if_version) from None
                if isinstance(exc, NotADirectoryError):
                    raise self._error("write", key, exc) from None
                vanished = exc  # a delete removed a folder on the way as it was made: again
                continue
            except OSError as exc:
                raise self._error("write", key, exc) from None
            try:
                # Unnamed files for new records; a record already there is replaced by a
                # named temporary file renamed over it (one rename, where an unnamed file
                # would take a failed link, a link and a rename).
                if self._unnamed and not swap and (if_absent or not _present(name, folder)):
                    try:
                        version = self._write_unnamed(key, folder, name, buffers, size, if_absent)
                    except FileNotFoundError as exc:
                        vanished = exc  # the folder was emptied and removed by a delete since
                        continue
                    if version is not None:
                        if self.fsync:
                            os.fsync(folder)
                        return version
                tmp = tmp or _temp_name(name)
                try:
                    fd = os.open(tmp, _CREATE_FLAGS, 0o644, dir_fd=folder)
                except FileNotFoundError as exc:
                    if swap:  # the folder was emptied and removed, so its record is gone
                        raise self._conflict(key, if_version) from None
                    vanished = exc  # the folder was emptied and removed by a delete since
                    continue
                renamed = False
                try:
                    try:
                        version = self._fill(fd, buffers, size)
                    finally:
                        os.close(fd)
                    if swap:
                        self._swap(key, folder, tmp, name, if_version, if_absent)
                        return version  # the folder was flushed under the lock
                    if if_absent:
                        self._create(key, folder, tmp, name)  # then the temporary name goes
                    else:
                        os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
                        renamed = True
                finally:
                    if not renamed:
                        with contextlib.suppress(OSError):
                            os.unlink(tmp, dir_fd=folder)
                if self.fsync:
                    os.fsync(folder)
                return version
            except OSError as exc:
                raise self._error("write", key, exc) from None
            finally:
                os.close(folder)
        assert vanished is not None
        raise self._error("write", key, vanished)

    def _fill(self, fd: int, buffers: list[Buffer], size: int) -> str:
        """Write ``buffers`` (``size`` bytes) to the new file ``fd`` (flushed with fsync);
        returns its version."""
        _write_all(fd, buffers, size)
        if self.fsync:
            os.fsync(fd)
        return _version(fd, os.fstat(fd), _head(buffers, size))

    def _write_unnamed(
        self,
        key: str,
        folder: int,
        name: str,
        buffers: list[Buffer],
        size: int,
        if_absent: bool,
    ) -> str | None:
        """Write an unnamed file (``O_TMPFILE``) in ``folder`` and link it in as ``name``.

        Half the directory work of a named temporary file renamed into place: a new
        record is one link, with no temporary name to add and remove, and a crash
        leaves nothing behind. A record that appeared since the writer looked is replaced
        by linking the file to a temporary name and renaming that over it (``if_absent``
        refuses instead). Returns the version, or None where the file system (or a missing
        ``/proc``) does not allow it: the store then uses named temporary files.
        """
        try:
            fd = os.open(".", _UNNAMED_FLAGS, 0o644, dir_fd=folder)
        except OSError as exc:
            if exc.errno not in _NO_UNNAMED:
                raise
            self._unnamed = False
            return None
        try:
            version = self._fill(fd, buffers, size)
            source = f"/proc/self/fd/{fd}"  # linkat(AT_SYMLINK_FOLLOW) of it needs no privilege
            try:
                os.link(source, name, dst_dir_fd=folder)
            except FileExistsError:
                if if_absent:
                    raise self._taken(key, folder, name) from None
                tmp = _temp_name(name)
                os.link(source, tmp, dst_dir_fd=folder)
                try:
                    os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp, dir_fd=folder)
                    raise
            except OSError as exc:
                if exc.errno not in _NO_UNNAMED:
                    raise
                self._unnamed = False
                return None
        finally:
            os.close(fd)
        return version

    def _taken(self, key: str, folder: int, name: str) -> ResultStoreError:
        """The error for a create-only write whose ``name`` in ``folder`` was there."""
        try:
            mode = os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode
        except FileNotFoundError:
            mode = stat.S_IFREG  # deleted since: it was there when the link was refused
        if stat.S_ISREG(mode):
            return self.exists_error(key)
        return self._in_the_way(key, mode)

    def _conflict(self, key: str, expected: str | None) -> VersionConflictError:
        assert expected is not None
        return self.conflict_error(key, expected)

    def _create(self, key: str, folder: int, tmp: str, name: str) -> None:
        """Link the written temporary file ``tmp`` to ``name``, which must not exist yet."""
        try:
            os.link(tmp, name, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
        except FileExistsError:
            raise self._taken(key, folder, name) from None

    def _swap(
        self, key: str, folder: int, tmp: str, name: str, expected: str | None, if_absent: bool
    ) -> None:
        """Rename ``tmp`` over ``name`` if its record is still at version ``expected``.

        Under an exclusive ``flock`` of the folder, held until the folder is flushed, so
        every compare-and-swap writer sees the last one's record, and a durable one.
        """
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
        except OSError as exc:
            raise StorageError(
                f"cannot write key {key!r} in {self.url}: cannot lock its folder for a "
                f"compare-and-swap write ({exc.strerror or exc}); this file system does not "
                "support flock on folders",
                key=key,
                url=self.url,
            ) from None
        try:
            current = self._current_version(key, folder, name)
            if current is not None and if_absent:
                raise self.exists_error(key)
            if current is None or current != expected:
                raise self._conflict(key, expected)
            os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
            if self.fsync:
                os.fsync(folder)
        finally:
            fcntl.flock(folder, fcntl.LOCK_UN)

    def _current_version(self, key: str, folder: int, name: str) -> str | None:
        """The version of the record ``name`` in ``folder``; None if there is none."""
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=folder)
        except FileNotFoundError:
            return None
        except OSError as exc:
            with contextlib.suppress(OSError):  # ENXIO: a socket cannot be opened
                mode = os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode
                if not stat.S_ISREG(mode):
                    raise self._in_the_way(key, mode) from None
            exc.filename = self._path(key)
            raise
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise self._in_the_way(key, info.st_mode)
            return _version(fd, info, os.pread(fd, min(info.st_size, _HEAD), 0))
        finally:
            os.close(fd)

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str:
        """Store ``payload`` under ``key`` atomically; returns its version.

        ``if_absent`` creates the record or raises ``ResultExistsError``; ``if_version``
        replaces it only at that version, else ``VersionConflictError`` (see the module
        docstring for how, and what unconditional writers racing them do).
        """
        return await run_blocking(
            self._write,
            key,
            payload.buffers,
            if_absent,
            if_version,
            payload.size,
            nbytes=payload.size,
            may_wait=if_version is not None,  # waits for the folder's lock
        )

    def _open_record(self, key: str, action: str) -> tuple[int, os.stat_result]:
        """An fd of ``key``'s record file, a regular file, and its ``fstat``."""
        path = f"{self._prefix}{key}{RESERVED_SUFFIX}"
        try:
            # Without folders the root (resolved) is all there is above: O_NOFOLLOW suffices.
            fd = self._open_nested(key, path) if "/" in key else os.open(path, _READ_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            raise self.not_found(key) from None
        except OSError as exc:
            raise self._error(action, key, exc) from None
        try:
            info = os.fstat(fd)
        except OSError as exc:
            os.close(fd)
            raise self._error(action, key, exc) from None
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise self._not_regular(key, info.st_mode, action)
        return fd, info

    async def open(self, key: str, *, start: int = 0, end: int | None = None) -> Reader:
        """Open bytes ``[start, end)`` of ``key``'s record, reading only those from the file.

        A record up to 64 KiB is read whole, in one call, and its file closed at once.
        """
        fd, info = self._open_record(key, "read")
        size = info.st_size
        start = max(start, 0)
        stop = size if end is None else max(start, min(end, size))
        try:
            if size <= _WHOLE:
                try:
                    data = os.pread(fd, size, 0)
                    return _MemoryReader(data, _version(fd, info, data), start, stop)
                finally:
                    os.close(fd)
            try:
                version = _version(fd, info, os.pread(fd, _HEAD, 0))
                return _FileReader(fd, size, version, start, stop)
            except BaseException:
                os.close(fd)
                raise
        except OSError as exc:
            raise self._error("read", key, exc) from None

    async def stat(self, key: str) -> Stat:
        """The record's size and version: one open, ``fstat`` and read of its first 4 KiB."""
        fd, info = self._open_record(key, "stat")
        try:
            head = os.pread(fd, min(info.st_size, _HEAD), 0)
            return Stat(info.st_size, _version(fd, info, head))
        except OSError as exc:
            raise self._error("stat", key, exc) from None
        finally:
            os.close(fd)

    async def exists(self, key: str) -> bool:
        """True when something is stored under ``key`` (reading tells whether it is a record)."""
        folders, name = self._split(key)
        try:
            if not folders:
                os.stat(self._path(key), follow_symlinks=False)
                return True
            folder = self._folder(folders)
            try:
                os.stat(name, dir_fd=folder, follow_symlinks=False)
            finally:
                os.close(folder)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise self._error("check", key, exc) from None
        return True

    def _delete(self, key: str) -> bool:
        folders, name = self._split(key)
        try:
            folder = self._folder(folders)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as exc:
            raise self._error("delete", key, exc) from None
        try:
            os.unlink(name, dir_fd=folder)  # a link or FIFO itself goes, never what it names
            if self.fsync:
                os.fsync(folder)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise self._error("delete", key, exc) from None
        finally:
            os.close(folder)
        self._prune(folders)
        return True

    def _prune(self, folders: list[str]) -> None:
        """Remove the folders a delete left empty, deepest first, up to (not including) the root.

        A writer that opened one of them just before gets ``ENOENT`` creating its temporary
        file there and makes the folder again; one that already has its temporary file in it
        keeps it from being removed (``ENOTEMPTY``), which stops the pruning. The folders
        of `resultstore`'s own records (``.resultstore/locks``, ``.resultstore/expiry``) stay:
        leases come and go by the second, and remaking the folders each time would cost a
        flushed ``mkdir`` per lock.
        """
        keep = 2 if folders and folders[0] == _RESERVED_FOLDER else 0
        for depth in range(len(folders) - 1, keep - 1, -1):
            try:
                parent = self._folder(folders[:depth])
            except OSError:
                return
            try:
                os.rmdir(folders[depth], dir_fd=parent)
            except FileNotFoundError:
                continue  # removed meanwhile by another delete: its parent may be empty now
            except OSError:
                return  # not empty, a link (ENOTDIR) or a mount point: stop here
            finally:
                os.close(parent)

    async def delete(self, key: str) -> bool:
        return await run_blocking(self._delete, key, may_wait=self.fsync)

    def _tree(self, base: str, prefix: str) -> Iterator[tuple[str, list[str], str, list[str]]]:
        """``(folder, names, joined, others)`` for ``base`` and every folder below it.

        ``names`` are the folder's entries, sorted; ``joined`` is ``"\\n".join(names)``
        (what :func:`_plain_records` checks in one pass); ``others`` are the names not
        named like a record (``others`` is empty, without a look at each name, when every
        name ends with ``.rsr``, a folder of records). Iterative (any depth), never through
        a symlink (links are listed, not entered), and only into folders that may hold
        keys starting with ``prefix``: valid key prefixes, not named like a record. Folders
        that vanish meanwhile are skipped. Each folder comes before its subfolders, so
        listings are stable and ``ls`` reads in order.
        """
        pending = [base]
        while pending:
            rel = pending.pop()
            try:
                fd = self._folder(rel.split("/")[:-1])
            except OSError as exc:
                if exc.errno in _GONE:
                    continue
                raise StorageError(
                    f"cannot list {prefix!r} in {self.url}: {exc.filename or self._root}: "
                    f"{exc.strerror or exc}",
                    key=prefix,
                    url=self.url,
                ) from None
            try:
                # Names alone (no DirEntry per name): a name like a record's is never
                # entered, whatever it is, so only the other names are looked at.
                names = os.listdir(fd)
                names.sort()
                joined = "\n".join(names)
                gaps = len(names) - 1  # newlines in ``joined``, if no name holds one
                if joined.count("\n") == gaps == joined.count(_SUFFIX_NL) and joined.endswith(
                    RESERVED_SUFFIX
                ):
                    others: list[str] = []
                else:
                    others = [name for name in names if not name.endswith(RESERVED_SUFFIX)]
                children = [
                    child
                    for name in others
                    for child in (f"{rel}{name}/",)
                    if (child.startswith(prefix) or prefix.startswith(child))
                    and _is_valid_folder(child)
                    and _is_folder(name, fd)
                ]
            finally:
                os.close(fd)
            yield rel, names, joined, others
            pending.extend(reversed(children))  # popped in order

    def _pages(self, prefix: str) -> Iterator[list[str]]:
        """The keys under ``prefix``, a folder's worth at a time."""
        base = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
        cut = len(RESERVED_SUFFIX)
        for rel, names, joined, others in self._tree(base, prefix):
            if not names:
                continue
            # The folders were checked on the way (_tree): a plain name makes a valid key.
            room = min(MAX_SEGMENT_BYTES, MAX_KEY_BYTES - len(rel.encode()))
            if not others and _plain_records(joined, names, room):
                # A folder of plain records (the usual case): its keys in a few string
                # operations over the joined names, none per name in Python.
                keys = (rel + joined.replace(_SUFFIX_NL, "\n" + rel))[:-cut].split("\n")
            else:
                # A FIFO, link or folder named like a record is listed too: reading it
                # raises IntegrityError, so `resultstore ls`/`check` report it as damaged.
                keys = [
                    rel + stem
                    for name in names
                    if name.endswith(RESERVED_SUFFIX)
                    for stem in (name[:-cut],)
                    if (
                        len(stem) <= room
                        and _PLAIN_NAME.fullmatch(stem)
                        and not stem.endswith(RESERVED_SUFFIX)
                    )
                    or is_storable(rel + stem)
                ]
            if rel.startswith(prefix):
                page = keys
            else:
                page = [key for key in keys if key.startswith(prefix)]
            if page:
                yield page

    async def list_pages(self, prefix: str = "") -> AsyncIterator[list[str]]:
        for page in self._pages(prefix):
            yield page

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        for page in self._pages(prefix):
            for key in page:
                yield key

    def _abandoned(self, older_than: float, dry_run: bool) -> tuple[int, int]:
        cutoff = time.time() - older_than
        count = size = 0
        for rel, _, _, others in self._tree("", ""):
            stale = [name for name in others if _TEMP_NAME.fullmatch(name)]
            if not stale:
                continue
            try:
                folder = self._folder(rel.split("/")[:-1])
            except OSError:
                continue  # removed (or replaced by a link) since it was listed
            try:
                for name in stale:
                    try:
                        info = os.stat(name, dir_fd=folder, follow_symlinks=False)
                        if not stat.S_ISREG(info.st_mode) or info.st_mtime >= cutoff:
                            continue  # not ours, or possibly a write still in progress
                        if not dry_run:
                            os.unlink(name, dir_fd=folder)
                    except FileNotFoundError:
                        continue  # renamed into place or removed meanwhile
                    # A create-only writer killed between its link and its unlink leaves its
                    # temporary name linked to the record: removing it frees nothing.
                    freed = info.st_size if info.st_nlink == 1 else 0
                    count, size = count + 1, size + freed
            finally:
                os.close(folder)
        return count, size

    async def clean_abandoned(self, older_than: float, *, dry_run: bool = False) -> tuple[int, int]:
        """Remove temporary files of writers killed before their rename."""
        return await run_blocking(self._abandoned, older_than, dry_run, may_wait=True)


def _fsync_folder(path: str) -> None:
    fd = os.open(path, _ROOT_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
