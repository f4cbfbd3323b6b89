"""The event-loop plumbing of resultstore, in one place: the sync bridge and per-loop clients.

Every I/O call in resultstore is written once, as a coroutine; the sync functions
are thin wrappers that drive that coroutine to completion with :func:`run_sync`:

- With no event loop running in the calling thread, the coroutine runs on an
  event loop kept per thread (a *private loop*), so a sync call costs
  microseconds, not the 100+ µs of creating and tearing down a loop each time.
- Called from inside a running event loop (sync code invoked from async code),
  the coroutine runs on a worker thread with its own private loop, and the
  caller blocks, as any sync call does.

A private loop lives as long as its thread. When the thread ends (or, for the
main thread, at exit) the loop shuts down its async generators, as
``asyncio.run`` does, and closes.

Clients bound to an event loop (aiohttp sessions, ``redis.asyncio`` connections)
are kept one per loop by :class:`LoopLocal`, public to store plugins through
:mod:`resultstore.stores.base`: it makes the running loop's client on first use,
closes it when that loop shuts down, drops clients of loops closed without
shutting down, closes every client at the store's ``aclose()``, and makes a
forked child open clients of its own. Everything else here is private to
resultstore.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import os
import sys
import threading
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from resultstore import _log

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:  # asyncio and the thread pool are imported on first use
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

__all__ = ["LoopLocal", "in_async_context", "on_private_loop", "run_sync"]

T = TypeVar("T")
C = TypeVar("C")

_local = threading.local()
_get_ident = threading.get_ident
_worker_pool: ThreadPoolExecutor | None = None
_worker_pool_lock = threading.Lock()


# -- the sync bridge ------------------------------------------------------------------------


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The loop running in this thread, without importing asyncio when nothing did."""
    module = sys.modules.get("asyncio")
    if module is None:
        return None
    # _get_running_loop is asyncio's low-level, non-raising twin of get_running_loop.
    get = getattr(module, "_get_running_loop", None)
    if get is None:  # another thread is importing asyncio right now: wait until it is done
        import asyncio

        get = asyncio._get_running_loop
    loop: asyncio.AbstractEventLoop | None = get()
    return loop


def in_async_context() -> bool:
    """True when an event loop is running in the calling thread."""
    return _running_loop() is not None


def on_private_loop() -> bool:
    """True inside a coroutine driven by :func:`run_sync`.

    Such a loop serves one blocking caller and nothing else, so brief blocking
    I/O on it costs less than handing the work to a thread.
    """
    running = _running_loop()
    if running is None:
        return False
    holder: _LoopHolder | None = getattr(_local, "holder", None)
    return holder is not None and running is holder.loop


class _LoopHolder:
    """Owns a thread's private loop and closes it when the thread's locals go away.

    It also keeps what :func:`_run_on_thread_loop` uses on every call, looked up once:
    the loop's ready queue, its async-generator hooks and asyncio's functions.
    """

    __slots__ = ("hooks", "loop", "ready", "set_running_loop", "task")

    def __init__(self) -> None:
        import asyncio

        self.loop = loop = asyncio.new_event_loop()
        # asyncio's own loops keep their ready queue in ``_ready``; others have none.
        self.ready: collections.deque[asyncio.Handle] | None = getattr(loop, "_ready", None)
        self.hooks = (
            loop._asyncgen_firstiter_hook,  # type: ignore[attr-defined]
            loop._asyncgen_finalizer_hook,  # type: ignore[attr-defined]
        )
        self.set_running_loop = asyncio.events._set_running_loop
        self.task = asyncio.Task

    def __del__(self) -> None:
        loop = self.loop
        if loop.is_closed() or loop.is_running():
            return
        # As asyncio.run does: let async generators still open on this loop finish (their
        # ``finally`` blocks close what they hold: LoopLocal's keepers close the loop's
        # clients) before the loop goes. Another loop running in this thread cannot host
        # that: close only.
        if not in_async_context():
            with contextlib.suppress(Exception):  # a finalizer must not raise
                loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _thread_loop() -> asyncio.AbstractEventLoop:
    return _holder().loop


def _holder() -> _LoopHolder:
    holder: _LoopHolder | None = getattr(_local, "holder", None)
    if holder is None or holder.loop.is_closed():
        holder = _local.holder = _LoopHolder()
    return holder


