"""Exceptions of the `states` package, all under :class:`StatesError`.

`TerminationSignal` is the exception: it signals a process being told to stop,
so it derives from ``BaseException`` like ``KeyboardInterrupt`` and is not a
``StatesError``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from states.objects import State

__all__ = [
    "CancelledRun",
    "CrashedRun",
    "FailedRun",
    "MissingResult",
    "PausedRun",
    "StatesError",
    "TerminationSignal",
    "UnfinishedRun",
]


class StatesError(Exception):
    """Base class of every error raised by `states`."""


class UnfinishedRun(StatesError):
    """The run is not in a final state, so it has no result yet."""


class MissingResult(StatesError):
    """A final state carries no data to return as its result."""


class FailedRun(StatesError):
    """Stands in for the failure of a Failed state that carries no exception."""


class CrashedRun(StatesError):
    """Stands in for the failure of a Crashed state that carries no exception."""


class CancelledRun(StatesError):
    """Stands in for the failure of a Cancelled state that carries no exception."""


class PausedRun(StatesError):
    """The run is paused, so its result is not available."""

    def __init__(self, *args: Any, state: State[Any] | None = None) -> None:
        super().__init__(*args)
        self.state = state


class TerminationSignal(BaseException):
    """The process received a termination signal (e.g. SIGTERM)."""

    def __init__(self, signal: int) -> None:
        super().__init__(signal)
        self.signal = signal
