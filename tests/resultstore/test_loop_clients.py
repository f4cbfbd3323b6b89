"""``LoopLocal``: one client per event loop, closed when its loop goes.

Stores whose clients belong to an event loop (the S3 store, the redis plugin) keep
them in a LoopLocal; these tests use a fake client that records where it was made
and where it was closed.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import textwrap
import threading
from typing import Any

import anyio
import pytest

from resultstore._loops import run_sync
from resultstore.stores import LoopLocal as ExportedFromStores
from resultstore.stores.base import LoopLocal


class Client:
    def __init__(self, number: int) -> None:
        self.number = number
        self.loop = asyncio.get_running_loop()
        self.closed_on: asyncio.AbstractEventLoop | None = None
        self.closes = 0

    def __repr__(self) -> str:
        return f"Client({self.number}, closed={self.closes})"


class Clients:
    """Makes and closes fake clients; what LoopLocal is given as ``open`` and ``close``."""

    def __init__(self, *, open_delay: float = 0.0, failures: int = 0) -> None:
        self.made: list[Client] = []
        self.open_delay = open_delay
        self.failures = failures
        self.local: LoopLocal[Client] = LoopLocal(self.open, self.close)

    async def open(self) -> Client:
        if self.open_delay:
            await asyncio.sleep(self.open_delay)
        if self.failures:
            self.failures -= 1
            raise OSError("cannot connect")
        client = Client(len(self.made))
        self.made.append(client)
        return client

    async def close(self, client: Client) -> None:
        await asyncio.sleep(0)  # a close that awaits, as real ones do
        client.closed_on = asyncio.get_running_loop()
        client.closes += 1


def test_the_helper_is_part_of_the_store_api_for_plugins() -> None:
    import resultstore.stores.base as base

    assert ExportedFromStores is LoopLocal
    assert "LoopLocal" in base.__all__


def test_one_client_per_loop_reused_within_the_loop() -> None:
    clients = Clients(open_delay=0.01)

    async def many_uses() -> set[int]:
        async with anyio.create_task_group() as group:  # concurrent first uses
            seen: list[Client] = []

            async def use() -> None:
                seen.append(await clients.local.get())

            for _ in range(20):
                group.start_soon(use)
        seen.append(await clients.local.get())
        return {id(client) for client in seen}

    first = run_sync(many_uses())
    again = run_sync(many_uses())
    assert len(first) == 1 and first == again  # one client for this thread's private loop
    assert len(clients.made) == 1 and len(clients.local) == 1

    other = asyncio.run(many_uses())  # another loop, another client
    assert len(other) == 1 and other != first
    assert len(clients.made) == 2
    run_sync(clients.local.aclose())


def test_a_client_is_closed_on_its_loop_when_asyncio_run_ends() -> None:
    clients = Clients()

    async def use() -> asyncio.AbstractEventLoop:
        await clients.local.get()
        return asyncio.get_running_loop()

    loop = asyncio.run(use())
    (client,) = clients.made
    assert client.closes == 1 and client.closed_on is loop  # during loop.shutdown_asyncgens()
    assert len(clients.local) == 0

    anyio.run(use)  # anyio.run shuts its loop down the same way
    assert clients.made[1].closes == 1 and len(clients.local) == 0


def test_aclose_closes_every_loops_client_and_the_next_use_makes_a_new_one() -> None:
    clients = Clients()
    run_sync(clients.local.get())  # this thread's private loop: idle from now on
    started, stop = threading.Event(), threading.Event()
    in_use_after_aclose: list[Client] = []

    async def serve() -> None:  # a loop running in another thread, its client in use
        client = await clients.local.get()
        started.set()
        while not stop.is_set():
            await asyncio.sleep(0.005)
        in_use_after_aclose.append(client)

    server = threading.Thread(target=asyncio.run, args=(serve(),))
    server.start()
    started.wait(10)
    private, running = clients.made

    async def close_all() -> None:
        await clients.local.get()
        await clients.local.aclose()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(close_all())
        here = clients.made[2]
        assert here.closes == 1 and here.closed_on is loop  # this loop's: closed at once
        assert len(clients.local) == 0
        # The idle private loop's: closed on that loop as it next runs (next to the call).
        assert private.closes == 0
        new = run_sync(clients.local.get())
        run_sync(asyncio.sleep(0.01))
        assert private.closes == 1 and private.closed_on is private.loop
        assert new is not private and new.closes == 0
        # The other thread's loop may be using its client: closed as that loop ends.
        assert running.closes == 0
        stop.set()
        server.join()
        assert in_use_after_aclose == [running]
        assert running.closes == 1 and running.closed_on is running.loop
    finally:
        stop.set()
        server.join()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    run_sync(clients.local.aclose())
    assert [client.closes for client in clients.made] == [1, 1, 1, 1]


def test_one_threads_aclose_does_not_break_another_threads_call() -> None:
    """Each worker of a pool closes "its" connections when done, as the redis race does."""
    clients = Clients()
    errors: list[str] = []

    async def work(index: int) -> None:
        for _ in range(20):
            client = await clients.local.get()
            await asyncio.sleep(0.001)
            if client.closes:
                errors.append(f"worker {index} used a closed client")

    def worker(index: int) -> None:
        try:
            run_sync(work(index))
        finally:
            run_sync(clients.local.aclose())

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    gc.collect()
    assert errors == []
    assert all(client.closes == 1 for client in clients.made)


def test_clients_of_a_loop_closed_without_shutting_down_are_dropped() -> None:
    clients = Clients()
    loop = asyncio.new_event_loop()
    loop.run_until_complete(clients.local.get())
    assert len(clients.local) == 1
    loop.close()  # no shutdown_asyncgens(): nothing can run the client's close any more
    assert len(clients.local) == 0
    assert clients.made[0].closes == 0


def test_each_thread_has_its_own_client_closed_when_the_thread_ends() -> None:
    clients = Clients()
    mine = run_sync(clients.local.get())
    seen: list[Client] = []

    def work() -> None:
        seen.append(run_sync(clients.local.get()))
        seen.append(run_sync(clients.local.get()))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    gc.collect()
    assert len({id(client) for client in seen}) == 8  # one per thread, reused within it
    assert all(client.closes == 1 for client in seen)  # closed as each thread's loop went
    assert mine.closes == 0 and len(clients.local) == 1  # this thread's is still in use
    run_sync(clients.local.aclose())
    assert mine.closes == 1


def test_a_failed_open_is_retried_by_the_next_use() -> None:
    clients = Clients(open_delay=0.01, failures=1)

    async def uses() -> list[Any]:
        return list(
            await asyncio.gather(*(clients.local.get() for _ in range(5)), return_exceptions=True)
        )

    results = run_sync(uses())
    assert sum(isinstance(result, OSError) for result in results) == 1  # only the one attempt
    assert len(clients.made) == 1  # the waiters then made one client, together
    assert run_sync(clients.local.get()) is clients.made[0]
    run_sync(clients.local.aclose())


def test_a_dropped_loop_local_closes_its_clients() -> None:
    clients = Clients()
    client = run_sync(clients.local.get())
    del clients.local
    gc.collect()
    run_sync(asyncio.sleep(0))  # the close was handed to this thread's idle private loop
    assert client.closes == 1


def in_a_child(check: Any) -> str:
    """Fork; in the child run ``check()`` and report its answer (or error) to the parent."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's exit hooks
        try:
            try:
                said = str(check())
            except BaseException as exc:
                said = f"error: {exc!r}"
            os.write(write, said.encode()[:1000])
        finally:
            os._exit(0)
    os.close(write)
    try:
        return os.read(read, 1000).decode()
    finally:
        os.close(read)
        os.waitpid(pid, 0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_makes_its_own_client_and_leaves_the_parents_alone() -> None:
    clients = Clients()
    parent = run_sync(clients.local.get())

    def child() -> str:
        mine = run_sync(clients.local.get())  # on a new private loop (the bridge's fork rule)
        run_sync(clients.local.aclose())
        return f"{mine is not parent} {mine.closes} {parent.closes}"

    assert in_a_child(child) == "True 1 0"
    assert run_sync(clients.local.get()) is parent and parent.closes == 0
    run_sync(clients.local.aclose())
    assert parent.closes == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_inside_a_running_loop_does_not_reuse_or_close_the_parents() -> None:
    clients = Clients()

    async def fork_here() -> tuple[str, Client]:
        parent = await clients.local.get()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # asyncio forgets the running loop in the child: sync calls work
            try:
                mine = run_sync(clients.local.get())
                run_sync(clients.local.aclose())
                said = f"{mine is not parent} {mine.closes} {parent.closes}"
            except BaseException as exc:
                said = f"error: {exc!r}"
            try:
                os.write(write, said.encode()[:1000])
            finally:
                os._exit(0)
        os.close(write)
        try:
            return os.read(read, 1000).decode(), parent
        finally:
            os.close(read)
            os.waitpid(pid, 0)

    said, parent = asyncio.run(fork_here())
    assert said == "True 1 0"
    assert parent.closes == 1  # closed once, in the parent, as asyncio.run ended


def test_clients_left_open_by_sync_code_are_closed_at_exit() -> None:
    code = textwrap.dedent(
        """
        import asyncio, threading
        from resultstore._loops import run_sync
        from resultstore.stores.base import LoopLocal

        async def open():
            return asyncio.get_running_loop()

        async def close(loop):
            assert loop is asyncio.get_running_loop()
            print("closed", flush=True)

        local = LoopLocal(open, close)
        run_sync(local.get())  # the main thread's private loop: never closed by the program
        started = threading.Event()
        thread = threading.Thread(target=lambda: (run_sync(local.get()), started.set()))
        thread.start()
        thread.join()  # closed as the thread's loop went
        """
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["closed", "closed"] and done.stderr == ""


def test_a_loop_local_finalized_while_the_lock_is_held_does_not_deadlock() -> None:
    """A garbage collection may finalize a dropped LoopLocal anywhere, also inside a
    ``with _lock:`` of the same thread (it did, in LoopLocal._make): the finalizer only
    queues the table, and the clients are closed at the next get()."""
    from resultstore import _loops

    async def open_client() -> list[str]:
        return ["open"]

    async def close_client(client: list[str]) -> None:
        client.append("closed")

    def finalize_inside_the_lock() -> None:
        with _loops._lock:
            _loops._close_table({})  # what the collection runs, here

    worker = threading.Thread(target=finalize_inside_the_lock, daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "the finalizer deadlocked on _lock"

    clients = LoopLocal(open_client, close_client)

    async def use() -> list[str]:
        return await clients.get()  # also closes what was queued

    assert asyncio.run(use()) == ["open", "closed"]  # closed when asyncio.run shut down
    assert not _loops._orphans
