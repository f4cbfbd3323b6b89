"""Helpers that read results out of states and turn outcomes into states.

- Reading: :func:`get_state_result` / :func:`aget_state_result` return a final
  state's result (fetching a :class:`ResultReference`), or raise its exception;
  :func:`get_state_exception` / :func:`raise_state_exception` work from both
  sync and async code.
- Building: :func:`return_value_to_state`, :func:`exception_to_failed_state`
  and :func:`exception_to_crashed_state` turn what a run returned or raised
  into the State it ends in, storing values through a :class:`ResultFactory`.
"""

from __future__ import annotations

import datetime
import inspect
import logging
import os
import sys
import traceback
import warnings
from collections import Counter
from collections.abc import Iterable
from types import GeneratorType, TracebackType
from typing import Any, TypeGuard, TypeVar, cast

from states._sync import in_async_context, read_result, run_without_loop, sync_compatible
from states.constructors import Completed, Crashed, Failed
from states.exceptions import (
    CancelledRun,
    CrashedRun,
    FailedRun,
    MissingResult,
    PausedRun,
    TerminationSignal,
    UnfinishedRun,
)
from states.objects import State, StateType
from states.results import ResultFactory, ResultReference

__all__ = [
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
]

R = TypeVar("R")

logger = logging.getLogger("states")

_PERSIST_WARNING = (
    "Encountered an error while persisting result: %s Execution will continue, "
    "but the result has not been persisted"
)
_WRITE_WARNING = (
    "Failed to write result: %s Execution will continue, but the result has not been written"
)


def format_exception(exc: BaseException, tb: TracebackType | None = None) -> str:
    """Render ``exc`` as ``"ValueError: boom"``, or as a full traceback when ``tb`` is given.

    As in the reference, the one-line form is the class name (never its module),
    ``": "`` and ``str(exc)``: ``"RuntimeError: "`` for an exception without a
    message. Exceptions of this package are shown by class name in tracebacks
    too (``FailedRun: ...`` rather than ``states.exceptions.FailedRun: ...``).
    """
    exc_type = type(exc)
    if tb is None:
        formatted = f"{exc_type.__name__}: {exc}"
    else:
        formatted = "".join(traceback.format_exception(exc_type, exc, tb))
    if exc_type.__module__.startswith("states."):
        formatted = formatted.replace(
            f"{exc_type.__module__}.{exc_type.__name__}", exc_type.__name__
        )
    return formatted


def is_state_iterable(obj: Any) -> TypeGuard[Iterable[State[Any]]]:
    """True for a non-empty list, set or tuple holding only States.

    Other iterables (dicts, generators, data frames...) are never treated as
    collections of states, even if they contain some.
    """
    if isinstance(obj, (list, set, tuple)) and obj:
        return all(isinstance(item, State) for item in obj)
    return False


class StateGroup:
    """Counts over a collection of states, used to decide an aggregate state."""

    def __init__(self, states: Iterable[State[Any]]) -> None:
        self.states = list(states)
        self.type_counts: Counter[StateType] = Counter(state.type for state in self.states)
        self.total_count = len(self.states)
        self.cancelled_count = self.type_counts[StateType.CANCELLED]
        self.final_count = sum(1 for state in self.states if state.is_final())
        self.not_final_count = self.total_count - self.final_count
        self.paused_count = self.type_counts[StateType.PAUSED]

    @property
    def fail_count(self) -> int:
        """Failed plus crashed states."""
        return self.type_counts[StateType.FAILED] + self.type_counts[StateType.CRASHED]

    def all_completed(self) -> bool:
        """True when every state is COMPLETED."""
        return self.type_counts[StateType.COMPLETED] == self.total_count

    def any_cancelled(self) -> bool:
        """True when at least one state is CANCELLED."""
        return self.cancelled_count > 0

    def any_failed(self) -> bool:
        """True when at least one state is FAILED or CRASHED."""
        return self.fail_count > 0

    def any_paused(self) -> bool:
        """True when at least one state is PAUSED."""
        return self.paused_count > 0

    def all_final(self) -> bool:
        """True when every state is final."""
        return self.final_count == self.total_count

    def counts_message(self) -> str:
        """E.g. ``"total=3, not_final=1, 'COMPLETED'=2, 'RUNNING'=1"``."""
        parts = [f"total={self.total_count}"]
        if self.not_final_count:
            parts.append(f"not_final={self.not_final_count}")
        parts.extend(
            f"{state_type.value!r}={count}"
            for state_type, count in self.type_counts.items()
            if count
        )
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"StateGroup<{self.counts_message()}>"


