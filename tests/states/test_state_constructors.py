"""The state constructors: the type and name each builds, and their validation."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from states import (
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
    State,
    StateDetails,
    StateType,
    Suspended,
)


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


CONSTRUCTORS: list[tuple[Callable[..., State[Any]], StateType, str]] = [
    (Scheduled, StateType.SCHEDULED, "Scheduled"),
    (Completed, StateType.COMPLETED, "Completed"),
    (Running, StateType.RUNNING, "Running"),
    (Failed, StateType.FAILED, "Failed"),
    (Crashed, StateType.CRASHED, "Crashed"),
    (Cancelling, StateType.CANCELLING, "Cancelling"),
    (Cancelled, StateType.CANCELLED, "Cancelled"),
    (Pending, StateType.PENDING, "Pending"),
    (Paused, StateType.PAUSED, "Paused"),
    (Suspended, StateType.PAUSED, "Suspended"),
    (AwaitingRetry, StateType.SCHEDULED, "AwaitingRetry"),
    (AwaitingConcurrencySlot, StateType.SCHEDULED, "AwaitingConcurrencySlot"),
    (Retrying, StateType.RUNNING, "Retrying"),
    (Late, StateType.SCHEDULED, "Late"),
]


@pytest.mark.parametrize(("constructor", "state_type", "name"), CONSTRUCTORS)
def test_constructor_type_and_name(
    constructor: Callable[..., State[Any]], state_type: StateType, name: str
) -> None:
    state = constructor()
    assert type(state) is State
    assert state.type is state_type
    assert state.name == name


@pytest.mark.parametrize(("constructor", "state_type", "name"), CONSTRUCTORS)
def test_constructor_passes_fields_and_cls_through(
    constructor: Callable[..., State[Any]], state_type: StateType, name: str
) -> None:
    class MyState(State[Any]):
        pass

    state = constructor(cls=MyState, message="note", data={"x": 1})
    assert type(state) is MyState
    assert (state.type, state.name) == (state_type, name)
    assert state.message == "note"
    assert state.data == {"x": 1}


def test_a_name_can_be_given_to_unnamed_constructors() -> None:
    assert Failed(name="TimedOut").name == "TimedOut"


# --- Scheduled and its named variants -------------------------------------------------

SCHEDULED_CONSTRUCTORS = [Scheduled, AwaitingRetry, AwaitingConcurrencySlot, Late]


@pytest.mark.parametrize("constructor", SCHEDULED_CONSTRUCTORS)
def test_scheduled_time_defaults_to_now_in_utc(constructor: Callable[..., State[Any]]) -> None:
    before = _utcnow()
    scheduled_time = constructor().state_details.scheduled_time
    assert scheduled_time is not None
    assert before <= scheduled_time <= _utcnow()


@pytest.mark.parametrize("constructor", SCHEDULED_CONSTRUCTORS)
def test_scheduled_time_is_used(constructor: Callable[..., State[Any]]) -> None:
    when = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    assert constructor(scheduled_time=when).state_details.scheduled_time == when


def test_without_scheduled_time_now_replaces_one_in_state_details() -> None:
    """As documented: only the ``scheduled_time`` argument sets the time."""
    when = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    run_id = uuid.uuid4()
    from_model = Scheduled(state_details=StateDetails(scheduled_time=when, flow_run_id=run_id))
    from_dict = Scheduled(state_details={"scheduled_time": when})
    assert from_model.state_details.scheduled_time != when
    assert from_model.state_details.flow_run_id == run_id  # other details are kept
    assert from_dict.state_details.scheduled_time != when


@pytest.mark.parametrize("constructor", SCHEDULED_CONSTRUCTORS)
def test_scheduled_time_cannot_be_given_twice(constructor: Callable[..., State[Any]]) -> None:
    when = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    with pytest.raises(
        ValueError, match=r"^An extra scheduled_time was provided in state_details$"
    ):
        constructor(scheduled_time=when, state_details={"scheduled_time": when})


# --- Paused and Suspended -----------------------------------------------------------


def test_paused_defaults() -> None:
    details = Paused().state_details
    assert details.pause_timeout is None
    assert details.pause_reschedule is False
    assert details.pause_key is None


def test_paused_with_timeout_seconds() -> None:
    before = _utcnow()
    timeout = Paused(timeout_seconds=60).state_details.pause_timeout
    assert timeout is not None
    assert timeout.tzinfo is not None
    after = _utcnow()
    delta = datetime.timedelta(seconds=60)
    assert before + delta <= timeout <= after + delta


def test_paused_with_expiration_time_reschedule_and_key() -> None:
    when = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    run_id = uuid.uuid4()
    state = Paused(
        pause_expiration_time=when,
        reschedule=True,
        pause_key="approval",
        state_details={"flow_run_id": run_id},
    )
    assert state.state_details.pause_timeout == when
    assert state.state_details.pause_reschedule is True
    assert state.state_details.pause_key == "approval"
    assert state.state_details.flow_run_id == run_id


@pytest.mark.parametrize("constructor", [Paused, Suspended])
def test_pause_timeout_cannot_be_given_twice(constructor: Callable[..., State[Any]]) -> None:
    when = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    with pytest.raises(ValueError, match=r"^An extra pause timeout was provided in state_details$"):
        constructor(state_details={"pause_timeout": when})
    with pytest.raises(
        ValueError, match=r"^Cannot supply both a pause_expiration_time and timeout_seconds$"
    ):
        constructor(pause_expiration_time=when, timeout_seconds=10)


def test_suspended_asks_to_be_rescheduled() -> None:
    when = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    state = Suspended(pause_expiration_time=when, pause_key="k")
    assert state.is_paused()
    assert state.name == "Suspended"
    assert state.state_details.pause_reschedule is True
    assert state.state_details.pause_timeout == when
    assert state.state_details.pause_key == "k"
    assert Suspended(timeout_seconds=5).state_details.pause_timeout is not None
