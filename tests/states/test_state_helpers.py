"""Helpers: formatting exceptions, grouping states, and turning outcomes into states."""

from __future__ import annotations

import asyncio
import datetime
import logging
import sys
import types
import uuid
from typing import Any

import pytest

from states import (
    Cancelled,
    Completed,
    Crashed,
    Failed,
    FailedRun,
    Paused,
    Pending,
    Running,
    Scheduled,
    State,
    StateGroup,
    StateType,
    TerminationSignal,
    exception_to_crashed_state,
    exception_to_failed_state,
    format_exception,
    is_state_iterable,
    return_value_to_state,
)

PERSIST_WARNING = (
    "Encountered an error while persisting result: disk full Execution will continue, "
    "but the result has not been persisted"
)
WRITE_WARNING = (
    "Failed to write result: disk full Execution will continue, but the result has not been written"
)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "states" and r.levelname == "WARNING"
    ]


def _upstream(state: State[Any]) -> State[Any]:
    """Mark ``state`` as coming from another run (it has a task run id)."""
    state.state_details.task_run_id = uuid.uuid4()
    return state


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


# --- format_exception ----------------------------------------------------------------


def test_format_exception_without_traceback_is_one_line() -> None:
    assert format_exception(ValueError("boom")) == "ValueError: boom"
    assert format_exception(KeyError("k")) == "KeyError: 'k'"
    assert format_exception(RuntimeError()) == "RuntimeError: "  # the reference's form


class QuotaExceeded(Exception):
    """An exception class of the caller's own, defined outside the standard library."""


def test_format_exception_names_the_class_without_its_module() -> None:
    assert QuotaExceeded.__module__ != "builtins"
    assert format_exception(QuotaExceeded("over by 3")) == "QuotaExceeded: over by 3"


def test_format_exception_ignores_chained_exceptions_without_traceback() -> None:
    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise ValueError("outer") from inner
    except ValueError as exc:
        assert format_exception(exc) == "ValueError: outer"


def test_format_exception_with_traceback_is_the_full_traceback() -> None:
    exc = _raised(ValueError("boom"))
    formatted = format_exception(exc, exc.__traceback__)
    assert formatted.startswith("Traceback (most recent call last):\n")
    assert "in _raised" in formatted
    assert formatted.endswith("ValueError: boom\n")


def test_format_exception_shortens_this_package_s_exceptions() -> None:
    assert format_exception(FailedRun("x")) == "FailedRun: x"


# --- is_state_iterable ---------------------------------------------------------------


@pytest.mark.parametrize(
    "obj",
    [[Completed()], (Completed(), Failed()), {Completed(), Failed()}],
)
def test_lists_tuples_and_sets_of_states_are_state_iterables(obj: Any) -> None:
    assert is_state_iterable(obj) is True


@pytest.mark.parametrize(
    "obj",
    [
        [],
        (),
        Completed(),
        [Completed(), 1],
        {"a": Completed()},
        (state for state in [Completed()]),
        "states",
        None,
    ],
)
def test_other_objects_are_not_state_iterables(obj: Any) -> None:
    assert is_state_iterable(obj) is False


# --- StateGroup ----------------------------------------------------------------------


def test_state_group_counts() -> None:
    group = StateGroup(
        [Running(), Completed(), Completed(), Failed(), Crashed(), Cancelled(), Paused()]
    )
    assert group.total_count == 7
    assert group.type_counts[StateType.COMPLETED] == 2
    assert group.type_counts[StateType.SCHEDULED] == 0
    assert group.cancelled_count == 1
    assert group.paused_count == 1
    assert group.fail_count == 2  # failed + crashed
    assert group.final_count == 5
    assert group.not_final_count == 2


def test_state_group_predicates() -> None:
    done = StateGroup([Completed(), Completed()])
    assert done.all_completed() and done.all_final()
    assert not (done.any_cancelled() or done.any_failed() or done.any_paused())

    mixed = StateGroup([Completed(), Crashed(), Cancelled(), Paused()])
    assert not mixed.all_completed()
    assert mixed.any_failed() and mixed.any_cancelled() and mixed.any_paused()
    assert not mixed.all_final()


def test_state_group_accepts_any_iterable() -> None:
    assert StateGroup(state for state in [Completed(), Failed()]).total_count == 2


