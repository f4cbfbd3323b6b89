"""tools/read_record.py reads records the library writes, with only the standard library.

It runs as ``python -I -S tools/read_record.py``: no site-packages, so neither
resultstore nor xxhash can be imported; its pure-Python xxh3 is checked against
the xxhash package here.
"""

from __future__ import annotations

import datetime
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import xxhash

from resultstore import ResultStore

TOOL = Path(__file__).resolve().parents[1] / "tools" / "read_record.py"
KEY = "s3cr3t-0123456789abcdef"


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", "-S", str(TOOL), *args], capture_output=True, text=True, timeout=120
    )


def test_the_tool_runs_without_site_packages() -> None:
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", "import resultstore"], capture_output=True, text=True
    )
    assert "No module named 'resultstore'" in done.stderr
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", "import xxhash"], capture_output=True, text=True
    )
    assert "No module named 'xxhash'" in done.stderr


def load_tool() -> object:
    import importlib.util

    spec = importlib.util.spec_from_file_location("read_record", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_pure_python_xxh3_matches_the_xxhash_package() -> None:
    tool = load_tool()
    rng = random.Random(7)
    lengths = [*range(0, 260), 511, 1024, 1025, 2048, 2049, 4097, 65_537]
    for n in lengths:
        data = rng.randbytes(n)
        assert tool.xxh3_64(data) == xxhash.xxh3_64_intdigest(data), n  # type: ignore[attr-defined]
        assert tool.xxh3_128(data) == xxhash.xxh3_128_intdigest(data), n  # type: ignore[attr-defined]


def record_file(tmp_path: Path, value: object, **options: object) -> tuple[Path, str]:
    store = ResultStore(f"file://{tmp_path / 'store'}", **options)  # type: ignore[arg-type]
    key = store.write(value, key="runs/one")
    return tmp_path / "store" / "runs" / "one.rsr", key  # the file store: KEY.rsr


@pytest.mark.parametrize("serializer", ["json", "json+lzma", "json+bz2", "json+zlib"])
def test_json_records_print_their_metadata_and_value(tmp_path: Path, serializer: str) -> None:
    value = {"n": 1, "when": datetime.date(2024, 1, 2), "pair": (1, "a"), "text": "é"}
    path, _ = record_file(tmp_path, value, serializer=serializer)
    done = run_tool(str(path))
    assert done.returncode == 0, done.stderr
    meta_end = done.stdout.index("\n}\n") + 3
    metadata = json.loads(done.stdout[:meta_end])["metadata"]
    assert metadata["serializer"] == serializer and metadata["signed"] is False
    assert json.loads(done.stdout[meta_end:])["value"] == {
        "n": 1,
        "when": {"$type": "date", "value": "2024-01-02"},
        "pair": {"$type": "tuple", "items": [1, "a"]},
        "text": "é",
    }


def test_bytes_values_are_written_out_raw(tmp_path: Path) -> None:
    blob = bytes(range(256)) * 10
    path, _ = record_file(tmp_path, blob, serializer="json")
    done = run_tool(str(path), "--out", str(tmp_path / "blob.bin"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "blob.bin").read_bytes() == blob


def test_pickle_records_are_verified_but_never_unpickled(tmp_path: Path) -> None:
    path, _ = record_file(tmp_path, {"x": list(range(1000))})
    done = run_tool(str(path), "--out", str(tmp_path / "payload"))
    assert done.returncode == 0, done.stderr
    assert "not decoded here" in done.stdout
    assert (tmp_path / "payload").stat().st_size == json.loads(
        done.stdout[: done.stdout.index("\n}\n") + 3]
    )["metadata"]["size"]


def test_signatures_verify_for_their_key_and_storage_key_only(tmp_path: Path) -> None:
    path, key = record_file(tmp_path, [1, 2], serializer="json", signing_key=KEY)
    assert run_tool(str(path), "--signing-key", KEY, "--storage-key", key).returncode == 0
    wrong_key = run_tool(str(path), "--signing-key", KEY + "x", "--storage-key", key)
    moved = run_tool(str(path), "--signing-key", KEY, "--storage-key", "runs/other")
    for done in (wrong_key, moved):
        assert done.returncode == 1 and "signature does not verify" in done.stderr


def test_damage_anywhere_is_reported(tmp_path: Path) -> None:
    path, _ = record_file(tmp_path, {"n": 1}, serializer="json")
    good = path.read_bytes()
    for at, why in ((0, "bad magic"), (20, "header hash"), (len(good) - 2, "payload checksum")):
        damaged = bytearray(good)
        damaged[at] ^= 0xFF
        path.write_bytes(bytes(damaged))
        done = run_tool(str(path))
        assert done.returncode == 1 and why in done.stderr, (at, done.stderr)
    path.write_bytes(good[:-1])
    assert "payload bytes" in run_tool(str(path)).stderr
