"""Every knob of `resultstore`, read from the environment in this one place.

Variables use the prefix ``RESULTSTORE_``, e.g. ``RESULTSTORE_STORAGE_URL``,
``RESULTSTORE_STORAGE_OPTIONS`` (a JSON object), ``RESULTSTORE_READ_ATTEMPTS``.
Nothing else in the package reads ``os.environ``.

The reader is written by hand, not a pydantic model: every ``ResultStore()`` (and so
every ``resultstore get``) reads the settings, and importing pydantic and building a
model cost more than the rest of a command's start-up. It accepts and refuses what the
former pydantic model did, with the same one-line messages (``invalid setting
RESULTSTORE_READ_ATTEMPTS: Input should be greater than or equal to 1; fix or unset
it``); tests/resultstore/test_settings.py checks it against such a model.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple, NoReturn

from resultstore.errors import ConfigurationError

__all__ = ["DEFAULT_STORAGE_URL", "ENV_PREFIX", "SecretStr", "Settings", "get_settings"]

DEFAULT_STORAGE_URL = "file://~/.resultstore/storage"
ENV_PREFIX = "RESULTSTORE_"
_JSON_FIELDS = {"storage_options", "signing_keys_old"}
# Lists that may be given as a JSON list or as comma-separated text.
_LIST_FIELDS = {"allowed_serializers", "reference_urls", "json_modules"}
# Patterns are compiled on first use (re caches them): most environments set none of
# the variables they check, and every ResultStore() reads the settings.
_MODULE_NAME = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*\Z"
# An integer as pydantic reads it from text: ASCII digits, optional sign, single
# underscores between digits, optionally ".0" zeros after.
_INT_TEXT = r"(?a)[+-]?\d+(?:_\d+)*(?:\.0+)?\Z"
# A float's underscores may sit anywhere but first, last or doubled (pydantic's rule),
# and are dropped before this pattern is matched.
_FLOAT_TEXT = r"(?ai)[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?\Z|[+-]?(?:inf|infinity|nan)\Z"
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})
_HIDDEN = "**********"


class SecretStr:
    """A secret (a signing key): ``**********`` in repr, str and dumps, the text only
    through :meth:`get_secret_value`, so a logged or printed Settings never shows it."""

    __slots__ = ("_secret",)

    def __init__(self, secret: str) -> None:
        self._secret = secret

    def get_secret_value(self) -> str:
        """The secret itself."""
        return self._secret

    def __repr__(self) -> str:
        return f"SecretStr({_HIDDEN!r})"

    def __str__(self) -> str:
        return _HIDDEN if self._secret else ""

    def __len__(self) -> int:
        return len(self._secret)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretStr) and other._secret == self._secret

    def __hash__(self) -> int:
        return hash(self._secret)


class _Invalid(Exception):
    """A value a field refuses: ``message`` says why, in pydantic's words."""


def _fail(message: str) -> NoReturn:
    raise _Invalid(message)


def _str(value: object) -> str:
    if not isinstance(value, str):
        _fail("Input should be a valid string")
    return value


def _str_list(value: object) -> list[str]:
    if not isinstance(value, (list, tuple, set, frozenset)):
        _fail("Input should be a valid list")
    return [_str(item) for item in value]


def _int(value: object) -> int:
    if isinstance(value, int):  # bool too, as pydantic's lax mode takes it
        return int(value)
    if isinstance(value, float):
        if not value.is_integer():
            _fail("Input should be a valid integer, got a number with a fractional part")
        return int(value)
    if not isinstance(value, str):
        _fail("Input should be a valid integer")
    text = value.strip()
    if not re.match(_INT_TEXT, text):
        _fail("Input should be a valid integer, unable to parse string as an integer")
    return int(text.partition(".")[0])


def _finite_float(value: object) -> float:
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if text[:1] == "_" or text[-1:] == "_" or "__" in text:
            _fail("Input should be a valid number, unable to parse string as a number")
        text = text.replace("_", "")
        if not re.match(_FLOAT_TEXT, text):
            _fail("Input should be a valid number, unable to parse string as a number")
        number = float(text)
    else:
        _fail("Input should be a valid number")
    if not math.isfinite(number):
        _fail("Input should be a finite number")
    return number


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    if isinstance(value, (int, float, str)):
        _fail("Input should be a valid boolean, unable to interpret input")
    _fail("Input should be a valid boolean")


def _secret(value: object) -> SecretStr:
    return value if isinstance(value, SecretStr) else SecretStr(_str(value))


def _at_least(low: float, parse: Callable[[object], Any]) -> Callable[[object], Any]:
    def check(value: object) -> Any:
        number = parse(value)
        if number < low:
            _fail(f"Input should be greater than or equal to {low}")
        return number

    return check


def _above(low: float, parse: Callable[[object], Any]) -> Callable[[object], Any]:
    def check(value: object) -> Any:
        number = parse(value)
        if not number > low:
            _fail(f"Input should be greater than {low}")
        return number

    return check


