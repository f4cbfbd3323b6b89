"""The error hierarchy of `resultstore`: every error derives from :class:`ResultStoreError`.

Each message is one line naming the thing at fault (key, URL, type) and what
to do about it; the offending key and URL are also kept as attributes, and
``reason`` (a :class:`Reason`) says why, for programs: the CLI maps it to its
exit codes. Stores word their errors with :func:`store_error`, so every
backend says "cannot <action> key <k> in <url>: <why>" the same way.
"""

from __future__ import annotations

import enum
from typing import TypeVar

__all__ = [
    "AccessDeniedError",
    "ConfigurationError",
    "ConflictError",
    "ContainerMissingError",
    "IntegrityError",
    "InvalidKeyError",
    "LockHeldError",
    "LockNotHeldError",
    "LockTimeoutError",
    "PluginError",
    "ReferenceNotAllowedError",
    "Reason",
    "ResultExistsError",
    "ResultNotFoundError",
    "ResultStoreError",
    "SerializationError",
    "SerializerNotAllowedError",
    "SignatureError",
    "StorageError",
    "StorageUnavailableError",
    "UnknownSchemeError",
    "UnknownSerializerError",
    "UnsupportedOperationError",
    "VersionConflictError",
    "store_error",
]


class Reason(str, enum.Enum):
    """Why an operation failed, for programs to test (``exc.reason is Reason.NOT_FOUND``)."""

    NOT_FOUND = "not_found"
    """No record under the key."""
    EXISTS = "exists"
    """A create-only write found a record already there."""
    CONFLICT = "conflict"
    """A compare-and-swap write found another version than the one it expected."""
    DENIED = "denied"
    """The backend refused the credentials or the permission."""
    CONTAINER_MISSING = "container_missing"
    """The bucket, folder or database that holds the records does not exist."""
    UNREACHABLE = "unreachable"
    """The backend could not be reached or did not answer in time; retrying may help."""
    DAMAGED = "damaged"
    """A stored record failed its checks."""
    SIGNATURE = "signature"
    """A record is unsigned or its signature does not verify."""
    NOT_ALLOWED = "not_allowed"
    """The configuration does not allow it (a serializer, a reference's storage)."""
    BAD_INPUT = "bad_input"
    """A key, URL, option, setting or argument is wrong."""
    UNSUPPORTED = "unsupported"
    """The store cannot do this (conditional writes on a store without them, say)."""
    LOCKED = "locked"
    """Another holder holds the key's lock."""
    NOT_HELD = "not_held"
    """The holder does not hold the lock it tried to release or renew."""
    FAILED = "failed"
    """The backend failed for another reason."""


class ResultStoreError(Exception):
    """Base class of every error raised by `resultstore`."""

    reason: Reason = Reason.FAILED
    """Why it failed; each subclass sets its own."""

    def __init__(self, message: str, *, key: str | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key
        self.url = url

    def __str__(self) -> str:
        return self.message

    def _with_suffix(self, suffix: str) -> ResultStoreError:
        """A copy of this error whose message ends with ``suffix``."""
        return self._retold(self.message + suffix, self.key)

    def _retold(self, message: str, key: str | None) -> ResultStoreError:
        """A copy of this error (same class, reason and cause) saying ``message`` of ``key``."""
        clone = type(self).__new__(type(self))
        clone.__dict__.update({k: v for k, v in self.__dict__.items() if k != "message"})
        ResultStoreError.__init__(clone, message, key=key, url=self.url)
        clone.__cause__ = self.__cause__
        return clone


class InvalidKeyError(ResultStoreError, ValueError):
    """A key is malformed or could escape the storage root."""

    reason = Reason.BAD_INPUT


class ConfigurationError(ResultStoreError, ValueError):
    """A URL, option, setting or argument is wrong."""

    reason = Reason.BAD_INPUT


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

    reason = Reason.NOT_ALLOWED


class SerializationError(ResultStoreError, TypeError):
    """A value could not be encoded, or a payload could not be decoded."""

    reason = Reason.BAD_INPUT


class ResultNotFoundError(ResultStoreError, LookupError):
    """No record exists under the key (it may not have been written yet)."""

    reason = Reason.NOT_FOUND


class IntegrityError(ResultStoreError):
    """A stored record is damaged: its checksum, framing or version is wrong."""

    reason = Reason.DAMAGED


class SignatureError(IntegrityError):
    """A record's signature is missing or does not verify; it was not deserialized."""

    reason = Reason.SIGNATURE


class SerializerNotAllowedError(IntegrityError):
    """A record's serializer may run code and this store is not configured to allow it.

    The record was not decoded. Allow the serializer with ``allowed_serializers``
    (``RESULTSTORE_ALLOWED_SERIALIZERS``) only if everyone who can write to the
    storage is trusted, or sign records so only trusted writers' records verify.
    """

    reason = Reason.NOT_ALLOWED


class StorageError(ResultStoreError):
    """The storage backend refused or failed an operation."""


class StorageUnavailableError(StorageError):
    """The storage backend could not be reached; the operation may succeed later."""

    reason = Reason.UNREACHABLE


class AccessDeniedError(StorageError):
    """The backend refused the credentials or the permission for the operation."""

    reason = Reason.DENIED


class ContainerMissingError(StorageError):
    """The bucket, folder or database that should hold the records does not exist."""

    reason = Reason.CONTAINER_MISSING


class UnsupportedOperationError(ConfigurationError):
    """The store cannot do what was asked (a conditional write on a store without them)."""

    reason = Reason.UNSUPPORTED


class ConflictError(ResultStoreError):
    """A conditional write found the key in another state than it required."""

    reason = Reason.CONFLICT


class ResultExistsError(ConflictError):
    """``write(..., if_absent=True)`` found a record already under the key."""

    reason = Reason.EXISTS


class VersionConflictError(ConflictError):
    """``write(..., if_version=v)`` found another version than ``v`` (or no record)."""


class LockHeldError(ConflictError):
    """Another holder holds the key's lock: ``write(..., holder=h)`` was refused."""

    reason = Reason.LOCKED


class LockTimeoutError(LockHeldError, TimeoutError):
    """``ResultStore.lock(...)`` could not take the lock within its ``acquire_timeout``."""


class LockNotHeldError(ConflictError):
    """A holder released (or renewed) a lock it does not hold, or no longer holds."""

    reason = Reason.NOT_HELD


E = TypeVar("E", bound=ResultStoreError)


def store_error(kind: type[E], action: str, key: str, url: str, why: str, *, hint: str = "") -> E:
    """The one wording of a failed store operation: ``cannot <action> key <k> in <url>: <why>``.

    ``hint`` (what to do) follows after a semicolon. ``why`` is cut to its first
    line, so a backend's multi-line message never reaches the user whole.
    """
    first = why.strip().splitlines()[0] if why.strip() else kind.__name__
    message = f"cannot {action} key {key!r} in {url}: {first}"
    if hint:
        message += f"; {hint}"
    return kind(message, key=key, url=url)
