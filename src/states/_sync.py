"""The sync side of `states`' helpers, without an event loop of their own.

`states` does no I/O. The only waiting its helpers do is reading a
:class:`~states.results.ResultReference`, and that protocol has a sync method
(``get``) next to its async twin (``aget``). So each helper is written once, as a
coroutine that reads references with :func:`read_result`:

- awaited in async code, :func:`read_result` awaits ``ref.aget()``;
- driven by :func:`run_without_loop` from sync code, it calls ``ref.get()``
  instead, so the coroutine never suspends and finishes in the calling thread,
  with no event loop at all.

How a reference's ``get`` reaches its storage (resultstore runs an event loop of
its own per thread) is the reference's business: `states` knows nothing of it.
Private to `states`; its public sync functions are built on it.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:
    from states.results import ResultReference

__all__ = ["in_async_context", "read_result", "run_without_loop", "sync_compatible"]

T = TypeVar("T")
P = ParamSpec("P")

_sync_reads: ContextVar[bool] = ContextVar("states_sync_reads", default=False)


def in_async_context() -> bool:
    """True when an event loop is running in the calling thread.

    Looks only if asyncio was imported (no loop can run otherwise), so a sync
    program never imports it on `states`' account.
    """
    module = sys.modules.get("asyncio")
    if module is None:
        return False
    # _get_running_loop is asyncio's low-level, non-raising twin of get_running_loop.
    get = getattr(module, "_get_running_loop", None)
    if get is None:  # another thread is importing asyncio right now: wait until it is done
        import asyncio

        get = asyncio._get_running_loop
    return get() is not None


async def read_result(ref: ResultReference, *, retry: bool = True) -> Any:
    """The value behind ``ref``: ``await ref.aget()``, or ``ref.get()`` under
    :func:`run_without_loop`."""
    if _sync_reads.get():
        return ref.get(retry=retry)
    return await ref.aget(retry=retry)


def run_without_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run a helper's coroutine to its end in this thread, reading references with ``get``.

    Works whether or not an event loop runs in the calling thread, since none is
    used. Only for coroutines whose one kind of waiting is :func:`read_result`;
    one that awaits anything else is closed and refused with ``RuntimeError``.
    """
    token = _sync_reads.set(True)
    try:
        coro.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    finally:
        _sync_reads.reset(token)
    coro.close()
    raise RuntimeError(
        f"{getattr(coro, '__qualname__', coro)!r} waited for something other than a result "
        "reference; states' sync helpers can only read references (ResultReference.get)"
    )


def sync_compatible(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Any]:
    """Make one of `states`' ``async def`` helpers callable from both worlds.

    Inside a running event loop the call returns the coroutine, to be awaited;
    from sync code it runs the coroutine (see :func:`run_without_loop`) and
    returns its result. Pass ``_sync=True`` or ``_sync=False`` to force one
    behaviour; ``.aio`` is the plain ``async def``.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T | Awaitable[T]:
        force_sync = kwargs.pop("_sync", None)
        coro = fn(*args, **kwargs)
        if force_sync is None:
            force_sync = not in_async_context()
        if force_sync:
            return run_without_loop(coro)
        return coro

    wrapper.aio = fn  # type: ignore[attr-defined]
    return wrapper
