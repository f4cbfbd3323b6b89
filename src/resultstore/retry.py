"""The one retry loop and the one timeout of `resultstore`: small, explicit objects.

Only failures that can succeed later are retried: a record not written yet
(:class:`ResultNotFoundError`) and storage that is briefly unreachable
(:class:`StorageUnavailableError`). Damaged records and decoding errors fail at
once. After the last attempt the last error is raised, its message saying how
many attempts were made over how long.

The storage clients' own retry loops (botocore's, s3fs's, obstore's) are turned
off by the built-in stores: :class:`RetryPolicy` is the only loop, and
its ``timeout`` bounds each operation, retries included.
"""

from __future__ import annotations

import math
import sys
import threading
import time
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from resultstore import _log
from resultstore.errors import (
    ConfigurationError,
    ResultNotFoundError,
    ResultStoreError,
    StorageUnavailableError,
)

if TYPE_CHECKING:
    import asyncio

    from resultstore.settings import Settings

__all__ = ["NO_RETRY", "RetryPolicy"]

T = TypeVar("T")

Jitter = Literal["none", "equal", "full"]
_JITTERS = ("none", "equal", "full")


def _seconds(name: str, value: object, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ConfigurationError(
            f"retry {name} must be a finite number of seconds >= 0"
            f"{' or None' if optional else ''}, got {name}={value!r}"
        )


@dataclass(frozen=True)
class RetryPolicy:
    """Retry a coroutine function up to ``attempts`` times, ``delay`` seconds apart.

    ``backoff`` multiplies the delay after each attempt (1.0 keeps it fixed), up
    to ``max_delay``. ``jitter`` randomizes each sleep: ``"equal"`` between half
    the delay and all of it, ``"full"`` between 0 and the delay, so many clients
    failing together do not retry in step. ``deadline`` bounds the whole loop: no
    sleep ends past it, the last error is raised instead (``None``: only the
    attempts and the store's timeout bound it).
    """

    attempts: int = 10
    delay: float = 0.25
    backoff: float = 1.0
    max_delay: float = 5.0
    jitter: Jitter = "none"
    deadline: float | None = None
    retry_on: tuple[type[BaseException], ...] = (ResultNotFoundError, StorageUnavailableError)

    def __post_init__(self) -> None:
        attempts = self.attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int):
            raise ConfigurationError(
                f"retry attempts must be a whole number, got attempts={attempts!r}"
            )
        if attempts < 1:
            raise ConfigurationError(f"retry attempts must be at least 1, got {attempts}")
        _seconds("delay", self.delay)
        _seconds("max_delay", self.max_delay)
        _seconds("deadline", self.deadline, optional=True)
        backoff = self.backoff
        if (
            isinstance(backoff, bool)
            or not isinstance(backoff, (int, float))
            or not 1 <= backoff < math.inf
        ):
            raise ConfigurationError(
                f"retry backoff must be a finite number >= 1, got backoff={backoff!r}"
            )
        if self.jitter not in _JITTERS:
            raise ConfigurationError(
                f"retry jitter must be one of {', '.join(_JITTERS)}, got jitter={self.jitter!r}"
            )
        if not isinstance(self.retry_on, tuple) or not all(
            isinstance(kind, type) and issubclass(kind, BaseException) for kind in self.retry_on
        ):
            raise ConfigurationError(
                f"retry_on must be a tuple of exception classes, got {self.retry_on!r}"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """The read policy configured by ``RESULTSTORE_READ_ATTEMPTS`` / ``_READ_RETRY_DELAY``."""
        return cls(attempts=settings.read_attempts, delay=settings.read_retry_delay)

    def sleep_after(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failed attempts (1 for the first), jitter applied."""
        cap = max(self.delay, self.max_delay)
        try:
            base = min(self.delay * self.backoff ** (failures - 1), cap)
        except OverflowError:  # a long policy's growth past any float: capped long before
            base = cap
        if self.jitter == "full":
            import random  # here: a sleep before a retry is no hot path

            return random.uniform(0, base)
        if self.jitter == "equal":
            import random

            return base / 2 + random.uniform(0, base / 2)
        return base

    async def call(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        only: type[BaseException] | tuple[type[BaseException], ...] = BaseException,
        timeout: float | None = None,
        expired: Callable[[], BaseException] | None = None,
    ) -> T:
        """Await ``fn()`` until it succeeds, fails for good, or attempts or time run out.

        Failures are retried when they are one of ``retry_on`` and also of ``only``
        (a store's writes, say, retry unreachable storage but not a missing record).
        With ``timeout`` (seconds) the whole call, retries included, raises
        ``expired()`` (default :class:`TimeoutError`) once that time has passed, and
        no retry sleeps past it.
        """
        if timeout is None:
            return await self._attempts(fn, only, self.deadline)
        return await bounded(self, fn, only, timeout, expired or TimeoutError)

    async def _attempts(
        self,
        fn: Callable[[], Awaitable[T]],
        only: type[BaseException] | tuple[type[BaseException], ...],
        deadline: float | None,
        started: float | None = None,
        first: Awaitable[T] | BaseException | None = None,
    ) -> T:
        """The retry loop: ``fn()`` until it succeeds or attempts or ``deadline`` run out.

        :func:`bounded` runs the first attempt itself, and hands it over here when it
        waits (``first``: the rest of that attempt, to await) or fails (``first``: its
        error); ``started`` is when it began.
        """
        if started is None:
            started = time.monotonic()
        attempt = 1
        while True:
            try:
                if isinstance(first, BaseException):
                    raise first
                return await (fn() if first is None else first)
            except self.retry_on as exc:
                if not isinstance(exc, only):
                    raise
                elapsed = time.monotonic() - started
                pause = self.sleep_after(attempt) if attempt < self.attempts else 0.0
                if attempt == self.attempts or (
                    deadline is not None and elapsed + pause > deadline
                ):
                    if attempt == 1 or not isinstance(exc, ResultStoreError):
                        raise
                    raise exc._with_suffix(
                        f" (gave up after {attempt} attempts over {elapsed:.1f}s)"
                    ) from exc.__cause__
                _log.debug(
                    "resultstore.retry",
                    "attempt %d/%d failed: %s; retrying",
                    attempt,
                    self.attempts,
                    exc,
                )
            finally:
                first = None  # an error raised again keeps no reference to itself
            import anyio  # only a retry needs it

            await anyio.sleep(pause)
            attempt += 1


NO_RETRY = RetryPolicy(attempts=1, delay=0)
"""Try once: what ``retry_result_failure=False`` asks for."""


def bounded(
    policy: RetryPolicy,
    fn: Callable[[], Awaitable[T]],
    only: type[BaseException] | tuple[type[BaseException], ...],
    timeout: float,
    expired: Callable[[], BaseException],
) -> Awaitable[T]:
    """``policy.call(fn, only=only, timeout=timeout, expired=expired)``, to await.

    The same, less two coroutines and the keywords: ResultStore's hot path, where a
    1 KB read takes ~30 us and every microsecond shows.
    """
    deadline = timeout if policy.deadline is None else min(timeout, policy.deadline)
    if "trio" in sys.modules and _on_trio():  # anyio on trio: its own timeout does it
        return _fail_after(timeout, policy._attempts(fn, only, deadline), expired)
    return _bounded(policy, fn, only, deadline, timeout, expired)


def _on_trio() -> bool:
    try:
        sys.modules["trio"].lowlevel.current_task()
    except RuntimeError:
        return False
    return True


async def _fail_after(
    seconds: float, coro: Coroutine[Any, Any, T], expired: Callable[[], BaseException]
) -> T:
    import anyio

    try:
        with anyio.fail_after(seconds):
            return await coro
    except TimeoutError:
        raise expired() from None


@types.coroutine
def _bounded(
    policy: RetryPolicy,
    fn: Callable[[], Awaitable[T]],
    only: type[BaseException] | tuple[type[BaseException], ...],
    deadline: float,
    seconds: float,
    expired: Callable[[], BaseException],
) -> Generator[Any, Any, T]:
    """Await ``fn()``, retried by ``policy``, raising ``expired()`` once ``seconds`` have passed.

    The first attempt runs here: one that neither waits nor fails (most local reads
    and writes, ~30 us) pays for no retry loop and no timer. One that waits or fails
    goes on in :meth:`RetryPolicy._attempts`. A timer can only interrupt an operation
    where it waits, so none is armed until the operation first suspends; from then
    on the loop's :class:`_Watchdog` cancels the task at the deadline, and that
    cancellation becomes ``expired()`` unless someone else cancelled the task too.
    """
    started = time.monotonic()
    try:
        attempt: Any = fn()  # inside: an fn() that fails before it returns is retried too
        if type(attempt) is not types.CoroutineType:  # any other awaitable: its iterator
            attempt = attempt.__await__()
        signal = attempt.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    except policy.retry_on as exc:
        if not isinstance(exc, only):
            raise
        coro = policy._attempts(fn, only, deadline, started, exc)
    else:
        coro = policy._attempts(fn, only, deadline, started, _Resumed(attempt, signal))
        del attempt
    try:
        signal = coro.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    remaining = seconds - (time.monotonic() - started)
    alarm = _Alarm.arm(remaining)
    if alarm is None:  # no asyncio task: nothing to cancel (anyio runs on asyncio or trio)
        return (yield from _drive(coro, signal))
    try:
        return (yield from _drive(coro, signal))
    except BaseException as exc:
        if alarm.fired and _is_cancellation(exc):
            alarm.fired = False  # our cancellation, taken back here
            if _uncancel(alarm.task) == 0:
                raise expired() from None
        raise
    finally:
        alarm.disarm()


class _Resumed:
    """An attempt that began (in :func:`_bounded`) and waits on ``signal``, to await."""

    __slots__ = ("coro", "signal")

    def __init__(
        self, coro: Coroutine[Any, Any, Any] | Generator[Any, Any, Any], signal: Any
    ) -> None:
        self.coro, self.signal = coro, signal

    def __await__(self) -> Generator[Any, Any, Any]:
        return _drive(self.coro, self.signal)


def _drive(
    coro: Coroutine[Any, Any, T] | Generator[Any, Any, T], signal: Any
) -> Generator[Any, Any, T]:
    """Go on with ``coro``, suspended on ``signal``, as ``await`` would."""
    while True:
        try:
            sent = yield signal
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # thrown in by the task: a cancellation, say
            try:
                signal = coro.throw(exc)
            except StopIteration as done:
                return cast(T, done.value)
        else:
            try:
                signal = coro.send(sent)
            except StopIteration as done:
                return cast(T, done.value)


class _Alarm:
    """One operation's deadline on an asyncio loop: its :class:`_Watchdog` cancels the task."""

    __slots__ = ("deadline", "fired", "task", "watchdog")

    def __init__(self, task: asyncio.Task[Any], deadline: float, watchdog: _Watchdog) -> None:
        self.task = task
        self.deadline = deadline
        self.watchdog = watchdog
        self.fired = False

    @staticmethod
    def arm(seconds: float) -> _Alarm | None:
        """An alarm for the running task in ``seconds``; None when not on asyncio."""
        aio = sys.modules.get("asyncio")  # imported by any running asyncio loop
        if aio is None:
            return None
        loop: asyncio.AbstractEventLoop | None = aio._get_running_loop()
        task = None if loop is None else aio.current_task(loop)
        if loop is None or task is None:
            return None
        watchdog: _Watchdog | None = getattr(_watchdogs, "current", None)
        if watchdog is None or watchdog.loop is not loop:
            watchdog = _watchdogs.current = _Watchdog(loop)
        alarm = _Alarm(task, loop.time() + seconds, watchdog)
        watchdog.alarms.add(alarm)
        if alarm.deadline < watchdog.wake_at:
            watchdog.wake(alarm.deadline)
        return alarm

    def disarm(self) -> None:
        self.watchdog.alarms.discard(self)
        if self.fired:
            self.fired = False
            # The operation swallowed or replaced our cancellation: take it back, so a
            # later await of the caller is not cancelled for a timeout already over.
            _uncancel(self.task)


class _Watchdog:
    """The alarms of one event loop, served by a single loop timer.

    Arming a loop timer per operation costs more than a fast read itself, so the
    one timer is left armed at the earliest deadline it has seen: an operation
    that ends before its deadline only leaves the set. When the timer fires,
    operations past their deadline are cancelled and it is re-armed at the
    earliest deadline left, if any.
    """

    __slots__ = ("alarms", "loop", "timer", "wake_at")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.alarms: set[_Alarm] = set()
        self.timer: asyncio.TimerHandle | None = None
        self.wake_at = math.inf

    def wake(self, at: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.wake_at = at
        self.timer = self.loop.call_at(at, self.fire)

    def fire(self) -> None:
        self.timer, self.wake_at = None, math.inf
        now = self.loop.time()
        for alarm in [a for a in self.alarms if a.deadline <= now]:
            self.alarms.discard(alarm)
            alarm.fired = True
            alarm.task.cancel()
        if self.alarms:
            self.wake(min(a.deadline for a in self.alarms))


_watchdogs = threading.local()  # .current: the watchdog of the loop last used in this thread


def _is_cancellation(exc: BaseException) -> bool:
    import asyncio

    return isinstance(exc, asyncio.CancelledError)


def _uncancel(task: asyncio.Task[Any]) -> int:
    """``task.uncancel()`` (Python 3.11+): the cancellations still pending; 0 before 3.11."""
    uncancel = getattr(task, "uncancel", None)
    return 0 if uncancel is None else int(uncancel())
