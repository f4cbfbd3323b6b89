"""The built-in local stores pass the conformance kit unchanged."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from resultstore import resolve_store
from resultstore.stores.base import Store
from resultstore.stores.fsspec import FsspecStore
from resultstore.stores.memory import MemoryStore
from resultstore.testing import StoreConformance


class TestFileStore(StoreConformance):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Store:
        return resolve_store(f"file://{tmp_path}/results")


class TestMemoryStore(StoreConformance):
    @pytest.fixture
    def store(self) -> Store:
        store = resolve_store(f"memory://conformance-{uuid.uuid4().hex}")
        assert isinstance(store, MemoryStore)
        return store


class TestGenericFsspecStore(StoreConformance):
    """A scheme no plugin claims but fsspec knows (here fsspec's ``local``) uses FsspecStore."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> Store:
        store = resolve_store(f"local://{tmp_path}/generic")
        assert isinstance(store, FsspecStore)
        return store
