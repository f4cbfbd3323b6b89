"""The sync bridge (``resultstore._loops.run_sync``): a private event loop per thread.

Moved here from the `states` tests with the bridge itself: `states` drives its
helpers without any event loop and reads results through the references' sync
methods, which resultstore implements with this bridge.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading

from resultstore._loops import _local, in_async_context, on_private_loop, run_sync


async def answer() -> int:
    return 42


def test_sync_calls_of_one_thread_share_its_private_loop() -> None:
    async def loop_and_flags() -> tuple[asyncio.AbstractEventLoop, bool, bool]:
        return asyncio.get_running_loop(), in_async_context(), on_private_loop()

    first, inside, private = run_sync(loop_and_flags())
    second, _, _ = run_sync(loop_and_flags())
    assert first is second and inside and private
    assert not in_async_context() and not on_private_loop()

    seen: list[asyncio.AbstractEventLoop] = []
    thread = threading.Thread(target=lambda: seen.append(run_sync(loop_and_flags())[0]))
    thread.start()
    thread.join()
    assert seen[0] is not first  # another thread, another private loop


def test_a_sync_call_inside_a_running_loop_runs_on_a_worker_thread() -> None:
    async def caller() -> tuple[int, bool]:
        here = threading.get_ident()

        async def where() -> tuple[int, bool]:
            return threading.get_ident(), on_private_loop()

        elsewhere, private = run_sync(where())  # blocks this loop, as any sync call does
        return int(elsewhere != here), private and not on_private_loop()

    assert asyncio.run(caller()) == (1, True)


def test_the_first_sync_calls_of_many_threads_at_once_all_work() -> None:
    """A fresh interpreter whose threads all make their first sync call together.

    One thread imports asyncio while the others look for a running loop: they must
    wait for that import, never see a half-initialised module.
    """
    code = textwrap.dedent(
        """
        import threading
        from resultstore._loops import run_sync

        async def answer():
            return 42

        errors, start = [], threading.Barrier(32)

        def call():
            start.wait()
            try:
                assert run_sync(answer()) == 42
            except Exception as exc:
                errors.append(repr(exc))

        threads = [threading.Thread(target=call) for _ in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        print(len(errors), errors[:1])
        """
    )
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "0 []"


def test_a_forked_child_runs_sync_calls_on_a_loop_of_its_own() -> None:
    """After fork the parent's private loop (its selector shared with the parent) is set aside."""
    assert run_sync(answer()) == 42  # this thread now has a private loop
    parent_loop = _local.holder.loop
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's cleanup
        ok = run_sync(answer()) == 42 and _local.holder.loop is not parent_loop
        os.write(write, b"ok" if ok else b"no")
        os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 2) == b"ok"
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert run_sync(answer()) == 42 and _local.holder.loop is parent_loop
