"""Shared fixtures for the `resultstore` tests.

Every test starts from a clean configuration: no ``RESULTSTORE_*`` variable
from the developer's shell leaks in (a stray ``RESULTSTORE_SIGNING_KEY`` would
change what every store does). Tests that need a setting set it themselves
with ``monkeypatch``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from resultstore import ResultStore, RetryPolicy
from resultstore.stores import file as file_module


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def file_url(tmp_path: Path) -> str:
    return f"file://{tmp_path}/results"


@pytest.fixture
def memory_url() -> str:
    # Memory stores of the same name share records process-wide: one fresh name per test.
    return f"memory://test-{uuid.uuid4().hex}"


@pytest.fixture(params=["file", "memory"])
def store_url(request: pytest.FixtureRequest, file_url: str, memory_url: str) -> str:
    """A fresh, empty storage URL: each test using it runs once per built-in backend."""
    return file_url if request.param == "file" else memory_url


@pytest.fixture
def store(store_url: str) -> Iterator[ResultStore]:
    # A short retry policy: tests that read a missing key on purpose give up quickly.
    with ResultStore(store_url, retry=RetryPolicy(attempts=3, delay=0.01)) as results:
        yield results


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How paths below the root are opened: one openat2 call, or folder by folder."""
    if request.param == "openat2":
        if file_module._openat2() is None:
            pytest.skip("this kernel has no openat2 (Linux 5.6+)")
    else:
        monkeypatch.setattr(file_module, "_openat2", lambda: None)
    return str(request.param)


@pytest.fixture(params=["unnamed", "named"])
def writer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How the file store makes a new file: unnamed (O_TMPFILE, then linked in), or named."""
    if request.param == "unnamed":
        assert file_module._unnamed_files(), "this system has no O_TMPFILE or no /proc/self/fd"
    else:
        monkeypatch.setattr(file_module, "_unnamed_files", lambda: False)
    return str(request.param)
