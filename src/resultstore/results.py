"""`PersistedResult`: a reference to a value in a result store.

It is what :meth:`ResultStore.create_result` returns and what a State's
``data`` holds. It keeps the value in memory when allowed, writes it with
``write()``/``awrite()``, and fetches it with ``get()``/``aget()`` (retried).
In a State's JSON it becomes only ``{storage_url, key, serializer,
expiration}`` plus a type tag, so another process or machine can fetch the
value with no set-up beyond credentials for the storage.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from resultstore._loops import run_sync
from resultstore.errors import ConfigurationError
from resultstore.keys import validate_key
from states.results import REFERENCE_TAG

if TYPE_CHECKING:
    from resultstore.result_store import ResultStore

__all__ = ["PersistedResult", "serve_references"]

_MISSING: Any = object()


def serve_references(store: ResultStore) -> None:
    """Have references to ``store``'s URL read from JSON go through ``store``.

    See :meth:`ResultStore.use_for_references`.
    """
    from resultstore.references import register

    register(store)


class PersistedResult:
    """A value stored, or to be stored, under ``key`` in the store at ``storage_url``."""

    reference_type = "persisted"
    __slots__ = ("_store", "_value", "_written", "expiration", "key", "serializer", "storage_url")

    def __init__(
        self,
        storage_url: str,
        key: str,
        serializer: str = "pickle",
        expiration: datetime.datetime | None = None,
        *,
        value: Any = _MISSING,
        result_store: ResultStore | None = None,
    ) -> None:
        self.storage_url = storage_url
        self.key = validate_key(key)
        self.serializer = serializer
        self.expiration = expiration
        self._value = value
        self._store = result_store
        self._written = False

    @property
    def has_value(self) -> bool:
        """True when the value is held in memory (no read needed)."""
        return self._value is not _MISSING

    def _result_store(self) -> ResultStore:
        if self._store is None:
            from resultstore.references import store_for_reference

            self._store = store_for_reference(self.storage_url)
        return self._store

    async def aget(self, *, retry: bool = True) -> Any:
        """The value: from memory if held, else read from storage (retried when ``retry``)."""
        if self._value is not _MISSING:
            return self._value
        store = self._result_store()
        record = await store.aread(self.key, retry=retry)
        if store.cache_result_in_memory:
            self._value = record.result
        return record.result

    def get(self, *, retry: bool = True) -> Any:
        """Sync twin of :meth:`aget`."""
        if self._value is not _MISSING:
            return self._value
        return run_sync(self.aget(retry=retry))

    async def awrite(self) -> None:
        """Persist the value, unless the store was made with ``persist_result=False``."""
        store = self._result_store()
        if not store.persist_result or self._value is _MISSING:
            return
        await store.awrite(self._value, key=self.key, expiration=self.expiration)
        self._written = True
        if not store.cache_result_in_memory:
            self._value = _MISSING

    def write(self) -> None:
        """Sync twin of :meth:`awrite`."""
        run_sync(self.awrite())

    def to_reference(self) -> dict[str, Any]:
        """The JSON form: where the value lives, nothing else (no value, no credentials)."""
        return {
            REFERENCE_TAG: self.reference_type,
            "storage_url": self.storage_url,
            "key": self.key,
            "serializer": self.serializer,
            "expiration": None if self.expiration is None else self.expiration.isoformat(),
        }

    @classmethod
    def from_reference(cls, reference: Mapping[str, Any]) -> PersistedResult:
        """Rebuild a reference from its JSON form (see :meth:`to_reference`)."""

        def text(name: str, default: str | None = None) -> str:
            value = reference.get(name, default)
            if not isinstance(value, str) or not value:
                raise ConfigurationError(
                    f"malformed persisted result reference: {name!r} must be a non-empty "
                    f"string, got {type(value).__name__}"
                )
            return value

        expiration = reference.get("expiration")
        try:
            when = (
                None if expiration is None else datetime.datetime.fromisoformat(text("expiration"))
            )
        except ValueError:
            raise ConfigurationError(
                f"malformed persisted result reference: bad expiration {expiration!r}"
            ) from None
        return cls(
            storage_url=text("storage_url"),
            key=text("key"),
            serializer=text("serializer", "pickle"),
            expiration=when,
        )

    def __copy__(self) -> PersistedResult:
        # Copies within this process keep the store: only pickles must leave it behind.
        copied = PersistedResult(
            self.storage_url,
            self.key,
            self.serializer,
            self.expiration,
            value=self._value,
            result_store=self._store,
        )
        copied._written = self._written
        return copied

    def __deepcopy__(self, memo: dict[int, Any]) -> PersistedResult:
        import copy

        copied = self.__copy__()
        if self._value is not _MISSING:
            copied._value = copy.deepcopy(self._value, memo)
        return copied

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # The store is not pickled (it holds keys and credentials): the receiving
        # process resolves the reference as it would one read from a State's JSON.
        held = self._value is not _MISSING
        return _restore, (
            self.storage_url,
            self.key,
            self.serializer,
            self.expiration,
            held,
            self._value if held else None,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PersistedResult):
            return NotImplemented
        return self.to_reference() == other.to_reference()

    def __hash__(self) -> int:
        return hash((self.storage_url, self.key))

    def __repr__(self) -> str:
        return f"PersistedResult(key={self.key!r}, storage_url={self.storage_url!r})"


def _restore(
    storage_url: str,
    key: str,
    serializer: str,
    expiration: datetime.datetime | None,
    held: bool,
    value: Any,
) -> PersistedResult:
    """Unpickle a PersistedResult (see ``PersistedResult.__reduce__``)."""
    return PersistedResult(
        storage_url, key, serializer, expiration, value=value if held else _MISSING
    )