def _storage_url(value: object) -> str:
    return _str(value).strip() or DEFAULT_STORAGE_URL


def _storage_options(value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        _fail("Input should be a valid dictionary")
    return {_str(name): option for name, option in value.items()}


def _serializer(value: object) -> str:
    name = _str(value)
    from resultstore.errors import ResultStoreError
    from resultstore.serializers import get_serializer

    try:
        get_serializer(name)
    except ResultStoreError as exc:
        _fail(f"Value error, {exc}")
    return name


def _json_modules(value: object) -> list[str]:
    names = _str_list(value)
    for name in names:
        if not re.match(_MODULE_NAME, name):
            _fail(f"Value error, {name!r} is not a module name (such as myapp.models)")
    return names


def _optional_str_list(value: object) -> list[str] | None:
    return None if value is None else _str_list(value)


def _optional_secret(value: object) -> SecretStr | None:
    return None if value is None else _secret(value)


def _secrets(value: object) -> list[SecretStr]:
    if not isinstance(value, (list, tuple, set, frozenset)):
        _fail("Input should be a valid list")
    return [_secret(item) for item in value]


class _Field(NamedTuple):
    default: Callable[[], Any]
    parse: Callable[[object], Any]
    description: str


_FIELDS: dict[str, _Field] = {
    "storage_url": _Field(
        lambda: DEFAULT_STORAGE_URL,
        _storage_url,
        "Where results live when a ResultStore is given no storage.",
    ),
    "storage_options": _Field(
        dict,
        _storage_options,
        "Extra options for the store, as a JSON object (e.g. endpoint settings). "
        "May hold credentials: never shown, never dumped.",
    ),
    "serializer": _Field(
        lambda: "pickle",
        _serializer,
        "Default serializer: a name (pickle, json, compressed/pickle, pickle+lzma, ...) "
        'or a configuration as JSON text, e.g. {"type": "json", "jsonlib": "orjson"}.',
    ),
    "json_modules": _Field(
        list,
        _json_modules,
        "Modules whose enums, dataclasses, pydantic models, exceptions and named tuples "
        "the json serializer may rebuild (JSON list or comma-separated), besides the "
        "classes given to register_json_type() and the built-in exceptions.",
    ),
    "allowed_serializers": _Field(
        lambda: None,
        _optional_str_list,
        "Serializers a reader may decode, besides code-free ones (JSON list or "
        "comma-separated); unset: the configured serializer and code-free serializers.",
    ),
    "reference_urls": _Field(
        list,
        _str_list,
        "Storage URL prefixes that references read from a State's JSON may point into, "
        "besides RESULTSTORE_STORAGE_URL and stores registered with use_for_references().",
    ),
    "read_attempts": _Field(lambda: 10, _at_least(1, _int), "Attempts for a retried read."),
    "read_retry_delay": _Field(
        lambda: 0.25, _at_least(0, _finite_float), "Seconds between attempts of a retried read."
    ),
    "timeout": _Field(
        lambda: 120.0,
        _above(0, _finite_float),
        "Seconds one operation (retries included) may take before it fails.",
    ),
    "stall_timeout": _Field(
        lambda: 30.0,
        _above(0, _finite_float),
        "Seconds a transfer may go without progress before it fails.",
    ),
    "plugin_import_timeout": _Field(
        lambda: 30.0,
        _above(0, _finite_float),
        "Seconds a store plugin's module may take to import before resolving its URL "
        "scheme fails (a plugin whose import hangs).",
    ),
    "fsync": _Field(lambda: True, _bool, "Flush local files to disk before a write returns."),
    "signing_key": _Field(
        lambda: None, _optional_secret, "HMAC key that signs every record written and read."
    ),
    "signing_keys_old": _Field(
        list, _secrets, "Former signing keys still accepted on read (JSON list), for rotation."
    ),
}
_HIDDEN_FIELDS = frozenset({"storage_options"})  # may hold credentials


class Settings:
    """Configuration of `resultstore`; build it from the environment with :func:`get_settings`.

    Immutable. ``Settings(read_attempts=3)`` validates as :func:`get_settings` does and
    raises :class:`~resultstore.errors.ConfigurationError` naming the field;
    ``model_fields_set``, ``model_dump()`` and ``model_dump_json()`` remain from the
    pydantic model this class replaced. ``storage_options`` (credentials, perhaps) is
    left out of repr and dumps, and signing keys are :class:`SecretStr`.
    """

    __slots__ = (*_FIELDS, "_fields_set")

    model_fields: ClassVar[Mapping[str, str]] = {
        name: field.description for name, field in _FIELDS.items()
    }
    """Each field's name and description."""

    storage_url: str
    storage_options: dict[str, Any]
    serializer: str
    json_modules: list[str]
    allowed_serializers: list[str] | None
    reference_urls: list[str]
    read_attempts: int
    read_retry_delay: float
    timeout: float
    stall_timeout: float
    plugin_import_timeout: float
    fsync: bool
    signing_key: SecretStr | None
    signing_keys_old: list[SecretStr]
    _fields_set: frozenset[str]

    def __init__(self, **values: Any) -> None:
        try:
            self._assign(values)
        except _Invalid as exc:
            field = str(exc.args[1])
            raise ConfigurationError(f"invalid Settings field {field}: {exc.args[0]}") from None

    def _assign(self, values: Mapping[str, Any]) -> None:
        """Validate ``values`` field by field, in order; the first bad one raises _Invalid."""
        for name in values:
            if name not in _FIELDS:
                raise _Invalid("Extra inputs are not permitted", name)
        for name, field in _FIELDS.items():
            try:
                value = field.parse(values[name]) if name in values else field.default()
            except _Invalid as exc:
                raise _Invalid(exc.args[0], name) from None
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_fields_set", frozenset(values))

    @property
    def model_fields_set(self) -> set[str]:
        """The fields given a value (by the environment or the caller), not defaulted."""
        return set(self._fields_set)

    def model_dump(self) -> dict[str, Any]:
        """The fields as a dict, without ``storage_options``; secrets stay SecretStr."""
        return {name: getattr(self, name) for name in _FIELDS if name not in _HIDDEN_FIELDS}

    def model_dump_json(self) -> str:
        """:meth:`model_dump` as JSON text, each secret shown as ``**********``."""

        def hidden(value: object) -> object:
            if isinstance(value, SecretStr):
                return str(value)
            raise TypeError(f"{type(value).__name__} is not JSON")  # pragma: no cover

        return json.dumps(
            self.model_dump(), default=hidden, separators=(",", ":"), ensure_ascii=False
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # The default for a slotted class restores through __setattr__, which refuses.
        values = {name: getattr(self, name) for name in _FIELDS}
        return (_restore, (values, self._fields_set))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Settings are immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Settings are immutable: cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Settings):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in _FIELDS)

    __hash__ = None  # type: ignore[assignment]  # holds lists and dicts

    def __str__(self) -> str:
        return " ".join(f"{name}={value!r}" for name, value in self.model_dump().items())

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in self.model_dump().items())
        return f"Settings({shown})"


