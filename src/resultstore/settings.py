"""Every knob of `resultstore`, read from the environment in this one place.

Variables use the prefix ``RESULTSTORE_``, e.g. ``RESULTSTORE_STORAGE_URL``,
``RESULTSTORE_STORAGE_OPTIONS`` (a JSON object), ``RESULTSTORE_READ_ATTEMPTS``.
Nothing else in the package reads ``os.environ``. Plain pydantic does the
validation: reading a dozen variables needs no settings framework, and
``import resultstore`` stays fast.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from resultstore.errors import ConfigurationError

__all__ = ["DEFAULT_STORAGE_URL", "ENV_PREFIX", "Settings", "get_settings"]

DEFAULT_STORAGE_URL = "file://~/.resultstore/storage"
ENV_PREFIX = "RESULTSTORE_"
_JSON_FIELDS = {"storage_options", "signing_keys_old"}
# Lists that may be given as a JSON list or as comma-separated text.
_LIST_FIELDS = {"allowed_serializers", "reference_urls", "json_modules"}
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


class Settings(BaseModel):
    """Configuration of `resultstore`; build it from the environment with :func:`get_settings`."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    storage_url: str = Field(
        default=DEFAULT_STORAGE_URL,
        description="Where results live when a ResultStore is given no storage.",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        repr=False,  # may hold credentials: never shown, never dumped
        exclude=True,
        description="Extra options for the store, as a JSON object (e.g. endpoint settings).",
    )
    serializer: str = Field(
        default="pickle",
        description=(
            "Default serializer: a name (pickle, json, compressed/pickle, pickle+lzma, ...) "
            'or a configuration as JSON text, e.g. {"type": "json", "jsonlib": "orjson"}.'
        ),
    )
    json_modules: list[str] = Field(
        default_factory=list,
        description=(
            "Modules whose enums, dataclasses, pydantic models, exceptions and named tuples "
            "the json serializer may rebuild (JSON list or comma-separated), besides the "
            "classes given to register_json_type() and the built-in exceptions."
        ),
    )
    allowed_serializers: list[str] | None = Field(
        default=None,
        description=(
            "Serializers a reader may decode, besides code-free ones (JSON list or "
            "comma-separated); unset: the configured serializer and code-free serializers."
        ),
    )
    reference_urls: list[str] = Field(
        default_factory=list,
        description=(
            "Storage URL prefixes that references read from a State's JSON may point into, "
            "besides RESULTSTORE_STORAGE_URL and stores registered with use_for_references()."
        ),
    )
    read_attempts: int = Field(default=10, ge=1, description="Attempts for a retried read.")
    read_retry_delay: float = Field(
        default=0.25,
        ge=0,
        allow_inf_nan=False,
        description="Seconds between attempts of a retried read.",
    )
    timeout: float = Field(
        default=120.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds one operation (retries included) may take before it fails.",
    )
    stall_timeout: float = Field(
        default=30.0,
        gt=0,
        allow_inf_nan=False,
        description="Seconds a transfer may go without progress before it fails.",
    )
    fsync: bool = Field(
        default=True, description="Flush local files to disk before a write returns."
    )
    signing_key: SecretStr | None = Field(
        default=None, description="HMAC key that signs every record written and read."
    )
    signing_keys_old: list[SecretStr] = Field(
        default_factory=list,
        description="Former signing keys still accepted on read (JSON list), for rotation.",
    )

    @field_validator("storage_url")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        return value.strip() or DEFAULT_STORAGE_URL

    @field_validator("serializer")
    @classmethod
    def _known_serializer(cls, value: str) -> str:
        from resultstore.errors import ResultStoreError
        from resultstore.serializers import get_serializer

        try:
            get_serializer(value)
        except ResultStoreError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("json_modules")
    @classmethod
    def _module_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _MODULE_NAME.match(name):
                raise ValueError(f"{name!r} is not a module name (such as myapp.models)")
        return value


def _variable(field: str) -> str:
    return ENV_PREFIX + field.upper()


def get_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from ``environ`` (default: the process environment), now.

    A bad value raises a one-line :class:`ConfigurationError` naming the variable.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for field in Settings.model_fields:
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
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = _variable(str(first["loc"][0])) if first["loc"] else "a RESULTSTORE_* variable"
        message = f"invalid setting {name}: {first['msg']}; fix or unset it"
        raise ConfigurationError(message) from None
