"""`PersistedResult`: a value to be stored, and afterwards a small JSON reference to it
that any process can turn back into the value."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from resultstore import (
    ConfigurationError,
    PersistedResult,
    ResultNotFoundError,
    ResultStore,
    RetryPolicy,
    SignatureError,
)
from resultstore.stores.base import Reader
from resultstore.stores.memory import MemoryStore
from states import Completed, State, get_state_result
from states.results import REFERENCE_TAG, ResultReference, load_result_reference

REFERENCE_KEYS = {REFERENCE_TAG, "storage_url", "key", "serializer", "expiration"}


class CountingStore(MemoryStore):
    """A memory store that counts how often records are opened."""

    opens = 0

    async def open(self, key: str) -> Reader:
        self.opens += 1
        return await super().open(key)


@pytest.fixture
def counted(memory_url: str) -> CountingStore:
    return CountingStore(memory_url)


def test_create_result_holds_the_value_before_anything_is_written(
    counted: CountingStore,
) -> None:
    store = ResultStore(counted)
    value = {"rows": [1, 2, 3]}
    result = store.create_result(value, key="job/1")

    assert isinstance(result, PersistedResult)
    assert isinstance(result, ResultReference)  # what `states` expects of a result
    assert result.key == "job/1"
    assert result.storage_url == store.storage_url
    assert result.serializer == "pickle"
    assert result.has_value
    assert result.get() is value
    assert store.exists("job/1") is False  # nothing written yet
    assert counted.opens == 0  # and get() did no I/O


def test_write_persists_the_value(counted: CountingStore) -> None:
    store = ResultStore(counted)
    result = store.create_result([1, 2, 3])
    result.write()
    assert store.read(result.key).result == [1, 2, 3]
    assert result.get() == [1, 2, 3]
    assert counted.opens == 1  # only the explicit read above: get() used memory


def test_without_caching_the_value_is_dropped_after_write(counted: CountingStore) -> None:
    store = ResultStore(counted, cache_result_in_memory=False)
    value = np.arange(10)
    result = store.create_result(value)
    assert result.get() is value  # held until written
    result.write()
    assert not result.has_value

    back = result.get()
    np.testing.assert_array_equal(back, value)
    assert back is not value
    result.get()
    assert counted.opens == 2  # every get() reads storage
    assert not result.has_value


def test_persist_result_false_writes_nothing(memory_url: str) -> None:
    store = ResultStore(memory_url, persist_result=False)
    result = store.create_result("in memory only", key="never/written")
    result.write()
    assert store.keys() == []
    assert result.get() == "in memory only"


@pytest.mark.anyio
async def test_async_write_and_get(memory_url: str) -> None:
    store = ResultStore(memory_url, cache_result_in_memory=False).use_for_references()
    result = store.create_result({"async": True})
    await result.awrite()
    assert await result.aget() == {"async": True}
    assert await PersistedResult.from_reference(result.to_reference()).aget() == {"async": True}


def test_to_reference_says_where_the_value_is_and_nothing_else(tmp_path: Path) -> None:
    store = ResultStore(f"file://{tmp_path}", serializer="json")
    expiration = datetime.datetime(2030, 6, 1, 12, tzinfo=datetime.timezone.utc)
    result = store.create_result({"big": "value" * 1000}, key="runs/9", expiration=expiration)
    reference = result.to_reference()
    assert reference == {
        REFERENCE_TAG: "persisted",
        "storage_url": tmp_path.as_uri(),
        "key": "runs/9",
        "serializer": "json",
        "expiration": "2030-06-01T12:00:00+00:00",
    }
    assert len(json.dumps(reference)) < 300  # the value itself never travels


def test_references_carry_no_credentials(memory_url: str) -> None:
    name = memory_url.removeprefix("memory://")
    with pytest.raises(ConfigurationError) as refused:  # the memory store takes no options
        ResultStore(f"memory://{name}", storage_options={"token": "hunter2"})
    assert "hunter2" not in str(refused.value) and "'token'" in str(refused.value)
    store = ResultStore(f"memory://admin:hunter2@{name}")
    result = store.create_result("value")
    text = json.dumps(result.to_reference())
    assert set(result.to_reference()) == REFERENCE_KEYS
    assert "hunter2" not in text
    assert "admin" not in text
    assert "hunter2" not in repr(result) + repr(store)


def test_from_reference_round_trip(memory_url: str) -> None:
    store = ResultStore(memory_url).use_for_references()
    expiration = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    original = store.create_result({"x": 1}, key="a/b", expiration=expiration)
    original.write()

    reference = json.loads(json.dumps(original.to_reference()))  # as it travels
    loaded = PersistedResult.from_reference(reference)
    assert loaded == original
    assert loaded.to_reference() == original.to_reference()
    assert loaded.expiration == expiration
    assert not loaded.has_value
    assert loaded.get() == {"x": 1}  # fetched from storage
    assert loaded.has_value  # and cached from then on

    # The `states` entry point finds the same class from the tag alone.
    via_entry_point = load_result_reference(reference)
    assert isinstance(via_entry_point, PersistedResult)
    assert via_entry_point.get() == {"x": 1}


def test_equality_is_by_location(memory_url: str) -> None:
    store = ResultStore(memory_url)
    first = store.create_result(1, key="k")
    same_place = PersistedResult(store.storage_url, "k", "pickle")
    assert first == same_place
    assert hash(first) == hash(same_place)
    assert first != store.create_result(1, key="other")
    assert first != PersistedResult("memory://elsewhere", "k")
    assert first != PersistedResult(store.storage_url, "k", "json")
    assert first != first.to_reference()
    assert len({first, same_place}) == 1


def test_a_reference_to_a_missing_value(memory_url: str) -> None:
    store = ResultStore(memory_url, retry=RetryPolicy(attempts=3, delay=0.01))
    store.use_for_references()
    result = store.create_result("never written")
    loaded = PersistedResult.from_reference(result.to_reference())
    with pytest.raises(ResultNotFoundError, match=f"'{result.key}' in {memory_url}"):
        loaded.get(retry=False)


@pytest.mark.parametrize(
    ("reference", "problem"),
    [
        ({REFERENCE_TAG: "persisted", "key": "k"}, ": 'storage_url'"),
        ({REFERENCE_TAG: "persisted", "storage_url": "memory://x"}, ": 'key'"),
        ({"storage_url": "memory://x", "key": "k", "expiration": "someday"}, "'someday'"),
    ],
)
def test_malformed_references_are_configuration_errors(
    reference: dict[str, Any], problem: str
) -> None:
    with pytest.raises(
        ConfigurationError, match=r"^malformed persisted result reference"
    ) as caught:
        PersistedResult.from_reference(reference)
    assert problem in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_reference_with_a_bad_key_is_refused() -> None:
    with pytest.raises(ValueError, match=r"invalid key '\.\./etc/passwd'"):
        PersistedResult.from_reference({"storage_url": "memory://x", "key": "../etc/passwd"})


CHILD = textwrap.dedent(
    """
    import json, sys
    from states.results import load_result_reference

    reference = load_result_reference(json.load(sys.stdin))
    value = reference.get(retry=False)
    print(json.dumps({
        "type": type(reference).__name__,
        "text": value["text"],
        "array": value["array"].tolist(),
        "writable": value["array"].flags.writeable,
    }))
    """
)


def test_another_process_fetches_the_value_from_the_reference_alone(tmp_path: Path) -> None:
    store = ResultStore(f"file://{tmp_path}/shared")
    result = store.create_result({"text": "ünïcode", "array": np.arange(5) * 2})
    result.write()

    # The child knows nothing but the reference: no storage setting, a different HOME.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESULTSTORE_")}
    env["RESULTSTORE_REFERENCE_URLS"] = store.storage_url  # the one setting a consumer needs
    env["HOME"] = str(tmp_path / "elsewhere")
    child = subprocess.run(
        [sys.executable, "-c", CHILD],
        input=json.dumps(result.to_reference()),
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    assert json.loads(child.stdout) == {
        "type": "PersistedResult",
        "text": "ünïcode",
        "array": [0, 2, 4, 6, 8],
        "writable": True,
    }
    assert not (tmp_path / "elsewhere").exists()  # the default storage was never touched


def test_a_store_configured_in_code_serves_the_references_to_its_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"file://{tmp_path}/shared"
    monkeypatch.setenv("RESULTSTORE_REFERENCE_URLS", url)  # allowed, read as configured here
    signed = ResultStore(url, signing_key="key-given-in-code")
    result = signed.create_result({"model": "v2"})
    result.write()
    planted = ResultStore(url).create_result("written by someone without the key")
    planted.write()

    def fetch(reference: PersistedResult) -> Any:
        """What another process does: rebuild the State from its JSON, then read it."""
        received = State.model_validate_json(Completed(data=reference).model_dump_json())
        return get_state_result(received)

    # From JSON alone, the store comes from the environment, which has no signing key.
    assert fetch(planted) == "written by someone without the key"

    assert signed.use_for_references() is signed
    assert fetch(result) == {"model": "v2"}
    with pytest.raises(SignatureError, match="not signed but a signing key is configured"):
        fetch(planted)
