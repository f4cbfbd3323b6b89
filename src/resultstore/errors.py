"""The error hierarchy of `resultstore`: every error derives from :class:`ResultStoreError`.

Each message is one line naming the thing at fault (key, URL, type) and what
to do about it; the offending key and URL are also kept as attributes.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "IntegrityError",
    "InvalidKeyError",
    "PluginError",
    "ReferenceNotAllowedError",
    "ResultNotFoundError",
    "ResultStoreError",
    "SerializationError",
    "SerializerNotAllowedError",
    "SignatureError",
    "StorageError",
    "StorageUnavailableError",
    "UnknownSchemeError",
    "UnknownSerializerError",
]


class ResultStoreError(Exception):
    """Base class of every error raised by `resultstore`."""

    def __init__(self, message: str, *, key: str | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key
        self.url = url

    def __str__(self) -> str:
        return self.message

    def _with_suffix(self, suffix: str) -> ResultStoreError:
        """A copy of this error whose message ends with ``suffix``."""
        clone = type(self).__new__(type(self))
        ResultStoreError.__init__(clone, self.message + suffix, key=self.key, url=self.url)
        clone.__dict__.update({k: v for k, v in self.__dict__.items() if k != "message"})
        clone.__cause__ = self.__cause__
        return clone


class InvalidKeyError(ResultStoreError, ValueError):
    """A key is malformed or could escape the storage root."""


class ConfigurationError(ResultStoreError, ValueError):
    """A URL, option, setting or argument is wrong."""


class UnknownSchemeError(ConfigurationError):
    """No installed store handles the URL's scheme."""


class UnknownSerializerError(ConfigurationError):
    """No installed serializer has the requested name."""


class PluginError(ConfigurationError):
    """A store or serializer plugin is broken, duplicated or incompatible."""


class ReferenceNotAllowedError(ConfigurationError):
    """A result reference (from a State's JSON, say) points to storage this process does not allow.

    Nothing was contacted. Allow the storage with ``RESULTSTORE_REFERENCE_URLS``,
    or register a store for it with ``ResultStore.use_for_references()``.
    """


class SerializationError(ResultStoreError, TypeError):
    """A value could not be encoded, or a payload could not be decoded."""


class ResultNotFoundError(ResultStoreError, LookupError):
    """No record exists under the key (it may not have been written yet)."""


class IntegrityError(ResultStoreError):
    """A stored record is damaged: its checksum, framing or version is wrong."""


class SignatureError(IntegrityError):
    """A record's signature is missing or does not verify; it was not deserialized."""


class SerializerNotAllowedError(IntegrityError):
    """A record's serializer may run code and this store is not configured to allow it.

    The record was not decoded. Allow the serializer with ``allowed_serializers``
    (``RESULTSTORE_ALLOWED_SERIALIZERS``) only if everyone who can write to the
    storage is trusted, or sign records so only trusted writers' records verify.
    """


class StorageError(ResultStoreError):
    """The storage backend refused or failed an operation."""


class StorageUnavailableError(StorageError):
    """The storage backend could not be reached; the operation may succeed later."""
