"""One constructor per kind of state: ``Completed(data=1)``, ``Failed(message=...)``...

Each takes the State class to build as ``cls`` (so a subclass or a parametrised
``State[int]`` can be produced) and passes the remaining keyword arguments on
to it. Named sub-states (``AwaitingRetry``, ``Late``, ``Retrying``,
``Suspended``...) are a base type with a different ``name``.
"""

from __future__ import annotations

import datetime
from typing import Any, TypeVar

from states.objects import State, StateDetails, StateType

__all__ = [
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
]

R = TypeVar("R")


def Scheduled(
    cls: type[State[R]] = State,
    scheduled_time: datetime.datetime | None = None,
    **kwargs: Any,
) -> State[R]:
    """A SCHEDULED state due at ``scheduled_time`` (default: now, UTC).

    The time may come from ``scheduled_time`` or from ``state_details``, not both.
    """
    state_details = StateDetails.model_validate(kwargs.pop("state_details", {}))
    if scheduled_time is None:
        scheduled_time = datetime.datetime.now(datetime.timezone.utc)
    elif state_details.scheduled_time:
        raise ValueError("An extra scheduled_time was provided in state_details")
    state_details.scheduled_time = scheduled_time
    return cls(type=StateType.SCHEDULED, state_details=state_details, **kwargs)


def Completed(cls: type[State[R]] = State, **kwargs: Any) -> State[R]:
    """A COMPLETED state; pass the result as ``data``."""
    return cls(type=StateType.COMPLETED, **kwargs)


def Running(cls: type[State[R]] = State, **kwargs: Any) -> State[R]:
    """A RUNNING state."""
    return cls(type=StateType.RUNNING, **kwargs)


def Failed(cls: type[State[R]] = State, **kwargs: Any) -> State[R]:
    """A FAILED state: the run's own code raised or returned a failure."""
    return cls(type=StateType.FAILED, **kwargs)


def Crashed(cls: type[State[R]] = State, **kwargs: Any) -> State[R]:
    """A CRASHED state: the run was stopped by something outside its code."""
    return cls(type=StateType.CRASHED, **kwargs)


def Cancelling(cls: type[State[R]] = State, **kwargs: Any) -> State[R]:
    """A CANCELLING state: cancellation was requested but has not finished."""
    return cls(type=StateType.CANCELLING, **kwargs)


def Cancelled(cls: type[State[R]] = State, **kwargs: Any) -> State[R]:
    """A CANCELLED state."""
    return cls(type=StateType.CANCELLED, **kwargs)


def Pending(cls: type[State[R]] = State, **kwargs: Any) -> State[R]:
    """A PENDING state: about to run."""
    return cls(type=StateType.PENDING, **kwargs)


def Paused(
    cls: type[State[R]] = State,
    timeout_seconds: int | None = None,
    pause_expiration_time: datetime.datetime | None = None,
    reschedule: bool = False,
    pause_key: str | None = None,
    **kwargs: Any,
) -> State[R]:
    """A PAUSED state, optionally timing out at an absolute time or after N seconds.

    Give at most one of ``timeout_seconds`` and ``pause_expiration_time``, and no
    ``pause_timeout`` in ``state_details``: the constructor owns that field.
    """
    state_details = StateDetails.model_validate(kwargs.pop("state_details", {}))
    if state_details.pause_timeout:
        raise ValueError("An extra pause timeout was provided in state_details")
    if pause_expiration_time is not None and timeout_seconds is not None:
        raise ValueError("Cannot supply both a pause_expiration_time and timeout_seconds")
    if pause_expiration_time is not None:
        state_details.pause_timeout = pause_expiration_time
    elif timeout_seconds is not None:
        state_details.pause_timeout = datetime.datetime.now(
            datetime.timezone.utc
        ) + datetime.timedelta(seconds=timeout_seconds)
    state_details.pause_reschedule = reschedule
    state_details.pause_key = pause_key
    return cls(type=StateType.PAUSED, state_details=state_details, **kwargs)


def Suspended(
    cls: type[State[R]] = State,
    timeout_seconds: int | None = None,
    pause_expiration_time: datetime.datetime | None = None,
    pause_key: str | None = None,
    **kwargs: Any,
) -> State[R]:
    """A PAUSED state named ``"Suspended"`` that asks for the run to be rescheduled."""
    return Paused(
        cls=cls,
        name="Suspended",
        reschedule=True,
        timeout_seconds=timeout_seconds,
        pause_expiration_time=pause_expiration_time,
        pause_key=pause_key,
        **kwargs,
    )


def AwaitingRetry(
    cls: type[State[R]] = State,
    scheduled_time: datetime.datetime | None = None,
    **kwargs: Any,
) -> State[R]:
    """A SCHEDULED state named ``"AwaitingRetry"``: the run will be retried."""
    return Scheduled(cls=cls, scheduled_time=scheduled_time, name="AwaitingRetry", **kwargs)


def AwaitingConcurrencySlot(
    cls: type[State[R]] = State,
    scheduled_time: datetime.datetime | None = None,
    **kwargs: Any,
) -> State[R]:
    """A SCHEDULED state named ``"AwaitingConcurrencySlot"``: waiting for capacity."""
    return Scheduled(
        cls=cls, scheduled_time=scheduled_time, name="AwaitingConcurrencySlot", **kwargs
    )


def Retrying(cls: type[State[R]] = State, **kwargs: Any) -> State[R]:
    """A RUNNING state named ``"Retrying"``: a retry attempt is in progress."""
    return cls(type=StateType.RUNNING, name="Retrying", **kwargs)


def Late(
    cls: type[State[R]] = State,
    scheduled_time: datetime.datetime | None = None,
    **kwargs: Any,
) -> State[R]:
    """A SCHEDULED state named ``"Late"``: its scheduled time has passed."""
    return Scheduled(cls=cls, scheduled_time=scheduled_time, name="Late", **kwargs)
