"""Code-free serializers for arrays and tables: ``npy``, ``arrow`` and the ``auto`` dispatcher.

Pickle can store a NumPy array or a DataFrame, but unpickling runs code chosen
by whoever wrote the bytes, so a reader has to trust every writer. These
serializers write open formats that decode without running anything:

- ``npy``: a NumPy array as a ``.npy`` file split in two segments, the npy
  header and the array's raw bytes (written straight from the array's memory).
  The header dict is parsed as a literal and checked against an allow-list of
  dtypes; the data's length must equal ``prod(shape) * itemsize`` before
  anything is allocated. Joining the segments gives a file ``numpy.load`` reads.
- ``arrow``: a pyarrow Table (or a pandas / polars DataFrame, converted through
  Arrow and given back as the same kind) as an Arrow IPC *file*, whose footer
  lets a reader fetch only some columns.
- ``auto``: ``npy`` for ndarrays, ``arrow`` for tables and DataFrames, and a
  fallback for everything else: ``pickle`` (``auto``), ``json``
  (``auto-json``, code-free throughout) or an error (``auto-strict``).

NumPy, pyarrow, pandas and polars are imported only when a value of theirs is
written or a record of theirs is read: ``import resultstore`` stays light, and
none of them is a dependency.
"""

from __future__ import annotations

import ast
import importlib
import math
import re
import struct
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from resultstore.errors import SerializationError
from resultstore.serializers import (
    _PICKLE_NAMES,
    Buffer,
    JSONSerializer,
    PickleSerializer,
    Serializer,
    _joined,
)

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "ArrowSerializer",
    "AutoSerializer",
    "NpySerializer",
    "parse_npy_header",
]

# -- npy --------------------------------------------------------------------------------

NPY_MAGIC = b"\x93NUMPY"
_NPY_MAX_HEADER = 64 * 1024
"""Largest npy header read or written (numpy's own ``max_header_size`` default is 10,000)."""
_NPY_MAX_DIMS = 64  # NPY_MAXDIMS of numpy 2
_NPY_MAX_FIELDS = 4096
_NPY_MAX_DEPTH = 8
# A simple descr: byte order, kind, item size; datetimes and timedeltas with a unit.
# Kinds: b bool, i/u integers, f floats, c complex, S bytes, U text, V raw void,
# M datetime64, m timedelta64. "O" (object: needs pickle) is absent on purpose.
_SIMPLE_DESCR = re.compile(
    r"[<>|=]?(?:[biufcSUV][0-9]{1,9}|[Mm]8(?:\[[0-9]{0,9}(?:Y|M|W|D|h|m|s|ms|us|ns|ps|fs|as)\])?)"
)
_NPY_KEYS = frozenset({"descr", "fortran_order", "shape"})
_ALIGN = 64


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:
        raise SerializationError(
            "npy records hold NumPy arrays: install numpy (pip install numpy) to read them"
        ) from None
    return numpy


def _check_descr(descr: object, depth: int = 0) -> None:
    """Raise ValueError unless ``descr`` is a dtype description from the allow-list.

    A plain ``'<f8'``-style string, or a structured list of ``(name, descr)`` /
    ``(name, descr, shape)`` tuples whose names are strings (or a ``(title,
    name)`` pair) and whose descrs are themselves allowed. Never ``'O'``.
    """
    if isinstance(descr, str):
        if not _SIMPLE_DESCR.fullmatch(descr):
            raise ValueError(
                f"dtype {descr!r} is not allowed (object dtypes need pickle; allowed: "
                "bool, integers, floats, complex, bytes, str, void, datetime64, timedelta64)"
            )
        return
    if not isinstance(descr, list) or depth >= _NPY_MAX_DEPTH:
        raise ValueError("descr is neither a dtype string nor a structured field list")
    if not descr or len(descr) > _NPY_MAX_FIELDS:
        raise ValueError(f"a structured dtype has from 1 to {_NPY_MAX_FIELDS} fields")
    for item in descr:
        if not isinstance(item, tuple) or len(item) not in (2, 3):
            raise ValueError("a structured dtype field is not a (name, descr[, shape]) tuple")
        name = item[0]
        names = name if isinstance(name, tuple) else (name,)
        if not 1 <= len(names) <= 2 or not all(isinstance(n, str) for n in names):
            raise ValueError("a structured dtype field name is not a string")
        _check_descr(item[1], depth + 1)
        if len(item) == 3:
            _check_shape(item[2])


