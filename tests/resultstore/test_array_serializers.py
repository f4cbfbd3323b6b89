"""The code-free array and table serializers: npy, arrow, and the auto dispatcher."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from resultstore import ResultStore, SerializationError, SerializerNotAllowedError
from resultstore.array_serializers import NPY_MAGIC, NpySerializer, parse_npy_header
from resultstore.serializers import get_serializer

NPY = NpySerializer()


def roundtrip(array: Any) -> Any:
    header, data = NPY.dumps(array)
    # as a store gives them back: a small first segment, then a fresh bytearray
    return NPY.loads([bytes(header), bytearray(data)])


def same(a: Any, b: Any) -> None:
    assert type(b) is np.ndarray
    assert b.dtype == a.dtype and b.shape == a.shape
    assert a.tobytes(order="A") == b.tobytes(order="A") or np.array_equal(a, b, equal_nan=True)


dtypes = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness="?"),
    hnp.unsigned_integer_dtypes(endianness="?"),
    hnp.floating_dtypes(endianness="?"),
    hnp.complex_number_dtypes(endianness="?"),
    hnp.datetime64_dtypes(endianness="?"),
    hnp.timedelta64_dtypes(endianness="?"),
    hnp.byte_string_dtypes(min_len=1, max_len=8),
    hnp.unicode_string_dtypes(min_len=1, max_len=8, endianness="?"),
)
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@settings(max_examples=300, deadline=None)
@given(array=hnp.arrays(dtypes, shapes), order=st.sampled_from("CFA"), step=st.booleans())
def test_npy_round_trips_every_dtype_shape_byte_order_and_layout(
    array: Any, order: str, step: bool
) -> None:
    array = np.asarray(array, order=order)
    if step and array.ndim:
        array = array[::2]  # not contiguous: copied once
    back = roundtrip(array)
    same(array, back)
    assert back.flags.writeable
    if array.ndim > 1 and array.flags.f_contiguous and not array.flags.c_contiguous:
        assert back.flags.f_contiguous  # Fortran order kept, not transposed on the way
    # the segments joined are a .npy file numpy reads
    loaded = np.load(io.BytesIO(b"".join(bytes(s) for s in NPY.dumps(array))))
    same(array, loaded)


def test_npy_writes_the_array_memory_itself() -> None:
    array = np.arange(1 << 16, dtype=np.float64)
    _, data = NPY.dumps(array)
    assert isinstance(data, memoryview)
    assert np.shares_memory(np.frombuffer(data, dtype=np.uint8), array)
    fortran = np.asfortranarray(np.ones((300, 200)))
    _, data = NPY.dumps(fortran)
    assert np.shares_memory(np.frombuffer(data, dtype=np.uint8), fortran)


def test_npy_round_trips_structured_dtypes_without_objects() -> None:
    array = np.zeros(3, dtype=[("a", "<i4"), ("b", ">f8", (2,)), ("c", [("d", "S3")])])
    array["a"] = [1, 2, 3]
    same(array, roundtrip(array))


@pytest.mark.parametrize(
    "value",
    [np.array([1, "a", None], dtype=object), np.zeros(2, dtype=[("a", "O")])],
    ids=["object", "structured-object"],
)
def test_npy_refuses_object_arrays_naming_pickle(value: Any) -> None:
    with pytest.raises(SerializationError, match="pickle"):
        NPY.dumps(value)


@pytest.mark.parametrize(
    "value", [[1, 2], np.float64(1.0), np.ma.masked_array([1, 2], mask=[0, 1])]
)
def test_npy_refuses_what_is_not_a_plain_ndarray(value: Any) -> None:
    with pytest.raises(SerializationError, match=type(value).__name__):
        NPY.dumps(value)


def forged(text: str, version: bytes = b"\x01\x00") -> bytes:
    raw = text.encode("latin-1")
    size = struct.pack("<H" if version == b"\x01\x00" else "<I", len(raw))
    return NPY_MAGIC + version + size + raw


def test_a_forged_huge_shape_is_refused_before_allocating() -> None:
    header = forged("{'descr': '<f8', 'fortran_order': False, 'shape': (1000000, 1000000), }")
    tracemalloc.start()
    try:
        with pytest.raises(SerializationError, match="needs 8000000000000 bytes"):
            NPY.loads([header, bytearray(16)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", "object dtypes need pickle"),
        ("{'descr': [('a', '|O')], 'fortran_order': False, 'shape': (2,), }", "not allowed"),
        (
            "{'descr': __import__('os').system('touch pwned'), 'fortran_order': False, "
            "'shape': (1,), }",
            "not a literal dict",
        ),
        ("{'descr': '<f8', 'fortran_order': False, 'shape': (len('ab'),), }", "not a literal"),
        ("{'descr': '<f8', 'fortran_order': 0, 'shape': (1,), }", "fortran_order"),
        ("{'descr': '<f8', 'fortran_order': False, 'shape': (-1,), }", "non-negative"),
        ("{'descr': '<f8', 'fortran_order': False, 'shape': (1.0,), }", "non-negative"),
        ("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), 'x': 1}", "keys"),
        ("{'descr': 'f8;rm -rf', 'fortran_order': False, 'shape': (1,), }", "not allowed"),
        ("[1, 2]", "keys"),
    ],
)
def test_forged_npy_headers_are_refused(text: str, why: str, tmp_path: Path) -> None:
    with pytest.raises(SerializationError, match=why):
        NPY.loads([forged(text), bytearray(8)])
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_npy_header_parser_checks_magic_version_and_length() -> None:
    good = bytes(NPY.dumps(np.arange(3))[0])
    assert parse_npy_header(good)[:3] == ("<i8", False, (3,))
    for bad, why in [
        (b"\x93NUMPX" + good[6:], "magic"),
        (good[:6] + b"\x09\x00" + good[8:], "version"),
        (good[:-1], "claims"),
        (forged("{" + " " * 70000 + "}", b"\x02\x00"), "over"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_npy_header(bad)


# -- through a store --------------------------------------------------------------------


def test_a_code_free_reader_reads_npy_records_and_refuses_pickle(tmp_path: Path) -> None:
    url = tmp_path.as_uri()
    writer = ResultStore(url, serializer="auto")
    writer.write(np.arange(6).reshape(2, 3), key="array")
    writer.write({"not": "an array"}, key="dict")
    assert writer.read_metadata("array").serializer == "npy"
    assert writer.read_metadata("dict").serializer == "pickle"
    reader = ResultStore(url, serializer="json")
    same(np.arange(6).reshape(2, 3), reader.read("array").result)
    with pytest.raises(SerializerNotAllowedError):
        reader.read("dict")
    assert writer.read("dict").result == {"not": "an array"}


def test_auto_strict_refuses_other_values_and_auto_json_writes_json(tmp_path: Path) -> None:
    strict = ResultStore(tmp_path.as_uri(), serializer="auto-strict")
    with pytest.raises(SerializationError, match=r"auto-strict.*dict.*pickle is not allowed"):
        strict.write({"a": 1}, key="k")
    with pytest.raises(SerializationError, match="object"):
        strict.write(np.array([None]), key="k")
    loose = ResultStore(tmp_path.as_uri(), serializer={"type": "auto", "fallback": "json"})
    loose.write({"a": 1}, key="k")
    assert loose.read_metadata("k").serializer == "json"
    assert get_serializer("auto").also_reads >= {"pickle", "pickle+zstd"}
    assert not get_serializer("auto-json").also_reads & {"pickle"}


def test_auto_sends_object_arrays_to_pickle(tmp_path: Path) -> None:
    store = ResultStore(tmp_path.as_uri(), serializer="auto")
    store.write(np.array([1, None], dtype=object), key="k")
    assert store.read_metadata("k").serializer == "pickle"


def test_auto_records_reopen_by_name() -> None:
    for name in ("auto", "auto-json", "auto-strict", "npy", "arrow"):
        serializer = get_serializer(name)
        assert serializer.name == name
        assert get_serializer(serializer.configuration or {}) == serializer
    with pytest.raises(SerializationError, match="names the serializer"):
        get_serializer("auto").loads([b""])


# -- arrow ------------------------------------------------------------------------------

pa = pytest.importorskip("pyarrow")


def test_arrow_round_trips_a_table_in_a_code_free_reader(tmp_path: Path) -> None:
    table = pa.table({"x": [1, 2, None], "s": ["a", None, "c"], "f": [1.5, 2.5, 3.5]})
    table = table.replace_schema_metadata({"mine": "kept"})
    writer = ResultStore(tmp_path.as_uri(), serializer="auto")
    writer.write(table, key="t")
    assert writer.read_metadata("t").serializer == "arrow"
    back = ResultStore(tmp_path.as_uri(), serializer="json").read("t").result
    assert isinstance(back, pa.Table)
    assert back.equals(table) and back.schema.metadata == {b"mine": b"kept"}


def test_arrow_round_trips_pandas_frames() -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(
        {"a": [1, 2, 3], "b": ["x", "y", None], "c": pd.Categorical(["u", "v", "u"])},
        index=pd.Index(["i", "j", "k"], name="idx"),
    )
    serializer = get_serializer("arrow")
    back = serializer.loads(serializer.dumps(frame))
    assert isinstance(back, pd.DataFrame)
    pd.testing.assert_frame_equal(back, frame)


def test_arrow_refuses_other_values_and_damaged_payloads() -> None:
    serializer = get_serializer("arrow")
    with pytest.raises(SerializationError, match="type dict"):
        serializer.dumps({"a": 1})
    data = bytes(serializer.dumps(pa.table({"x": list(range(100))}))[0])
    with pytest.raises(SerializationError, match="arrow serializer cannot decode"):
        serializer.loads([data[: len(data) // 2]])
    with pytest.raises(SerializationError, match="arrow serializer cannot decode"):
        serializer.loads([b"ARROW1" + b"\x00" * 64])


# -- tools/read_record.py ---------------------------------------------------------------

TOOL = Path(__file__).resolve().parents[2] / "tools" / "read_record.py"


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", "-S", str(TOOL), *args], capture_output=True, text=True, timeout=120
    )


def test_the_standard_library_tool_describes_npy_records_and_saves_a_npy_file(
    tmp_path: Path,
) -> None:
    array = np.asfortranarray(np.arange(24, dtype=">i4").reshape(2, 3, 4))
    ResultStore(tmp_path.as_uri(), serializer="auto").write(array, key="a")
    out = tmp_path / "a.npy"
    done = run_tool(str(tmp_path / "a.rsr"), "--out", str(out))
    assert done.returncode == 0, done.stderr
    start = done.stdout.index('{\n  "npy"')
    described = json.loads(done.stdout[start : done.stdout.index("\n}\n", start) + 2])
    assert described == {
        "npy": {
            "dtype": ">i4",
            "shape": [2, 3, 4],
            "fortran_order": True,
            "data_bytes": 96,
            "elements": 24,
        }
    }
    same(array, np.load(out))


def test_the_tool_saves_arrow_records_as_ipc_files(tmp_path: Path) -> None:
    table = pa.table({"x": [1, 2, 3]})
    ResultStore(tmp_path.as_uri(), serializer="arrow").write(table, key="t")
    out = tmp_path / "t.arrow"
    done = run_tool(str(tmp_path / "t.rsr"), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert '"format": "Arrow IPC file"' in done.stdout
    with pa.memory_map(str(out)) as source:
        assert pa.ipc.open_file(source).read_all().column("x").to_pylist() == [1, 2, 3]
