"""The run-state model: :class:`StateType`, :class:`StateDetails` and :class:`State`.

A State records where a run is (scheduled, running, completed, ...) together
with an optional message and ``data``. ``data`` usually holds the run's result,
either as a plain value or as a :class:`~states.results.ResultReference` into
storage. How ``data`` travels through JSON is defined in one place, the
``_StateData`` annotation below.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from enum import Enum
from typing import Annotated, Any, Generic, TypeVar
from uuid import UUID

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    WrapSerializer,
    model_validator,
)
from typing_extensions import Self

from states.results import ResultReference, is_reference_mapping, load_result_reference

__all__ = ["TERMINAL_STATES", "State", "StateDetails", "StateType"]

R = TypeVar("R")


class StateType(str, Enum):
    """The kinds of state a run can be in; the value equals the name.

    ``repr(StateType.COMPLETED)`` is ``"StateType.COMPLETED"``.
    """

    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    CRASHED = "CRASHED"
    PAUSED = "PAUSED"
    CANCELLING = "CANCELLING"

    def __repr__(self) -> str:
        return f"{type(self).__name__}.{self.value}"


TERMINAL_STATES: frozenset[StateType] = frozenset(
    {StateType.COMPLETED, StateType.CANCELLED, StateType.FAILED, StateType.CRASHED}
)
"""State types a run never leaves on its own: the run has finished."""


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _default_name(state_type: StateType) -> str:
    """``CANCELLING`` -> ``"Cancelling"``; words split on ``_`` are capitalised."""
    return " ".join(word.capitalize() for word in state_type.value.split("_"))


class StateDetails(BaseModel):
    """Bookkeeping attached to a State: ids, schedule, cache and pause settings.

    Every field is optional so a State can be built without any of it.
    """

    # Build the validator on first use, not at import: `import states` stays fast.
    model_config = ConfigDict(defer_build=True)

    flow_run_id: UUID | None = None
    task_run_id: UUID | None = None
    child_flow_run_id: UUID | None = None
    scheduled_time: datetime.datetime | None = None
    cache_key: str | None = None
    cache_expiration: datetime.datetime | None = None
    deferred: bool | None = None
    untrackable_result: bool = False
    pause_timeout: datetime.datetime | None = None
    pause_reschedule: bool = False
    pause_key: str | None = None
    run_input_keyset: dict[str, str] | None = None
    refresh_cache: bool | None = None
    retriable: bool | None = None
    transition_id: UUID | None = None
    task_parameters_id: UUID | None = None
    traceparent: str | None = None


# --- (de)serialization of ``State.data`` ------------------------------------------
#
# The only rules that differ from pydantic's defaults:
# - JSON dump: a ResultReference becomes its tagged ``to_reference()`` mapping, and
#   a State or a list/tuple/set of States becomes their JSON dumps (so references
#   nested in them are handled by the same rule).
# - validation: a tagged reference mapping becomes a live ResultReference again.
# Python-mode dumps leave ``data`` as it is.


def _validate_data(value: Any) -> Any:
    if is_reference_mapping(value):
        return load_result_reference(value)
    return value


def _serialize_data(
    value: Any, handler: SerializerFunctionWrapHandler, info: SerializationInfo
) -> Any:
    from states.helpers import is_state_iterable  # helpers imports this module

    if not info.mode_is_json():
        return handler(value)
    if isinstance(value, State):
        return value.model_dump(mode="json")
    if isinstance(value, ResultReference):
        return value.to_reference()
    if is_state_iterable(value):
        return [item.model_dump(mode="json") for item in value]
    return handler(value)


_StateData = Annotated[
    Any,
    BeforeValidator(_validate_data),
    WrapSerializer(_serialize_data),
]


class State(BaseModel, Generic[R]):
    """The state of a run, with an optional message and result ``data``.

    ``name`` defaults to the capitalised type (``"Completed"``); a different name
    (``"Retrying"`` for a RUNNING state) marks a named sub-state of the type.
    """

    model_config = ConfigDict(defer_build=True)

    type: StateType
    name: str | None = None
    timestamp: datetime.datetime = Field(default_factory=_utcnow)
    message: str | None = None
    data: _StateData = None
    state_details: StateDetails = Field(default_factory=StateDetails)

    @model_validator(mode="after")
    def _fill_defaults(self) -> Self:
        """Name the state after its type and give SCHEDULED states a scheduled time."""
        if self.name is None:
            self.name = _default_name(self.type)
        if self.type is StateType.SCHEDULED and self.state_details.scheduled_time is None:
            self.state_details.scheduled_time = _utcnow()
        return self

    def is_scheduled(self) -> bool:
        """True for SCHEDULED states (including ``AwaitingRetry`` and ``Late``)."""
        return self.type is StateType.SCHEDULED

    def is_pending(self) -> bool:
        """True for PENDING states."""
        return self.type is StateType.PENDING

    def is_running(self) -> bool:
        """True for RUNNING states (including ``Retrying``)."""
        return self.type is StateType.RUNNING

    def is_completed(self) -> bool:
        """True for COMPLETED states."""
        return self.type is StateType.COMPLETED

    def is_failed(self) -> bool:
        """True for FAILED states (a CRASHED state is not FAILED)."""
        return self.type is StateType.FAILED

    def is_crashed(self) -> bool:
        """True for CRASHED states."""
        return self.type is StateType.CRASHED

    def is_cancelled(self) -> bool:
        """True for CANCELLED states."""
        return self.type is StateType.CANCELLED

    def is_cancelling(self) -> bool:
        """True for CANCELLING states."""
        return self.type is StateType.CANCELLING

    def is_paused(self) -> bool:
        """True for PAUSED states (including ``Suspended``)."""
        return self.type is StateType.PAUSED

    def is_final(self) -> bool:
        """True when the type is one of :data:`TERMINAL_STATES`."""
        return self.type in TERMINAL_STATES

    def result(
        self,
        raise_on_failure: bool = True,
        fetch: bool | None = None,
        retry_result_failure: bool = True,
    ) -> R:
        """Return the run's result, fetching it from storage if needed.

        Raises the run's exception for failed, crashed and cancelled states unless
        ``raise_on_failure`` is false. From sync code the result is returned; in
        async code ``await state.result(fetch=True)`` (or ``await state.aresult()``),
        since there ``fetch=None`` returns ``data`` unfetched with a
        ``DeprecationWarning``. ``fetch=False`` returns ``data`` untouched.
        See :func:`states.get_state_result`.
        """
        from states.helpers import _get_state_result

        return _get_state_result(self, raise_on_failure, fetch, retry_result_failure, stacklevel=3)

    async def aresult(self, raise_on_failure: bool = True, retry_result_failure: bool = True) -> R:
        """Async twin of :meth:`result`; always fetches. See :func:`states.aget_state_result`."""
        from states.helpers import aget_state_result

        return await aget_state_result(
            self,
            raise_on_failure=raise_on_failure,
            retry_result_failure=retry_result_failure,
        )

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """Return a copy stamped now (unless ``update`` sets ``timestamp``), as in the reference.

        A copy is the same state entered again, so it gets a fresh timestamp; the
        rest is pydantic's ``model_copy`` (shallow unless ``deep``). To keep the
        timestamp use :meth:`copy`.
        """
        changes = dict(update or {})
        changes.setdefault("timestamp", _utcnow())
        return super().model_copy(update=changes, deep=deep)

    def copy(self, update: dict[str, Any] | None = None) -> Self:  # type: ignore[override]
        """Return a copy with ``update`` applied (unvalidated), keeping the timestamp.

        The copy gets its own ``state_details`` so changing one state's details
        never changes the other's; ``data`` is shared, not copied.
        """
        changes = dict(update or {})
        changes.setdefault("state_details", self.state_details.model_copy())
        return super().model_copy(update=changes)

    def fresh_copy(self, **kwargs: Any) -> Self:
        """A copy stamped now, with its own ``state_details``: the same state, entered anew.

        ``kwargs`` go to ``model_copy`` (``update=``, ``deep=``); an ``update`` is
        applied after the fresh timestamp, so it may set one of its own.
        """
        update = {"timestamp": _utcnow(), "state_details": self.state_details.model_copy()}
        update.update(kwargs.pop("update", None) or {})
        return self.model_copy(update=update, **kwargs)

    def __eq__(self, other: object) -> bool:
        """Equal when the dumps are equal, as in the reference's models.

        Compares field values only, so a State equals a subclass's or a
        parametrised ``State[int]``'s with the same values, and equals the dict
        of its ``model_dump()``.
        """
        mine = self.model_dump()
        if isinstance(other, BaseModel):
            return mine == other.model_dump()
        return bool(mine == other)

    def __hash__(self) -> int:
        """States of the same runs, timestamp and type hash alike (sets, dict keys)."""
        details = self.state_details
        return hash((details.flow_run_id, details.task_run_id, self.timestamp, self.type))

    def __repr__(self) -> str:
        return (
            f"{self.name}(message={self.message!r}, type={self.type.value}, result={self.data!r})"
        )

    def __str__(self) -> str:
        shown = []
        if self.message:
            shown.append(repr(self.message))
        if (self.name or "").lower() != self.type.value.lower():
            shown.append(f"type={self.type.value}")
        return f"{self.name}({', '.join(shown)})"
