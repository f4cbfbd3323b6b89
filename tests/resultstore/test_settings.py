"""The settings reader: ``RESULTSTORE_*`` variables, validated as the former pydantic model did.

``resultstore.settings`` is hand-written so that making a store (and so every
``resultstore get``) does not import pydantic. :class:`Reference` below is the pydantic
model it replaced, field for field; every value here must be accepted or refused by
both alike, with the same message and the same result.
"""

from __future__ import annotations

import copy
import json
import pickle
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from resultstore import ConfigurationError, ResultStoreError
from resultstore.serializers import get_serializer
from resultstore.settings import (
    DEFAULT_STORAGE_URL,
    ENV_PREFIX,
    Settings,
    get_settings,
)
from resultstore.settings import SecretStr as OurSecretStr

_MODULE_NAME = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*\Z"


class Reference(BaseModel):
    """The pydantic Settings model of resultstore 0.2.0, as it was."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    storage_url: str = DEFAULT_STORAGE_URL
    storage_options: dict[str, Any] = Field(default_factory=dict, repr=False, exclude=True)
    serializer: str = "pickle"
    json_modules: list[str] = Field(default_factory=list)
    allowed_serializers: list[str] | None = None
    reference_urls: list[str] = Field(default_factory=list)
    read_attempts: int = Field(default=10, ge=1)
    read_retry_delay: float = Field(default=0.25, ge=0, allow_inf_nan=False)
    timeout: float = Field(default=120.0, gt=0, allow_inf_nan=False)
    stall_timeout: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    plugin_import_timeout: float = Field(default=30.0, gt=0, allow_inf_nan=False)  # added since
    fsync: bool = True
    signing_key: SecretStr | None = None
    signing_keys_old: list[SecretStr] = Field(default_factory=list)

    @field_validator("storage_url")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        return value.strip() or DEFAULT_STORAGE_URL

    @field_validator("serializer")
    @classmethod
    def _known_serializer(cls, value: str) -> str:
        try:
            get_serializer(value)
        except ResultStoreError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("json_modules")
    @classmethod
    def _module_names(cls, value: list[str]) -> list[str]:
        import re

        for name in value:
            if not re.match(_MODULE_NAME, name):
                raise ValueError(f"{name!r} is not a module name (such as myapp.models)")
        return value


_JSON = {"storage_options", "signing_keys_old"}
_LISTS = {"allowed_serializers", "reference_urls", "json_modules"}


def reference_outcome(env: dict[str, str]) -> tuple[str, object]:
    """What the former get_settings made of ``env``: ("ok", fields) or ("error", message)."""
    values: dict[str, Any] = {}
    for field in Reference.model_fields:
        raw = env.get(ENV_PREFIX + field.upper())
        if raw is None:
            continue
        if field in _LISTS and not raw.lstrip().startswith("["):
            values[field] = [item.strip() for item in raw.split(",") if item.strip()]
        elif field in _JSON or field in _LISTS:
            try:
                values[field] = json.loads(raw)
            except ValueError as exc:
                variable = ENV_PREFIX + field.upper()
                message = f"invalid setting {variable}: not valid JSON ({exc}); fix or unset it"
                return "error", message
        else:
            values[field] = raw
    try:
        model = Reference.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ENV_PREFIX + str(first["loc"][0]).upper()
        return "error", f"invalid setting {name}: {first['msg']}; fix or unset it"
    return "ok", fields_of(model, model.model_fields_set)


def fields_of(settings: Any, fields_set: set[str]) -> dict[str, object]:
    found: dict[str, object] = {name: getattr(settings, name) for name in Reference.model_fields}
    found["signing_key"] = (
        None if settings.signing_key is None else settings.signing_key.get_secret_value()
    )
    found["signing_keys_old"] = [key.get_secret_value() for key in settings.signing_keys_old]
    found["set"] = sorted(fields_set)
    return found


def our_outcome(env: dict[str, str]) -> tuple[str, object]:
    try:
        settings = get_settings(env)
    except ConfigurationError as exc:
        return "error", str(exc)
    return "ok", fields_of(settings, settings.model_fields_set)


VALUES: dict[str, list[str]] = {
    "STORAGE_URL": ["", "  ", " file:///x ", "memory://a"],
    "STORAGE_OPTIONS": ["{}", '{"a": 1}', "[]", "null", "1", '"x"', "{bad", " {} ", ""],
    "SERIALIZER": ["pickle", "json", "nope", "", " json", '{"type": "json"}', '{"type": "x"}'],
    "JSON_MODULES": ["", "a,b", "a, ,b", "my-app", "[]", '["a"]', "[1]", '"a"', "[bad", "null"],
    "ALLOWED_SERIALIZERS": ["", "pickle", "null", "[]", '["x", 1]', "[null]", " , "],
    "REFERENCE_URLS": ["", "a,b", "null", '{"a":1}', "[1.5]"],
    "READ_ATTEMPTS": [
        *("0", "1", " 3 ", "3.0", "3.00", "3.5", "3.", "many", "", " ", "1_000", "1__0", "_1"),
        *("+3", " +3.0 ", "-1", "00", "1e3", "3.0e0", "0x10", "\u0663", "True", "9" * 25),
    ],
    "READ_RETRY_DELAY": [
        *("0", "-1", "0.5", ".5", "5.", "-0", "1e3", "1E5", " 1e-2 ", "1e+3", "1e400", " 2 "),
        *("", "x", ".", "+", "e5", "1e", "0x1", "\u0663", "nan", "nAn", "+nan", "inf", "-inf"),
        *("INF", "Infinity", "infinit", "1_0", "1_000.5", "1._5", "1_.5", "_1", "1_", "1__0"),
        *("__1.5", "1.5_", "1e_3", "1_e3", "._5", "_.5", "1 000", "in_f", "_inf", "+_1", "3_.0"),
    ],
    "TIMEOUT": ["0", "1", "-1", "nan", "1e-400", "abc", "0.001"],
    "STALL_TIMEOUT": ["0", "30", "-0.5"],
    "FSYNC": [
        *("true", "false", "0", "1", "yes", "no", "on", "off", "t", "f", "y", "n", "TRUE"),
        *("True", "Off", "YES", " true ", "", "2", "maybe", "1.0"),
    ],
    "SIGNING_KEY": ["", "abc", " x "],
    "SIGNING_KEYS_OLD": ["[]", '["a"]', '"e"', "[1]", "null", "{bad", '{"a": 1}', "a,b"],
}
CASES = [(f"{ENV_PREFIX}{name}", value) for name, values in VALUES.items() for value in values]


@pytest.mark.parametrize(("variable", "value"), CASES)
def test_each_variable_reads_as_the_pydantic_model_read_it(variable: str, value: str) -> None:
    env = {variable: value}
    assert our_outcome(env) == reference_outcome(env)


def test_the_first_bad_field_in_field_order_is_reported() -> None:
    env = {f"{ENV_PREFIX}TIMEOUT": "0", f"{ENV_PREFIX}READ_ATTEMPTS": "0"}
    assert our_outcome(env) == reference_outcome(env)
    assert "RESULTSTORE_READ_ATTEMPTS" in str(our_outcome(env)[1])


def test_unset_variables_give_the_defaults() -> None:
    assert our_outcome({}) == reference_outcome({})
    assert get_settings({}).model_fields_set == set()


def test_made_in_code_it_validates_and_names_the_field() -> None:
    assert Settings(read_attempts=3.0, fsync=1).read_attempts == 3
    assert Settings(json_modules=("a",)).json_modules == ["a"]
    assert Settings(storage_url="memory://x").model_fields_set == {"storage_url"}
    cases = {
        "read_attempts": (2.5, "Input should be a valid integer, got a number with a fractional"),
        "timeout": (None, "Input should be a valid number"),
        "fsync": (2, "Input should be a valid boolean, unable to interpret input"),
        "storage_url": (1, "Input should be a valid string"),
        "json_modules": ("ab", "Input should be a valid list"),
        "no_such_setting": (1, "Extra inputs are not permitted"),
    }
    for field, (value, message) in cases.items():
        with pytest.raises(ConfigurationError) as caught:
            Settings(**{field: value})
        assert str(caught.value).startswith(f"invalid Settings field {field}: {message}")
        with pytest.raises(ValidationError, match=message):  # as pydantic refused it
            Reference(**{field: value})


def test_secrets_and_storage_options_are_never_shown_or_dumped() -> None:
    env = {
        f"{ENV_PREFIX}SIGNING_KEY": "the-signing-key-0123",
        f"{ENV_PREFIX}SIGNING_KEYS_OLD": '["an-old-key-0123456"]',
        f"{ENV_PREFIX}STORAGE_OPTIONS": '{"secret": "hunter2"}',
    }
    ours = get_settings(env)
    reference = Reference.model_validate(
        {
            "signing_key": "the-signing-key-0123",
            "signing_keys_old": ["an-old-key-0123456"],
            "storage_options": {"secret": "hunter2"},
        }
    )
    assert repr(ours) == repr(reference).replace("Reference(", "Settings(")
    assert str(ours) == str(reference)
    assert ours.model_dump_json() == reference.model_dump_json()
    for shown in (repr(ours), str(ours), ours.model_dump_json(), repr(ours.model_dump())):
        for secret in ("the-signing-key", "an-old-key", "hunter2"):
            assert secret not in shown
    assert ours.signing_key is not None
    assert ours.signing_key.get_secret_value() == "the-signing-key-0123"
    assert (repr(ours.signing_key), str(ours.signing_key)) == ("SecretStr('**********')", "*" * 10)
    assert str(OurSecretStr("")) == "" and len(OurSecretStr("abc")) == 3


def test_settings_are_immutable_and_survive_copy_and_pickle() -> None:
    settings = get_settings({f"{ENV_PREFIX}READ_ATTEMPTS": "3", f"{ENV_PREFIX}FSYNC": "no"})
    with pytest.raises(AttributeError, match="immutable"):
        settings.read_attempts = 4  # type: ignore[misc]
    twins = (copy.copy(settings), copy.deepcopy(settings), pickle.loads(pickle.dumps(settings)))
    for twin in twins:
        assert twin == settings
        assert twin.model_fields_set == {"read_attempts", "fsync"}
    assert settings != get_settings({})
    assert list(Settings.model_fields) == list(Reference.model_fields)


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("RESULTSTORE_STORAGE_ULR", "RESULTSTORE_STORAGE_URL"),
        ("RESULTSTORE_SERIALISER", "RESULTSTORE_SERIALIZER"),
        ("RESULTSTORE_TIMEOUTS", "RESULTSTORE_TIMEOUT"),
        ("RESULTSTORE_FSYN", "RESULTSTORE_FSYNC"),
        ("RESULTSTORE_SIGNING_KEYS", "RESULTSTORE_SIGNING_KEY"),
        ("RESULTSTORE_S3CLIENT", "RESULTSTORE_S3_CLIENT"),
    ],
)
def test_a_misspelled_variable_is_an_error_naming_the_setting_meant(typed: str, meant: str) -> None:
    # Ignored, it would send every result to the default store without a word.
    with pytest.raises(ConfigurationError) as caught:
        get_settings({typed: "x", "RESULTSTORE_FSYNC": "0"})
    assert str(caught.value) == f"unknown setting {typed}: did you mean {meant}? rename or unset it"
    assert "\n" not in str(caught.value)


def test_variables_far_from_every_setting_are_left_to_their_owners() -> None:
    # A plugin's own variables share the prefix (the redis plugin reads these two).
    settings = get_settings(
        {
            "RESULTSTORE_REDIS_USERNAME": "u",
            "RESULTSTORE_REDIS_PASSWORD": "p",
            "RESULTSTORE_S3_CLIENT": "obstore",
        }
    )
    assert settings == get_settings({})