def test_counts_message_and_repr() -> None:
    group = StateGroup([Running(), Completed(), Completed()])
    assert group.counts_message() == "total=3, not_final=1, 'RUNNING'=1, 'COMPLETED'=2"
    assert repr(group) == "StateGroup<total=3, not_final=1, 'RUNNING'=1, 'COMPLETED'=2>"
    assert StateGroup([Failed()]).counts_message() == "total=1, 'FAILED'=1"


# --- exception_to_crashed_state ------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (asyncio.CancelledError(), "Execution was cancelled by the runtime environment."),
        (KeyboardInterrupt(), "Execution was aborted by an interrupt signal."),
        (TerminationSignal(15), "Execution was aborted by a termination signal."),
        (SystemExit(1), "Execution was aborted by Python system exit call."),
        (
            ValueError("boom"),
            "Execution was interrupted by an unexpected exception: ValueError: boom",
        ),
    ],
)
async def test_crashed_state_message_says_what_stopped_the_run(
    exc: BaseException, message: str
) -> None:
    state = await exception_to_crashed_state(exc)
    assert state.is_crashed()
    assert state.message == message
    assert state.data is exc


@pytest.mark.anyio
async def test_crashed_state_wraps_the_exception_without_writing(result_store) -> None:
    exc = ValueError("boom")
    state = await exception_to_crashed_state(exc, result_store=result_store)
    assert state.data.value is exc
    assert result_store.created == [(exc, None, None)]
    assert result_store.write_attempts == 0


def _fake_httpx() -> types.ModuleType:
    """Just enough of httpx for the branch that reports failed requests."""
    module = types.ModuleType("httpx")

    class _RequestError(Exception):
        def __init__(self, message: str, request: Any = None) -> None:
            super().__init__(message)
            self._request = request

        @property
        def request(self) -> Any:
            if self._request is None:
                raise RuntimeError("The .request property has not been set.")
            return self._request

    timeout = type("TimeoutException", (_RequestError,), {"__module__": "httpx"})
    connect = type("ConnectError", (_RequestError,), {"__module__": "httpx"})
    module.TimeoutException = timeout  # type: ignore[attr-defined]
    module.ConnectError = connect  # type: ignore[attr-defined]
    return module


@pytest.mark.anyio
async def test_crashed_state_reports_failed_requests_when_httpx_is_in_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    httpx = _fake_httpx()
    monkeypatch.setitem(sys.modules, "httpx", httpx)
    request = types.SimpleNamespace(url="https://api.example.com/runs")

    with_request = await exception_to_crashed_state(httpx.TimeoutException("timed out", request))
    without_request = await exception_to_crashed_state(httpx.ConnectError("refused"))

    assert with_request.message == (
        "Request to https://api.example.com/runs failed: TimeoutException: timed out."
    )
    assert without_request.message == (
        "Request failed while attempting to contact the server: ConnectError: refused"
    )


@pytest.mark.anyio
async def test_crashed_state_never_imports_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "httpx", raising=False)
    state = await exception_to_crashed_state(OSError("network down"))
    assert state.message == (
        "Execution was interrupted by an unexpected exception: OSError: network down"
    )
    assert "httpx" not in sys.modules


# --- exception_to_failed_state -------------------------------------------------------


@pytest.mark.anyio
async def test_failed_state_from_an_exception() -> None:
    exc = ValueError("boom")
    state = await exception_to_failed_state(exc)
    assert state.is_failed()
    assert state.message == "ValueError: boom"
    assert state.data is exc
    assert state.state_details.retriable is False


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Task failed.", "Task failed. ValueError: boom"),
        ("Task failed: ", "Task failed: ValueError: boom"),
        ("", "ValueError: boom"),
        (None, "ValueError: boom"),
    ],
)
async def test_failed_state_message_is_prefixed(message: str | None, expected: str) -> None:
    state = await exception_to_failed_state(ValueError("boom"), message=message)
    assert state.message == expected


@pytest.mark.anyio
async def test_failed_state_message_names_the_exception_class_only() -> None:
    state = await exception_to_failed_state(QuotaExceeded("over by 3"), message="Task failed.")
    assert state.message == "Task failed. QuotaExceeded: over by 3"
    crashed = await exception_to_crashed_state(QuotaExceeded("over by 3"))
    assert crashed.message == (
        "Execution was interrupted by an unexpected exception: QuotaExceeded: over by 3"
    )


