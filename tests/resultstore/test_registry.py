"""Stores are found by URL scheme through the ``resultstore.stores`` entry points."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from resultstore import (
    ConfigurationError,
    UnknownSchemeError,
    available_stores,
    resolve_store,
)
from resultstore.stores.file import FileStore
from resultstore.stores.memory import MemoryStore


def test_builtin_schemes_are_registered_as_entry_points_by_this_distribution() -> None:
    stores = available_stores()
    assert {scheme: stores[scheme] for scheme in ("file", "memory", "s3")} == {
        "file": "resultstore",
        "memory": "resultstore",
        "s3": "resultstore",
    }


def test_plain_paths_and_file_urls_open_the_file_store(tmp_path: Path) -> None:
    assert isinstance(resolve_store(str(tmp_path)), FileStore)
    store = resolve_store(f"file://{tmp_path}")
    assert isinstance(store, FileStore)
    assert store.url == tmp_path.as_uri()


def test_memory_urls_share_one_space_per_name() -> None:
    first, second = resolve_store("memory://shared-name"), resolve_store("memory://shared-name")
    assert isinstance(first, MemoryStore) and isinstance(second, MemoryStore)
    assert first.name == second.name == "shared-name"


def test_unknown_scheme_names_it_and_lists_installed_schemes() -> None:
    with pytest.raises(UnknownSchemeError) as caught:
        resolve_store("nosuchscheme://bucket/x")
    message = str(caught.value)
    assert "'nosuchscheme'" in message
    assert "file" in message and "memory" in message and "s3" in message


def test_a_known_fsspec_protocol_without_its_package_says_what_to_install() -> None:
    with pytest.raises(ConfigurationError, match="install"):
        resolve_store("gcs://bucket/prefix")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("", "empty"),
        ("c:thing", "malformed storage URL"),
        ("s3://UPPER_case/x", "invalid S3 bucket name"),
        ("bad scheme://x", "bad scheme"),
    ],
)
def test_malformed_urls_are_one_line_errors(url: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment) as caught:
        resolve_store(url)
    assert "\n" not in str(caught.value)


def test_non_string_url_names_the_type() -> None:
    with pytest.raises(ConfigurationError, match="not int"):
        resolve_store(42)  # type: ignore[arg-type]


def _fake_distribution(site: Path, name: str, entry_points: str, module: str = "") -> None:
    dist = site / f"{name.replace('-', '_')}-1.0.dist-info"  # as installers name it
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    if module:
        (site / f"{name.replace('-', '_')}.py").write_text(textwrap.dedent(module))


def _resolve_in_child(site: Path, url: str) -> subprocess.CompletedProcess[str]:
    code = f"from resultstore import resolve_store; print(type(resolve_store({url!r})).__name__)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )


PLUGIN_MODULE = """
from resultstore.stores.base import Store
from resultstore.stores.memory import MemoryStore

class UndeclaredStore(Store):
    async def write(self, key, payload): ...
    async def open(self, key): ...
    async def exists(self, key): ...
    async def delete(self, key): ...
    def list(self, prefix=""): ...

class BrokenStore(MemoryStore):
    def __init__(self, url, **options):
        raise RuntimeError("cannot reach the backend")

class OldStore(MemoryStore):
    interface_version = 0

class FineStore(MemoryStore):
    pass
"""


def test_two_distributions_claiming_one_scheme_is_an_error_naming_both(tmp_path: Path) -> None:
    _fake_distribution(
        tmp_path, "plugin-one", "[resultstore.stores]\ndup = plugin_one:FineStore\n", PLUGIN_MODULE
    )
    _fake_distribution(
        tmp_path, "plugin-two", "[resultstore.stores]\ndup = plugin_two:FineStore\n", PLUGIN_MODULE
    )

    done = _resolve_in_child(tmp_path, "dup://x")

    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "'dup' is claimed by" in last
    assert "plugin-one" in last and "plugin-two" in last


def test_one_distribution_found_twice_on_the_path_is_not_a_conflict(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for site in (first, second):
        _fake_distribution(
            site,
            "twin-plugin",
            "[resultstore.stores]\ntwin = twin_plugin:FineStore\n",
            PLUGIN_MODULE,
        )
    code = "from resultstore import resolve_store; print(type(resolve_store('twin://x')).__name__)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(first), str(second), *sys.path])}

    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "FineStore"


def test_a_plugin_of_another_interface_version_is_refused(tmp_path: Path) -> None:
    _fake_distribution(
        tmp_path, "old-plugin", "[resultstore.stores]\nold = old_plugin:OldStore\n", PLUGIN_MODULE
    )

    done = _resolve_in_child(tmp_path, "old://x")

    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "old-plugin" in last
    assert "interface version 0" in last and "speaks versions 1 to 2" in last
    assert "upgrade the plugin" in last


def test_a_plugin_that_declares_no_interface_version_is_refused(tmp_path: Path) -> None:
    _fake_distribution(
        tmp_path,
        "lazy-plugin",
        "[resultstore.stores]\nlazy = lazy_plugin:UndeclaredStore\n",
        PLUGIN_MODULE,
    )

    done = _resolve_in_child(tmp_path, "lazy://x")

    last = done.stderr.strip().splitlines()[-1]
    assert "lazy-plugin" in last and "declares no interface_version" in last


def test_a_store_failing_to_open_is_a_plugin_error_naming_the_url(tmp_path: Path) -> None:
    _fake_distribution(
        tmp_path,
        "broken-plugin",
        "[resultstore.stores]\nbroken = broken_plugin:BrokenStore\n",
        PLUGIN_MODULE,
    )

    done = _resolve_in_child(tmp_path, "broken://user:pw@host/x")

    last = done.stderr.strip().splitlines()[-1]
    assert "PluginError" in last
    assert "the 'broken' store failed to open 'broken://host/x'" in last
    assert "cannot reach the backend" in last and "pw" not in last


def test_a_third_party_plugin_is_found_through_its_entry_point_only(tmp_path: Path) -> None:
    _fake_distribution(
        tmp_path,
        "fine-plugin",
        "[resultstore.stores]\nfine = fine_plugin:FineStore\n",
        PLUGIN_MODULE,
    )

    done = _resolve_in_child(tmp_path, "fine://x")

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "FineStore"


def test_importing_resultstore_does_not_import_s3fs_or_botocore() -> None:
    code = (
        "import sys, resultstore, states; "
        "print(sorted(m for m in ('s3fs', 'botocore', 'aiobotocore', 'numpy') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]"


SERIALIZER_MODULE = """
from resultstore.serializers import Serializer

class ReversedBytes(Serializer):
    name = "reversed"

    def dumps(self, obj):
        return [bytes(obj)[::-1]]

    def loads(self, segments):
        return b"".join(bytes(s) for s in segments)[::-1]
"""


def test_a_third_party_serializer_is_found_through_its_entry_point(tmp_path: Path) -> None:
    _fake_distribution(
        tmp_path,
        "reversed-serializer",
        "[resultstore.serializers]\nreversed = reversed_serializer:ReversedBytes\n",
        SERIALIZER_MODULE,
    )
    code = (
        "from resultstore import ResultStore, available_serializers; "
        "store = ResultStore('memory://x', serializer='reversed'); "
        "print(store.read(store.write(b'abc')).result, available_serializers()['reversed'])"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["b'abc'", "reversed-serializer"]
