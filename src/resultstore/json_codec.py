"""Lossless JSON: the tagged encoding behind the ``json`` serializer.

Plain JSON values (``dict`` with ``str`` keys, ``list``, ``str``, finite
``float``, ``bool``, ``None`` and integers in the 64-bit range) are written as
themselves, so records of JSON-native values are plain JSON that any language
reads, exactly as the serializer wrote them before tags existed. Every other
supported value becomes a JSON object whose reserved key ``"$type"`` names
what it is, for example::

    (1, 2)                       {"$type": "tuple", "items": [1, 2]}
    {1: "a"}                     {"$type": "dict", "items": [[1, "a"]]}
    b"\\x00"                      {"$type": "bytes", "base64": "AA=="}
    datetime(2024, 1, 2, tzinfo=ZoneInfo("Europe/Paris"))
                                 {"$type": "datetime", "value": "2024-01-02T00:00:00+01:00",
                                  "zone": "Europe/Paris"}
    Color.RED                    {"$type": "enum", "class": "app.models:Color", "name": "RED"}

A user ``dict`` that itself has a ``"$type"`` key is written in the ``dict``
form, so decoding never mistakes data for a tag. docs/format.md lists every tag.

Decoding never imports code chosen by the record: a tag naming a class (enum,
dataclass, pydantic model, exception, named tuple) is resolved only from an
allow-list, the classes given to :func:`register_json_type` plus the classes
defined in the modules named by ``RESULTSTORE_JSON_MODULES`` (and, for
exceptions, the built-in ones). A record naming any other class fails with
:class:`SerializationError` naming the class and the setting, and its module
is not imported. Encoding checks the same allow-list, so a value that could
not be read back is refused when it is written, not when it is read.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import decimal
import enum
import functools
import importlib
import importlib.util
import pathlib
import re
import sys
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from resultstore.errors import ConfigurationError, ResultStoreError, SerializationError

__all__ = [
    "JSON_MODULES_SETTING",
    "MAX_DEPTH",
    "TYPE_KEY",
    "decode_pairs",
    "encode",
    "is_plain",
    "register_json_type",
    "registered_json_types",
]

TYPE_KEY = "$type"
"""The reserved key of a tagged JSON object."""
MAX_DEPTH = 128
"""The deepest nesting of JSON arrays and objects a record may hold (tags included).

