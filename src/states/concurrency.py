"""Run the async core from sync code.

Every I/O call in this distribution is written once, as a coroutine; the sync
functions are thin wrappers that drive that coroutine to completion here.

- With no event loop running in the calling thread, the coroutine runs on an
  event loop kept per thread, so a sync call costs microseconds, not the
  100+ µs of creating and tearing down a loop each time.
- Called from inside a running event loop (sync code invoked from async code),
  the coroutine runs on a worker thread with its own loop, and the caller
  blocks, as any sync call does.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:  # asyncio and the thread pool are imported on first use
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

__all__ = ["in_async_context", "on_private_loop", "run_sync", "sync_compatible"]

T = TypeVar("T")
P = ParamSpec("P")

_local = threading.local()
_worker_pool: ThreadPoolExecutor | None = None
_worker_pool_lock = threading.Lock()


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
    """Owns a thread's private loop and closes it when the thread's locals go away."""

    __slots__ = ("loop",)

    def __init__(self) -> None:
        import asyncio

        self.loop = asyncio.new_event_loop()

    def __del__(self) -> None:
        loop = self.loop
        if loop.is_closed() or loop.is_running():
            return
        # As asyncio.run does: let async generators still open on this loop finish (their
        # ``finally`` blocks close what they hold, such as a client's connections) before
        # the loop goes. Another loop running in this thread cannot host that: close only.
        if not in_async_context():
            with contextlib.suppress(Exception):  # a finalizer must not raise
                loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _thread_loop() -> asyncio.AbstractEventLoop:
    holder: _LoopHolder | None = getattr(_local, "holder", None)
    if holder is None or holder.loop.is_closed():
        holder = _local.holder = _LoopHolder()
    return holder.loop


_inherited: list[_LoopHolder] = []  # a forking thread's loop, in the child: never run or closed


def _forget_parent_loops() -> None:
    """In a child after ``fork``: set the parent's loop aside, make new ones on demand.

    The inherited loop shares its selector (an epoll instance) with the parent, so
    running it here could take the parent's events; closing it could run its async
    generators. It is kept, untouched, and the worker pool (whose threads did not
    survive the fork) is started anew when needed.
    """
    global _worker_pool
    holder: _LoopHolder | None = getattr(_local, "holder", None)
    if holder is not None:
        _inherited.append(holder)
        del _local.holder
    _worker_pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parent_loops)


@atexit.register
def _close_main_thread_loop() -> None:
    holder: _LoopHolder | None = getattr(_local, "holder", None)
    if holder is not None:
        holder.__del__()


def _run_on_thread_loop(coro: Coroutine[Any, Any, T]) -> T:
    return _thread_loop().run_until_complete(coro)


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
    if not in_async_context():
        return _run_on_thread_loop(coro)
    return _pool().submit(_run_on_thread_loop, coro).result()


def sync_compatible(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Any]:
    """Make an ``async def`` callable from both worlds.

    Inside a running event loop the call returns the coroutine, to be awaited;
    from sync code it runs the coroutine and returns its result. Pass
    ``_sync=True`` or ``_sync=False`` to force one behaviour.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T | Awaitable[T]:
        force_sync = kwargs.pop("_sync", None)
        coro = fn(*args, **kwargs)
        if force_sync is None:
            force_sync = not in_async_context()
        if force_sync:
            return run_sync(coro)
        return coro

    wrapper.aio = fn  # type: ignore[attr-defined]
    return wrapper
