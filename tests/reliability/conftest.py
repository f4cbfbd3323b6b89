"""Fixtures for the reliability tests: a clean configuration and the asyncio backend."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _clean_resultstore_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``RESULTSTORE_*`` variable from the developer's shell changes what a store does."""
    for name in list(os.environ):
        if name.upper().startswith("RESULTSTORE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
