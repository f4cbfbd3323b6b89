"""The code-free array and table serializers: npy, arrow, and the auto dispatcher."""

from __future__ import annotations

import io
import json
import mmap
import struct
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from resultstore import (
    ConfigurationError,
    IntegrityError,
    ResultNotFoundError,
    ResultStore,
    SerializationError,
    SerializerNotAllowedError,
    SignatureError,
    UnsupportedOperationError,
)
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


def test_pandas_object_columns_arrow_would_change_go_to_pickle(tmp_path: Path) -> None:
    import datetime
    import decimal

    pd = pytest.importorskip("pandas")
    kept = pd.DataFrame(  # object columns that come back as the same values
        {
            "dates": pd.Series([datetime.date(2024, 1, 1), None], dtype=object),
            "money": pd.Series([decimal.Decimal("1.50"), None], dtype=object),
            "blobs": pd.Series([b"x", None], dtype=object),
            "rows": pd.Series([{"a": 1, "b": "s"}, {"a": 2, "b": None}], dtype=object),
        }
    )
    store = ResultStore(tmp_path.as_uri(), serializer="auto")
    store.write(kept, key="kept")
    assert store.read_metadata("kept").serializer == "arrow"
    back = store.read("kept").result
    pd.testing.assert_frame_equal(back, kept)
    assert [type(v) for v in back["money"]] == [decimal.Decimal, type(None)]

    changed = {
        "lists": [[1, 2], [3]],  # would come back as NumPy arrays
        "tuples": [(1, 2), (3,)],
        "ints": pd.Series([1, 2], dtype=object),  # would come back as an int64 column
        "floats or None": pd.Series([1.5, None], dtype=object),
        "lists in dicts": [{"x": [1]}, {"x": [2]}],
        "mixed": [1, "x"],  # Arrow cannot type it at all
    }
    for name, column in changed.items():
        frame = pd.DataFrame({"ok": [1, 2], name: column})
        with pytest.raises(SerializationError, match=r"arrow serializer cannot encode.*pickle"):
            get_serializer("arrow").dumps(frame)
        store.write(frame, key="f")
        assert store.read_metadata("f").serializer == "pickle", name
        back = store.read("f").result
        assert all(type(a) is type(b) for a, b in zip(back[name], frame[name], strict=True)), name
        with pytest.raises(SerializationError, match=r"auto-strict serializer cannot encode"):
            get_serializer("auto-strict").dumps(frame)
    lists = pd.DataFrame({"lists": [[1, 2], [3]]})
    with pytest.raises(SerializationError, match=r"\['lists'\] would come back changed"):
        get_serializer("arrow").dumps(lists)


def polars_frame() -> Any:
    """A polars frame with a column of most dtypes, nulls among them."""
    import datetime

    pl = pytest.importorskip("polars")
    when = datetime.datetime(2024, 5, 17, 12, 30)
    return pl.DataFrame(
        {
            "i32": pl.Series([1, None, 3], dtype=pl.Int32),
            "u8": pl.Series([1, 2, 255], dtype=pl.UInt8),
            "f": [1.5, float("nan"), None],
            "s": ["a", None, "ç"],
            "b": [b"x", None, b"\x00"],
            "bool": [True, False, None],
            "cat": pl.Series(["u", "v", "u"], dtype=pl.Categorical),
            "enum": pl.Series(["lo", "hi", "lo"], dtype=pl.Enum(["lo", "hi"])),
            "dt": [when, None, when],
            "dtz": pl.Series([when] * 3).dt.replace_time_zone("Europe/Paris"),
            "date": [when.date()] * 3,
            "dur": [datetime.timedelta(seconds=5), None, datetime.timedelta(days=-1)],
            "list": [[1, 2], [], None],
            "struct": [{"a": 1, "b": "x"}, {"a": 2, "b": None}, None],
            "dec": pl.Series(["1.23", "4.56", None]).cast(pl.Decimal(10, 2)),
        }
    )