def _check_shape(shape: object) -> tuple[int, ...]:
    if not isinstance(shape, tuple) or len(shape) > _NPY_MAX_DIMS:
        raise ValueError(f"shape is not a tuple of at most {_NPY_MAX_DIMS} integers")
    if not all(type(n) is int and n >= 0 for n in shape):
        raise ValueError("shape holds something other than non-negative integers")
    return shape


def parse_npy_header(data: Buffer) -> tuple[Any, bool, tuple[int, ...], int]:
    """Parse and check an npy header: returns ``(descr, fortran_order, shape, header_length)``.

    Runs no code: the header dict is read with :func:`ast.literal_eval` (which
    builds only literals: no names, calls or attributes), must have exactly the
    keys ``descr``, ``fortran_order`` and ``shape``, and ``descr`` must pass the
    allow-list (no object dtype). Raises ``ValueError`` naming what is wrong.
    """
    view = memoryview(data).cast("B")
    if len(view) < 10 or bytes(view[:6]) != NPY_MAGIC:
        raise ValueError("not an npy header (bad magic bytes)")
    major, minor = view[6], view[7]
    if (major, minor) == (1, 0):
        (length,) = struct.unpack_from("<H", view, 8)
        start = 10
    elif (major, minor) in ((2, 0), (3, 0)):
        if len(view) < 12:
            raise ValueError("the npy header is truncated")
        (length,) = struct.unpack_from("<I", view, 8)
        start = 12
    else:
        raise ValueError(f"npy format version {major}.{minor} is not supported")
    if length > _NPY_MAX_HEADER:
        raise ValueError(f"the npy header claims {length} bytes, over {_NPY_MAX_HEADER}")
    if start + length != len(view):
        raise ValueError(
            f"the npy header claims {length} bytes but its segment holds {len(view) - start}"
        )
    encoding = "utf-8" if major == 3 else "latin-1"
    text = bytes(view[start:]).decode(encoding)
    try:
        fields = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError) as exc:
        raise ValueError(
            f"the npy header is not a literal dict ({type(exc).__name__}): {text[:80]!r}"
        ) from None
    if not isinstance(fields, dict) or set(fields) != _NPY_KEYS:
        raise ValueError(f"the npy header must be a dict with keys {sorted(_NPY_KEYS)}")
    descr, fortran, shape = fields["descr"], fields["fortran_order"], fields["shape"]
    if not isinstance(fortran, bool):
        raise ValueError("fortran_order is not a bool")
    _check_descr(descr)
    return descr, fortran, _check_shape(shape), start + length


def _npy_header(descr: Any, fortran: bool, shape: tuple[int, ...]) -> bytes:
    """The npy header (magic, version, padded dict) numpy itself would write."""
    text = f"{{'descr': {descr!r}, 'fortran_order': {fortran!r}, 'shape': {shape!r}, }}"
    raw = text.encode("latin-1")
    for version, prefix in ((b"\x01\x00", 10), (b"\x02\x00", 12)):
        total = prefix + len(raw) + 1
        padded = raw + b" " * (-total % _ALIGN) + b"\n"
        if version == b"\x01\x00" and len(padded) > 0xFFFF:
            continue
        size = struct.pack("<H" if prefix == 10 else "<I", len(padded))
        return NPY_MAGIC + version + size + padded
    raise AssertionError("unreachable")


