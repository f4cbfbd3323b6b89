"""The built-in stores that can take the kit's opt-in mixins pass them.

The file store (and the generic fsspec store over a local folder) keeps records other
processes see: two interpreters share one folder at once, and parent and child share it
after ``fork``. The memory store never shows a password given in its URL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from resultstore import resolve_store
from resultstore.stores.base import Store
from resultstore.stores.file import FileStore
from resultstore.stores.fsspec import FsspecStore
from resultstore.stores.memory import MemoryStore
from resultstore.testing import MultiProcessConformance, SecretConformance, run


class TestFileStoreAcrossProcesses(MultiProcessConformance):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[Store]:
        store = resolve_store(f"file://{tmp_path}/results")
        assert isinstance(store, FileStore)
        yield store
        run(store.aclose())


class TestGenericFsspecStoreAcrossProcesses(MultiProcessConformance):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[Store]:
        store = resolve_store(f"local://{tmp_path}/generic")
        assert isinstance(store, FsspecStore)
        yield store
        run(store.aclose())


class TestMemoryStoreKeepsSecrets(SecretConformance):
    @pytest.fixture
    def secret_store(self, secret: str) -> Store:
        store = resolve_store(f"memory://user:{secret}@kit-{uuid.uuid4().hex}")
        assert isinstance(store, MemoryStore)
        return store
