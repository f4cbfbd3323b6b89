"""Reading results and exceptions out of states, from sync and from async code."""

from __future__ import annotations

import re

import pytest

from states import (
    Cancelled,
    CancelledRun,
    Cancelling,
    Completed,
    Crashed,
    CrashedRun,
    Failed,
    FailedRun,
    MissingResult,
    Paused,
    PausedRun,
    Pending,
    Retrying,
    Running,
    Scheduled,
    State,
    UnfinishedRun,
    aget_state_result,
    get_state_exception,
    get_state_result,
    raise_state_exception,
)

MISSING_MESSAGE = (
    "State data is missing. Typically, this occurs when result persistence is "
    "disabled and the state has been retrieved from another process."
)

# --- get_state_result / State.result (sync) ----------------------------------------


def test_completed_state_returns_its_data() -> None:
    state = Completed(data={"answer": 42})
    assert state.result() == {"answer": 42}
    assert get_state_result(state, fetch=True) == {"answer": 42}


def test_a_reference_is_fetched(result_store) -> None:
    ref = result_store.create_result([1, 2, 3])
    assert Completed(data=ref).result() == [1, 2, 3]
    assert ref.retries == [True]


def test_retry_result_failure_is_passed_to_the_reference(result_store) -> None:
    ref = result_store.create_result("value")
    assert get_state_result(Completed(data=ref), retry_result_failure=False) == "value"
    assert ref.retries == [False]


def test_fetch_false_returns_data_unfetched_and_unchecked(result_store) -> None:
    ref = result_store.create_result("value")
    assert get_state_result(Completed(data=ref), fetch=False) is ref
    assert Completed(data=ref).result(fetch=False) is ref
    assert ref.retries == []
    assert Running(data="partial").result(fetch=False) == "partial"


def test_completed_state_without_data_is_missing_its_result() -> None:
    with pytest.raises(MissingResult) as info:
        Completed().result()
    assert str(info.value) == MISSING_MESSAGE


def test_paused_state_has_no_result_yet() -> None:
    state = Paused()
    with pytest.raises(PausedRun) as info:
        state.result()
    assert str(info.value) == "Run is paused, its result is not available."
    assert info.value.state is state


@pytest.mark.parametrize(
    ("state", "type_name"),
    [
        (Scheduled(), "SCHEDULED"),
        (Pending(), "PENDING"),
        (Running(), "RUNNING"),
        (Retrying(), "RUNNING"),
        (Cancelling(), "CANCELLING"),
    ],
)
def test_unfinished_state_has_no_result_yet(state: State[object], type_name: str) -> None:
    with pytest.raises(UnfinishedRun) as info:
        state.result()
    assert str(info.value) == f"Run is in {type_name} state, its result is not available."


def test_failed_state_raises_its_exception() -> None:
    error = ValueError("boom")
    with pytest.raises(ValueError) as info:
        Failed(data=error).result()
    assert info.value is error


@pytest.mark.parametrize(
    ("state", "wrapper", "message"),
    [
        (Failed(), FailedRun, "Run failed."),
        (Crashed(), CrashedRun, "Run crashed."),
        (Cancelled(), CancelledRun, "Run cancelled."),
        (Failed(message="it broke"), FailedRun, "it broke"),
    ],
)
def test_unsuccessful_state_without_data_raises_a_wrapper(
    state: State[object], wrapper: type[Exception], message: str
) -> None:
    with pytest.raises(wrapper, match=f"^{re.escape(message)}$"):
        state.result()


def test_raise_on_failure_false_returns_the_exception() -> None:
    error = ValueError("boom")
    assert Failed(data=error).result(raise_on_failure=False) is error
    returned = Crashed(message="lost").result(raise_on_failure=False)
    assert isinstance(returned, CrashedRun)
    assert str(returned) == "lost"


def test_raise_on_failure_false_fetches_a_stored_exception(result_store) -> None:
    error = ValueError("stored")
    ref = result_store.create_result(error)
    state = Failed(data=ref)
    assert state.result(raise_on_failure=False, retry_result_failure=False) is error
    assert ref.retries == [False]