class NpySerializer(Serializer):
    """NumPy arrays as ``.npy``: a header segment, then the raw array bytes (zero copy).

    ``dumps`` writes a C- or Fortran-contiguous array's own memory as the
    second segment (a non-contiguous one is copied once) and refuses arrays
    that are not plain ndarrays of an allowed dtype (object dtypes, masked
    arrays, matrices: store those with pickle). ``loads`` runs no code and
    allocates nothing before the data's length is checked against the header.
    Arrays come back writable when the store returns writable buffers (it
    does: every large segment is read into a fresh ``bytearray``).
    """

    name = "npy"
    code_free = True

    @property
    def configuration(self) -> dict[str, Any]:
        return {"type": "npy"}

    def dumps(self, obj: Any) -> list[Buffer]:
        np = sys.modules.get("numpy")
        if np is None or type(obj) not in (np.ndarray, np.memmap):
            raise SerializationError(
                f"npy serializer cannot encode object of type {type(obj).__name__}: it stores "
                "numpy.ndarray only (use serializer='auto' to pick one by type)"
            )
        return self._dumps(np, obj)

    def _dumps(self, np: Any, array: np.ndarray[Any, Any]) -> list[Buffer]:
        if array.dtype.hasobject:
            raise SerializationError(
                f"npy serializer cannot encode an array of dtype {array.dtype}: it holds Python "
                "objects, which only pickle can store (serializer='pickle', or 'auto' with "
                "pickle allowed)"
            )
        try:
            descr = np.lib.format.dtype_to_descr(array.dtype)
            _check_descr(descr)
        except ValueError as exc:
            raise self._cannot_encode(array, exc) from None
        fortran = bool(array.flags.f_contiguous and not array.flags.c_contiguous)
        if not fortran and not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)  # the one copy of a non-contiguous array
        header = _npy_header(descr, fortran, tuple(int(n) for n in array.shape))
        if len(header) > _NPY_MAX_HEADER + 12:
            raise self._cannot_encode(array, ValueError("its dtype's npy header is too large"))
        flat = (array.T if fortran else array).reshape(-1)  # a view: contiguous
        if array.dtype.itemsize == 0 or flat.size == 0:
            return [header, b""]
        return [header, memoryview(flat.view(np.uint8))]

    def loads(self, segments: Sequence[Buffer]) -> Any:
        if len(segments) != 2:
            raise self._cannot_decode(ValueError(f"{len(segments)} segments, expected 2"))
        return self.array(segments[0], segments[1])

    def array(self, header: Buffer, data: Any) -> Any:
        """The array of npy ``header`` over ``data`` (any buffer: bytes, an mmap), not copied."""
        try:
            descr, fortran, shape, _ = parse_npy_header(header)
        except ValueError as exc:
            raise self._cannot_decode(exc) from None
        np = _numpy()
        try:
            dtype = np.lib.format.descr_to_dtype(descr)
        except (ValueError, TypeError) as exc:
            raise self._cannot_decode(exc) from None
        if dtype.hasobject:  # the allow-list excludes them; checked again on the dtype made
            raise self._cannot_decode(ValueError(f"dtype {dtype} holds Python objects"))
        count = math.prod(shape)
        expected = count * dtype.itemsize
        held = memoryview(data).nbytes
        if held != expected:
            raise self._cannot_decode(
                ValueError(
                    f"the header's shape {shape} of {dtype} needs {expected} bytes, "
                    f"the data segment holds {held}"
                )
            )
        order = "F" if fortran else "C"
        try:
            if expected == 0:
                return np.empty(shape, dtype=dtype, order=order)
            flat = np.frombuffer(data, dtype=dtype, count=count)
            return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
        except (ValueError, TypeError, MemoryError) as exc:
            raise self._cannot_decode(exc) from None


# -- arrow ------------------------------------------------------------------------------

KIND_KEY = b"resultstore.kind"
"""The Arrow schema metadata key naming what was stored: ``table``, ``pandas`` or ``polars``."""
_KINDS = ("table", "pandas", "polars")


def _pyarrow() -> Any:
    try:
        pyarrow = importlib.import_module("pyarrow")  # untyped: kept out of mypy's way
        importlib.import_module("pyarrow.ipc")
    except ImportError:
        raise SerializationError(
            "arrow records hold Arrow tables: install pyarrow (pip install pyarrow) to "
            "read or write them"
        ) from None
    return pyarrow


def table_kind(obj: Any) -> str | None:
    """``table``, ``pandas`` or ``polars`` for the values ``arrow`` stores, else None.

    Looks only at modules already imported: a value of a library that was never
    imported cannot be one of its types.
    """
    module = type(obj).__module__.partition(".")[0]
    if module == "pyarrow":
        pa = sys.modules["pyarrow"]
        return "table" if isinstance(obj, pa.Table) else None
    if module == "pandas":
        pd = sys.modules["pandas"]
        return "pandas" if isinstance(obj, pd.DataFrame) else None
    if module == "polars":
        pl = sys.modules["polars"]
        return "polars" if isinstance(obj, pl.DataFrame) else None
    return None


def _polars_objects(frame: Any) -> list[str]:
    """The columns of a polars frame holding Python objects (``pl.Object``, at any depth).

    polars' ``to_arrow`` turns such a column into the objects' memory addresses as
    binary, silently: the data would be lost (and addresses leaked), so ``arrow``
    refuses these frames and ``auto`` gives them to its fallback.
    """
    pl = sys.modules["polars"]

    def holds(dtype: Any) -> bool:
        if isinstance(dtype, pl.Object):
            return True
        if isinstance(dtype, (pl.List, pl.Array)):
            return holds(dtype.inner)
        if isinstance(dtype, pl.Struct):
            return any(holds(field.dtype) for field in dtype.fields)
        return False

    return [name for name, dtype in frame.schema.items() if holds(dtype)]


