"""Storage options: a misspelled one is an error, and the environment's reach the right store."""

from __future__ import annotations

from pathlib import Path

import pytest

from resultstore import ConfigurationError, ResultStore
from resultstore.stores.file import FileStore


def test_a_misspelled_option_is_refused_naming_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        ResultStore(tmp_path.as_uri(), storage_options={"fsnyc": False})
    message = str(caught.value)
    assert "unknown storage option 'fsnyc'" in message and "valid options: fsync" in message
    with pytest.raises(ConfigurationError, match="valid options: none"):
        ResultStore("memory://options", storage_options={"fsync": False})


def test_environment_options_keyed_by_scheme_reach_only_their_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "RESULTSTORE_STORAGE_OPTIONS", '{"file://": {"fsync": false}, "s3://": {"anon": true}}'
    )
    store = ResultStore(tmp_path.as_uri())
    assert isinstance(store.store, FileStore) and store.store.fsync is False
    assert ResultStore("memory://keyed").storage_url == "memory://keyed"  # gets nothing


def test_flat_environment_options_follow_the_configured_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESULTSTORE_STORAGE_OPTIONS", '{"fsync": false}')
    monkeypatch.setenv("RESULTSTORE_STORAGE_URL", tmp_path.as_uri())
    store = ResultStore()
    assert isinstance(store.store, FileStore) and store.store.fsync is False
    ResultStore("memory://flat")  # another scheme: the file options do not reach it


def test_half_keyed_environment_options_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESULTSTORE_STORAGE_OPTIONS", '{"file://": {}, "fsync": false}')
    with pytest.raises(ConfigurationError, match="RESULTSTORE_STORAGE_OPTIONS: either key"):
        ResultStore("memory://half")