def test_arrow_round_trips_polars_frames_as_polars_frames(tmp_path: Path) -> None:
    pl = pytest.importorskip("polars")
    from polars.testing import assert_frame_equal

    frame = polars_frame()
    serializer = get_serializer("arrow")
    back = serializer.loads(serializer.dumps(frame))
    assert type(back) is pl.DataFrame
    assert back.schema == frame.schema
    assert_frame_equal(back, frame)

    writer = ResultStore(tmp_path.as_uri(), serializer="auto")
    writer.write(frame, key="p")
    assert writer.read_metadata("p").serializer == "arrow"  # chosen by type
    # a reader allowing only code-free serializers reads it, as a polars frame
    read = ResultStore(tmp_path.as_uri(), serializer="json").read("p").result
    assert type(read) is pl.DataFrame
    assert_frame_equal(read, frame)
    mapped = writer.read("p", mmap=True).result
    assert type(mapped) is pl.DataFrame
    assert_frame_equal(mapped, frame)


def test_column_reads_of_polars_frames_give_polars_frames(tmp_path: Path) -> None:
    pl = pytest.importorskip("polars")
    from polars.testing import assert_frame_equal

    frame = polars_frame()
    store = ResultStore(tmp_path.as_uri(), serializer="auto")
    store.write(frame, key="p")
    got = store.read("p", columns=["struct", "i32", "dtz"]).result
    assert type(got) is pl.DataFrame
    assert_frame_equal(got, frame.select(["struct", "i32", "dtz"]))
    checked = store.read("p", columns=["enum"], verify=True).result
    assert type(checked) is pl.DataFrame
    assert_frame_equal(checked, frame.select(["enum"]))
    with pytest.raises(ConfigurationError, match=r"'p'.*no column\(s\) \['zz'\]"):
        store.read("p", columns=["zz"])


def test_polars_frames_of_python_objects_are_refused_by_arrow_and_left_to_pickle(
    tmp_path: Path,
) -> None:
    pl = pytest.importorskip("polars")

    # polars' to_arrow would silently store these objects' addresses as binary
    frame = pl.DataFrame({"n": [1, 2], "o": pl.Series([object(), "x"], dtype=pl.Object)})
    with pytest.raises(SerializationError, match=r"\['o'\] hold Python objects.*pickle"):
        get_serializer("arrow").dumps(frame)
    assert get_serializer("auto").choose(frame).name == "pickle"
    with pytest.raises(SerializationError, match="pickle is not allowed"):
        get_serializer("auto-strict").dumps(frame)
    # polars cannot pickle them either: the write is refused, nothing stored
    store = ResultStore(tmp_path.as_uri(), serializer="auto")
    with pytest.raises(SerializationError, match=r"pickle serializer cannot encode.*DataFrame"):
        store.write(frame, key="o")
    assert not store.exists("o")


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


# -- memory-mapped reads ----------------------------------------------------------------


def record_path(root: Path, key: str) -> Path:
    return root / f"{key}.rsr"


def test_mmap_reads_return_read_only_views_of_the_file(tmp_path: Path) -> None:
    store = ResultStore(tmp_path.as_uri(), serializer="auto")
    array = np.asfortranarray(np.random.default_rng(1).random((300, 200)))
    store.write(array, key="a")
    back = store.read("a", mmap=True).result
    same(array, back)
    assert not back.flags.writeable and back.flags.f_contiguous
    with pytest.raises(ValueError, match="read-only"):
        back[0, 0] = 1.0
    base = back
    while getattr(base, "base", None) is not None and not isinstance(base, (mmap.mmap,)):
        base = base.base
        if isinstance(base, memoryview):
            base = base.obj
    assert isinstance(base, mmap.mmap)  # no copy: the array's memory is the map
    assert store.read("a").result.flags.writeable  # a plain read still gives a fresh copy


def test_mmap_reads_tables_and_other_records(tmp_path: Path) -> None:
    store = ResultStore(tmp_path.as_uri(), serializer="auto")
    table = pa.table({"x": np.arange(1000), "y": np.arange(1000) * 0.5})
    store.write(table, key="t")
    assert store.read("t", mmap=True).result.equals(table)
    store.write({"a": [1, 2]}, key="d")
    assert store.read("d", mmap=True).result == {"a": [1, 2]}


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(data)


