"""The retry policy for reads: a small, explicit object, not a decorator maze.

Only failures that can succeed later are retried: a record not written yet
(:class:`ResultNotFoundError`) and storage that is briefly unreachable
(:class:`StorageUnavailableError`). Damaged records and decoding errors fail at
once. After the last attempt the last error is raised, its message saying how
many attempts were made.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from resultstore.errors import (
    ConfigurationError,
    ResultNotFoundError,
    ResultStoreError,
    StorageUnavailableError,
)
from resultstore.settings import Settings

__all__ = ["NO_RETRY", "RetryPolicy"]

T = TypeVar("T")
logger = logging.getLogger("resultstore.retry")


@dataclass(frozen=True)
class RetryPolicy:
    """Retry a coroutine function ``attempts`` times, ``delay`` seconds apart.

    ``backoff`` multiplies the delay after each attempt (1.0 keeps it fixed),
    capped at ``max_delay``.
    """

    attempts: int = 10
    delay: float = 0.25
    backoff: float = 1.0
    max_delay: float = 5.0
    retry_on: tuple[type[BaseException], ...] = (ResultNotFoundError, StorageUnavailableError)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigurationError(f"retry attempts must be at least 1, got {self.attempts}")
        if self.delay < 0 or self.backoff < 1 or self.max_delay < 0:
            raise ConfigurationError(
                "retry delay and max_delay must be >= 0 and backoff >= 1, got "
                f"delay={self.delay}, backoff={self.backoff}, max_delay={self.max_delay}"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """The read policy configured by ``RESULTSTORE_READ_ATTEMPTS`` / ``_READ_RETRY_DELAY``."""
        return cls(attempts=settings.read_attempts, delay=settings.read_retry_delay)

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Await ``fn()`` until it succeeds, fails for good, or attempts run out."""
        delay = self.delay
        started = time.monotonic()
        for attempt in range(1, self.attempts + 1):
            try:
                return await fn()
            except self.retry_on as exc:
                if attempt == self.attempts:
                    if self.attempts == 1 or not isinstance(exc, ResultStoreError):
                        raise
                    elapsed = time.monotonic() - started
                    raise exc._with_suffix(
                        f" (gave up after {attempt} attempts over {elapsed:.1f}s)"
                    ) from exc.__cause__
                logger.debug("attempt %d/%d failed: %s; retrying", attempt, self.attempts, exc)
            import anyio  # only a retry needs it

            await anyio.sleep(delay)
            delay = min(delay * self.backoff, self.max_delay)
        raise AssertionError("unreachable")  # pragma: no cover


NO_RETRY = RetryPolicy(attempts=1, delay=0)
"""Try once: what ``retry_result_failure=False`` asks for."""