# --- reading results ---------------------------------------------------------------


ASYNC_FETCH_SETTINGS = ("STATES_ASYNC_FETCH_STATE_RESULT", "PREFECT_ASYNC_FETCH_STATE_RESULT")
"""Environment variables: either true makes ``state.result()`` in async code return an awaitable.

The reference's opt-in is the setting ``PREFECT_ASYNC_FETCH_STATE_RESULT`` (false by
default), honoured under its own name too so a program moving over keeps it.
"""

_ASYNC_NOT_AWAITED_WARNING = (
    "State.result() was called from an async context but not awaited. "
    "This method will be updated to return a coroutine by default in "
    "the future. Pass `fetch=True` and `await` the call to get rid of "
    "this warning."
)


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"", "0", "false", "no", "off"}


def _async_fetch_opted_in() -> bool:
    """Whether either of :data:`ASYNC_FETCH_SETTINGS` is true; any other value is an error."""
    opted_in = False
    for name in ASYNC_FETCH_SETTINGS:
        value = os.environ.get(name, "")
        word = value.strip().lower()
        if word not in _TRUE and word not in _FALSE:
            raise ValueError(
                f"{name}={value!r} is not true or false: set it to true (or 1, yes, on), "
                "false, or unset it"
            )
        opted_in = opted_in or word in _TRUE
    return opted_in


def get_state_result(
    state: State[R],
    raise_on_failure: bool = True,
    fetch: bool | None = None,
    retry_result_failure: bool = True,
) -> R:
    """Return the result of ``state``; see :meth:`State.result`.

    As in the reference, with the calling convention of the caller's thread:

    - from sync code (no event loop running in this thread), ``fetch`` ``None``
      or ``True`` returns the result, reading a ResultReference with its ``get``;
    - in async code, ``fetch=True`` returns an awaitable of the result
      (``await get_state_result(state, fetch=True)``), and ``fetch=None`` returns
      ``state.data`` unfetched with a ``DeprecationWarning``, unless the
      environment variable ``STATES_ASYNC_FETCH_STATE_RESULT`` (or the reference's
      ``PREFECT_ASYNC_FETCH_STATE_RESULT``) is true, when it behaves as ``fetch=True``;
    - ``fetch=False`` returns ``state.data`` as it is, without reading storage or
      checking the state.

    :func:`aget_state_result` (``await state.aresult()``) always fetches.
    """
    return _get_state_result(state, raise_on_failure, fetch, retry_result_failure, stacklevel=3)


def _get_state_result(
    state: State[R],
    raise_on_failure: bool,
    fetch: bool | None,
    retry_result_failure: bool,
    *,
    stacklevel: int,
) -> R:
    in_async = in_async_context()
    if fetch is None and (not in_async or _async_fetch_opted_in()):
        fetch = True
    if not fetch:
        if fetch is None:  # only in async code: the sync default fetches
            warnings.warn(_ASYNC_NOT_AWAITED_WARNING, DeprecationWarning, stacklevel=stacklevel)
        return cast(R, state.data)
    coro = aget_state_result(
        state,
        raise_on_failure=raise_on_failure,
        retry_result_failure=retry_result_failure,
    )
    if in_async:
        return cast(R, coro)  # to be awaited
    return run_without_loop(coro)  # reads the reference with its sync ``get``


async def aget_state_result(
    state: State[R],
    raise_on_failure: bool = True,
    retry_result_failure: bool = True,
) -> R:
    """Return the result of a final ``state``, reading a ResultReference from storage.

    Paused and unfinished states have no result yet (:class:`PausedRun`,
    :class:`UnfinishedRun`). Failed, crashed and cancelled states raise their
    exception, or return it when ``raise_on_failure`` is false and the state has
    no data. ``retry_result_failure`` is passed on to the reference's ``aget``
    (``get`` when called through :func:`get_state_result`).
    """
    if state.is_paused():
        raise PausedRun("Run is paused, its result is not available.", state=state)
    if not state.is_final():
        raise UnfinishedRun(f"Run is in {state.type.name} state, its result is not available.")
    if raise_on_failure and _is_unsuccessful(state):
        raise await _state_exception(state)

    data = state.data
    if isinstance(data, ResultReference):
        return cast(R, await read_result(data, retry=retry_result_failure))
    if data is None:
        if _is_unsuccessful(state):
            return cast(R, await _state_exception(state))
        raise MissingResult(
            "State data is missing. Typically, this occurs when result persistence is "
            "disabled and the state has been retrieved from another process."
        )
    return cast(R, data)


