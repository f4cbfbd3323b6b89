"""The seam between run states and result storage.

`states` never imports a storage implementation. A State's ``data`` may hold a
*result reference*: any object satisfying :class:`ResultReference`. Helpers
such as :func:`states.return_value_to_state` take any *result factory*
satisfying :class:`ResultFactory` (``resultstore.ResultStore`` is one).

A reference travels inside a State's JSON as a small mapping tagged with
``"__result_ref__": NAME``. The receiving process turns it back into an object
through the entry-point group ``states.results``, where ``NAME`` points at a
class with a ``from_reference(mapping)`` classmethod. Installing the
distribution that wrote the state is therefore all the set-up a reader needs.
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from states.exceptions import StatesError

__all__ = [
    "REFERENCE_TAG",
    "RESULT_REFERENCE_GROUP",
    "ResultFactory",
    "ResultReference",
    "UnknownResultReference",
    "is_reference_mapping",
    "load_result_reference",
]

REFERENCE_TAG = "__result_ref__"
RESULT_REFERENCE_GROUP = "states.results"


class UnknownResultReference(StatesError):
    """A State's JSON names a result reference type that is not installed."""


@runtime_checkable
class ResultReference(Protocol):
    """A handle to a result value that may live in storage."""

    def get(self, *, retry: bool = True) -> Any:
        """Return the value, reading storage if needed (retried when ``retry``)."""
        ...

    async def aget(self, *, retry: bool = True) -> Any:
        """Async twin of :meth:`get`."""
        ...

    def write(self) -> None:
        """Persist the value."""
        ...

    async def awrite(self) -> None:
        """Async twin of :meth:`write`."""
        ...

    def to_reference(self) -> dict[str, Any]:
        """A JSON-safe mapping, tagged with ``REFERENCE_TAG``, that locates the value."""
        ...


@runtime_checkable
class ResultFactory(Protocol):
    """Anything that wraps a value into a :class:`ResultReference`."""

    def create_result(
        self,
        obj: Any,
        key: str | None = None,
        expiration: datetime.datetime | None = None,
    ) -> ResultReference:
        """Wrap ``obj``; nothing is written until the reference's ``write``."""
        ...


def is_reference_mapping(value: Any) -> bool:
    """True for the JSON form of a result reference."""
    return isinstance(value, Mapping) and isinstance(value.get(REFERENCE_TAG), str)


@functools.cache
def _reference_type(name: str) -> Any:
    from importlib.metadata import entry_points  # only needed to decode a reference

    found = entry_points(group=RESULT_REFERENCE_GROUP).select(name=name)
    for ep in found:
        return ep.load()
    installed = sorted(ep.name for ep in entry_points(group=RESULT_REFERENCE_GROUP))
    raise UnknownResultReference(
        f"result reference type {name!r} is not installed (installed: {installed or 'none'}); "
        "install the distribution that wrote this state, e.g. `pip install resultstore`"
    )


def load_result_reference(value: Mapping[str, Any]) -> ResultReference:
    """Turn the JSON form of a result reference back into a live reference."""
    cls = _reference_type(str(value[REFERENCE_TAG]))
    ref: ResultReference = cls.from_reference(dict(value))
    return ref
