"""Serializers: values become byte segments and come back equal.

The built-ins are found by name through entry points, exactly like plugins:
``get_serializer("json")``, ``get_serializer("pickle")`` (cloudpickle with
protocol 5 out-of-band buffers) and ``get_serializer("pickle+zstd")``.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from resultstore import (
    ResultStore,
    SerializationError,
    Serializer,
    UnknownSerializerError,
    available_serializers,
    get_serializer,
    register_json_type,
)
from resultstore._loops import run_sync
from resultstore.records import encode_record, read_record
from resultstore.serializers import Buffer
from resultstore.stores.base import BytesReader

BUILTINS = ["json", "pickle", "pickle+zstd"]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)  # NaN != NaN; NaN has its own test below
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
python_values = st.recursive(
    json_scalars | st.binary() | st.complex_numbers(allow_nan=False),
    lambda children: (
        st.lists(children, max_size=5)
        | st.tuples(children, children)
        | st.frozensets(st.integers() | st.text(max_size=5), max_size=5)
        | st.dictionaries(st.integers() | st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


def round_trip(name: str, value: Any) -> Any:
    serializer = get_serializer(name)
    return serializer.loads(serializer.dumps(value))


def through_a_record(segments: Sequence[Buffer], serializer: str) -> list[Buffer]:
    """What a real read hands to ``loads``: segments framed, stored as bytes, read back."""
    stored = b"".join(bytes(b) for b in encode_record(segments, serializer=serializer))
    _, read_back = run_sync(read_record(BytesReader(stored), "k", None))
    return read_back


def assert_same_array(got: Any, expected: np.ndarray) -> None:
    assert isinstance(got, np.ndarray)
    assert got.shape == expected.shape
    # numpy itself unpickles some non-native byte orders (datetimes, strided strings)
    # as native ones: same values, so compare in the original byte order.
    assert got.dtype in (expected.dtype, expected.dtype.newbyteorder("="))
    got = got.astype(expected.dtype)
    assert got.tobytes() == expected.tobytes()  # bit-exact, so NaN and NaT compare too


# -- JSON-like values through every serializer ------------------------------------


@pytest.mark.parametrize("name", BUILTINS)
@given(value=json_values)
def test_json_like_values_round_trip_through_every_builtin(name: str, value: Any) -> None:
    assert round_trip(name, value) == value


@pytest.mark.parametrize("name", ["pickle", "pickle+zstd"])
@given(value=python_values)
def test_pickle_serializers_keep_python_types(name: str, value: Any) -> None:
    back = round_trip(name, value)
    assert back == value
    assert type(back) is type(value)


def test_json_keeps_tuples_and_non_string_keys() -> None:
    # Lossless since the tagged encoding (tests/resultstore/test_json_lossless.py has the rest).
    assert round_trip("json", {"pair": (1, 2), 3: "x"}) == {"pair": (1, 2), 3: "x"}


def test_json_keeps_non_finite_floats() -> None:
    back = round_trip("json", [float("nan"), float("inf"), -float("inf"), -0.0])
    assert math.isnan(back[0])
    assert back[1:3] == [math.inf, -math.inf]
    assert math.copysign(1.0, back[3]) == -1.0


def test_json_rebuilds_registered_models_and_dataclasses_with_datetimes_and_uuids() -> None:
    class Point(pydantic.BaseModel):
        x: int
        label: str
        seen: datetime.datetime

    @dataclasses.dataclass
    class Box:
        width: float
        corner: Point

    register_json_type(Point)
    register_json_type(Box)
    when = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.timezone.utc)
    value = {
        "box": Box(2.5, Point(x=1, label="a", seen=when)),
        "day": datetime.date(2024, 2, 29),
        "naive": datetime.datetime(2024, 1, 2, 3, 4, 5),
        "id": uuid.UUID(int=7),
    }
    back = round_trip("json", value)
    assert back == value
    assert type(back["box"].corner) is Point
    # JSON-native values are still plain UTF-8 JSON, readable from any language.
    (segment,) = get_serializer("json").dumps({"x": 1, "label": "é"})
    assert bytes(segment) == '{"x":1,"label":"é"}'.encode()


def test_a_json_store_refuses_classes_it_could_not_rebuild(tmp_path: Path) -> None:
    class Settings(pydantic.BaseModel):  # a local class, never registered
        retries: int

    store = ResultStore(f"file://{tmp_path}", serializer="json")
    with pytest.raises(SerializationError, match=r"Settings .* is not allowed for json"):
        store.write(Settings(retries=3))


# -- numpy arrays through pickle ---------------------------------------------------

LAYOUTS = ["C", "F", "strided", "reversed"]


def arrange(array: np.ndarray, layout: str) -> np.ndarray:
    if layout == "F":
        return np.asfortranarray(array)
    if layout == "strided":  # every other element along the first axis: not contiguous
        return array[::2] if array.ndim else array
    if layout == "reversed":  # negative strides
        return array[::-1] if array.ndim else array
    return array


arrays = hnp.arrays(
    dtype=hnp.scalar_dtypes() | hnp.byte_string_dtypes() | hnp.unicode_string_dtypes(),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
)


@given(base=arrays, layout=st.sampled_from(LAYOUTS))
def test_numpy_arrays_round_trip_equal_and_writable(base: np.ndarray, layout: str) -> None:
    array = arrange(base, layout)
    pickle = get_serializer("pickle")
    segments = pickle.dumps(array)

    # Straight back from the segments.
    assert_same_array(pickle.loads(segments), array)

    # And as a read returns it: from storage, into fresh memory the caller may modify.
    back = pickle.loads(through_a_record(segments, "pickle"))
    assert_same_array(back, array)
    assert back.flags.writeable
    if layout == "F" and array.ndim > 1:
        assert back.flags.f_contiguous  # the layout is kept, not converted


def test_a_read_only_array_comes_back_read_only_but_in_fresh_memory() -> None:
    # Pickle protocol 5 records that a buffer was read-only and restores the flag.
    array = np.arange(100_000, dtype=np.int32)
    array.flags.writeable = False
    pickle = get_serializer("pickle")
    back = pickle.loads(through_a_record(pickle.dumps(array), "pickle"))
    assert_same_array(back, array)
    assert not back.flags.writeable
    assert not np.shares_memory(back, array)
    copy = back.copy()
    copy[0] = -1
    assert copy[0] == -1


@given(array=arrays)
@settings(max_examples=30)
def test_numpy_arrays_round_trip_through_pickle_zstd(array: np.ndarray) -> None:
    serializer = get_serializer("pickle+zstd")
    assert_same_array(serializer.loads(serializer.dumps(array)), array)


@pytest.mark.parametrize("order", ["C", "F"])
def test_a_large_array_is_not_copied_when_serialized(order: str) -> None:
    array = np.ones((1024, 2048), dtype=np.float32, order=order)  # 8 MiB
    stream, *buffers = get_serializer("pickle").dumps(array)

    assert len(stream) < 1024  # the pickle stream only describes the array ...
    (buffer,) = buffers  # ... whose memory travels as one out-of-band segment
    assert isinstance(buffer, memoryview)
    assert buffer.nbytes == array.nbytes
    assert np.shares_memory(np.frombuffer(buffer, dtype=np.uint8), array)

    # encode_record frames the segments without copying them either.
    framed = encode_record([stream, buffer], serializer="pickle")
    assert framed[-1] is buffer


def test_a_non_contiguous_array_is_copied_once_into_the_stream() -> None:
    array = np.arange(200_000, dtype=np.int64)[::2]
    segments = get_serializer("pickle").dumps(array)
    assert len(segments) == 1
    assert_same_array(get_serializer("pickle").loads(segments), array)


# -- errors ----------------------------------------------------------------------


def _generator() -> Any:
    yield 1


@pytest.mark.parametrize(
    ("name", "value", "type_name"),
    [
        ("json", lambda: None, "function"),
        ("json", b"x".decode, "builtin_function_or_method"),
        ("json", object(), "object"),
        ("json", threading.Lock(), "lock"),
        ("pickle", threading.Lock(), "lock"),
        ("pickle", _generator(), "generator"),
        ("pickle+zstd", threading.Lock(), "lock"),
    ],
)
def test_unencodable_values_raise_a_one_line_error_naming_the_type(
    name: str, value: Any, type_name: str
) -> None:
    with pytest.raises(SerializationError) as caught:
        get_serializer(name).dumps(value)
    message = str(caught.value)
    assert message.startswith(f"{name} serializer cannot encode object of type {type_name}")
    assert "\n" not in message
    assert isinstance(caught.value, TypeError)  # also catchable as the builtin it resembles


@pytest.mark.parametrize("name", BUILTINS)
def test_undecodable_payloads_raise_serialization_error(name: str) -> None:
    with pytest.raises(SerializationError) as caught:
        get_serializer(name).loads([b"\x80\x05 this is not a payload"])
    assert str(caught.value).startswith(f"{name} serializer cannot decode the payload: ")


def test_unknown_serializer_name_lists_the_installed_ones() -> None:
    with pytest.raises(UnknownSerializerError) as caught:
        get_serializer("msgpack")
    assert str(caught.value).startswith(
        "unknown serializer 'msgpack'; installed serializers: arrow, auto, auto-json, "
        "auto-strict, compressed/json, compressed/pickle, json, json+bz2,"
    )
    with pytest.raises(UnknownSerializerError, match="unknown serializer 'msgpack'"):
        ResultStore("memory://serializers", serializer="msgpack")


def test_serializer_must_be_a_name_or_an_instance() -> None:
    with pytest.raises(UnknownSerializerError, match=r"not int$"):
        get_serializer(3)  # type: ignore[arg-type]


def test_builtins_are_registered_entry_points_and_instances_pass_through() -> None:
    assert set(BUILTINS) <= set(available_serializers())
    assert available_serializers()["pickle"] == "resultstore"
    pickle = get_serializer("pickle")
    assert isinstance(pickle, Serializer)
    assert pickle.name == "pickle"
    assert get_serializer("pickle") is pickle  # one shared instance per name
    assert get_serializer(pickle) is pickle


def test_a_custom_serializer_instance_is_used_as_given(tmp_path: Path) -> None:
    class Upper(Serializer):
        name = "upper"

        def dumps(self, obj: Any) -> list[Buffer]:
            return [str(obj).upper().encode()]

        def loads(self, segments: Sequence[Buffer]) -> Any:
            return b"".join(bytes(s) for s in segments).decode()

    store = ResultStore(f"file://{tmp_path}", serializer=Upper())
    key = store.write("shout")
    assert store.read_metadata(key).serializer == "upper"
    assert store.store.root.joinpath(f"{key}.rsr").read_bytes().endswith(b"SHOUT")
    # The store reads its own records with the instance it was given, registered or not.
    assert store.read(key).result == "SHOUT"