def _is_unsuccessful(state: State[Any]) -> bool:
    return state.is_failed() or state.is_crashed() or state.is_cancelled()


async def _state_exception(state: State[Any]) -> BaseException:
    """The async core of :func:`get_state_exception`."""
    wrapper: type[FailedRun | CrashedRun | CancelledRun]
    if state.is_failed():
        wrapper, default_message = FailedRun, "Run failed."
    elif state.is_crashed():
        wrapper, default_message = CrashedRun, "Run crashed."
    elif state.is_cancelled():
        wrapper, default_message = CancelledRun, "Run cancelled."
    else:
        raise ValueError(f"Expected failed or crashed state got {state!r}.")

    result = state.data
    if isinstance(result, ResultReference):
        result = await read_result(result, retry=True)

    if result is None:
        return wrapper(state.message or default_message)
    if isinstance(result, BaseException):
        return result
    if isinstance(result, str):
        return wrapper(result)
    if isinstance(result, State):
        return await _state_exception(result)
    if is_state_iterable(result):
        for inner in result:
            if _is_unsuccessful(inner):
                return await _state_exception(inner)
        raise ValueError("Failed state result was an iterable of states but none were failed.")
    raise TypeError(
        f"Unexpected result for failed state: {result!r} —— "
        f"{type(result).__name__} cannot be resolved into an exception"
    )


@sync_compatible
async def get_state_exception(state: State[Any]) -> BaseException:
    """Return the exception a failed, crashed or cancelled ``state`` stands for.

    ``data`` is read (from storage for a ResultReference) and resolved: an
    exception is returned as is; a string or no data is wrapped in
    :class:`FailedRun`, :class:`CrashedRun` or :class:`CancelledRun` (with the
    state message or "Run failed." etc.); a State or an iterable of States yields
    the exception of the (first) unsuccessful one. Other states raise
    ``ValueError``, other data ``TypeError``. Await it in async code.
    """
    return await _state_exception(state)


@sync_compatible
async def raise_state_exception(state: State[Any]) -> None:
    """Raise the exception of a failed, crashed or cancelled ``state``; else do nothing.

    Await it in async code.
    """
    if _is_unsuccessful(state):
        raise await _state_exception(state)


# --- building states ---------------------------------------------------------------


async def _maybe_await(value: Any) -> Any:
    """``value``, awaited first if it is awaitable."""
    if inspect.isawaitable(value):
        return await value
    return value


async def _create_result(
    result_store: ResultFactory,
    obj: Any,
    *,
    key: str | None = None,
    expiration: datetime.datetime | None = None,
    write_result: bool = False,
    warning: str = _PERSIST_WARNING,
) -> ResultReference:
    """Wrap ``obj`` into a reference and, if asked, write it.

    ``create_result`` may return the reference or an awaitable of it (the
    reference's result stores are async); the reference is written with
    ``awrite``, or with ``write`` (awaited if it returns an awaitable) when it
    has no ``awrite``. A failed write is logged as a warning and otherwise
    ignored: losing the stored copy of a result must not fail the run that
    produced it.
    """
    result: ResultReference = await _maybe_await(
        result_store.create_result(obj, key=key, expiration=expiration)
    )
    if write_result:
        try:
            awrite = getattr(result, "awrite", None)
            if awrite is not None:
                await awrite()
            else:
                await _maybe_await(cast(Any, result).write())
        except Exception as exc:
            logger.warning(warning, exc)
    return result


