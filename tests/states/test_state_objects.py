"""The State model: defaults, predicates, display, copies and JSON."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from states import (
    TERMINAL_STATES,
    Completed,
    Failed,
    Retrying,
    State,
    StateDetails,
    StateType,
)
from states.results import REFERENCE_TAG, UnknownResultReference


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


# --- StateType / StateDetails --------------------------------------------------------


def test_state_type_values_are_their_names() -> None:
    assert [t.value for t in StateType] == [
        "SCHEDULED",
        "PENDING",
        "RUNNING",
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "CRASHED",
        "PAUSED",
        "CANCELLING",
    ]
    assert StateType("COMPLETED") is StateType.COMPLETED
    assert StateType.COMPLETED == "COMPLETED"  # a str enum


def test_state_type_repr_is_its_qualified_name() -> None:
    assert repr(StateType.COMPLETED) == "StateType.COMPLETED"
    assert repr([StateType.FAILED]) == "[StateType.FAILED]"


def test_terminal_states() -> None:
    assert set(TERMINAL_STATES) == {
        StateType.COMPLETED,
        StateType.CANCELLED,
        StateType.FAILED,
        StateType.CRASHED,
    }


def test_state_details_defaults() -> None:
    details = StateDetails()
    assert details.untrackable_result is False
    assert details.pause_reschedule is False
    others = details.model_dump(exclude={"untrackable_result", "pause_reschedule"})
    assert len(others) == 15
    assert all(value is None for value in others.values())


# --- defaults ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state_type", "name"),
    [
        (StateType.SCHEDULED, "Scheduled"),
        (StateType.PENDING, "Pending"),
        (StateType.RUNNING, "Running"),
        (StateType.COMPLETED, "Completed"),
        (StateType.FAILED, "Failed"),
        (StateType.CANCELLED, "Cancelled"),
        (StateType.CRASHED, "Crashed"),
        (StateType.PAUSED, "Paused"),
        (StateType.CANCELLING, "Cancelling"),
    ],
)
def test_name_defaults_to_the_capitalised_type(state_type: StateType, name: str) -> None:
    assert State(type=state_type).name == name


def test_explicit_name_is_kept() -> None:
    assert State(type=StateType.RUNNING, name="Retrying").name == "Retrying"


def test_type_may_be_given_as_a_string() -> None:
    assert State(type="FAILED").type is StateType.FAILED  # type: ignore[arg-type]


def test_timestamp_defaults_to_now_in_utc() -> None:
    before = _utcnow()
    state = State(type=StateType.PENDING)
    assert state.timestamp.tzinfo is not None
    assert state.timestamp.utcoffset() == datetime.timedelta(0)
    assert before <= state.timestamp <= _utcnow()


def test_message_data_and_details_default_empty() -> None:
    first, second = State(type=StateType.PENDING), State(type=StateType.PENDING)
    assert first.message is None
    assert first.data is None
    assert first.state_details == StateDetails()
    assert first.state_details is not second.state_details


def test_scheduled_states_always_have_a_scheduled_time() -> None:
    state = State(type=StateType.SCHEDULED)
    assert state.state_details.scheduled_time is not None
    assert state.state_details.scheduled_time.tzinfo is not None
    assert State(type=StateType.RUNNING).state_details.scheduled_time is None


def test_state_can_be_parametrised_and_subclassed() -> None:
    class MyState(State[int]):
        pass

    assert Completed(cls=State[int], data=1).data == 1
    assert type(Completed(cls=MyState, data=1)) is MyState


# --- predicates ----------------------------------------------------------------------

_PREDICATES = {
    StateType.SCHEDULED: "is_scheduled",
    StateType.PENDING: "is_pending",
    StateType.RUNNING: "is_running",
    StateType.COMPLETED: "is_completed",
    StateType.FAILED: "is_failed",
    StateType.CRASHED: "is_crashed",
    StateType.CANCELLED: "is_cancelled",
    StateType.CANCELLING: "is_cancelling",
    StateType.PAUSED: "is_paused",
}


@pytest.mark.parametrize("state_type", list(StateType))
def test_exactly_one_type_predicate_is_true(state_type: StateType) -> None:
    state = State(type=state_type)
    truths = {name for name in _PREDICATES.values() if getattr(state, name)()}
    assert truths == {_PREDICATES[state_type]}


@pytest.mark.parametrize("state_type", list(StateType))
def test_is_final_for_terminal_types_only(state_type: StateType) -> None:
    assert State(type=state_type).is_final() is (state_type in TERMINAL_STATES)


# --- display -------------------------------------------------------------------------


def test_repr_shows_message_type_and_result() -> None:
    assert repr(Completed(message="hi", data=42)) == (
        "Completed(message='hi', type=COMPLETED, result=42)"
    )
    assert repr(Failed()) == "Failed(message=None, type=FAILED, result=None)"


def test_str_shows_the_message_and_the_type_only_for_renamed_states() -> None:
    assert str(Completed(message="hi")) == "Completed('hi')"
    assert str(Completed()) == "Completed()"
    assert str(Retrying(message="hi")) == "Retrying('hi', type=RUNNING)"
    assert str(Retrying()) == "Retrying(type=RUNNING)"


def test_str_compares_the_name_with_the_type_ignoring_case() -> None:
    assert str(Completed(name="COMPLETED", message="hi")) == "COMPLETED('hi')"
    assert str(Completed(name="completed")) == "completed()"
    assert str(Failed(name="Test")) == "Test(type=FAILED)"


# --- copy ----------------------------------------------------------------------------


def test_copy_applies_updates_and_leaves_the_original_alone() -> None:
    data = {"rows": [1, 2]}
    state = Completed(message="done", data=data)
    copied = state.copy(update={"message": "copied"})
    assert copied.message == "copied"
    assert state.message == "done"
    assert copied.type is StateType.COMPLETED
    assert copied.timestamp == state.timestamp
    assert copied.data is data  # data is shared, not copied


def test_copy_has_its_own_state_details() -> None:
    state = Completed()
    copied = state.copy()
    copied.state_details.cache_key = "changed"
    assert state.state_details.cache_key is None
    assert copied == state.copy(update={"state_details": copied.state_details})


def test_model_copy_is_stamped_now_unless_given_a_timestamp() -> None:
    old = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    state = Completed(timestamp=old, message="done", data=[1])

    copied = state.model_copy()
    assert copied.timestamp > old
    assert (copied.type, copied.message, copied.data) == (StateType.COMPLETED, "done", [1])
    assert state.timestamp == old
    assert state.model_copy(update={"timestamp": old}).timestamp == old
    assert state.copy().timestamp == old  # ``copy`` keeps it


# --- equality ------------------------------------------------------------------------


def test_states_with_the_same_values_are_equal() -> None:
    when = _utcnow()
    state = Completed(timestamp=when, message="ok", data={"rows": 1})

    assert state == Completed(timestamp=when, message="ok", data={"rows": 1})
    assert state != Completed(timestamp=when, message="ok", data={"rows": 2})
    assert state != Completed(message="ok", data={"rows": 1})  # another timestamp
    assert state != Failed(timestamp=when, message="ok", data={"rows": 1})


def test_equality_compares_values_not_classes() -> None:
    class MyState(State[Any]):
        pass

    when = _utcnow()
    state = Completed(timestamp=when, data=1)
    assert state == Completed(cls=MyState, timestamp=when, data=1)
    assert state == Completed(cls=State[int], timestamp=when, data=1)
    assert state == state.model_dump()  # and a state equals its dump
    assert state != "Completed"


# --- JSON ----------------------------------------------------------------------------


def test_json_round_trip_of_plain_data() -> None:
    state = Completed(message="ok", data={"rows": [1, 2.5, "x", None, True]})
    restored = State.model_validate_json(state.model_dump_json())
    assert restored == state
    assert restored.timestamp.tzinfo is not None


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text().filter(lambda k: k != REFERENCE_TAG), children, max_size=4)
    ),
    max_leaves=12,
)


@given(data=_json_values, state_type=st.sampled_from(StateType), message=st.none() | st.text())
def test_json_round_trip_of_any_json_value(
    data: Any, state_type: StateType, message: str | None
) -> None:
    state = State(type=state_type, data=data, message=message)
    assert State.model_validate_json(state.model_dump_json()) == state


def test_a_reference_is_dumped_as_its_tagged_mapping(result_store) -> None:
    ref = result_store.create_result(42, key="answer")
    state = Completed(data=ref)
    assert json.loads(state.model_dump_json())["data"] == {REFERENCE_TAG: "fake", "key": "answer"}
    assert state.model_dump(mode="json")["data"] == {REFERENCE_TAG: "fake", "key": "answer"}
    assert state.model_dump()["data"] is ref  # python mode leaves data alone


def test_a_reference_mapping_is_loaded_back_as_a_live_reference(
    fake_references_installed,
) -> None:
    ref = fake_references_installed.create_result(42, key="answer")
    ref.write()

    restored = State.model_validate_json(Completed(data=ref).model_dump_json())

    assert restored.data is not ref
    assert restored.data.key == "answer"
    assert restored.result() == 42  # read from storage


def test_states_in_data_are_dumped_with_the_same_rules(fake_references_installed) -> None:
    ref = fake_references_installed.create_result("inner", key="k")
    state = Failed(data=[Completed(data=ref), Failed(message="boom")])

    dumped = json.loads(state.model_dump_json())

    assert [item["type"] for item in dumped["data"]] == ["COMPLETED", "FAILED"]
    assert dumped["data"][0]["data"] == {REFERENCE_TAG: "fake", "key": "k"}
    single = Failed(data=Completed(data=ref)).model_dump(mode="json")
    assert single["data"]["data"] == {REFERENCE_TAG: "fake", "key": "k"}


def test_an_unknown_reference_type_is_reported() -> None:
    payload = {"type": "COMPLETED", "data": {REFERENCE_TAG: "no-such-type", "key": "k"}}
    with pytest.raises(UnknownResultReference, match="no-such-type"):
        State.model_validate(payload)


def test_a_mapping_without_the_tag_stays_a_mapping() -> None:
    state = State.model_validate({"type": "COMPLETED", "data": {"key": "k"}})
    assert state.data == {"key": "k"}


# -- hashing and fresh copies (Prefect 3's State model) ------------------------------------


def test_states_hash_by_run_ids_timestamp_and_type() -> None:
    import uuid

    when = datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)
    run = uuid.uuid4()
    first = Completed(timestamp=when, data=1)
    first.state_details.flow_run_id = run
    same = Completed(timestamp=when, data=2, message="other message")
    same.state_details.flow_run_id = run
    assert hash(first) == hash(same)
    assert len({first, first.copy()}) == 1
    other_type = Failed(timestamp=when)
    other_type.state_details.flow_run_id = run
    assert hash(other_type) != hash(first)
    assert {first: "done"}[first] == "done"


def test_fresh_copy_is_the_same_state_entered_anew() -> None:
    old = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    state = Completed(timestamp=old, message="done", data=[1])
    fresh = state.fresh_copy()
    assert fresh.type is state.type and fresh.message == "done" and fresh.data == [1]
    assert fresh.timestamp > old
    assert fresh.state_details is not state.state_details
    fresh.state_details.cache_key = "changed"
    assert state.state_details.cache_key is None
    assert state.fresh_copy(update={"message": "again"}).message == "again"
