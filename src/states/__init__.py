"""Run states: where a run is (scheduled, running, completed, failed...) and its result.

Build states with the constructors (``Completed(data=1)``, ``Failed(...)``), read
a final state's result with ``state.result()`` / ``await state.aresult()``, and
turn what a run returned or raised into its final state with
``return_value_to_state`` and ``exception_to_failed_state``. Results may live in
storage behind a :class:`ResultReference`; no storage is imported here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from states.constructors import (
        AwaitingConcurrencySlot,
        AwaitingRetry,
        Cancelled,
        Cancelling,
        Completed,
        Crashed,
        Failed,
        Late,
        Paused,
        Pending,
        Retrying,
        Running,
        Scheduled,
        Suspended,
    )
    from states.exceptions import (
        CancelledRun,
        CrashedRun,
        FailedRun,
        MissingResult,
        PausedRun,
        StatesError,
        TerminationSignal,
        UnfinishedRun,
    )
    from states.helpers import (
        StateGroup,
        aget_state_result,
        exception_to_crashed_state,
        exception_to_failed_state,
        format_exception,
        get_state_exception,
        get_state_result,
        is_state_iterable,
        raise_state_exception,
        return_value_to_state,
    )
    from states.objects import TERMINAL_STATES, State, StateDetails, StateType
    from states.results import ResultFactory, ResultReference

__all__ = [
    # model
    "State",
    "StateDetails",
    "StateType",
    "TERMINAL_STATES",
    # constructors
    "AwaitingConcurrencySlot",
    "AwaitingRetry",
    "Cancelled",
    "Cancelling",
    "Completed",
    "Crashed",
    "Failed",
    "Late",
    "Paused",
    "Pending",
    "Retrying",
    "Running",
    "Scheduled",
    "Suspended",
    # helpers
    "StateGroup",
    "aget_state_result",
    "exception_to_crashed_state",
    "exception_to_failed_state",
    "format_exception",
    "get_state_exception",
    "get_state_result",
    "is_state_iterable",
    "raise_state_exception",
    "return_value_to_state",
    # exceptions
    "CancelledRun",
    "CrashedRun",
    "FailedRun",
    "MissingResult",
    "PausedRun",
    "StatesError",
    "TerminationSignal",
    "UnfinishedRun",
    # result storage seam
    "ResultFactory",
    "ResultReference",
]

# Names load on first access (PEP 562): ``import states`` stays cheap, and the
# pydantic models are built only by a program that uses them.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "states.constructors": (
        "AwaitingConcurrencySlot",
        "AwaitingRetry",
        "Cancelled",
        "Cancelling",
        "Completed",
        "Crashed",
        "Failed",
        "Late",
        "Paused",
        "Pending",
        "Retrying",
        "Running",
        "Scheduled",
        "Suspended",
    ),
    "states.exceptions": (
        "CancelledRun",
        "CrashedRun",
        "FailedRun",
        "MissingResult",
        "PausedRun",
        "StatesError",
        "TerminationSignal",
        "UnfinishedRun",
    ),
    "states.helpers": (
        "StateGroup",
        "aget_state_result",
        "exception_to_crashed_state",
        "exception_to_failed_state",
        "format_exception",
        "get_state_exception",
        "get_state_result",
        "is_state_iterable",
        "raise_state_exception",
        "return_value_to_state",
    ),
    "states.objects": ("TERMINAL_STATES", "State", "StateDetails", "StateType"),
    "states.results": ("ResultFactory", "ResultReference"),
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