@pytest.mark.anyio
async def test_failed_state_passes_other_arguments_to_failed() -> None:
    state = await exception_to_failed_state(ValueError("boom"), name="TimedOut")
    assert (state.type, state.name) == (StateType.FAILED, "TimedOut")


@pytest.mark.anyio
async def test_failed_state_uses_the_exception_being_handled() -> None:
    try:
        raise KeyError("missing")
    except KeyError as exc:
        state = await exception_to_failed_state()
        assert state.data is exc
    assert state.message == "KeyError: 'missing'"


@pytest.mark.anyio
async def test_failed_state_needs_an_exception() -> None:
    with pytest.raises(ValueError) as info:
        await exception_to_failed_state()
    assert str(info.value) == "Exception was not passed and no active exception could be found."


@pytest.mark.anyio
@pytest.mark.parametrize(("write_result", "writes"), [(False, 0), (True, 1)])
async def test_failed_state_stores_the_exception(
    result_store, write_result: bool, writes: int
) -> None:
    exc = ValueError("boom")
    state = await exception_to_failed_state(
        exc, result_store=result_store, write_result=write_result
    )
    assert state.data.value is exc
    assert result_store.created == [(exc, None, None)]
    assert result_store.writes == writes


@pytest.mark.anyio
async def test_failed_state_survives_a_failed_write(
    failing_store, caplog: pytest.LogCaptureFixture
) -> None:
    exc = ValueError("boom")
    with caplog.at_level(logging.WARNING, logger="states"):
        state = await exception_to_failed_state(exc, result_store=failing_store, write_result=True)
    assert state.is_failed()
    assert state.data.value is exc
    assert failing_store.write_attempts == 1
    assert _warnings(caplog) == [WRITE_WARNING]


# --- return_value_to_state: plain values ---------------------------------------------


@pytest.mark.anyio
async def test_a_returned_value_completes_the_run(result_store) -> None:
    expiration = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    state = await return_value_to_state(
        {"answer": 42}, result_store, key="my-key", expiration=expiration
    )
    assert state.is_completed()
    assert state.message is None
    assert state.data.value == {"answer": 42}
    assert state.data.key == "my-key"
    assert result_store.created == [({"answer": 42}, "my-key", expiration)]
    assert result_store.write_attempts == 0
    assert await state.aresult() == {"answer": 42}


@pytest.mark.anyio
async def test_write_result_writes_the_value(result_store) -> None:
    state = await return_value_to_state(7, result_store, key="k", write_result=True)
    assert result_store.storage == {"k": 7}
    assert state.data.key == "k"


@pytest.mark.anyio
async def test_a_returned_generator_becomes_a_list(result_store) -> None:
    state = await return_value_to_state((i * i for i in range(3)), result_store)
    assert state.data.value == [0, 1, 4]


@pytest.mark.anyio
async def test_a_returned_reference_is_used_directly(result_store) -> None:
    ref = result_store.create_result("already stored")
    result_store.created.clear()
    state = await return_value_to_state(ref, result_store, write_result=True)
    assert state.is_completed()
    assert state.data is ref
    assert result_store.created == []
    assert result_store.write_attempts == 0


@pytest.mark.anyio
@pytest.mark.parametrize("retval", [[], [Completed(), "not a state"], {"a": Failed()}])
async def test_collections_that_are_not_state_iterables_are_plain_data(
    result_store, retval: Any
) -> None:
    state = await return_value_to_state(retval, result_store)
    assert state.is_completed()
    assert state.data.value is retval


@pytest.mark.anyio
async def test_a_failed_write_is_logged_and_the_run_continues(
    failing_store, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="states"):
        state = await return_value_to_state(1, failing_store, write_result=True)
    assert state.is_completed()
    assert state.data.value == 1
    assert failing_store.write_attempts == 1
    assert _warnings(caplog) == [PERSIST_WARNING]


# --- return_value_to_state: manually created states ----------------------------------


@pytest.mark.anyio
async def test_a_manual_state_is_used_as_given_with_its_data_stored(result_store) -> None:
    manual = Failed(message="gave up", data="details")
    state = await return_value_to_state(manual, result_store, key="k", write_result=True)
    assert state is manual
    assert state.message == "gave up"
    assert state.data.value == "details"
    assert result_store.storage == {"k": "details"}


