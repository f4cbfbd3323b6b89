"""Fixtures for the resultstore-sqlite tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from resultstore import resolve_store
from resultstore.stores.base import Store
from resultstore.testing import clean_resultstore_env  # noqa: F401 - autouse fixture
from resultstore.testing import run as run_sync


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Where a fresh database goes; neither the file nor its folder exist yet."""
    return tmp_path / "data" / "results.db"


@pytest.fixture
def db_url(db_path: Path) -> str:
    return f"sqlite://{db_path}"


@pytest.fixture
def sqlite_store(db_url: str) -> Iterator[Store]:
    """A fresh store, opened through the entry point, closed after the test."""
    store = resolve_store(db_url)
    yield store
    run_sync(store.aclose())
