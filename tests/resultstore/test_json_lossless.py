"""Lossless JSON: what ``serializer="json"`` accepts comes back equal and of the same type.

Values that are JSON already stay plain JSON; everything else is a tagged object
(``{"$type": "tuple", "items": [...]}``) that other languages can still read.
Classes are rebuilt only from an allow-list (``register_json_type`` and
``RESULTSTORE_JSON_MODULES``), so reading a record never imports code it names.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import json
import math
import pathlib
import sys
import textwrap
import time
import uuid
import zoneinfo
from pathlib import Path
from typing import Any, NamedTuple

import anyio
import pydantic
import pydantic_core
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resultstore import (
    ConfigurationError,
    ResultStore,
    SerializationError,
    get_serializer,
    register_json_type,
)
from resultstore.json_codec import MAX_DEPTH
from resultstore.serializers import JSONSerializer
from states import State, exception_to_failed_state, get_state_result

JSON = get_serializer("json")


# -- types the tests store (registered, so they may be rebuilt) -----------------------


@register_json_type
class Color(enum.Enum):
    RED = 1
    GREEN = "green"


@register_json_type
class Perm(enum.Flag):
    READ = 1
    WRITE = 2


@register_json_type
class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Tone(str, enum.Enum):  # a str subclass: must never pass for a plain str
    DARK = "dark"
    LIGHT = "light"


register_json_type(Tone)


@register_json_type
@dataclasses.dataclass(frozen=True)
class Point:
    x: float
    y: float
    label: str = ""


@register_json_type
@dataclasses.dataclass
class Run:
    name: str
    started: datetime.datetime
    tags: frozenset[str]
    where: Point | None = None
    retries: int = dataclasses.field(default=0, init=False)


@register_json_type
class Model(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    id: uuid.UUID
    amount: decimal.Decimal
    when: datetime.date
    parts: tuple[int, ...] = ()


@register_json_type
class Pair(NamedTuple):
    left: Any
    right: Any


@register_json_type
class QuotaError(Exception):
    """An exception whose __init__ does not take its args: rebuilt from its state."""

    def __init__(self, used: int) -> None:
        super().__init__(f"quota exceeded: {used} used")
        self.used = used


def round_trip(value: Any, serializer: JSONSerializer = JSON) -> Any:
    return serializer.loads(serializer.dumps(value))


def assert_same(got: Any, expected: Any, where: str = "value") -> None:
    """Equal and of the same type, all the way down (NaN equals NaN, exceptions by state)."""
    assert type(got) is type(expected), f"{where}: {type(got)} is not {type(expected)}"
    if isinstance(expected, BaseException):
        assert_same(list(got.args), list(expected.args), f"{where}.args")
        assert_same(vars(got), vars(expected), f"{where}.__dict__")
    elif isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(got), where
    elif isinstance(expected, decimal.Decimal) and expected.is_nan():
        assert got.is_nan() and str(got) == str(expected), where
    elif dataclasses.is_dataclass(expected):
        for field in dataclasses.fields(expected):
            name = field.name
            assert_same(getattr(got, name), getattr(expected, name), f"{where}.{name}")
    elif isinstance(expected, complex):
        assert_same(got.real, expected.real, f"{where}.real")
        assert_same(got.imag, expected.imag, f"{where}.imag")
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), where
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            assert_same(g, e, f"{where}[{i}]")
    elif type(expected) is dict:
        assert list(got) == list(expected), where  # keys equal, in the same order
        for key in expected:
            assert_same(got[key], expected[key], f"{where}[{key!r}]")
    else:
        assert got == expected, where
        if isinstance(expected, (datetime.datetime, datetime.time)):
            assert got.tzinfo == expected.tzinfo and got.fold == expected.fold, where
            assert got.tzname() == expected.tzname(), where


# -- every supported type -------------------------------------------------------------

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
EXAMPLES: dict[str, Any] = {
    "none": None,
    "bool": True,
    "int": -7,
    "big int": 2**200 + 1,
    "negative big int": -(2**64),
    "huge int (5000 digits)": 10**5000,
    "float": 0.1,
    "negative zero": -0.0,
    "nan": math.nan,
    "inf": math.inf,
    "-inf": -math.inf,
    "complex": complex(1.5, math.inf),
    "str": "héllo \u2603 $type \\u0024",
    "bytes": b"\x00\xff\x80",
    "bytearray": bytearray(b"abc"),
    "list": [1, "a", None],
    "tuple": (1, (2, 3), ()),
    "set": {1, "a", (2, 3)},
    "frozenset": frozenset({frozenset({1}), 2}),
    "dict with int keys": {1: "a", 2: "b"},
    "dict with mixed keys": {None: 0, True: 1, 2.5: 2, (1, 2): 3, "s": 4, Color.RED: 5},
    "dict with a $type key": {"$type": "tuple", "items": [1]},
    "datetime naive": datetime.datetime(2024, 2, 29, 23, 59, 59, 999999),
    "datetime utc": datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
    "datetime fixed offset": datetime.datetime(
        2024, 1, 1, 12, tzinfo=datetime.timezone(datetime.timedelta(hours=-3, minutes=-30))
    ),
    "datetime named offset": datetime.datetime(
        2024, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=1), "CET")
    ),
    "datetime zoneinfo": datetime.datetime(2024, 7, 1, 9, 30, tzinfo=PARIS),
    "datetime fold": datetime.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=PARIS),
    "date": datetime.date(1, 1, 1),
    "time": datetime.time(23, 59, 59, 1),
    "time with offset": datetime.time(1, 2, tzinfo=datetime.timezone(datetime.timedelta(hours=5))),
    "time with zone": datetime.time(1, 2, tzinfo=PARIS),
    "timedelta": datetime.timedelta(days=-1, seconds=5, microseconds=7),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "decimal": decimal.Decimal("-1.2300E+5"),
    "decimal nan": decimal.Decimal("NaN"),
    "decimal inf": decimal.Decimal("-Infinity"),
    "pure posix path": pathlib.PurePosixPath("/etc/x"),
    "pure windows path": pathlib.PureWindowsPath("C:\\Users\\x"),
    "path": pathlib.Path("relative/file.txt"),
    "enum": Color.GREEN,
    "int enum": Level.HIGH,
    "flag combination": Perm.READ | Perm.WRITE,
    "dataclass": Point(1.0, 2.0, "p"),
    "nested dataclass": Run(
        "r", datetime.datetime(2024, 1, 1, tzinfo=PARIS), frozenset({"a"}), Point(0, 0)
    ),
    "pydantic model": Model(
        id=uuid.UUID(int=1), amount=decimal.Decimal("9.99"), when=datetime.date(2024, 1, 1)
    ),
    "pydantic model with extra": Model(
        id=uuid.UUID(int=2),
        amount=decimal.Decimal(1),
        when=datetime.date(2024, 1, 1),
        parts=(1, 2),
        note={"$type": "not a tag"},
    ),
    "named tuple": Pair(1, (2, "x")),
    "builtin exception": ValueError("bad row", 7),
    "os error": FileNotFoundError(2, "No such file", "/nope"),
    "custom exception": QuotaError(12),
    "everything nested": {
        "runs": [Run("a", datetime.datetime(2020, 1, 1), frozenset())],
        (1, "k"): {Color.RED: [b"x", {1.5, None}]},
        "models": (
            Model(id=uuid.UUID(int=3), amount=decimal.Decimal("0"), when=datetime.date.max),
        ),
    },
}
if sys.version_info >= (3, 11):
    group = ExceptionGroup("many", [KeyError("k"), TypeError("t")])  # noqa: F821 (3.11+)
    group.add_note("while importing")
    EXAMPLES["exception group with a note"] = group


@pytest.mark.parametrize("value", list(EXAMPLES.values()), ids=list(EXAMPLES))
def test_every_supported_type_comes_back_equal_and_of_the_same_type(value: Any) -> None:
    assert_same(round_trip(value), value)


def test_a_run_that_carries_a_field_set_after_init_keeps_it() -> None:
    run = Run("r", datetime.datetime(2024, 1, 1), frozenset({"x"}))
    run.retries = 3
    back = round_trip(run)
    assert back == run and back.retries == 3


def test_json_native_values_stay_plain_json_that_any_reader_parses() -> None:
    value = {"name": "run", "scores": [1, 2.5, None, True], "nested": {"a": []}}
    (text,) = JSON.dumps(value)
    assert b"$type" not in bytes(text)
    assert json.loads(bytes(text)) == value


def test_tags_are_ordinary_json_objects() -> None:
    (text,) = JSON.dumps({"when": datetime.date(2024, 1, 2), "pair": (1, 2)})
    assert json.loads(bytes(text)) == {
        "when": {"$type": "date", "value": "2024-01-02"},
        "pair": {"$type": "tuple", "items": [1, 2]},
    }


def test_records_of_the_old_json_serializer_still_decode_as_before() -> None:
    # What the serializer wrote before tags existed (pydantic-core's JSON), incl. NaN tokens
    # and an object with a "$type" that names no tag (as .NET's Json.NET writes them).
    old = pydantic_core.to_json(
        {"n": 1, "x": [1.5, float("nan")], "$": "$5", "net": {"$type": "My.Type, Asm", "v": 1}}
    )
    back = JSON.loads([old])
    assert back["n"] == 1 and math.isnan(back["x"][1]) and back["$"] == "$5"
    assert back["net"] == {"$type": "My.Type, Asm", "v": 1}


def test_orjson_and_the_default_engine_read_each_other() -> None:
    pytest.importorskip("orjson")
    fast = get_serializer({"type": "json", "jsonlib": "orjson"})
    assert isinstance(fast, JSONSerializer)
    value = EXAMPLES["everything nested"]
    assert_same(fast.loads(JSON.dumps(value)), value)
    assert_same(JSON.loads(fast.dumps(value)), value)
    assert_same(round_trip(EXAMPLES["nan"], fast), math.nan)  # never orjson's silent null


# -- property tests -------------------------------------------------------------------


def _reparses(path: pathlib.PurePath) -> bool:
    """Whether pathlib parses ``str(path)`` back to ``path`` (json refuses the others)."""
    again = type(path)(str(path))
    return again.parts == path.parts and str(again) == str(path)


hashable_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.dates()
    | st.uuids()
    | st.sampled_from([*Color, *Level, *Tone, *Perm, Perm.READ | Perm.WRITE, Perm(0)])
    | st.decimals(allow_nan=False)
    | st.timedeltas()
    | st.builds(pathlib.PureWindowsPath, st.text("ab\\:", max_size=6)).filter(_reparses)
    | st.builds(pathlib.Path, st.text("ab/", max_size=6))
)
scalars = (
    hashable_scalars
    | st.floats()  # NaN and infinities too
    | st.datetimes(timezones=st.none() | st.timezones() | st.just(datetime.timezone.utc))
    | st.times(timezones=st.none() | st.just(datetime.timezone(datetime.timedelta(hours=2))))
    | st.complex_numbers()
    | st.binary(max_size=8).map(bytearray)
    | st.builds(pathlib.PurePosixPath, st.text("ab/", max_size=6))
    | st.sampled_from(["$type", "$", "\\u0024type", "items"])
    | st.decimals()  # NaN, sNaN and infinities too
    | st.dates().map(lambda d: datetime.datetime.combine(d, datetime.time(), PARIS))
)
hashables = st.recursive(
    hashable_scalars,
    lambda children: st.tuples(children, children) | st.frozensets(children, max_size=3),
    max_leaves=6,
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.sets(hashables, max_size=3)
        | st.frozensets(hashables, max_size=3)
        | st.dictionaries(st.text(max_size=6) | st.just("$type"), children, max_size=4)
        | st.dictionaries(hashables, children, max_size=4)
        | st.builds(Point, st.floats(), st.floats(), st.text(max_size=4))
        | st.builds(Pair, children, children)
        | st.builds(ValueError, st.text(max_size=5), children)
        | st.builds(QuotaError, st.integers())
        | st.builds(FileNotFoundError, st.integers(0, 200), st.text(max_size=5))
        | st.builds(Run, st.text(max_size=4), st.datetimes(), st.frozensets(st.text(max_size=3)))
        | st.builds(
            Model,
            id=st.uuids(),
            amount=st.decimals(allow_nan=False, allow_infinity=False),
            when=st.dates(),
            parts=st.tuples(st.integers(), st.integers()),
        )
        | st.lists(scalars, min_size=16, max_size=24)  # long lists: the bulk checks
        | st.lists(st.floats(), min_size=16, max_size=24)
        | st.lists(st.integers(), min_size=16, max_size=24)
        | st.lists(st.booleans() | st.none(), min_size=16, max_size=24)
    ),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=values)
def test_generated_values_come_back_equal_and_of_the_same_type(value: Any) -> None:
    assert_same(round_trip(value), value)


@settings(max_examples=200, deadline=None)
@given(value=values)
def test_compressed_json_is_as_lossless(value: Any) -> None:
    assert_same(round_trip(value, get_serializer("json+zlib")), value)  # type: ignore[arg-type]


PLAIN_LOOKING: dict[str, Any] = {
    "bool among ints": [1, True, 0, False] * 5,
    "bools only": [True, False] * 10,
    "int enum among ints": [1, 2, 3] * 6 + [Level.HIGH],
    "int enum alone": [Level.LOW] * 20,
    "str enum among strs": ["a"] * 20 + [Tone.DARK],
    "str enum as a value": {"tone": Tone.LIGHT, "n": 1},
    "flag among ints": [Perm.READ, 1, 2],
    "negative zero in a long list": [0.0, -0.0] * 10,
    "negative zero alone": -0.0,
    "nan in a long list": [1.5] * 20 + [math.nan],
    "inf in a long list": [math.inf] + [1.5] * 20,
    "-inf in a dict": {"x": -math.inf},
    "floats whose sum overflows": [sys.float_info.max] * 20,
    "ints at the 64-bit edges": [-(2**63), 2**64 - 1] * 10,
    "ints past the 64-bit edges": [-(2**63) - 1] + [0] * 20 + [2**64],
    "a tuple in a list": [[1, 2], (1, 2)],
    "tuples only": [(1,)] * 20,
    "int keys": {1: [1.5] * 20},
    "a $type key deep down": [{"a": {"$type": "bytes", "base64": "AA=="}}],
    "float that looks like an int": [1.0, 2.0] * 10,
}


@pytest.mark.parametrize("value", list(PLAIN_LOOKING.values()), ids=list(PLAIN_LOOKING))
def test_values_that_look_plain_keep_their_types(value: Any) -> None:
    assert_same(round_trip(value), value)
    assert_same(round_trip(value, get_serializer("json+zstd")), value)  # type: ignore[arg-type]


def test_a_path_whose_text_parses_as_another_path_is_refused() -> None:
    odd = pathlib.PureWindowsPath("//server/")  # a UNC drive with an empty share name
    assert not _reparses(odd)
    with pytest.raises(SerializationError, match=r"PureWindowsPath \(at value\[0\]\).*parses back"):
        JSON.dumps([odd])
    assert_same(
        round_trip(pathlib.PureWindowsPath("//server/share/x")),
        pathlib.PureWindowsPath("//server/share/x"),
    )


@pytest.mark.parametrize(
    "value",
    [
        collections.OrderedDict(a=1),
        collections.defaultdict(list, a=[1]),
        [collections.Counter("ab")],
        type("Text", (str,), {})("x"),
        [0] * 20 + [type("Count", (int,), {})(1)],
        [0.5] * 20 + [type("Real", (float,), {})(1.5)],
        {"rows": type("Rows", (list,), {})([1])},
    ],
    ids=[
        "OrderedDict",
        "defaultdict",
        "Counter",
        "str subclass",
        "int subclass",
        "float subclass",
        "list subclass",
    ],
)
def test_subclasses_of_json_types_are_refused_not_written_as_their_base(value: Any) -> None:
    with pytest.raises(SerializationError, match="subclass it cannot rebuild"):
        JSON.dumps(value)


# -- refused at write time -------------------------------------------------------------


class Unregistered(enum.Enum):
    A = 1


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (object(), "object"),
        ({"a": [1, {2: lambda: 0}]}, "function (at value['a'][1][2])"),
        (Unregistered.A, "Unregistered (test_json_lossless:Unregistered)"),
        (memoryview(b"x"), "memoryview"),
        (datetime.datetime(2024, 1, 1, tzinfo=datetime.tzinfo()), "datetime"),
        (type("Sub", (dict,), {})(), "Sub"),
    ],
    ids=[
        "object",
        "nested lambda",
        "unregistered enum",
        "memoryview",
        "odd tzinfo",
        "dict subclass",
    ],
)
def test_values_json_cannot_rebuild_are_refused_naming_the_type(value: Any, named: str) -> None:
    with pytest.raises(SerializationError) as caught:
        JSON.dumps(value)
    message = str(caught.value)
    assert message.startswith(f"json serializer cannot encode object of type {named}")
    assert "\n" not in message and ("pickle" in message or "register" in message)


def test_a_class_from_an_unlisted_module_names_the_fixes() -> None:
    with pytest.raises(SerializationError) as caught:
        JSON.dumps([Unregistered.A])
    assert "register_json_type()" in str(caught.value)
    assert "RESULTSTORE_JSON_MODULES" in str(caught.value)


def test_nesting_past_the_limit_and_cycles_are_refused() -> None:
    deep: list[Any] = []
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(SerializationError, match=f"deeper than {MAX_DEPTH} levels"):
        JSON.dumps(deep)
    with pytest.raises(SerializationError, match=f"deeper than {MAX_DEPTH} levels"):
        JSON.dumps([(deep,)])
    cycle: list[Any] = [1]
    cycle.append(cycle)
    with pytest.raises(SerializationError, match="contains itself"):
        JSON.dumps(cycle)
    fine: list[Any] = []
    for _ in range(MAX_DEPTH - 1):
        fine = [fine]
    assert round_trip(fine) == fine
    for leaf in ([1] * 20, [1.5] * 20, ["s"] * 20, [{"a": 1}] * 20):  # long lists at the edge
        at_limit: Any = leaf
        for _ in range(MAX_DEPTH - (2 if isinstance(leaf[0], dict) else 1)):
            at_limit = [at_limit]
        assert round_trip(at_limit) == at_limit
        with pytest.raises(SerializationError, match=f"deeper than {MAX_DEPTH} levels"):
            JSON.dumps([at_limit])


# -- adversarial records ---------------------------------------------------------------


def evil_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A module on sys.path that leaves a file behind if it is ever imported."""
    marker = tmp_path / "imported"
    (tmp_path / "evil_mod.py").write_text(
        textwrap.dedent(
            f"""
            import enum, pathlib
            pathlib.Path({str(marker)!r}).touch()
            class Thing(enum.Enum):
                A = 1
            class Boom(Exception):
                pass
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return marker


@pytest.mark.parametrize(
    "record",
    [
        {"$type": "enum", "class": "evil_mod:Thing", "name": "A"},
        {"$type": "exception", "class": "evil_mod:Boom", "args": []},
        {"$type": "dataclass", "class": "evil_mod:Thing", "fields": {}},
        {
            "$type": "pydantic",
            "class": "evil_mod:M",
            "fields": {},
            "extra": None,
            "fields_set": [],
            "private": None,
        },
        {"$type": "namedtuple", "class": "evil_mod:T", "items": []},
    ],
    ids=["enum", "exception", "dataclass", "pydantic", "namedtuple"],
)
def test_a_record_naming_an_unlisted_class_never_imports_its_module(
    record: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = evil_module(tmp_path, monkeypatch)
    with pytest.raises(SerializationError) as caught:
        JSON.loads([json.dumps([record]).encode()])
    message = str(caught.value)
    assert "class 'evil_mod:" in message and "RESULTSTORE_JSON_MODULES" in message
    assert "\n" not in message
    assert "evil_mod" not in sys.modules and not marker.exists()


@pytest.mark.parametrize(
    "name", ["os:system", "builtins:eval", "builtins:type", "subprocess:Popen", "os.path:join"]
)
def test_functions_and_non_exception_builtins_are_never_resolved(name: str) -> None:
    was_loaded = "subprocess" in sys.modules
    record = json.dumps({"$type": "exception", "class": name, "args": ["x"]}).encode()
    with pytest.raises(SerializationError, match=re_escape(name)):
        JSON.loads([record])
    assert ("subprocess" in sys.modules) == was_loaded


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_modules_named_in_the_setting_are_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = evil_module(tmp_path, monkeypatch)
    monkeypatch.setenv("RESULTSTORE_JSON_MODULES", "evil_mod")
    record = json.dumps({"$type": "enum", "class": "evil_mod:Thing", "name": "A"}).encode()
    thing = JSON.loads([record])
    assert type(thing).__name__ == "Thing" and marker.exists()  # trusted: imported
    assert_same(round_trip(thing), thing)
    monkeypatch.delitem(sys.modules, "evil_mod")


def test_a_misspelled_module_in_the_setting_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RESULTSTORE_JSON_MODULES", "no_such_module_xyz")
    with pytest.raises(ConfigurationError) as caught:
        JSON.dumps(Unregistered.A)
    assert str(caught.value) == (
        "invalid setting RESULTSTORE_JSON_MODULES: module 'no_such_module_xyz' is not "
        "installed; fix the name or remove it"
    )
    monkeypatch.setenv("RESULTSTORE_JSON_MODULES", "my-app")
    with pytest.raises(ConfigurationError, match=r"RESULTSTORE_JSON_MODULES.*'my-app'"):
        JSON.dumps(Unregistered.A)


def test_nesting_bombs_fail_fast_with_a_serialization_error() -> None:
    for bomb in (
        b"[" * 200_000 + b"]" * 200_000,
        b'{"a":' * 200_000 + b"1" + b"}" * 200_000,
        b'{"$type":"tuple","items":[' * 50_000 + b"]}" * 50_000,
    ):
        started = time.perf_counter()
        with pytest.raises(SerializationError, match="cannot decode the payload"):
            JSON.loads([bomb])
        assert time.perf_counter() - started < 2


def test_huge_numbers_are_bounded() -> None:
    started = time.perf_counter()
    with pytest.raises(SerializationError, match="cannot decode"):
        JSON.loads([b"1" + b"0" * 1_000_000])  # decimal digits: refused, not parsed slowly
    assert time.perf_counter() - started < 2
    big = b'{"$type":"int","value":"0x' + b"f" * 1_000_000 + b'"}'  # hex: linear time
    assert JSON.loads([big]) == 16**1_000_000 - 1
    assert math.isinf(JSON.loads([b"1e999999"]))
    assert JSON.loads([b'{"$type":"decimal","value":"1E+999999999"}']) == decimal.Decimal(
        "1E+999999999"
    )


@pytest.mark.parametrize(
    ("record", "why"),
    [
        (b'{"$type":"tuple","$type":"set","items":[1]}', "repeats a key"),
        (b'{"$type":"tuple","items":[1],"items":[2]}', "repeats a key"),
        (b'{"\\u0024type":"tuple","$type":"set","items":[]}', "repeats a key"),
        (b'{"$type":"tuple","items":[1],"extra":0}', "expected ['items']"),
        (b'{"$type":"set","items":[[1]]}', "unhashable list"),
        (b'{"$type":"int","value":"12"}', "not hexadecimal"),
        (b'{"$type":"float","value":"1.5"}', "not nan, inf or -inf"),
        (b'{"$type":"bytes","base64":"!!"}', "cannot decode"),
        (b'{"$type":"path","class":"os","value":"x"}', "not a pathlib class"),
        (b'{"$type":"datetime","value":"2024-01-01","zone":"../../etc/passwd"}', "not a zone"),
        (b'{"$type":"enum","class":"test_json_lossless:Color"}', "one of 'name' and 'value'"),
        (b'{"$type":"enum","class":"test_json_lossless:Point","name":"x"}', "as a enum"),
        (b'{"$type":"dataclass","class":"test_json_lossless:Point","fields":{"x":1}}', "fields"),
    ],
)
def test_malformed_tags_are_refused_with_a_reason(record: bytes, why: str) -> None:
    with pytest.raises(SerializationError, match="cannot decode the payload") as caught:
        JSON.loads([record])
    assert why in str(caught.value)


# -- a failed State persists with json ----------------------------------------------------


def test_a_failed_state_persists_its_exception_with_json(tmp_path: Path) -> None:
    store = ResultStore(f"file://{tmp_path}", serializer="json").use_for_references()

    async def fail() -> State[object]:
        try:
            raise QuotaError(40)
        except QuotaError as exc:
            return await exception_to_failed_state(exc, result_store=store, write_result=True)

    state = anyio.run(fail)
    received = State.model_validate_json(state.model_dump_json())
    with pytest.raises(QuotaError, match="quota exceeded: 40 used") as raised:
        get_state_result(received)
    assert raised.value.used == 40
    key = received.data.key
    assert ResultStore(f"file://{tmp_path}").read(key).metadata.serializer == "json"
