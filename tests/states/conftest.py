"""Fixtures for the `states` tests: the anyio backend and in-memory result storage.

Real storage lives in `resultstore`; these tests only need something that
satisfies the `ResultFactory` / `ResultReference` protocols, records how it is
used, and can be told to fail writes.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import states.results
from states.results import REFERENCE_TAG

_UNSET: Any = object()


class FakeReference:
    """A result held in memory and, once written, in its factory's ``storage``.

    A reference loaded back from JSON has no value in memory and reads storage.
    ``retries`` records the ``retry`` flag of every ``get``/``aget`` call.
    """

    def __init__(self, factory: FakeResultFactory, key: str, value: Any = _UNSET) -> None:
        self.factory = factory
        self.key = key
        self.value = value
        self.retries: list[bool] = []

    def get(self, *, retry: bool = True) -> Any:
        self.retries.append(retry)
        if self.value is _UNSET:
            return self.factory.storage[self.key]
        return self.value

    async def aget(self, *, retry: bool = True) -> Any:
        return self.get(retry=retry)

    def write(self) -> None:
        self.factory.write_attempts += 1
        if self.factory.fail_writes:
            raise OSError("disk full")
        self.factory.storage[self.key] = self.value

    async def awrite(self) -> None:
        self.write()

    def to_reference(self) -> dict[str, Any]:
        return {REFERENCE_TAG: "fake", "key": self.key}


class FakeResultFactory:
    """An in-memory `ResultFactory` that records each ``create_result`` call."""

    def __init__(self, *, fail_writes: bool = False) -> None:
        self.fail_writes = fail_writes
        self.storage: dict[str, Any] = {}
        self.created: list[tuple[Any, str | None, datetime.datetime | None]] = []
        self.write_attempts = 0

    @property
    def writes(self) -> int:
        """Successful writes."""
        return len(self.storage)

    def create_result(
        self,
        obj: Any,
        key: str | None = None,
        expiration: datetime.datetime | None = None,
    ) -> FakeReference:
        self.created.append((obj, key, expiration))
        return FakeReference(self, key or uuid.uuid4().hex, obj)

    def from_reference(self, mapping: dict[str, Any]) -> FakeReference:
        """Stands in for a reference class's ``from_reference`` classmethod."""
        return FakeReference(self, mapping["key"])


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def result_store() -> FakeResultFactory:
    return FakeResultFactory()


@pytest.fixture
def failing_store() -> FakeResultFactory:
    """A store whose every write raises ``OSError("disk full")``."""
    return FakeResultFactory(fail_writes=True)


@pytest.fixture
def fake_references_installed(
    monkeypatch: pytest.MonkeyPatch, result_store: FakeResultFactory
) -> Iterator[FakeResultFactory]:
    """Make ``{"__result_ref__": "fake", ...}`` load as a reference into ``result_store``.

    Stands in for a distribution registering the ``fake`` entry point in the
    ``states.results`` group.
    """

    def reference_type(name: str) -> Any:
        assert name == "fake"
        return result_store

    monkeypatch.setattr(states.results, "_reference_type", reference_type)
    yield result_store