def test_mmap_verifies_the_checksum_on_open_unless_told_not_to(tmp_path: Path) -> None:
    store = ResultStore(tmp_path.as_uri(), serializer="npy")
    store.write(np.arange(100_000, dtype=np.int64), key="a")
    flip_last_byte(record_path(tmp_path, "a"))
    with pytest.raises(IntegrityError, match=r"'a'.*payload checksum mismatch"):
        store.read("a", mmap=True)
    damaged = store.read("a", mmap=True, verify=False).result  # the caller's choice
    assert damaged[-1] != 99_999 and not damaged.flags.writeable


def test_mmap_on_a_signed_store_checks_the_signature_and_refuses_verify_false(
    tmp_path: Path,
) -> None:
    key = "0123456789abcdef0123"
    store = ResultStore(tmp_path.as_uri(), serializer="npy", signing_key=key)
    store.write(np.arange(10), key="a")
    same(np.arange(10), store.read("a", mmap=True).result)
    with pytest.raises(ConfigurationError, match=r"verify=False.*signing key"):
        store.read("a", mmap=True, verify=False)
    ResultStore(tmp_path.as_uri(), serializer="npy").write(np.arange(10), key="u")
    with pytest.raises(SignatureError, match="not signed"):
        store.read("u", mmap=True)


def test_mmap_respects_the_allowed_serializers(tmp_path: Path) -> None:
    ResultStore(tmp_path.as_uri()).write({"a": 1}, key="p")
    with pytest.raises(SerializerNotAllowedError):
        ResultStore(tmp_path.as_uri(), serializer="json").read("p", mmap=True)


def test_mmap_on_other_stores_is_an_error_naming_the_store() -> None:
    store = ResultStore("memory://mmap-test", serializer="npy")
    store.write(np.arange(3), key="a")
    with pytest.raises(UnsupportedOperationError, match=r"memory://mmap-test.*MemoryStore"):
        store.read("a", mmap=True)
    with pytest.raises(ConfigurationError, match="verify= applies"):
        store.read("a", verify=False)


def test_mmap_of_a_missing_key_is_not_found(tmp_path: Path) -> None:
    store = ResultStore(tmp_path.as_uri(), serializer="npy")
    with pytest.raises(ResultNotFoundError):
        store.read("nope", mmap=True, retry=False)


# -- column reads -----------------------------------------------------------------------


class Counting:
    """Wraps a store's ``open`` to count the bytes its readers hand out."""

    def __init__(self, store: ResultStore) -> None:
        self.bytes = 0
        self.opens = 0
        inner = store.store.open

        async def open_(key: str, *, start: int = 0, end: int | None = None) -> Any:
            reader = await inner(key, start=start, end=end)
            self.opens += 1
            counter = self
            read, readinto = reader.read, reader.readinto

            async def counted_read(n: int = -1) -> bytes:
                data = await read(n)
                counter.bytes += len(data)
                return data

            async def counted_readinto(buffer: memoryview) -> int:
                got = await readinto(buffer)
                counter.bytes += got
                return got

            reader.read, reader.readinto = counted_read, counted_readinto  # type: ignore[method-assign]
            return reader

        store.store.open = open_  # type: ignore[method-assign]


def wide_table(rows: int = 50_000, columns: int = 20) -> Any:
    rng = np.random.default_rng(3)
    return pa.table({f"c{i}": rng.random(rows) for i in range(columns)})


def test_column_reads_fetch_only_those_columns(tmp_path: Path) -> None:
    store = ResultStore(tmp_path.as_uri(), serializer="arrow")
    table = wide_table()
    store.write(table, key="t")
    size = record_path(tmp_path, "t").stat().st_size
    counting = Counting(store)
    got = store.read("t", columns=["c3", "c11"]).result
    assert got.equals(table.select(["c3", "c11"]))
    assert counting.bytes < size * 0.15, (counting.bytes, size)  # 2 of 20 columns: ~10%
    counting.bytes = 0
    assert store.read("t").result.equals(table)
    assert counting.bytes >= size


