"""The conformance kit, run against the reference stores and against every broken store.

Not collected by the project's test run (its name has no ``test_`` prefix): it fails on
purpose. ``test_kit_catches_broken_stores.py`` runs it in a subprocess, with ``kv://``
installed as a plugin (a ``.dist-info`` on ``PYTHONPATH``) and ``KITKV_PASSWORD`` set, and
reads which checks failed for which store.

Each class is one store put through the whole kit; ``Test<Name>`` runs
``broken_stores.<Name>``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import broken_stores as broken
import pytest
from kvstore import KVServer, KVStore, free_port

from resultstore.stores.base import Store
from resultstore.stores.memory import MemoryStore
from resultstore.testing import (
    ContainerMissingConformance,
    DeniedConformance,
    MultiProcessConformance,
    SecretConformance,
    StoreConformance,
    UnreachableConformance,
)


@pytest.fixture(scope="module")
def kv_server() -> Iterator[KVServer]:
    server = KVServer(os.environ["KITKV_PASSWORD"]).start()
    try:
        yield server
    finally:
        server.stop()


class DictCase(StoreConformance, ContainerMissingConformance):
    """The kit on a ``broken_stores.DictStore`` (sub)class, a fresh one per check."""

    store_class: type[broken.DictStore] = broken.DictStore

    @pytest.fixture
    def store(self) -> Store:
        return self.store_class()

    @pytest.fixture
    def missing_container_store(self) -> Store:
        return self.store_class.missing_container_class()


class KVCase(
    StoreConformance,
    UnreachableConformance,
    DeniedConformance,
    SecretConformance,
    MultiProcessConformance,
):
    """The kit and every mixin on a ``kvstore.KVStore`` (sub)class, in a fresh namespace."""

    store_class: type[KVStore] = KVStore
    large_size = 2 * 1024 * 1024

    @pytest.fixture
    def store(self, kv_server: KVServer) -> Store:
        return self.store_class(kv_server.url(f"kit-{uuid.uuid4().hex}"))

    @pytest.fixture
    def unreachable_store(self) -> Store:
        return self.store_class(f"kv://127.0.0.1:{free_port()}/down", password="any")

    @pytest.fixture
    def denied_store(self, kv_server: KVServer) -> Store:
        return self.store_class(kv_server.url(f"kit-{uuid.uuid4().hex}"), password="wrong")

    @pytest.fixture
    def secret(self, kv_server: KVServer) -> str:
        return kv_server.password

    @pytest.fixture
    def secret_store(self, kv_server: KVServer, secret: str) -> Store:
        return self.store_class(kv_server.url(f"kit-{uuid.uuid4().hex}", with_password=True))


# -- the references: they pass everything --------------------------------------------


class TestMemoryStore(StoreConformance, SecretConformance):
    """The built-in memory store; it can be neither unreachable nor shared by processes."""

    @pytest.fixture
    def store(self) -> Store:
        return MemoryStore(f"memory://kit-{uuid.uuid4().hex}")

    @pytest.fixture
    def secret_store(self, secret: str) -> Store:
        return MemoryStore(f"memory://user:{secret}@kit-{uuid.uuid4().hex}")


class TestDictStore(DictCase):
    pass


class TestKVStore(KVCase):
    pass


# -- broken stores: each must fail the kit --------------------------------------------


class TestDeletesThenWrites(DictCase):
    store_class = broken.DeletesThenWrites


class TestWritesInPlace(DictCase):
    store_class = broken.WritesInPlace


class TestChecksThenCreates(DictCase):
    store_class = broken.ChecksThenCreates


class TestChecksVersionThenWrites(DictCase):
    store_class = broken.ChecksVersionThenWrites


class TestKeepsOneVersion(DictCase):
    store_class = broken.KeepsOneVersion


class TestOverwritesDespiteConditions(DictCase):
    store_class = broken.OverwritesDespiteConditions


class TestSaysDeletedForMissingKeys(DictCase):
    store_class = broken.SaysDeletedForMissingKeys


class TestIgnoresRanges(DictCase):
    store_class = broken.IgnoresRanges


class TestFetchesWholeThenSlices(DictCase):
    store_class = broken.FetchesWholeThenSlices


class TestMiscountsSizes(DictCase):
    store_class = broken.MiscountsSizes


class TestListsPageBoundariesTwice(DictCase):
    store_class = broken.ListsPageBoundariesTwice


class TestSkipsKeysAtPageBoundaries(DictCase):
    store_class = broken.SkipsKeysAtPageBoundaries


class TestListsVersionsAsMD5s(DictCase):
    store_class = broken.ListsVersionsAsMD5s


class TestStatLetsKeyErrorEscape(DictCase):
    store_class = broken.StatLetsKeyErrorEscape


class TestListsOnlyTheFirstPage(DictCase):
    store_class = broken.ListsOnlyTheFirstPage


class TestRepeatsAPageOfDetails(DictCase):
    store_class = broken.RepeatsAPageOfDetails


class TestListsTemporaryNames(DictCase):
    store_class = broken.ListsTemporaryNames


class TestLeavesItsProbeRecord(DictCase):
    store_class = broken.LeavesItsProbeRecord


class TestListsStaleMD5s(DictCase):
    store_class = broken.ListsStaleMD5s


class TestPromisesTheMD5OfTheFirstBuffer(DictCase):
    store_class = broken.PromisesTheMD5OfTheFirstBuffer


class TestDecodesEscapesInKeys(DictCase):
    store_class = broken.DecodesEscapesInKeys


class TestFoldsCase(DictCase):
    store_class = broken.FoldsCase


class TestSwapsAgainstAnyKeysVersion(DictCase):
    store_class = broken.SwapsAgainstAnyKeysVersion


class TestReturnsShortReads(DictCase):
    store_class = broken.ReturnsShortReads


class TestClosesReadersOnlyOnce(DictCase):
    store_class = broken.ClosesReadersOnlyOnce


class TestUnusableAfterAclose(DictCase):
    store_class = broken.UnusableAfterAclose


class TestDeclaresNoInterfaceVersion(DictCase):
    store_class = broken.DeclaresNoInterfaceVersion


class TestSaysNotFoundForAMissingContainer(DictCase):
    store_class = broken.SaysNotFoundForAMissingContainer


class TestAnswersExistsWithText(DictCase):
    store_class = broken.AnswersExistsWithText


class TestListsKeysAsBytes(DictCase):
    store_class = broken.ListsKeysAsBytes


class TestStatsSizesAsFloats(DictCase):
    store_class = broken.StatsSizesAsFloats


class TestLetsClientErrorsEscape(KVCase):
    store_class = broken.LetsClientErrorsEscape


class TestReportsUnreachableAsStorageError(KVCase):
    store_class = broken.ReportsUnreachableAsStorageError


class TestShowsPasswordInRepr(KVCase):
    store_class = broken.ShowsPasswordInRepr


class TestShowsPasswordInErrors(KVCase):
    store_class = broken.ShowsPasswordInErrors


class TestSharesConnectionsAcrossFork(KVCase):
    store_class = broken.SharesConnectionsAcrossFork


class TestReportsRefusedPasswordAsUnreachable(KVCase):
    store_class = broken.ReportsRefusedPasswordAsUnreachable
