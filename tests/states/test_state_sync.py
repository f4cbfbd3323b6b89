"""`states`' sync helpers run without an event loop, reading references with ``get``.

`states` owns no event loop: from sync code its helpers read a ResultReference
through the protocol's sync method, and whatever that needs (resultstore's
private loops) is the reference's business.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest

from states import Completed, Failed, get_state_exception, get_state_result, raise_state_exception
from states._sync import read_result, run_without_loop, sync_compatible


class SyncOnlyReference:
    """A reference whose async methods must not be used by sync callers."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.calls: list[str] = []

    def get(self, *, retry: bool = True) -> Any:
        self.calls.append(f"get(retry={retry})")
        return self.value

    async def aget(self, *, retry: bool = True) -> Any:
        self.calls.append(f"aget(retry={retry})")
        return self.value

    def write(self) -> None:
        pass

    async def awrite(self) -> None:
        pass

    def to_reference(self) -> dict[str, Any]:
        return {"__result_ref__": "sync-only"}


def test_sync_reads_use_the_references_get_and_async_reads_its_aget() -> None:
    ref = SyncOnlyReference("value")
    assert get_state_result(Completed(data=ref), retry_result_failure=False) == "value"
    error = ValueError("boom")
    failed = Failed(data=SyncOnlyReference(error))
    assert get_state_exception(failed) is error
    assert ref.calls == ["get(retry=False)"]
    assert failed.data.calls == ["get(retry=True)"]

    import asyncio

    async def in_async_code() -> Any:
        return await Completed(data=ref).aresult(), await get_state_exception(failed)

    assert asyncio.run(in_async_code()) == ("value", error)
    assert ref.calls[-1] == "aget(retry=True)" and failed.data.calls[-1] == "aget(retry=True)"


def test_sync_helpers_forced_sync_inside_a_running_loop_still_use_get() -> None:
    import asyncio

    failed = Failed(data=SyncOnlyReference(ValueError("boom")))

    async def in_async_code() -> None:
        with pytest.raises(ValueError, match="boom"):
            raise_state_exception(failed, _sync=True)
        assert isinstance(get_state_exception(failed, _sync=True), ValueError)
        assert isinstance(await get_state_exception.aio(failed), ValueError)  # type: ignore[attr-defined]

    asyncio.run(in_async_code())
    assert failed.data.calls == ["get(retry=True)", "get(retry=True)", "aget(retry=True)"]


def test_a_sync_state_result_imports_no_asyncio() -> None:
    code = textwrap.dedent(
        """
        import sys
        from states import Completed, Failed, get_state_exception

        class Ref:
            def get(self, *, retry=True):
                return 42
            async def aget(self, *, retry=True):
                return 42
            def write(self): pass
            async def awrite(self): pass
            def to_reference(self): return {"__result_ref__": "x"}

        assert Completed(data=Ref()).result() == 42
        assert str(get_state_exception(Failed(message="m"))) == "m"
        print("asyncio" in sys.modules)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_a_coroutine_that_waits_for_anything_else_is_refused() -> None:
    import asyncio

    async def sleeps() -> None:
        await asyncio.sleep(0)

    with pytest.raises(RuntimeError, match="other than a result reference"):
        run_without_loop(sleeps())

    @sync_compatible
    async def reads(ref: SyncOnlyReference) -> Any:
        return await read_result(ref)  # type: ignore[arg-type]

    assert reads(SyncOnlyReference(7)) == 7