def _restore(values: Mapping[str, Any], fields_set: frozenset[str]) -> Settings:
    """A Settings with ``values``, already validated (unpickling, copying)."""
    settings = Settings.__new__(Settings)
    for name, value in values.items():
        object.__setattr__(settings, name, value)
    object.__setattr__(settings, "_fields_set", frozenset(fields_set))
    return settings


def _variable(field: str) -> str:
    return ENV_PREFIX + field.upper()


# Read elsewhere, by the S3 stores (which client), so known here too.
_OTHER_VARIABLES = frozenset({"RESULTSTORE_S3_CLIENT"})


def _misspelled(env: Mapping[str, str]) -> None:
    """Refuse a ``RESULTSTORE_*`` variable that is nearly the name of a setting.

    ``RESULTSTORE_STORAGE_ULR`` would otherwise be ignored, and results would go to the
    default store. A name far from every setting (a plugin's own, such as
    ``RESULTSTORE_REDIS_PASSWORD``) is left alone.
    """
    known = {_variable(field) for field in _FIELDS} | _OTHER_VARIABLES
    unknown = [name for name in env if name.startswith(ENV_PREFIX) and name not in known]
    if not unknown:
        return
    import difflib

    for name in sorted(unknown):
        near = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.85)
        if near:
            raise ConfigurationError(
                f"unknown setting {name}: did you mean {near[0]}? rename or unset it"
            )


def get_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from ``environ`` (default: the process environment), now.

    A bad value raises a one-line :class:`ConfigurationError` naming the variable, and
    so does a ``RESULTSTORE_*`` variable that is nearly a setting's name (a typo).
    """
    env = os.environ if environ is None else environ
    _misspelled(env)
    values: dict[str, Any] = {}
    for field in _FIELDS:
        raw = env.get(_variable(field))
        if raw is None:
            continue
        if field in _LIST_FIELDS and not raw.lstrip().startswith("["):
            values[field] = [item.strip() for item in raw.split(",") if item.strip()]
        elif field in _JSON_FIELDS or field in _LIST_FIELDS:
            try:
                values[field] = json.loads(raw)
            except ValueError as exc:
                raise ConfigurationError(
                    f"invalid setting {_variable(field)}: not valid JSON ({exc}); fix or unset it"
                ) from None
        else:
            values[field] = raw
    settings = Settings.__new__(Settings)
    try:
        settings._assign(values)
    except _Invalid as exc:
        message = f"invalid setting {_variable(str(exc.args[1]))}: {exc.args[0]}; fix or unset it"
        raise ConfigurationError(message) from None
    return settings