class _NotArrowable(SerializationError):
    """A frame whose data Arrow cannot give back as it is: ``auto`` uses its fallback."""


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same type, all the way down (NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(map(_same, a, b))
    if type(a) is dict:
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    try:
        if type(a).__module__ == "numpy" and hasattr(a, "shape"):
            np = sys.modules["numpy"]
            return bool(
                a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)
            )
        return bool(a == b) or bool(a != a and b != b)
    except Exception:  # incomparable: not known to be the same
        return False


def _pandas_losses(pa: Any, frame: Any) -> list[str]:
    """The object-dtype columns of a pandas frame that Arrow would give back changed.

    pyarrow turns an object column into a typed Arrow column and back by its own
    rules: lists and tuples come back as NumPy arrays, ints and floats as int64 and
    float64 columns (None as NaN), strings as pandas' string dtype. Typed columns
    round-trip through pandas' metadata; object columns are converted back and
    compared value by value (type included), so only what comes back the same is
    written as ``arrow``.
    """
    np_dtype = sys.modules["numpy"].dtype  # pandas imports numpy
    positions = [
        i
        for i, dtype in enumerate(frame.dtypes)
        if isinstance(dtype, np_dtype) and dtype.kind == "O"
    ]
    if not positions:
        return []
    part = frame.iloc[:, positions]
    back = pa.Table.from_pandas(part, preserve_index=False).to_pandas()
    lost = []
    for i in range(len(positions)):
        before, after = part.iloc[:, i], back.iloc[:, i]
        if after.dtype != before.dtype or not all(map(_same, before, after)):
            lost.append(str(part.columns[i]))
    return lost


class ArrowSerializer(Serializer):
    """Tables as one Arrow IPC file segment; pandas and polars DataFrames through Arrow.

    What was stored (a pyarrow ``Table``, a pandas or a polars ``DataFrame``)
    is kept in the schema's metadata (``resultstore.kind``), and ``loads``
    gives back the same kind (pandas' index and dtypes through pyarrow's own
    pandas metadata). The IPC file format has a footer locating every record
    batch, which is what lets ``ResultStore.read(key, columns=[...])`` fetch
    only some columns. Decoding runs no code: Arrow data is buffers and a
    flatbuffer schema, and every table read is validated in full (offsets and
    lengths) before it is returned.
    """

    name = "arrow"
    code_free = True

    @property
    def configuration(self) -> dict[str, Any]:
        return {"type": "arrow"}

    def dumps(self, obj: Any) -> list[Buffer]:
        kind = table_kind(obj)
        if kind is None:
            raise SerializationError(
                f"arrow serializer cannot encode object of type {type(obj).__name__}: it stores "
                "pyarrow.Table, pandas.DataFrame and polars.DataFrame (use serializer='auto' "
                "to pick one by type)"
            )
        if kind == "polars" and (objects := _polars_objects(obj)):
            raise _NotArrowable(
                f"arrow serializer cannot encode a polars DataFrame whose column(s) "
                f"{objects!r} hold Python objects (pl.Object): only pickle can store them "
                "(serializer='pickle', or 'auto' with pickle allowed)"
            )
        pa = _pyarrow()
        if kind == "pandas":
            try:
                lost = _pandas_losses(pa, obj)
            except Exception as exc:  # values Arrow cannot type (mixed ints and strs, ...)
                raise _NotArrowable(
                    f"{self._cannot_encode(obj, exc)}; store it with pickle (serializer="
                    "'pickle', or 'auto' with pickle allowed)"
                ) from None
            if lost:
                raise _NotArrowable(
                    f"arrow serializer cannot encode a pandas DataFrame whose object column(s) "
                    f"{lost!r} would come back changed (Arrow gives lists and tuples back as "
                    "arrays, Python ints and floats as typed columns): store it with pickle "
                    "(serializer='pickle', or 'auto' with pickle allowed)"
                )
        try:
            if kind == "pandas":
                table = pa.Table.from_pandas(obj)
            elif kind == "polars":
                table = obj.to_arrow()
            else:
                table = obj
            metadata = dict(table.schema.metadata or {})
            metadata[KIND_KEY] = kind.encode()
            table = table.replace_schema_metadata(metadata)
            sink = pa.BufferOutputStream()
            with pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            return [memoryview(sink.getvalue())]
        except SerializationError:
            raise
        except Exception as exc:  # pyarrow's ArrowInvalid / ArrowTypeError, say
            raise self._cannot_encode(obj, exc) from None

    def loads(self, segments: Sequence[Buffer]) -> Any:
        pa = _pyarrow()
        try:
            data = _joined(segments)
            reader = pa.ipc.open_file(pa.py_buffer(data))
            table = reader.read_all()
        except Exception as exc:
            raise self._cannot_decode(exc) from None
        return self.restore(table)

    def restore(self, table: Any) -> Any:
        """Validate ``table`` in full and turn it back into the kind that was stored."""
        try:
            table.validate(full=True)
        except Exception as exc:
            raise self._cannot_decode(exc) from None
        metadata = dict(table.schema.metadata or {})
        kind = metadata.pop(KIND_KEY, b"table").decode("latin-1")
        if kind not in _KINDS:
            raise self._cannot_decode(ValueError(f"unknown stored kind {kind!r}"))
        table = table.replace_schema_metadata(metadata or None)
        try:
            if kind == "pandas":
                return table.to_pandas()
            if kind == "polars":
                return importlib.import_module("polars").from_arrow(table)
        except ImportError as exc:
            raise SerializationError(
                f"arrow record holds a {kind} DataFrame: install {kind} to read it ({exc})"
            ) from None
        except Exception as exc:
            raise self._cannot_decode(exc) from None
        return table