def test_a_stored_exception_is_always_fetched_with_retries(result_store) -> None:
    error = ValueError("stored")
    ref = result_store.create_result(error)
    with pytest.raises(ValueError, match="stored"):
        Failed(data=ref).result(retry_result_failure=False)
    assert ref.retries == [True]


# --- aget_state_result / State.aresult (async) ---------------------------------------


@pytest.mark.anyio
async def test_aresult_fetches_a_reference(result_store) -> None:
    ref = result_store.create_result("value")
    assert await Completed(data=ref).aresult() == "value"
    assert await Completed(data=ref).aresult(retry_result_failure=False) == "value"
    assert ref.retries == [True, False]


@pytest.mark.anyio
async def test_aget_state_result_follows_the_same_rules() -> None:
    assert await aget_state_result(Completed(data=1)) == 1
    with pytest.raises(UnfinishedRun):
        await aget_state_result(Running())
    with pytest.raises(PausedRun):
        await aget_state_result(Paused())
    with pytest.raises(MissingResult):
        await aget_state_result(Completed())
    with pytest.raises(FailedRun, match=r"^Run failed\.$"):
        await aget_state_result(Failed())
    returned = await aget_state_result(Cancelled(), raise_on_failure=False)
    assert isinstance(returned, CancelledRun)


# --- State.result / get_state_result in async code (the reference's fetch rules) -------

NOT_AWAITED_WARNING = r"^State\.result\(\) was called from an async context but not awaited\."


@pytest.mark.anyio
async def test_in_async_code_fetch_true_returns_an_awaitable(result_store) -> None:
    ref = result_store.create_result("value")
    state = Completed(data=ref)

    assert await state.result(fetch=True) == "value"
    assert await get_state_result(state, fetch=True, retry_result_failure=False) == "value"
    assert ref.retries == [True, False]  # read with the reference's ``aget``
    with pytest.raises(ValueError, match="boom"):
        await Failed(data=ValueError("boom")).result(fetch=True)
    with pytest.raises(UnfinishedRun):
        await Running().result(fetch=True)
    assert isinstance(await Failed().result(raise_on_failure=False, fetch=True), FailedRun)


@pytest.mark.anyio
async def test_in_async_code_the_default_returns_data_unfetched_with_a_warning(
    result_store,
) -> None:
    ref = result_store.create_result("value")
    state = Completed(data=ref)

    with pytest.warns(DeprecationWarning, match=NOT_AWAITED_WARNING) as caught:
        assert state.result() is ref
    assert caught[0].filename == __file__  # the warning points at the caller
    with pytest.warns(DeprecationWarning, match=NOT_AWAITED_WARNING):
        assert get_state_result(Failed(data="not raised")) == "not raised"
    assert ref.retries == []


@pytest.mark.anyio
async def test_in_async_code_fetch_false_returns_data_without_a_warning(result_store) -> None:
    import warnings

    ref = result_store.create_result("value")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Completed(data=ref).result(fetch=False) is ref


@pytest.mark.anyio
@pytest.mark.parametrize(
    "variable", ["STATES_ASYNC_FETCH_STATE_RESULT", "PREFECT_ASYNC_FETCH_STATE_RESULT"]
)
async def test_the_async_fetch_opt_in_makes_the_default_awaitable(
    result_store, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "true")
    ref = result_store.create_result("value")
    assert await Completed(data=ref).result() == "value"
    assert await get_state_result(Completed(data=ref)) == "value"


