"""resultstore: persist the results of work to pluggable storage and fetch them back.

    >>> from resultstore import ResultStore
    >>> store = ResultStore("memory://docs")
    >>> key = store.write({"answer": 42})
    >>> store.read(key).result
    {'answer': 42}

Stores are chosen by URL scheme through the ``resultstore.stores`` entry points;
every I/O method has an async twin (``awrite``, ``aread``, ...).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from resultstore.errors import (
        AccessDeniedError,
        ConfigurationError,
        ConflictError,
        ContainerMissingError,
        IntegrityError,
        InvalidKeyError,
        LockHeldError,
        LockNotHeldError,
        LockTimeoutError,
        PluginError,
        Reason,
        ReferenceNotAllowedError,
        ResultExistsError,
        ResultNotFoundError,
        ResultStoreError,
        SerializationError,
        SerializerNotAllowedError,
        SignatureError,
        StorageError,
        StorageUnavailableError,
        UnknownSchemeError,
        UnknownSerializerError,
        UnsupportedOperationError,
        VersionConflictError,
    )
    from resultstore.keys import validate_key
    from resultstore.locks import IsolationLevel
    from resultstore.records import ResultMetadata, ResultRecord
    from resultstore.registry import available_stores, redact_url, resolve_store
    from resultstore.result_store import ResultStore
    from resultstore.results import PersistedResult
    from resultstore.retry import RetryPolicy
    from resultstore.serializers import (
        Serializer,
        available_serializers,
        get_serializer,
        register_json_type,
    )
    from resultstore.settings import Settings, get_settings
    from resultstore.stores.base import BytesReader, Payload, Reader, Store

__all__ = [
    "AccessDeniedError",
    "BytesReader",
    "ConfigurationError",
    "ConflictError",
    "ContainerMissingError",
    "IntegrityError",
    "InvalidKeyError",
    "IsolationLevel",
    "LockHeldError",
    "LockNotHeldError",
    "LockTimeoutError",
    "Payload",
    "PersistedResult",
    "PluginError",
    "Reader",
    "Reason",
    "ReferenceNotAllowedError",
    "ResultExistsError",
    "ResultMetadata",
    "ResultNotFoundError",
    "ResultRecord",
    "ResultStore",
    "ResultStoreError",
    "RetryPolicy",
    "SerializationError",
    "Serializer",
    "SerializerNotAllowedError",
    "Settings",
    "SignatureError",
    "StorageError",
    "StorageUnavailableError",
    "Store",
    "UnknownSchemeError",
    "UnknownSerializerError",
    "UnsupportedOperationError",
    "VersionConflictError",
    "available_serializers",
    "available_stores",
    "get_serializer",
    "get_settings",
    "redact_url",
    "register_json_type",
    "resolve_store",
    "validate_key",
]
__version__ = "0.2.0"

# Names load on first access (PEP 562): ``import resultstore`` stays cheap, and a
# program pays only for the parts it uses (no pydantic model for a bare import).
_EXPORTS: dict[str, tuple[str, ...]] = {
    "resultstore.errors": (
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
        "Reason",
        "ReferenceNotAllowedError",
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
    ),
    "resultstore.keys": ("validate_key",),
    "resultstore.locks": ("IsolationLevel",),
    "resultstore.records": ("ResultMetadata", "ResultRecord"),
    "resultstore.registry": ("available_stores", "redact_url", "resolve_store"),
    "resultstore.result_store": ("ResultStore",),
    "resultstore.results": ("PersistedResult",),
    "resultstore.retry": ("RetryPolicy",),
    "resultstore.serializers": (
        "Serializer",
        "available_serializers",
        "get_serializer",
        "register_json_type",
    ),
    "resultstore.settings": ("Settings", "get_settings"),
    "resultstore.stores.base": ("BytesReader", "Payload", "Reader", "Store"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