128 is the default limit of common JSON parsers (Rust's serde_json, for one), so
every record the serializer writes is readable by them; deeper values are refused
at write time with a :class:`SerializationError`.
"""
JSON_MODULES_SETTING = "RESULTSTORE_JSON_MODULES"

_STR_ONLY = {str}
_NONE = type(None)
_I64 = 1 << 63
_U64 = 1 << 64
_IMIN, _IMAX = -_I64, _U64 - 1  # the integers written plain (JSON parsers' 64-bit range)
_FMAX = sys.float_info.max
_FMIN = -_FMAX  # finite floats lie within; nan compares false with both bounds
_BULK = 16  # lists this long are first tried for one scalar type (checked in bulk)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
_ZONE = re.compile(r"[A-Za-z0-9_+\-]+(?:/[A-Za-z0-9_+\-]+)*\Z")
_PATHS: dict[str, type[pathlib.PurePath]] = {
    "PurePosixPath": pathlib.PurePosixPath,
    "PureWindowsPath": pathlib.PureWindowsPath,
    "PosixPath": pathlib.PosixPath,
    "WindowsPath": pathlib.WindowsPath,
}
_PATH_NAMES = {cls: name for name, cls in _PATHS.items()}
_NON_FINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}

T = TypeVar("T", bound=type)

_REGISTRY: dict[str, type] = {}


class _Refused(Exception):
    """A value the encoding cannot hold losslessly; ``path`` grows as it unwinds."""

    def __init__(self, type_name: str, why: str) -> None:
        super().__init__(why)
        self.type_name = type_name
        self.why = why
        self.path: list[str] = []


class _TooDeep(Exception):
    """The value nests deeper than :data:`MAX_DEPTH` (or refers to itself)."""


# -- the allow-list -------------------------------------------------------------------


def _class_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _kind(cls: type) -> str | None:
    """Which class-bearing tag ``cls``'s instances use, or None if none does."""
    if issubclass(cls, enum.Enum):
        return "enum"
    if issubclass(cls, BaseException):
        return "exception"
    pydantic = sys.modules.get("pydantic")  # a model exists only if pydantic is imported
    if pydantic is not None and issubclass(cls, pydantic.BaseModel):
        return "pydantic"
    if dataclasses.is_dataclass(cls):
        return "dataclass"
    if issubclass(cls, tuple) and isinstance(getattr(cls, "_fields", None), tuple):
        return "namedtuple"
    return None


def register_json_type(cls: T) -> T:
    """Allow the ``json`` serializer to write and read instances of ``cls``.

    ``cls`` is an Enum, a dataclass, a pydantic model, an exception class or a
    named tuple. It is recorded under ``module:qualname``; a record naming that
    class decodes to ``cls`` without importing anything. Register the class in
    every process that reads such records (a module-level call, or use it as a
    class decorator). Registering another class under the same name replaces
    the first. To allow every class of a module instead, name the module in
    ``RESULTSTORE_JSON_MODULES``.
    """
    if not isinstance(cls, type) or _kind(cls) is None:
        shown = cls.__name__ if isinstance(cls, type) else type(cls).__name__
        raise SerializationError(
            f"register_json_type({shown}): only Enum, dataclass, pydantic model, exception "
            "and named tuple classes can be registered; store other types with pickle"
        )
    _REGISTRY[_class_name(cls)] = cls
    return cls


def registered_json_types() -> dict[str, type]:
    """The classes given to :func:`register_json_type`, by ``module:qualname``."""
    return dict(_REGISTRY)


@functools.cache
def _checked_modules(names: tuple[str, ...]) -> frozenset[str]:
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise ConfigurationError(
                f"invalid setting {JSON_MODULES_SETTING}: module {name!r} is not installed; "
                "fix the name or remove it"
            )
    return frozenset(names)


def _allowed_modules() -> frozenset[str]:
    from resultstore.settings import get_settings

    return _checked_modules(tuple(get_settings().json_modules))


def _how_to_allow(cls_name: str) -> str:
    module = cls_name.partition(":")[0]
    return (
        f"register it with resultstore.register_json_type() or add {module!r} to "
        f"{JSON_MODULES_SETTING}"
    )


def _lookup(module: str, qualname: str) -> object:
    """The object ``module:qualname`` names, through ``vars()`` (no descriptors run)."""
    target: object = sys.modules.get(module) or importlib.import_module(module)
    for part in qualname.split("."):
        target = vars(target).get(part)
        if target is None:
            return None
    return target


def _allowed(cls: type, kind: str) -> bool:
    """True when a record naming ``cls`` would decode to ``cls`` (checked on write)."""
    name = _class_name(cls)
    if _REGISTRY.get(name) is cls:
        return True
    module = cls.__module__
    if _builtin_exception(cls, kind) or module in _allowed_modules():
        try:
            return _lookup(module, cls.__qualname__) is cls
        except Exception:
            return False
    return False


def _resolve(name: object, kind: str) -> Any:
    """The class a record names, from the allow-list only; never imports anything else."""
    if not isinstance(name, str):
        raise SerializationError(f"a {kind} tag's class is not a string")
    cls: object = _REGISTRY.get(name)  # registered classes may be local: <locals> in the name
    module, _, qualname = name.partition(":")
    if cls is None:
        if not (_NAME.match(module) and _NAME.match(qualname)):
            raise SerializationError(f"the record names {name[:100]!r}, which is not a class name")
        if not ((kind == "exception" and module == "builtins") or module in _allowed_modules()):
            raise SerializationError(
                f"the record names class {name!r}, which is not allowed for json; if you "
                f"trust it, {_how_to_allow(name)}"
            )
        try:
            cls = _lookup(module, qualname)
        except Exception as exc:
            raise SerializationError(
                f"the record names class {name!r}, whose module cannot be imported "
                f"({type(exc).__name__}: {exc})"
            ) from None
        if not (
            isinstance(cls, type) and cls.__module__ == module and cls.__qualname__ == qualname
        ):
            raise SerializationError(f"the record names {name!r}, which is not a class there")
    assert isinstance(cls, type)
    if _kind(cls) != kind:
        raise SerializationError(f"the record names {name!r} as a {kind}, which it is not")
    if (
        module == "builtins"
        and not _builtin_exception(cls, kind)
        and module not in _allowed_modules()  # unless builtins are trusted, all of them
    ):
        raise SerializationError(
            f"the record names {name!r}, which would end the reader when raised (only "
            "built-in Exception subclasses are decoded, not SystemExit or KeyboardInterrupt)"
        )
    return cls


def _builtin_exception(cls: type, kind: str) -> bool:
    """True for the built-in exceptions every reader decodes: ``Exception``'s subclasses.

    Not ``SystemExit``, ``KeyboardInterrupt``, ``GeneratorExit`` or ``BaseExceptionGroup``:
    a Failed state raising one would end the program that reads it, at the writer's word.
    """
    return kind == "exception" and cls.__module__ == "builtins" and issubclass(cls, Exception)


# -- encoding -------------------------------------------------------------------------


def is_plain(obj: Any, serializer: str = "json") -> bool:
    """True when ``obj`` is JSON-native throughout and needs no tag (the fast path).

    Raises :class:`SerializationError` when ``obj`` nests deeper than :data:`MAX_DEPTH`;
    ``serializer`` is the name its message gives.
    """
    try:
        return _plain(obj, 1)
    except (_TooDeep, RecursionError):
        raise _too_deep(obj, serializer) from None


def _plain(obj: Any, depth: int) -> bool:
    t = type(obj)
    if t is dict:
        if TYPE_KEY in obj or (obj and set(map(type, obj)) != _STR_ONLY):
            return False
        values: Any = obj.values()
    elif t is list:
        values = obj
    else:
        return t is str or t is bool or obj is None or _plain_number(obj)
    if depth > MAX_DEPTH:
        raise _TooDeep
    if t is list and len(obj) >= _BULK:
        uniform = _uniform(obj)
        if uniform is not None:
            return uniform
    for v in values:  # the hot loop: exact types only, commonest first, nothing allocated
        tv = type(v)
        if tv is str:
            continue
        if tv is float:
            if not _FMIN <= v <= _FMAX:  # false for nan, inf and -inf
                return False
        elif tv is int:
            if not _IMIN <= v <= _IMAX:
                return False
        elif tv is bool or v is None:
            continue
        elif tv is dict or tv is list:
            if not _plain(v, depth + 1):
                return False
        else:
            return False
    return True


def _uniform(items: list[Any]) -> bool | None:
    """For a list of one scalar type, whether it is plain, checked at C speed; else None.

    A float list is plain when its sum is finite: a nan or an infinity makes the sum
    one, and a sum that overflows only sends a plain list to the full encoder, which
    writes finite floats plain all the same.
    """
    types = set(map(type, items))
    if len(types) != 1:
        return None
    (t,) = types
    if t is str or t is bool or t is _NONE:
        return True
    if t is float:
        return bool(_FMIN <= sum(items) <= _FMAX)
    if t is int:
        return bool(min(items) >= _IMIN and max(items) <= _IMAX)
    return None


def _plain_number(obj: Any) -> bool:
    t = type(obj)
    if t is float:
        return bool(_FMIN <= obj <= _FMAX)
    return t is int and bool(_IMIN <= obj <= _IMAX)


def _too_deep(obj: Any, serializer: str) -> SerializationError:
    return SerializationError(
        f"{serializer} serializer cannot encode object of type {type(obj).__name__}: it nests "
        f"deeper than {MAX_DEPTH} levels of JSON (or contains itself); flatten it or use pickle"
    )


def encode(obj: Any, serializer: str = "json") -> Any:
    """``obj`` as a tree of JSON-native values, with tags for everything else.

    Raises :class:`SerializationError` naming the type (and where it sits) of
    any value that cannot be stored losslessly, and what to do instead;
    ``serializer`` is the name its message gives.
    """
    try:
        return _enc(obj, 1)
    except (_TooDeep, RecursionError):
        raise _too_deep(obj, serializer) from None
    except _Refused as refused:
        where = "".join(reversed(refused.path))
        at = f" (at value{where})" if where else ""
        raise SerializationError(
            f"{serializer} serializer cannot encode object of type {refused.type_name}{at}: "
            f"{refused.why}"
        ) from None
    except ResultStoreError:
        raise
    except Exception as exc:  # a value whose own methods fail (isoformat, __getstate__, ...)
        raise SerializationError(
            f"{serializer} serializer cannot encode object of type {type(obj).__name__}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None


def _deep(depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _TooDeep


def _enc(obj: Any, depth: int) -> Any:
    t = type(obj)
    if t is str or t is bool or obj is None:
        return obj
    if t is float:
        if not obj - obj:
            return obj
        _deep(depth)
        return {TYPE_KEY: "float", "value": "nan" if obj != obj else str(obj)}
    if t is int:
        if -_I64 <= obj < _U64:
            return obj
        _deep(depth)
        return {TYPE_KEY: "int", "value": hex(obj)}  # hex: linear, no digit limit
    if t is list:
        _deep(depth)
        return _items(obj, depth + 1)
    if t is dict:
        _deep(depth)
        if TYPE_KEY not in obj and all(type(k) is str for k in obj):
            out: dict[str, Any] = {}
            for k, v in obj.items():
                try:
                    out[k] = _enc(v, depth + 1)
                except _Refused as refused:
                    refused.path.append(f"[{k!r}]")
                    raise
            return out
        return {TYPE_KEY: "dict", "items": _pairs(obj, depth + 2)}
    handler = _HANDLERS.get(t)
    if handler is not None:
        _deep(depth)
        return handler(obj, depth)
    kind = _kind(t)
    if kind is not None:
        _deep(depth)
        if not _allowed(t, kind):
            raise _Refused(
                f"{t.__name__} ({_class_name(t)})",
                f"its class is not allowed for json, so it could not be read back; "
                f"{_how_to_allow(_class_name(t))}, or use serializer='pickle'",
            )
        return _CLASS_HANDLERS[kind](obj, depth)
    raise _Refused(t.__name__, _unsupported_hint(obj))


def _unsupported_hint(obj: Any) -> str:
    if isinstance(obj, (dict, list, tuple, set, frozenset, str, bytes, int, float)):
        return (
            f"json keeps the exact type of every value and {type(obj).__name__} is a "
            "subclass it cannot rebuild; convert it to the base type or use serializer='pickle'"
        )
    if isinstance(obj, memoryview):
        return "store bytes(view) instead, or use serializer='pickle'"
    return (
        "json stores only JSON values, datetimes, UUIDs, decimals, bytes, sets, tuples, paths "
        "and allowed enums, dataclasses, pydantic models and exceptions; use "
        "serializer='pickle' for other types"
    )


def _items(values: Any, depth: int) -> list[Any]:
    out = []
    for i, v in enumerate(values):
        try:
            out.append(_enc(v, depth))
        except _Refused as refused:
            refused.path.append(f"[{i}]")
            raise
    return out


def _pairs(mapping: dict[Any, Any], depth: int) -> list[list[Any]]:
    _deep(depth)
    out = []
    for k, v in mapping.items():
        try:
            out.append([_enc(k, depth + 1), _enc(v, depth + 1)])
        except _Refused as refused:
            refused.path.append(f"[{k!r}]")
            raise
    return out


def _seq(kind: str) -> Callable[[Any, int], Any]:
    def encode_items(obj: Any, depth: int) -> Any:
        _deep(depth + 1)
        return {TYPE_KEY: kind, "items": _items(obj, depth + 2)}

    return encode_items


def _tz_fields(tz: datetime.tzinfo | None, type_name: str) -> dict[str, Any]:
    """What the ISO text of a datetime or time does not say about its time zone."""
    if tz is None:
        return {}
    if type(tz) is datetime.timezone:
        if tz.tzname(None) == datetime.timezone(tz.utcoffset(None)).tzname(None):
            return {}  # the offset in the ISO text says it all
        return {"tzname": tz.tzname(None)}
    zoneinfo = sys.modules.get("zoneinfo")
    key = getattr(tz, "key", None)
    if zoneinfo is not None and type(tz) is zoneinfo.ZoneInfo and isinstance(key, str):
        return {"zone": key}
    raise _Refused(
        type_name,
        f"its time zone of type {type(tz).__name__} cannot be stored losslessly; use "
        "zoneinfo.ZoneInfo or datetime.timezone, or serializer='pickle'",
    )


def _datetime(obj: datetime.datetime, depth: int) -> Any:
    zone = _tz_fields(obj.tzinfo, "datetime")  # first: an odd tzinfo fails isoformat()
    out: dict[str, Any] = {TYPE_KEY: "datetime", "value": obj.isoformat(), **zone}
    if obj.fold:
        out["fold"] = 1
    return out


def _time(obj: datetime.time, depth: int) -> Any:
    zone = _tz_fields(obj.tzinfo, "time")
    out: dict[str, Any] = {TYPE_KEY: "time", "value": obj.isoformat(), **zone}
    if obj.fold:
        out["fold"] = 1
    return out


def _path(obj: pathlib.PurePath, depth: int) -> Any:
    text = str(obj)
    again = type(obj)(text)
    if again.parts != obj.parts or str(again) != text:
        # pathlib does not always parse its own text back: a Windows UNC path with an
        # empty share name (PureWindowsPath('//a/')) reads back as another path.
        raise _Refused(
            type(obj).__name__,
            f"str() of this path ({text!r}) parses back as another path ({str(again)!r}), "
            "so it could not be read back; store the str, or use serializer='pickle'",
        )
    return {TYPE_KEY: "path", "class": _PATH_NAMES[type(obj)], "value": text}


def _complex(obj: complex, depth: int) -> Any:
    return {
        TYPE_KEY: "complex",
        "real": _enc(obj.real, depth + 1),
        "imag": _enc(obj.imag, depth + 1),
    }


_HANDLERS: dict[type, Callable[[Any, int], Any]] = {
    tuple: _seq("tuple"),
    set: _seq("set"),
    frozenset: _seq("frozenset"),
    bytes: lambda obj, depth: {TYPE_KEY: "bytes", "base64": base64.b64encode(obj).decode()},
    bytearray: lambda obj, depth: {
        TYPE_KEY: "bytearray",
        "base64": base64.b64encode(obj).decode(),
    },
    datetime.datetime: _datetime,
    datetime.date: lambda obj, depth: {TYPE_KEY: "date", "value": obj.isoformat()},
    datetime.time: _time,
    datetime.timedelta: lambda obj, depth: {
        TYPE_KEY: "timedelta",
        "days": obj.days,
        "seconds": obj.seconds,
        "microseconds": obj.microseconds,
    },
    uuid.UUID: lambda obj, depth: {TYPE_KEY: "uuid", "value": str(obj)},
    decimal.Decimal: lambda obj, depth: {TYPE_KEY: "decimal", "value": str(obj)},
    complex: _complex,
    **dict.fromkeys(_PATH_NAMES, _path),
}


def _enum(obj: enum.Enum, depth: int) -> Any:
    cls = type(obj)
    out: dict[str, Any] = {TYPE_KEY: "enum", "class": _class_name(cls)}
    if obj._name_ is not None and cls.__members__.get(obj._name_) is obj:
        out["name"] = obj._name_
    else:  # a combination of Flag members has no name of its own
        out["value"] = _enc(obj._value_, depth + 1)
    return out


def _fields_of(obj: Any, names: Any, depth: int) -> dict[str, Any]:
    _deep(depth)
    out: dict[str, Any] = {}
    for name in names:
        try:
            out[name] = _enc(getattr(obj, name), depth + 1)
        except _Refused as refused:
            refused.path.append(f".{name}")
            raise
    return out


def _dataclass(obj: Any, depth: int) -> Any:
    names = [f.name for f in dataclasses.fields(obj)]
    return {
        TYPE_KEY: "dataclass",
        "class": _class_name(type(obj)),
        "fields": _fields_of(obj, names, depth + 1),
    }


def _mapping(value: Any, depth: int, where: str) -> Any:
    try:
        return _enc(value, depth)
    except _Refused as refused:
        refused.path.append(where)
        raise


def _pydantic(obj: Any, depth: int) -> Any:
    state = obj.__getstate__()
    return {
        TYPE_KEY: "pydantic",
        "class": _class_name(type(obj)),
        "fields": _mapping(state["__dict__"], depth + 1, ""),
        "extra": _mapping(state["__pydantic_extra__"], depth + 1, ".model_extra"),
        "fields_set": sorted(state["__pydantic_fields_set__"]),
        "private": _mapping(state["__pydantic_private__"], depth + 1, ".__pydantic_private__"),
    }


def _exception(obj: BaseException, depth: int) -> Any:
    out: dict[str, Any] = {
        TYPE_KEY: "exception",
        "class": _class_name(type(obj)),
        "args": _mapping(list(obj.args), depth + 1, ".args"),
    }
    attrs = getattr(obj, "__dict__", None)
    if attrs:
        out["attrs"] = _mapping(dict(attrs), depth + 1, ".__dict__")
    return out


def _namedtuple(obj: tuple[Any, ...], depth: int) -> Any:
    _deep(depth + 1)
    return {
        TYPE_KEY: "namedtuple",
        "class": _class_name(type(obj)),
        "items": _items(obj, depth + 2),
    }


_CLASS_HANDLERS: dict[str, Callable[[Any, int], Any]] = {
    "enum": _enum,
    "dataclass": _dataclass,
    "pydantic": _pydantic,
    "exception": _exception,
    "namedtuple": _namedtuple,
}


# -- decoding -------------------------------------------------------------------------


def decode_pairs(pairs: list[tuple[str, Any]]) -> Any:
    """``json.loads``'s ``object_pairs_hook``: rebuild tagged values, keep others as dicts.

    Called innermost first, so a tag's members are already decoded. An object
    with a ``"$type"`` must hold each key once (parsers disagree on which
    duplicate wins, so a record with two ``"$type"`` keys is refused) and, if
    it names a tag, exactly that tag's members. One naming no tag stays a
    dict: records of the serializer before tags existed decode as they did.
    """
    obj = dict(pairs)
    if TYPE_KEY not in obj:
        return obj
    if len(obj) != len(pairs):
        raise SerializationError(f"a tagged object repeats a key: {[k for k, _ in pairs]}")
    kind = obj[TYPE_KEY]
    decoder = _DECODERS.get(kind) if isinstance(kind, str) else None
    if decoder is None:  # names no tag: an object as older writers (or Json.NET) wrote it
        return obj
    required, optional, build = decoder
    keys = obj.keys() - {TYPE_KEY}
    if not required <= keys <= required | optional:
        raise SerializationError(
            f"a {kind!r} tag has members {sorted(keys)}; expected {sorted(required)}"
            + (f" and optionally {sorted(optional)}" if optional else "")
        )
    return build(obj)


def _str(obj: dict[str, Any], key: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise SerializationError(f"a {obj[TYPE_KEY]!r} tag's {key!r} is not a string")
    return value


def _list(obj: dict[str, Any], key: str) -> list[Any]:
    value = obj[key]
    if not isinstance(value, list):
        raise SerializationError(f"a {obj[TYPE_KEY]!r} tag's {key!r} is not a list")
    return value


def _int(obj: dict[str, Any], key: str) -> int:
    value = obj[key]
    if type(value) is not int:
        raise SerializationError(f"a {obj[TYPE_KEY]!r} tag's {key!r} is not an integer")
    return value


def _str_dict(obj: dict[str, Any], key: str) -> dict[str, Any]:
    value = obj[key]
    if not (isinstance(value, dict) and all(isinstance(k, str) for k in value)):
        raise SerializationError(f"a {obj[TYPE_KEY]!r} tag's {key!r} is not an object")
    return value


def _hex_int(obj: dict[str, Any]) -> int:
    text = _str(obj, "value")
    if not re.fullmatch(r"-?0x[0-9a-f]+", text):
        raise SerializationError(f"an 'int' tag's value {text[:40]!r} is not hexadecimal")
    return int(text, 16)


def _b64(obj: dict[str, Any]) -> bytes:
    return base64.b64decode(_str(obj, "base64"), validate=True)


def _zone(obj: dict[str, Any]) -> datetime.tzinfo | None:
    if "zone" in obj:
        key = _str(obj, "zone")
        if not _ZONE.match(key) or ".." in key:
            raise SerializationError(f"time zone {key[:60]!r} is not a zone name")
        import zoneinfo

        return zoneinfo.ZoneInfo(key)
    return None


def _with_zone(value: Any, obj: dict[str, Any]) -> Any:
    tz = _zone(obj)
    if "tzname" in obj:
        offset = value.utcoffset()
        if offset is None:
            raise SerializationError("a 'tzname' is given for a time without an offset")
        value = value.replace(tzinfo=datetime.timezone(offset, _str(obj, "tzname")))
    fold = obj.get("fold", 0)
    if fold not in (0, 1) or type(fold) is not int:
        raise SerializationError("fold is not 0 or 1")
    if tz is not None:
        value = value.replace(tzinfo=tz)
    return value.replace(fold=fold) if fold else value


def _datetime_of(obj: dict[str, Any]) -> datetime.datetime:
    value = datetime.datetime.fromisoformat(_str(obj, "value"))
    if "zone" in obj:
        value = value.replace(tzinfo=None)
    result: datetime.datetime = _with_zone(value, obj)
    return result


def _time_of(obj: dict[str, Any]) -> datetime.time:
    value = datetime.time.fromisoformat(_str(obj, "value"))
    if "zone" in obj:
        value = value.replace(tzinfo=None)
    result: datetime.time = _with_zone(value, obj)
    return result


def _hashable(items: list[Any], kind: str) -> list[Any]:
    for item in items:
        try:
            hash(item)
        except TypeError:
            raise SerializationError(
                f"a {kind!r} tag holds an unhashable {type(item).__name__}"
            ) from None
    return items


def _dict_of(obj: dict[str, Any]) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for pair in _list(obj, "items"):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise SerializationError("a 'dict' tag's item is not a [key, value] pair")
        _hashable(pair[:1], "dict")
        out[pair[0]] = pair[1]
    return out


def _path_of(obj: dict[str, Any]) -> pathlib.PurePath:
    cls = _PATHS.get(_str(obj, "class"))
    if cls is None:
        raise SerializationError(f"a 'path' tag names {obj['class']!r}, not a pathlib class")
    try:
        return cls(_str(obj, "value"))
    except NotImplementedError:
        raise SerializationError(f"a {cls.__name__} cannot be made on this system") from None


def _enum_of(obj: dict[str, Any]) -> enum.Enum:
    cls = _resolve(obj["class"], "enum")
    if ("name" in obj) == ("value" in obj):
        raise SerializationError("an 'enum' tag holds one of 'name' and 'value'")
    if "name" in obj:
        member = cls.__members__.get(_str(obj, "name"))
        if member is None:
            raise SerializationError(f"{_class_name(cls)} has no member {obj['name']!r}")
        result: enum.Enum = member
        return result
    try:
        value: enum.Enum = cls(obj["value"])
    except ValueError:
        raise SerializationError(
            f"{_class_name(cls)} has no member of value {obj['value']!r}"
        ) from None
    return value


def _dataclass_of(obj: dict[str, Any]) -> Any:
    cls = _resolve(obj["class"], "dataclass")
    fields = _str_dict(obj, "fields")
    expected = {f.name for f in dataclasses.fields(cls)}
    if fields.keys() != expected:
        raise SerializationError(
            f"the record's fields {sorted(fields)} are not those of {_class_name(cls)} "
            f"({sorted(expected)})"
        )
    # Rebuilt like pickle does: the stored state is set, __init__ / __post_init__ not run.
    instance = cls.__new__(cls)
    for name, value in fields.items():
        object.__setattr__(instance, name, value)
    return instance


def _pydantic_of(obj: dict[str, Any]) -> Any:
    cls = _resolve(obj["class"], "pydantic")
    extra, private = obj["extra"], obj["private"]
    if extra is not None:
        extra = _str_dict(obj, "extra")
    if private is not None:
        private = _str_dict(obj, "private")
    fields_set = _list(obj, "fields_set")
    if not all(isinstance(name, str) for name in fields_set):
        raise SerializationError("a 'pydantic' tag's fields_set is not a list of names")
    instance = cls.__new__(cls)
    instance.__setstate__(
        {
            "__dict__": _str_dict(obj, "fields"),
            "__pydantic_extra__": extra,
            "__pydantic_fields_set__": set(fields_set),
            "__pydantic_private__": private,
        }
    )
    return instance


def _exception_of(obj: dict[str, Any]) -> BaseException:
    cls = _resolve(obj["class"], "exception")
    args = tuple(_list(obj, "args"))
    attrs = _str_dict(obj, "attrs") if "attrs" in obj else {}
    try:
        exc = cls(*args)
    except Exception:  # an __init__ whose parameters are not its args: rebuild its state
        try:
            exc = cls.__new__(cls, *args)
        except Exception as error:
            raise SerializationError(
                f"{_class_name(cls)} cannot be rebuilt from its args ({type(error).__name__})"
            ) from None
    if type(exc) is not cls:
        raise SerializationError(f"{_class_name(cls)}{args!r} builds a {type(exc).__name__}")
    exc.args = args
    if attrs:
        exc.__dict__.update(attrs)
    result: BaseException = exc
    return result


def _namedtuple_of(obj: dict[str, Any]) -> Any:
    cls = _resolve(obj["class"], "namedtuple")
    items = _list(obj, "items")
    if len(items) != len(cls._fields):
        raise SerializationError(f"{_class_name(cls)} has {len(cls._fields)} fields")
    return cls._make(items)


def _float_of(obj: dict[str, Any]) -> float:
    text = _str(obj, "value")
    if text not in _NON_FINITE:
        raise SerializationError(f"a 'float' tag's value {text[:20]!r} is not nan, inf or -inf")
    return _NON_FINITE[text]


def _complex_of(obj: dict[str, Any]) -> complex:
    real, imag = obj["real"], obj["imag"]
    if not (type(real) in (int, float) and type(imag) in (int, float)):
        raise SerializationError("a 'complex' tag's parts are not numbers")
    return complex(real, imag)


_DECODERS: dict[str, tuple[frozenset[str], frozenset[str], Callable[[dict[str, Any]], Any]]] = {
    "float": (frozenset({"value"}), frozenset(), _float_of),
    "int": (frozenset({"value"}), frozenset(), _hex_int),
    "complex": (frozenset({"real", "imag"}), frozenset(), _complex_of),
    "tuple": (frozenset({"items"}), frozenset(), lambda o: tuple(_list(o, "items"))),
    "set": (frozenset({"items"}), frozenset(), lambda o: set(_hashable(_list(o, "items"), "set"))),
    "frozenset": (
        frozenset({"items"}),
        frozenset(),
        lambda o: frozenset(_hashable(_list(o, "items"), "frozenset")),
    ),
    "dict": (frozenset({"items"}), frozenset(), _dict_of),
    "bytes": (frozenset({"base64"}), frozenset(), _b64),
    "bytearray": (frozenset({"base64"}), frozenset(), lambda o: bytearray(_b64(o))),
    "datetime": (
        frozenset({"value"}),
        frozenset({"zone", "tzname", "fold"}),
        _datetime_of,
    ),
    "date": (
        frozenset({"value"}),
        frozenset(),
        lambda o: datetime.date.fromisoformat(_str(o, "value")),
    ),
    "time": (frozenset({"value"}), frozenset({"zone", "tzname", "fold"}), _time_of),
    "timedelta": (
        frozenset({"days", "seconds", "microseconds"}),
        frozenset(),
        lambda o: datetime.timedelta(
            days=_int(o, "days"), seconds=_int(o, "seconds"), microseconds=_int(o, "microseconds")
        ),
    ),
    "uuid": (frozenset({"value"}), frozenset(), lambda o: uuid.UUID(_str(o, "value"))),
    "decimal": (frozenset({"value"}), frozenset(), lambda o: decimal.Decimal(_str(o, "value"))),
    "path": (frozenset({"class", "value"}), frozenset(), _path_of),
    "enum": (frozenset({"class"}), frozenset({"name", "value"}), _enum_of),
    "dataclass": (frozenset({"class", "fields"}), frozenset(), _dataclass_of),
    "pydantic": (
        frozenset({"class", "fields", "extra", "fields_set", "private"}),
        frozenset(),
        _pydantic_of,
    ),
    "exception": (frozenset({"class", "args"}), frozenset({"attrs"}), _exception_of),
    "namedtuple": (frozenset({"class", "items"}), frozenset(), _namedtuple_of),
}
