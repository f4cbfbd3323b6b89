"""Every bad input gives one clear line naming the thing at fault."""

from __future__ import annotations

import datetime

import pytest

from resultstore import (
    ConfigurationError,
    PersistedResult,
    ResultStore,
    ResultStoreError,
    UnknownSerializerError,
    resolve_store,
)
from resultstore.records import ResultMetadata
from resultstore.stores.memory import MemoryStore


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


def test_an_empty_signing_key_is_refused_not_silently_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        ResultStore("memory://sig", signing_key="")
    assert "signing_key is 0 bytes, shorter than the 16 required" in one_line(caught)

    monkeypatch.setenv("RESULTSTORE_SIGNING_KEY", "")
    with pytest.raises(ConfigurationError) as caught:
        ResultStore("memory://sig")
    assert "RESULTSTORE_SIGNING_KEY is 0 bytes, shorter than the 16 required" in one_line(caught)


@pytest.mark.parametrize(
    ("reference", "fragment"),
    [
        ({"storage_url": None, "key": "k"}, "'storage_url' must be a non-empty string"),
        ({"storage_url": "memory://x", "key": 5}, "'key' must be a non-empty string, got int"),
        (
            {"storage_url": "memory://x", "key": "k", "serializer": None},
            "'serializer' must be a non-empty string",
        ),
        ({"storage_url": "memory://x", "key": "k", "expiration": "soon"}, "bad expiration 'soon'"),
        ({"storage_url": "memory://x", "key": "../up"}, "invalid key '../up'"),
    ],
)
def test_malformed_references_are_refused(reference: dict[str, object], fragment: str) -> None:
    with pytest.raises(ResultStoreError) as caught:
        PersistedResult.from_reference(reference)
    assert fragment in one_line(caught)


def test_memory_urls_drop_credentials() -> None:
    store = resolve_store("memory://user:pw@space")
    assert isinstance(store, MemoryStore)
    assert store.url == "memory://space"
    assert "pw" not in repr(store)


def test_a_record_of_an_uninstalled_serializer_names_the_key() -> None:
    from resultstore._loops import run_sync
    from resultstore.records import encode_record
    from resultstore.stores.base import Payload

    store = ResultStore("memory://foreign-serializer")
    run_sync(store.store.write("k/1", Payload(encode_record([b"x"], serializer="msgpack"))))

    with pytest.raises(UnknownSerializerError) as caught:
        store.read("k/1", retry=False)
    message = one_line(caught)
    assert "'k/1'" in message and "'msgpack'" in message


def test_an_out_of_range_expiration_is_a_configuration_error() -> None:
    far = datetime.datetime(1, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=5)))
    with pytest.raises(ConfigurationError) as caught:
        ResultStore("memory://exp").write(1, expiration=far)
    assert "out of range" in one_line(caught)


def test_naive_datetimes_are_taken_as_utc() -> None:
    metadata = ResultMetadata(
        storage_key="k",
        serializer="pickle",
        size=1,
        checksum="c",
        created=datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
        expiration=datetime.datetime(2026, 1, 2, tzinfo=datetime.timezone.utc),
    )
    assert metadata.is_expired(now=datetime.datetime(2026, 1, 3))
    assert not metadata.is_expired(now=datetime.datetime(2026, 1, 1, 12))