async def exception_to_crashed_state(
    exc: BaseException,
    result_store: ResultFactory | None = None,
) -> State[Any]:
    """Turn an exception raised *outside* the run's own code into a Crashed state.

    The message says what stopped the run (cancellation, interrupt, termination
    signal, system exit, ...). ``data`` is the exception, wrapped by
    ``result_store`` when given (not written).
    """
    httpx = sys.modules.get("httpx")  # only if the caller's code already uses it
    import anyio  # imported where needed: keeps `import states` light

    if isinstance(exc, anyio.get_cancelled_exc_class()):
        message = "Execution was cancelled by the runtime environment."
    elif isinstance(exc, KeyboardInterrupt):
        message = "Execution was aborted by an interrupt signal."
    elif isinstance(exc, TerminationSignal):
        message = "Execution was aborted by a termination signal."
    elif isinstance(exc, SystemExit):
        message = "Execution was aborted by Python system exit call."
    elif httpx is not None and isinstance(exc, (httpx.TimeoutException, httpx.ConnectError)):
        try:
            request = exc.request
        except RuntimeError:  # httpx raises when the request was never set
            message = (
                f"Request failed while attempting to contact the server: {format_exception(exc)}"
            )
        else:
            message = f"Request to {request.url} failed: {format_exception(exc)}."
    else:
        message = f"Execution was interrupted by an unexpected exception: {format_exception(exc)}"

    data: Any = exc
    if result_store is not None:
        data = await _maybe_await(result_store.create_result(exc))
    return Crashed(message=message, data=data)


async def exception_to_failed_state(
    exc: BaseException | None = None,
    result_store: ResultFactory | None = None,
    write_result: bool = False,
    **kwargs: Any,
) -> State[Any]:
    """Turn an exception raised by the run's own code into a Failed state.

    Without ``exc`` the exception being handled (``sys.exc_info()``) is used.
    The formatted exception is appended to any ``message`` given; other
    ``kwargs`` go to :func:`Failed`. The state is marked not retriable.
    """
    if exc is None:
        exc = sys.exc_info()[1]
        if exc is None:
            raise ValueError("Exception was not passed and no active exception could be found.")

    data: Any = exc
    if result_store is not None:
        data = await _create_result(
            result_store, exc, write_result=write_result, warning=_WRITE_WARNING
        )

    message = kwargs.pop("message", None) or ""
    if message and not message.endswith(" "):
        message += " "
    message += format_exception(exc)

    state: State[Any] = Failed(data=data, message=message, **kwargs)
    state.state_details.retriable = False
    return state


async def return_value_to_state(
    retval: Any,
    result_store: ResultFactory,
    key: str | None = None,
    expiration: datetime.datetime | None = None,
    write_result: bool = False,
) -> State[Any]:
    """Decide the State a run ends in from the value its code returned.

    - A State built by hand (no flow or task run id) is used as is, its ``data``
      wrapped by ``result_store`` unless it is already a ResultReference.
    - A State or list/set/tuple of States from other runs is aggregated:
      COMPLETED if all completed, else CANCELLED, PAUSED or FAILED (first match),
      with a message counting the states; the states become the ``data``.
    - Anything else is the result of a COMPLETED state (generators become lists;
      a ResultReference is used as the data directly).
    """
    store_kwargs: dict[str, Any] = {
        "key": key,
        "expiration": expiration,
        "write_result": write_result,
    }

    if (
        isinstance(retval, State)
        and not retval.state_details.flow_run_id
        and not retval.state_details.task_run_id
    ):
        if not isinstance(retval.data, ResultReference):
            retval.data = await _create_result(result_store, retval.data, **store_kwargs)
        return retval

    if isinstance(retval, State) or is_state_iterable(retval):
        group = StateGroup([retval] if isinstance(retval, State) else retval)
        new_type, message = _aggregate(group)
        result = await _create_result(result_store, retval, **store_kwargs)
        return State(type=new_type, message=message, data=result)

    data = list(retval) if isinstance(retval, GeneratorType) else retval
    if isinstance(data, ResultReference):
        return Completed(data=data)
    return Completed(data=await _create_result(result_store, data, **store_kwargs))


def _aggregate(group: StateGroup) -> tuple[StateType, str]:
    """The aggregate rule: the state type and message for a group of states."""
    if group.all_completed():
        return StateType.COMPLETED, "All states completed."
    if group.any_cancelled():
        return (
            StateType.CANCELLED,
            f"{group.cancelled_count}/{group.total_count} states cancelled.",
        )
    if group.any_paused():
        return StateType.PAUSED, f"{group.paused_count}/{group.total_count} states paused."
    if group.any_failed():
        message = f"{group.fail_count}/{group.total_count} states failed."
    elif not group.all_final():
        message = f"{group.not_final_count}/{group.total_count} states are not final."
    else:
        message = "Given states: " + group.counts_message()
    return StateType.FAILED, message