# -- auto -------------------------------------------------------------------------------


class AutoSerializer(Serializer):
    """Pick a serializer by the value's type: ``npy``, ``arrow``, else the fallback.

    A record names the serializer that really wrote it (``npy``, ``arrow``,
    ``pickle``), never ``auto``, so any reader decodes it as usual: readers
    that allow only code-free serializers read the ``npy`` and ``arrow`` ones.

    ``fallback`` is what other values get: ``"pickle"`` (the ``auto``
    serializer: a store using it also reads pickle records), ``"json"``
    (``auto-json``: nothing it writes or reads runs code) or ``"none"``
    (``auto-strict``: anything but an array or a table is refused with
    :class:`SerializationError`).
    """

    name = "auto"
    also_reads: ClassVar[frozenset[str]] = _PICKLE_NAMES | {"npy", "arrow"}
    fallback: ClassVar[str] = "pickle"

    def __init__(self) -> None:
        self._npy = NpySerializer()
        self._arrow = ArrowSerializer()
        self._other: Serializer | None = (
            PickleSerializer()
            if self.fallback == "pickle"
            else JSONSerializer()
            if self.fallback == "json"
            else None
        )

    @property
    def configuration(self) -> dict[str, Any]:
        return {"type": "auto", "fallback": self.fallback}

    def choose(self, obj: Any) -> Serializer:
        """The serializer ``obj`` is written with; raises if there is none."""
        np = sys.modules.get("numpy")
        if np is not None and type(obj) in (np.ndarray, np.memmap) and not obj.dtype.hasobject:
            return self._npy
        kind = table_kind(obj)
        if kind is not None and not (kind == "polars" and _polars_objects(obj)):
            return self._arrow
        if self._other is None:
            raise SerializationError(
                f"{self.name} serializer cannot encode object of type {type(obj).__name__}: "
                "it writes only NumPy arrays (npy) and tables (arrow) here, because pickle is "
                "not allowed; use serializer='auto' (pickle fallback) or 'auto-json'"
            )
        return self._other

    def encode(self, obj: Any) -> tuple[str, list[Buffer]]:
        chosen = self.choose(obj)
        try:
            return chosen.name, chosen.dumps(obj)
        except _NotArrowable as exc:  # a frame Arrow would change: the fallback stores it
            if self._other is None:
                raise SerializationError(
                    f"{self.name} serializer cannot encode this {type(obj).__name__}: {exc}"
                ) from None
            return self._other.name, self._other.dumps(obj)

    def dumps(self, obj: Any) -> list[Buffer]:
        return self.encode(obj)[1]

    def loads(self, segments: Sequence[Buffer]) -> Any:
        raise SerializationError(
            "auto serializer has no records of its own: each record names the serializer "
            "that wrote it (npy, arrow, pickle, json); decode with that one"
        )


class CodeFreeAutoSerializer(AutoSerializer):
    """``auto-json``: arrays as npy, tables as arrow, everything else as lossless JSON."""

    name = "auto-json"
    code_free = True
    also_reads = frozenset({"npy", "arrow", "json"})
    fallback = "json"


class StrictAutoSerializer(AutoSerializer):
    """``auto-strict``: arrays as npy, tables as arrow, anything else refused."""

    name = "auto-strict"
    code_free = True
    also_reads = frozenset({"npy", "arrow"})
    fallback = "none"
