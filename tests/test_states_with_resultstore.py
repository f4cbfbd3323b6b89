"""`states` and `resultstore` together: results persisted by one process, fetched by another."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import anyio
import pytest

from resultstore import PersistedResult, ResultNotFoundError, ResultStore, RetryPolicy
from states import (
    Completed,
    Failed,
    State,
    aget_state_result,
    exception_to_failed_state,
    get_state_result,
    return_value_to_state,
)

FETCH_IN_CHILD = textwrap.dedent(
    """
    import json, sys
    from states import State, get_state_result
    state = State.model_validate_json(sys.stdin.read())
    value = get_state_result(state)
    print(json.dumps({"value": value, "ref": type(state.data).__name__}))
    """
)


def _child_fetch(state_json: str, allowed: str) -> dict[str, object]:
    """Fetch in a fresh interpreter whose only setting allows references into ``allowed``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESULTSTORE_")}
    env["RESULTSTORE_REFERENCE_URLS"] = allowed
    done = subprocess.run(
        [sys.executable, "-c", FETCH_IN_CHILD],
        input=state_json,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_state_json_carries_only_the_reference(tmp_path: Path) -> None:
    store = ResultStore(f"file://{tmp_path}")
    state = anyio.run(lambda: return_value_to_state({"rows": 3}, store, write_result=True))

    payload = json.loads(state.model_dump_json())

    assert payload["type"] == "COMPLETED"
    assert payload["data"] == {
        "__result_ref__": "persisted",
        "storage_url": tmp_path.as_uri(),
        "key": state.data.key,
        "serializer": "pickle",
        "expiration": None,
    }


def test_a_second_process_fetches_the_result_from_the_state_json(tmp_path: Path) -> None:
    store = ResultStore(f"file://{tmp_path}")
    state = anyio.run(
        lambda: return_value_to_state([1, 2, {"three": 3}], store, key="run/1", write_result=True)
    )

    fetched = _child_fetch(state.model_dump_json(), allowed=tmp_path.as_uri())

    assert fetched == {"value": [1, 2, {"three": 3}], "ref": "PersistedResult"}


def test_a_result_written_late_is_fetched_as_soon_as_it_lands(tmp_path: Path) -> None:
    store = ResultStore(f"file://{tmp_path}")
    result = store.create_result("worth the wait", key="late/1")
    state_json = Completed(data=result).model_dump_json()

    writer = threading.Timer(1.0, result.write)
    writer.start()
    started = time.monotonic()
    try:
        fetched = _child_fetch(state_json, allowed=tmp_path.as_uri())
    finally:
        writer.join()

    assert fetched["value"] == "worth the wait"
    assert time.monotonic() - started < 6


@pytest.mark.serial
def test_retry_result_failure_false_reads_once_and_names_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESULTSTORE_REFERENCE_URLS", tmp_path.as_uri())
    reader = State.model_validate_json(
        Completed(
            data=PersistedResult(storage_url=tmp_path.as_uri(), key="never/written")
        ).model_dump_json()
    )

    started = time.monotonic()
    with pytest.raises(ResultNotFoundError, match="'never/written'") as caught:
        get_state_result(reader, retry_result_failure=False)

    assert time.monotonic() - started < 0.5
    assert tmp_path.as_uri() in str(caught.value)


def test_retried_fetch_gives_up_naming_key_url_and_attempts(tmp_path: Path) -> None:
    store = ResultStore(f"file://{tmp_path}", retry=RetryPolicy(attempts=3, delay=0.01))
    state = Completed(data=PersistedResult(tmp_path.as_uri(), "missing", result_store=store))

    with pytest.raises(ResultNotFoundError) as caught:
        get_state_result(state)

    message = str(caught.value)
    assert "'missing'" in message
    assert tmp_path.as_uri() in message
    assert "gave up after 3 attempts" in message


def test_failed_state_exception_is_persisted_and_raised_by_the_reader(tmp_path: Path) -> None:
    store = ResultStore(f"file://{tmp_path}").use_for_references()

    async def fail() -> State[object]:
        try:
            raise ValueError("bad input row 7")
        except ValueError as exc:
            return await exception_to_failed_state(exc, result_store=store, write_result=True)

    state = anyio.run(fail)
    received = State.model_validate_json(state.model_dump_json())

    assert received.message == "ValueError: bad input row 7"
    with pytest.raises(ValueError, match="bad input row 7"):
        get_state_result(received)
    error = get_state_result(received, raise_on_failure=False)
    assert isinstance(error, ValueError)


def test_async_fetch_of_a_persisted_result(tmp_path: Path) -> None:
    store = ResultStore(f"file://{tmp_path}").use_for_references()

    async def main() -> object:
        state = await return_value_to_state(41, store, write_result=True)
        received = State.model_validate_json(state.model_dump_json())
        assert not received.data.has_value
        return await aget_state_result(received)

    assert anyio.run(main) == 41


def test_failed_state_built_by_hand_keeps_plain_data() -> None:
    state = Failed(message="gone wrong")
    assert get_state_result(state, raise_on_failure=False).args == ("gone wrong",)