def _run_on_thread_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` as a task of this thread's loop; its first step runs at once.

    Most local calls (a 1 KB read from disk) never wait, so driving the loop for
    them (``run_forever``, two loop iterations, two selector polls) would cost more
    than the call. The task's first step, already scheduled by the task, is run
    here instead, as the loop would run it: inside the task (so ``current_task()``,
    timeouts and cancel scopes work), with the loop set as the running one and its
    async-generator hooks installed. A task that waits is then driven by
    ``run_until_complete`` as usual. This relies on asyncio's own loop keeping its
    ready queue in ``_ready`` (CPython 3.10-3.13); any other loop, a task factory,
    or a queue holding other work takes the plain path (as does a loop already
    running, which ``run_sync`` rules out before this is called).
    """
    if _orphans:  # clients of dropped LoopLocals: handed to their loops (this one too)
        _close_orphans()
    holder = _holder()
    loop, ready = holder.loop, holder.ready
    if ready is None or ready or loop._task_factory is not None:  # type: ignore[attr-defined]
        return loop.run_until_complete(coro)
    task = holder.task(coro, loop=loop)  # what loop.create_task does, less its Python layers
    if len(ready) != 1:  # something else was scheduled: no shortcut
        return loop.run_until_complete(task)
    step = ready.popleft()
    hooks = sys.get_asyncgen_hooks()
    sys.set_asyncgen_hooks(*holder.hooks)
    holder.set_running_loop(loop)
    loop._thread_id = _get_ident()  # type: ignore[attr-defined]  # what is_running() reads
    try:
        # Handle._run less its frame: a task's step keeps every error in the task,
        # save KeyboardInterrupt and SystemExit, which go on up as they would there.
        step._context.run(step._callback, *step._args)  # type: ignore[attr-defined]
    finally:
        loop._thread_id = None  # type: ignore[attr-defined]
        holder.set_running_loop(None)
        sys.set_asyncgen_hooks(*hooks)
    if task.done():
        return task.result()
    return loop.run_until_complete(task)


def _pool() -> ThreadPoolExecutor:
    global _worker_pool
    with _worker_pool_lock:
        if _worker_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _worker_pool = ThreadPoolExecutor(thread_name_prefix="resultstore-sync")
        return _worker_pool


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from sync code and return its result.

    Safe to call whether or not an event loop runs in the calling thread.
    """
    if _running_loop() is None:
        return _run_on_thread_loop(coro)
    return _pool().submit(_run_on_thread_loop, coro).result()


# -- one client per event loop --------------------------------------------------------------

_lock = threading.Lock()  # guards every LoopLocal's table of slots and _retiring
_orphans: collections.deque[dict[Any, Any]] = collections.deque()  # see _close_table
_instances: weakref.WeakSet[LoopLocal[Any]] = weakref.WeakSet()
_retiring: set[_Slot[Any]] = set()  # slots out of their table, their clients not closed yet
_inherited: list[object] = []  # a forked child's parent loops and clients: never run or closed


class _Slot(Generic[C]):
    """One loop's client, and the keeper that learns when that loop shuts down.

    The keeper is an async generator started on the loop and left suspended:
    ``asyncio.run``, ``asyncio.Runner``, ``anyio.run`` and the private loops all
    call ``loop.shutdown_asyncgens()`` before closing a loop, which runs the
    keeper's ``finally``, which closes the client, on its loop, while the loop
    still runs.
    """

    __slots__ = (
        "client",
        "close_client",
        "closing",
        "finishing",
        "keeper",
        "loop",
        "pid",
        "ready",
        "table",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        table: dict[asyncio.AbstractEventLoop, _Slot[C]],
        close_client: Callable[[C], Awaitable[object]],
    ) -> None:
        self.loop = loop
        self.table = table
        self.close_client = close_client
        self.pid = os.getpid()
        self.client: C | None = None
        self.ready: asyncio.Future[None] = loop.create_future()  # done once opening ended
        self.closing: asyncio.Task[None] | None = None
        self.finishing = False  # the keeper's ``finally`` has begun
        self.keeper = self._keep()

    def leave(self) -> None:
        """Take this slot out of its table (if it is still there)."""
        with _lock:
            if self.table.get(self.loop) is self:
                del self.table[self.loop]

    async def start(self) -> None:
        """Start the keeper, on the slot's loop: from now on the loop knows of it."""
        await anext(self.keeper)

    async def _keep(self) -> AsyncGenerator[None, None]:
        import asyncio

        try:
            yield
        finally:
            self.finishing = True
            if self.pid == os.getpid():  # a forked child leaves its parent's clients alone
                self.begin_close()
                closing = self.closing
                if closing is not None and closing is not asyncio.current_task():
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await asyncio.shield(closing)

    def begin_close(self) -> None:
        """Start closing the client, once, on the slot's loop (which must be running)."""
        if self.closing is None:
            self.leave()
            self.closing = self.loop.create_task(self._close())

    async def close(self) -> None:
        """Close the client; awaited on the slot's loop."""
        import asyncio

        self.begin_close()
        assert self.closing is not None
        await asyncio.shield(self.closing)

    async def _close(self) -> None:
        import asyncio

        try:
            if not self.ready.done():  # a task of this loop is still opening the client
                await asyncio.wait([self.ready])
            client, self.client = self.client, None
            if client is not None:
                try:
                    await self.close_client(client)
                except Exception as exc:  # a client that fails to close is gone all the same
                    _log.debug("resultstore", "closing a client of %r failed: %r", self.loop, exc)
            # Done with the keeper, unless it is what is closing us (the loop shuts down).
            if not self.finishing:
                await self.keeper.aclose()
        finally:
            with _lock:
                _retiring.discard(self)

    def retire(self) -> None:
        """Keep the slot until it is closed: when its loop shuts down, or at exit."""
        with _lock:
            for gone in [gone for gone in _retiring if gone.loop.is_closed()]:
                _retiring.discard(gone)  # their loops closed first: nothing can close them
            _retiring.add(self)

    def close_elsewhere(self) -> None:
        """Close the client from a thread that cannot run the slot's loop now.

        The close is handed to the loop (thread-safely): it runs at once if the loop
        runs in another thread, else the next time the loop runs, at the latest when
        it shuts down, or at exit.
        """
        loop = self.loop
        if loop.is_closed() or self.pid != os.getpid():
            return
        self.retire()
        try:
            loop.call_soon_threadsafe(self.begin_close)
        except RuntimeError:  # the loop closed meanwhile: its client cannot be closed
            with _lock:
                _retiring.discard(self)

    def close_now(self) -> None:
        """Close the client on its idle loop, from sync code (no loop running here)."""
        loop = self.loop
        if loop.is_closed() or loop.is_running() or self.pid != os.getpid():
            return
        with contextlib.suppress(Exception):  # called from exit hooks: must not raise
            loop.run_until_complete(self.close())


class LoopLocal(Generic[C]):
    """One client per running event loop: made on first use, closed when its loop goes.

    Connections made by asyncio clients (aiohttp, ``redis.asyncio``, asyncpg, ...)
    belong to the event loop that opened them, and resultstore's sync API runs a
    private event loop per thread, so a store used from several threads, or from
    sync and async code, meets several loops. Keep the client in one of these::

        self._clients = LoopLocal(self._open_client, close_client)
        ...
        client = await self._clients.get()  # the running loop's client
        ...
        await self._clients.aclose()  # in the store's aclose()

    ``open()`` makes a client on the running loop; ``close(client)`` closes one,
    on the loop that made it. A client is closed:

    - when its loop shuts down its async generators (``asyncio.run``,
      ``asyncio.Runner``, ``anyio.run`` and the private loop of a thread that
      ends all do);
    - by :meth:`aclose` (every loop's client: this loop's at once, the others'
      on their own loops, see there), after which the next :meth:`get` makes a
      new one;
    - when the ``LoopLocal`` itself is garbage collected, or at exit.

    A loop closed without shutting down its async generators cannot run a close
    any more: its client is dropped. In a child process after ``os.fork`` no
    client of the parent is used or closed (their sockets are the parent's): the
    child opens its own.
    """

    __slots__ = ("__weakref__", "_close", "_open", "_slots")

    def __init__(
        self,
        open: Callable[[], Awaitable[C]],
        close: Callable[[C], Awaitable[object]],
    ) -> None:
        self._open = open
        self._close = close
        self._slots: dict[asyncio.AbstractEventLoop, _Slot[C]] = {}
        with _lock:
            _instances.add(self)
        # Dropped without aclose(): still close the clients (the finalizer holds only the
        # table, never this object).
        weakref.finalize(self, _close_table, self._slots).atexit = False

    async def get(self) -> C:
        """The client of the running event loop, made by ``open()`` on first use."""
        import asyncio

        if _orphans:
            _close_orphans()

        loop = asyncio.get_running_loop()
        while True:
            slot = self._slots.get(loop)
            if slot is None:
                return await self._make(loop)
            if slot.client is not None:
                return slot.client
            # Another task of this loop is opening it: wait, then use it (or, if that
            # attempt failed, make one).
            await asyncio.wait([slot.ready])

    async def _make(self, loop: asyncio.AbstractEventLoop) -> C:
        slot = _Slot(loop, self._slots, self._close)
        with _lock:
            self._drop_dead()
            self._slots[loop] = slot
        try:
            client = await self._open()
        except BaseException:
            slot.leave()
            slot.ready.set_result(None)
            raise
        slot.client = client
        try:
            if slot.closing is None:  # not closed meanwhile
                await slot.start()
        finally:
            slot.ready.set_result(None)
        return client

    def _drop_dead(self) -> None:
        """Forget the clients of loops closed without shutting down (call with ``_lock``)."""
        for loop in [loop for loop in self._slots if loop.is_closed()]:
            del self._slots[loop]

    def __len__(self) -> int:
        """How many loops have a client (or one being made); closed loops do not count."""
        with _lock:
            self._drop_dead()
            return len(self._slots)

    async def aclose(self) -> None:
        """Close every loop's client: the running loop's now, the others' on their loops.

        Every loop's next :meth:`get` makes a new client. The old ones close on their
        own loops: an idle loop's when that loop next runs (nothing can be using it:
        the loop is not running) or shuts down; a loop running in another thread may
        be using its client right now (a thread's ``aclose()`` must not break another
        thread's call), so that one closes when its loop shuts down. Any left close at
        exit.
        """
        import asyncio

        here = asyncio.get_running_loop()
        with _lock:  # first out of the table: from now on every get() makes a new client
            slots = list(self._slots.values())
            self._slots.clear()
        for slot in slots:
            if slot.loop is here:
                continue
            if slot.loop.is_running():
                slot.retire()
            else:
                slot.close_elsewhere()
        for slot in slots:
            if slot.loop is here:
                await slot.close()

    def __repr__(self) -> str:
        return f"<LoopLocal of {len(self)} event loops>"


def _close_table(table: dict[asyncio.AbstractEventLoop, _Slot[Any]]) -> None:
    """A LoopLocal was dropped: its clients are closed soon, by :func:`_close_orphans`.

    Only queued here: this runs as a finalizer, which a garbage collection can start
    anywhere, including inside a ``with _lock:`` of this very thread, where taking
    the lock again would deadlock (``deque.append`` takes no lock of ours).
    """
    _orphans.append(table)


def _close_orphans() -> None:
    """Close the clients of dropped LoopLocals, on their loops (called outside ``_lock``)."""
    while _orphans:
        try:
            table = _orphans.popleft()
        except IndexError:  # another thread took the last one
            return
        with _lock:
            slots = list(table.values())
            table.clear()
        for slot in slots:
            slot.close_elsewhere()


# -- fork and exit --------------------------------------------------------------------------


def _after_fork_in_child() -> None:
    """In a child after ``fork``: set the parent's loops and clients aside, unused.

    The inherited private loop shares its selector (an epoll instance) with the
    parent, so running it here could take the parent's events, and closing it
    could run its async generators; the inherited clients hold the parent's
    connections. All are kept, untouched, and new ones are made on demand; the
    worker pool (whose threads did not survive the fork) is started anew.
    """
    global _worker_pool, _lock
    _lock = threading.Lock()  # another thread may have held it at the fork
    holder: _LoopHolder | None = getattr(_local, "holder", None)
    if holder is not None:
        _inherited.append(holder)
        del _local.holder
    _worker_pool = None
    for instance in list(_instances):
        _inherited.extend(instance._slots.values())
        instance._slots.clear()
    _inherited.extend(_retiring)
    _retiring.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _at_exit() -> None:
    """Close what sync callers left open, clients first, then the main thread's loop.

    Sync code never awaits a store's ``aclose()``: its clients are closed here, on
    their idle loops, while those loops still exist.
    """
    if not in_async_context():
        _close_orphans()
        with _lock:
            slots = [*_retiring, *(s for i in list(_instances) for s in i._slots.values())]
        for slot in slots:
            if slot.loop.is_running():
                slot.close_elsewhere()
            else:
                slot.close_now()
    holder: _LoopHolder | None = getattr(_local, "holder", None)
    if holder is not None:
        holder.__del__()


# -- running many at once -----------------------------------------------------------------


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first leaf of an exception group (a task group's failures): what to report."""
    first = group.exceptions[0]
    return first_error(first) if isinstance(first, BaseExceptionGroup) else first


async def each(items: Sequence[T], fn: Callable[[T], Awaitable[None]], concurrency: int) -> None:
    """Await ``fn(item)`` for every item, ``concurrency`` at a time; the first failure stops all.

    The failure is raised as itself, not wrapped in an exception group.
    """
    import anyio

    pending = iter(items)  # shared by the workers: each item is taken once

    async def worker() -> None:
        for item in pending:
            await fn(item)

    try:
        async with anyio.create_task_group() as group:
            for _ in range(min(concurrency, len(items))):
                group.start_soon(worker)
    except BaseExceptionGroup as group:
        raise first_error(group) from None