@pytest.mark.anyio
async def test_a_misspelled_async_fetch_setting_is_an_error_naming_it(
    result_store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATES_ASYNC_FETCH_STATE_RESULT", "ture")
    ref = result_store.create_result("value")
    with pytest.raises(ValueError, match=r"^STATES_ASYNC_FETCH_STATE_RESULT='ture' is not true"):
        Completed(data=ref).result()


@pytest.mark.anyio
async def test_a_worker_thread_of_async_code_fetches_synchronously(result_store) -> None:
    import anyio.to_thread

    ref = result_store.create_result("value")
    assert await anyio.to_thread.run_sync(Completed(data=ref).result) == "value"
    assert ref.retries == [True]


# --- get_state_exception ------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "wrapper", "message"),
    [
        (Failed(), FailedRun, "Run failed."),
        (Crashed(), CrashedRun, "Run crashed."),
        (Cancelled(), CancelledRun, "Run cancelled."),
        (Crashed(message="from message"), CrashedRun, "from message"),
        (Cancelled(message="ignored", data="from data"), CancelledRun, "from data"),
    ],
)
def test_wrapper_exceptions(state: State[object], wrapper: type[Exception], message: str) -> None:
    exc = get_state_exception(state)
    assert type(exc) is wrapper
    assert str(exc) == message


def test_an_exception_in_data_is_returned_as_is() -> None:
    error = KeyboardInterrupt()  # any BaseException
    assert get_state_exception(Crashed(data=error)) is error


def test_an_inner_state_gives_its_exception() -> None:
    exc = get_state_exception(Failed(data=Crashed(message="inner")))
    assert type(exc) is CrashedRun
    assert str(exc) == "inner"


def test_an_iterable_of_states_gives_the_first_unsuccessful_exception() -> None:
    states = [Completed(), Cancelled(message="first"), Failed(message="second")]
    exc = get_state_exception(Failed(data=states))
    assert type(exc) is CancelledRun
    assert str(exc) == "first"


def test_an_iterable_of_successful_states_is_an_error() -> None:
    with pytest.raises(ValueError) as info:
        get_state_exception(Failed(data=(Completed(), Completed())))
    assert str(info.value) == "Failed state result was an iterable of states but none were failed."


def test_unresolvable_data_is_a_type_error() -> None:
    with pytest.raises(TypeError) as info:
        get_state_exception(Failed(data=42))
    assert str(info.value) == (
        "Unexpected result for failed state: 42 —— int cannot be resolved into an exception"
    )


def test_a_successful_state_has_no_exception() -> None:
    state = Completed(data=1)
    with pytest.raises(ValueError) as info:
        get_state_exception(state)
    assert str(info.value) == f"Expected failed or crashed state got {state!r}."


def test_a_stored_exception_is_fetched(result_store) -> None:
    error = RuntimeError("stored")
    ref = result_store.create_result(error)
    assert get_state_exception(Failed(data=ref)) is error
    assert ref.retries == [True]


@pytest.mark.anyio
async def test_get_state_exception_is_awaited_in_async_code(result_store) -> None:
    ref = result_store.create_result(RuntimeError("stored"))
    exc = await get_state_exception(Failed(data=ref))
    assert str(exc) == "stored"
    wrapped = await get_state_exception(Failed(message="m"))
    assert type(wrapped) is FailedRun
    with pytest.raises(ValueError, match=r"^Expected failed or crashed state got"):
        await get_state_exception(Running())


# --- raise_state_exception ----------------------------------------------------------


def test_raise_state_exception_raises_for_unsuccessful_states() -> None:
    with pytest.raises(FailedRun, match=r"^nope$"):
        raise_state_exception(Failed(message="nope"))
    with pytest.raises(CrashedRun):
        raise_state_exception(Crashed())
    with pytest.raises(CancelledRun):
        raise_state_exception(Cancelled())


@pytest.mark.parametrize("state", [Completed(data=1), Running(), Paused(), Scheduled()])
def test_raise_state_exception_does_nothing_otherwise(state: State[object]) -> None:
    assert raise_state_exception(state) is None


@pytest.mark.anyio
async def test_raise_state_exception_is_awaited_in_async_code() -> None:
    error = ValueError("boom")
    with pytest.raises(ValueError) as info:
        await raise_state_exception(Failed(data=error))
    assert info.value is error
    assert await raise_state_exception(Completed()) is None