def test_column_reads_keep_a_pandas_frames_index(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(
        {"a": [1, 2], "b": ["x", "y"], "c": [0.5, 1.5]}, index=pd.Index(["i", "j"], name="k")
    )
    store = ResultStore(tmp_path.as_uri(), serializer="auto")
    store.write(frame, key="f")
    pd.testing.assert_frame_equal(store.read("f", columns=["c", "a"]).result, frame[["c", "a"]])


def test_column_reads_with_verify_read_the_whole_record_and_check_it(tmp_path: Path) -> None:
    store = ResultStore(tmp_path.as_uri(), serializer="arrow")
    table = wide_table(rows=1000)
    store.write(table, key="t")
    assert store.read("t", columns=["c0"], verify=True).result.equals(table.select(["c0"]))
    flip_last_byte(record_path(tmp_path, "t"))
    with pytest.raises(IntegrityError, match="checksum"):
        store.read("t", columns=["c0"], verify=True)


def test_column_read_errors_name_the_key_and_what_to_do(tmp_path: Path) -> None:
    store = ResultStore(tmp_path.as_uri(), serializer="auto")
    store.write(wide_table(rows=10, columns=3), key="t")
    store.write(np.arange(3), key="a")
    with pytest.raises(ConfigurationError, match=r"'t'.*no column\(s\) \['zz'\].*c0, c1, c2"):
        store.read("t", columns=["zz"])
    with pytest.raises(ConfigurationError, match=r"'a'.*'npy', not 'arrow'"):
        store.read("a", columns=["x"])
    with pytest.raises(ConfigurationError, match="list of column names"):
        store.read("t", columns="c0")
    with pytest.raises(ConfigurationError, match="not both"):
        store.read("t", columns=["c0"], mmap=True)
    signed = ResultStore(tmp_path.as_uri(), serializer="arrow", signing_key="0123456789abcdef0")
    signed.write(wide_table(rows=10, columns=3), key="s")
    with pytest.raises(ConfigurationError, match="verify=True"):
        signed.read("s", columns=["c0"])
    assert signed.read("s", columns=["c0"], verify=True).result.num_columns == 1


def test_column_reads_of_damaged_arrow_data_fail_cleanly(tmp_path: Path) -> None:
    store = ResultStore(tmp_path.as_uri(), serializer="arrow")
    store.write(wide_table(rows=100, columns=2), key="t")
    path = record_path(tmp_path, "t")
    data = bytearray(path.read_bytes())
    data[-20:-10] = b"\xff" * 10  # inside the IPC footer
    path.write_bytes(data)
    with pytest.raises(IntegrityError, match=r"'t'.*Arrow data"):
        store.read("t", columns=["c0"])


def test_column_reads_work_on_other_ranged_stores() -> None:
    store = ResultStore("memory://columns-test", serializer="arrow")
    table = wide_table(rows=100, columns=4)
    store.write(table, key="t")
    assert store.read("t", columns=["c2"]).result.equals(table.select(["c2"]))


@pytest.mark.anyio
async def test_async_mmap_and_column_reads(tmp_path: Path) -> None:
    store = ResultStore(tmp_path.as_uri(), serializer="auto")
    await store.awrite(np.arange(5), key="a")
    await store.awrite(wide_table(rows=10, columns=3), key="t")
    same(np.arange(5), (await store.aread("a", mmap=True)).result)
    assert (await store.aread("t", columns=["c1"])).result.column_names == ["c1"]


@settings(max_examples=60, deadline=None)
@given(array=hnp.arrays(dtypes, shapes), order=st.sampled_from("CF"))
def test_mmap_reads_round_trip_like_plain_reads(array: Any, order: str) -> None:
    array = np.asarray(array, order=order)
    with tempfile.TemporaryDirectory() as folder:
        store = ResultStore(Path(folder).as_uri(), serializer="npy")
        store.write(array, key="a")
        mapped = store.read("a", mmap=True).result
        same(array, mapped)
        same(array, store.read("a").result)
        assert not mapped.flags.writeable or mapped.size == 0
