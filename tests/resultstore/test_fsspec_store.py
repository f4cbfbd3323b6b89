"""The generic fsspec store against a real remote protocol: FTP, served by pyftpdlib.

FTP is a good witness for "any other fsspec protocol": its filesystem needs the
host, port and login the URL carries, and it talks over one connection that
overlapping calls from worker threads would corrupt.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from ports import free_port
from resultstore import ConfigurationError, ResultStore, StorageUnavailableError, resolve_store
from resultstore.stores.base import Store
from resultstore.stores.fsspec import FsspecStore
from resultstore.testing import StoreConformance

USER, PASSWORD = "alice", "s3cret-pass"


def _wait_for_banner(port: int, server: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"pyftpdlib exited with {server.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if sock.recv(3) == b"220":
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"pyftpdlib did not answer on port {port} within {timeout}s")


@contextlib.contextmanager
def _ftp_server(folder: Path, port: int = 0) -> Iterator[str]:
    """An FTP server for ``folder`` on ``port`` (else a free one); yields its URL with login."""
    port = port or free_port()
    command = [sys.executable, "-m", "pyftpdlib", "-i", "127.0.0.1", "-p", str(port), "-w"]
    server = subprocess.Popen(
        [*command, "-d", str(folder), "-u", USER, "-P", PASSWORD],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_banner(port, server)
        yield f"ftp://{USER}:{PASSWORD}@127.0.0.1:{port}"
    finally:
        os.kill(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(server.pid, signal.SIGKILL)
            server.wait()


@pytest.fixture(scope="module")
def ftp_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(base URL with login, served folder) of an FTP server kept for this module."""
    folder = tmp_path_factory.mktemp("ftp")
    with _ftp_server(folder) as url:
        yield url, folder


class TestFtpThroughTheGenericStore(StoreConformance):
    concurrency = 16  # one FTP connection serves every call in turn

    @pytest.fixture
    def store(self, ftp_root: tuple[str, Path]) -> Store:
        store = resolve_store(f"{ftp_root[0]}/kit-{uuid.uuid4().hex[:8]}")
        assert isinstance(store, FsspecStore)
        return store


def test_the_url_carries_host_port_and_login(ftp_root: tuple[str, Path]) -> None:
    base, folder = ftp_root
    results = ResultStore(f"{base}/runs")
    results.write({"rows": 3}, key="daily/report")
    assert (folder / "runs" / "daily" / "report.rsr").is_file()
    assert results.read("daily/report").result == {"rows": 3}
    results.close()


def test_the_password_never_shows(ftp_root: tuple[str, Path]) -> None:
    base, _ = ftp_root
    results = ResultStore(f"{base}/shown")
    assert PASSWORD not in repr(results) and PASSWORD not in str(results.store.url)
    results.close()
    wrong = base.replace(PASSWORD, "wrong-pass")
    with pytest.raises(ConfigurationError) as caught:
        resolve_store(f"{wrong}/x")
    message = str(caught.value)
    assert "530" in message and "wrong-pass" not in message and "\n" not in message


def test_a_server_that_went_away_is_unavailable_until_it_is_back(tmp_path: Path) -> None:
    port = free_port()
    with _ftp_server(tmp_path, port) as url:
        results = ResultStore(f"{url}/gone")
        results.write(1, key="there")
    with pytest.raises(StorageUnavailableError) as caught:  # retried by default reads
        results.read("there", retry=False)
    with pytest.raises(StorageUnavailableError):  # not "no such record"
        results.exists("there")
    message = str(caught.value)
    assert "'there'" in message and "unreachable" in message and "\n" not in message
    assert PASSWORD not in message
    with _ftp_server(tmp_path, port):  # back: the store opens a new connection
        assert results.read("there", retry=False).result == 1
    results.close()


def test_the_ftp_socket_timeout_is_the_stall_timeout(
    ftp_root: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESULTSTORE_STALL_TIMEOUT", "4")
    store = resolve_store(f"{ftp_root[0]}/timeouts")
    assert isinstance(store, FsspecStore)
    assert store.fs.timeout == 4.0
    chosen = resolve_store(f"{ftp_root[0]}/timeouts", timeout=9)  # an explicit one wins
    assert isinstance(chosen, FsspecStore) and chosen.fs.timeout == 9


class StrictMemoryFileSystem(MemoryFileSystem):
    """An fsspec filesystem whose ``__init__`` takes no ``**kwargs``."""

    protocol = "strictmem"

    def __init__(self, block_size: int | None = None) -> None:
        super().__init__()


def test_unknown_options_of_a_backend_without_kwargs_are_refused() -> None:
    fsspec.register_implementation("strictmem", StrictMemoryFileSystem, clobber=True)
    assert isinstance(resolve_store("strictmem://x/y", block_size=4096), FsspecStore)
    with pytest.raises(ConfigurationError) as caught:
        resolve_store("strictmem://x/y", blok_size=4096)
    assert str(caught.value) == (
        "unknown storage option 'blok_size' for strictmem://x/y; valid options: block_size"
    )


def test_a_misspelled_ftp_option_is_refused_before_connecting() -> None:
    # FTP's **kwargs only reach fsspec's base class, so its options are known: no server
    # is contacted (port 1 would refuse) before the typo is reported.
    with pytest.raises(ConfigurationError) as caught:
        resolve_store("ftp://127.0.0.1:1/results", fsnyc=False)
    message = str(caught.value)
    assert message.startswith("unknown storage option 'fsnyc' for ftp://127.0.0.1:1/results")
    assert "timeout" in message and "username" in message
