"""Fixtures for the reliability tests: a clean configuration and the asyncio backend."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
