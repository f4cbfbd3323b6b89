"""Fixtures for the reliability tests: a clean configuration and the asyncio backend, and
for the trust-boundary tests a fresh memory store and a listener (see attacker.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from attacker import Listener


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def memory_url() -> str:
    """A fresh memory store's URL (memory stores of one name share records process-wide)."""
    return f"memory://reliability-{os.urandom(6).hex()}"


@pytest.fixture
def listener() -> Iterator[Listener]:
    """A loopback server counting the connections it is sent, closed after the test."""
    server = Listener()
    yield server
    server.close()
