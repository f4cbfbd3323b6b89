"""Create-only and compare-and-swap writes through ResultStore, and plugins of interface 1."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from resultstore import (
    ConfigurationError,
    ResultExistsError,
    ResultStore,
    UnsupportedOperationError,
    VersionConflictError,
)
from resultstore.errors import Reason
from resultstore.stores.memory import MemoryStore


def test_create_only_writes_refuse_an_existing_record(memory_url: str) -> None:
    store = ResultStore(memory_url)
    store.write({"first": True}, key="once", if_absent=True)
    with pytest.raises(ResultExistsError) as caught:
        store.write({"second": True}, key="once", if_absent=True)
    assert caught.value.reason is Reason.EXISTS and caught.value.key == "once"
    assert "'once'" in str(caught.value) and "\n" not in str(caught.value)
    assert store.read("once").result == {"first": True}


def test_compare_and_swap_replaces_only_the_version_it_read(memory_url: str) -> None:
    store = ResultStore(memory_url)
    store.write(1, key="counter")
    seen = store.read("counter").metadata.version
    assert seen is not None and seen == store.read_metadata("counter").version

    store.write(2, key="counter", if_version=seen)
    with pytest.raises(VersionConflictError) as caught:
        store.write(3, key="counter", if_version=seen)  # someone wrote since: refused
    assert caught.value.reason is Reason.CONFLICT
    assert store.read("counter").result == 2
    store.delete("counter")
    with pytest.raises(VersionConflictError):
        store.write(4, key="counter", if_version=seen)


def test_increments_race_without_losing_one(memory_url: str) -> None:
    import threading

    store = ResultStore(memory_url)
    store.write(0, key="n")

    def bump(times: int) -> None:
        for _ in range(times):
            while True:
                record = store.read("n")
                try:
                    store.write(record.result + 1, key="n", if_version=record.metadata.version)
                    break
                except VersionConflictError:
                    continue

    threads = [threading.Thread(target=bump, args=(25,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.read("n").result == 200


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"if_absent": True, "if_version": "1"}, "not both"),
        ({"if_version": 7}, "if_version must be a version string"),
        ({"if_version": ""}, "if_version must be a version string"),
    ],
)
def test_bad_conditions_are_one_line_errors(
    memory_url: str, kwargs: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        ResultStore(memory_url).write(1, key="k", **kwargs)


class Unconditional(MemoryStore):
    """A store without atomic conditions: it must say so, not emulate them."""

    supports_conditional_write = False


def test_a_store_without_conditional_writes_refuses_them_before_any_io(memory_url: str) -> None:
    store = ResultStore(Unconditional(memory_url))
    with pytest.raises(UnsupportedOperationError) as caught:
        store.write(1, key="k", if_absent=True)
    assert caught.value.reason is Reason.UNSUPPORTED and "conditional writes" in str(caught.value)
    assert store.keys() == []


V1_PLUGIN = """
from resultstore.stores.base import BytesReader, Store

class OldStore(Store):
    interface_version = 1
    records = {}

    async def write(self, key, payload):
        self.records[key] = payload.join()

    async def open(self, key):
        if key not in self.records:
            raise self.not_found(key)
        return BytesReader(self.records[key])

    async def exists(self, key):
        return key in self.records

    async def delete(self, key):
        return self.records.pop(key, None) is not None

    async def list(self, prefix=""):
        for key in list(self.records):
            if key.startswith(prefix):
                yield key

class FutureStore(OldStore):
    interface_version = 3
"""

USE_V1 = """
from resultstore import ResultStore, UnsupportedOperationError
store = ResultStore("old://here")
store.write({"rows": 3}, key="a/b")
assert store.read("a/b").result == {"rows": 3}
assert store.read_metadata("a/b").serializer == "pickle"
assert store.keys() == ["a/b"] and store.exists("a/b")
try:
    store.write(1, key="a/b", if_absent=True)
except UnsupportedOperationError as exc:
    print("refused:", exc)
assert store.delete("a/b") is True and store.delete("a/b") is False
"""


def _child(site: Path, code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.fixture
def old_plugin(tmp_path: Path) -> Path:
    dist = tmp_path / "old_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: old-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[resultstore.stores]\nold = old_plugin:OldStore\nfuture = old_plugin:FutureStore\n"
    )
    (tmp_path / "old_plugin.py").write_text(textwrap.dedent(V1_PLUGIN))
    return tmp_path


def test_a_plugin_written_for_interface_1_still_works(old_plugin: Path) -> None:
    done = _child(old_plugin, USE_V1)
    assert done.returncode == 0, done.stderr
    refusal = done.stdout.strip()
    assert refusal.startswith("refused: old://here does not support conditional writes")
    assert "interface 1" in refusal and "\n" not in refusal


def test_a_plugin_for_a_newer_interface_says_to_upgrade_resultstore(old_plugin: Path) -> None:
    done = _child(old_plugin, "from resultstore import ResultStore; ResultStore('future://x')")
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "old-plugin" in last and "version 3" in last and "upgrade resultstore" in last
