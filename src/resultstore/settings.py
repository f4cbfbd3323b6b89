"""Every knob of `resultstore`, read from the environment in this one place.

Variables use the prefix ``RESULTSTORE_``, e.g. ``RESULTSTORE_STORAGE_URL``,
``RESULTSTORE_STORAGE_OPTIONS`` (a JSON object), ``RESULTSTORE_READ_ATTEMPTS``.
Nothing else in the package reads ``os.environ``.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from resultstore.errors import ConfigurationError

__all__ = ["DEFAULT_STORAGE_URL", "Settings", "get_settings"]

DEFAULT_STORAGE_URL = "file://~/.resultstore/storage"


class Settings(BaseSettings):
    """Configuration of `resultstore`, from ``RESULTSTORE_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="RESULTSTORE_", extra="ignore", frozen=True)

    storage_url: str = Field(
        default=DEFAULT_STORAGE_URL,
        description="Where results live when a ResultStore is given no storage.",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra options for the store, as a JSON object (e.g. endpoint settings).",
    )
    serializer: str = Field(default="pickle", description="Default serializer name.")
    read_attempts: int = Field(default=10, ge=1, description="Attempts for a retried read.")
    read_retry_delay: float = Field(
        default=0.25, ge=0, description="Seconds between attempts of a retried read."
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


def get_settings() -> Settings:
    """Read the settings from the environment now, with a one-line error when invalid."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "RESULTSTORE_" + str(first["loc"][0]).upper() if first["loc"] else "RESULTSTORE_*"
        raise ConfigurationError(
            f"invalid setting {name}: {first['msg']}; fix or unset the environment variable"
        ) from None
    except Exception as exc:  # pydantic-settings raises SettingsError for bad JSON
        field = re.search(r'field "(\w+)"', str(exc))
        name = f"RESULTSTORE_{field.group(1).upper()}" if field else "a RESULTSTORE_* variable"
        raise ConfigurationError(
            f"invalid setting {name}: {str(exc).splitlines()[0]}; fix or unset it"
        ) from None