@pytest.mark.anyio
async def test_a_manual_state_without_data_stores_none(result_store) -> None:
    state = await return_value_to_state(Completed(), result_store)
    assert state.data.value is None
    assert result_store.created == [(None, None, None)]


@pytest.mark.anyio
async def test_a_manual_state_with_a_reference_is_left_alone(result_store) -> None:
    ref = result_store.create_result("stored")
    result_store.created.clear()
    manual = Completed(data=ref)
    state = await return_value_to_state(manual, result_store)
    assert state is manual
    assert state.data is ref
    assert result_store.created == []


@pytest.mark.anyio
async def test_a_manual_state_write_failure_is_logged(
    failing_store, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="states"):
        state = await return_value_to_state(Completed(data=1), failing_store, write_result=True)
    assert state.is_completed()
    assert _warnings(caplog) == [PERSIST_WARNING]


# --- return_value_to_state: the aggregate rule ---------------------------------------


@pytest.mark.anyio
async def test_a_single_upstream_state_is_aggregated(result_store) -> None:
    upstream = _upstream(Completed(data=1))
    state = await return_value_to_state(upstream, result_store)
    assert state is not upstream
    assert state.is_completed()
    assert state.message == "All states completed."
    assert state.data.value is upstream


@pytest.mark.anyio
async def test_a_flow_run_id_also_marks_an_upstream_state(result_store) -> None:
    upstream = Failed(state_details={"flow_run_id": uuid.uuid4()})
    state = await return_value_to_state(upstream, result_store)
    assert state is not upstream
    assert (state.type, state.message) == (StateType.FAILED, "1/1 states failed.")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("states", "state_type", "message"),
    [
        ([Completed(), Completed()], StateType.COMPLETED, "All states completed."),
        ((Completed(), Completed()), StateType.COMPLETED, "All states completed."),
        ([Completed(), Cancelled(), Failed()], StateType.CANCELLED, "1/3 states cancelled."),
        ([Completed(), Paused(), Failed()], StateType.PAUSED, "1/3 states paused."),
        ([Completed(), Failed(), Crashed()], StateType.FAILED, "2/3 states failed."),
        ([Completed(), Running(), Pending()], StateType.FAILED, "2/3 states are not final."),
        ([Scheduled()], StateType.FAILED, "1/1 states are not final."),
    ],
)
async def test_the_aggregate_rule(
    result_store,
    states: list[State[Any]] | tuple[State[Any], ...],
    state_type: StateType,
    message: str,
) -> None:
    state = await return_value_to_state(states, result_store, key="agg", write_result=True)
    assert state.type is state_type
    assert state.message == message
    assert state.data.value is states
    assert result_store.storage == {"agg": states}


@pytest.mark.anyio
async def test_an_aggregate_write_failure_is_logged(
    failing_store, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="states"):
        state = await return_value_to_state([Completed()], failing_store, write_result=True)
    assert state.is_completed()
    assert _warnings(caplog) == [PERSIST_WARNING]


@pytest.mark.anyio
async def test_an_aggregated_failure_raises_the_first_failure(result_store) -> None:
    states = [Completed(), Failed(data=ValueError("first")), Failed(message="second")]
    state = await return_value_to_state(states, result_store)
    with pytest.raises(ValueError, match=r"^first$"):
        await state.aresult()


# --- result stores whose create_result is a coroutine (as the reference's are) -------


class AsyncFactory:
    """A result store in the reference's style: ``await store.create_result(obj)``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def create_result(
        self, obj: Any, key: str | None = None, expiration: datetime.datetime | None = None
    ) -> Any:
        return self.inner.create_result(obj, key=key, expiration=expiration)


@pytest.mark.anyio
async def test_an_async_create_result_is_awaited(result_store) -> None:
    store: Any = AsyncFactory(result_store)

    completed = await return_value_to_state(3, store, key="three", write_result=True)
    manual = await return_value_to_state(Failed(data="why"), store)
    aggregate = await return_value_to_state([Completed()], store)
    failed = await exception_to_failed_state(ValueError("boom"), result_store=store)
    crashed = await exception_to_crashed_state(KeyboardInterrupt(), result_store=store)

    assert result_store.storage == {"three": 3}
    assert await completed.aresult() == 3
    assert manual.data.value == "why"
    assert aggregate.is_completed() and aggregate.data.value[0].is_completed()
    assert isinstance(failed.data.value, ValueError)
    assert isinstance(crashed.data.value, KeyboardInterrupt)
