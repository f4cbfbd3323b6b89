"""The store kit's conformance checks for each client of ``s3://``, on the test server.

test_s3_store.py (s3fs) and test_obstore_store.py (obstore) each run them through a
subclass of :class:`S3ClientConformance` naming its client. A base class, not fixtures in
conftest.py: the kit's classes declare ``denied_store`` and ``missing_container_store``
themselves (failing until overridden), and a class's own fixtures win over conftest.py's.
"""

from __future__ import annotations

import uuid
from typing import ClassVar

import pytest

from resultstore import resolve_store
from resultstore.stores.base import Store
from resultstore.stores.obstore import ObstoreS3Store
from resultstore.stores.s3 import S3Store
from resultstore.testing import (
    ContainerMissingConformance,
    DeniedConformance,
    StoreConformance,
)

CLIENT_STORES: dict[str, type[Store]] = {"s3fs": S3Store, "obstore": ObstoreS3Store}


class S3ClientConformance(StoreConformance, DeniedConformance, ContainerMissingConformance):
    """The same conformance checks as every other store, unchanged, for the client of
    ``s3://`` that ``client`` names (``RESULTSTORE_S3_CLIENT``)."""

    client: ClassVar[str]
    large_size = 40 * 1024 * 1024  # above part_size: exercises multipart uploads
    # A request costs a few ms on any size: the whole read must be long enough to compare.
    ranged_read_size = 32 * 1024 * 1024

    @pytest.fixture
    def client_url(self, s3_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
        """A fresh prefix in the test bucket, opened with this class's client."""
        monkeypatch.setenv("RESULTSTORE_S3_CLIENT", self.client)
        return s3_url

    def opened(self, url: str) -> Store:
        """The store for ``url``, checked to be this client's."""
        store = resolve_store(url)
        assert isinstance(store, CLIENT_STORES[self.client])
        return store

    @pytest.fixture
    def store(self, client_url: str) -> Store:
        return self.opened(client_url)

    @pytest.fixture
    def denied_store(self, client_url: str, monkeypatch: pytest.MonkeyPatch) -> Store:
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "a-secret-the-server-refuses")
        return self.opened(client_url + "-denied")

    @pytest.fixture
    def missing_container_store(self, client_url: str) -> Store:
        return self.opened(f"s3://no-such-bucket-{uuid.uuid4().hex[:12]}/p")
