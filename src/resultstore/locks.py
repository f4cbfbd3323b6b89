"""Locks and compute-once on the storage itself: leases under a reserved key, no lock server.

A lock on key ``k`` is a *lease*: a small JSON record stored under
``.resultstore/locks/k`` (see :data:`resultstore.keys.RESERVED_PREFIX`) that
names its holder, a random nonce (one per acquisition), a random write id (one
per write, so every lease record's bytes, and hence its version, are unique)
and an absolute expiry time in wall-clock UTC seconds. Every change is one of
the store's own atomic conditional writes:

- **acquire**: a create-only write (``if_absent``); when a lease is already
  there it is read with its version and, if it has expired or was released,
  replaced by compare-and-swap (``if_version``). A live lease of another holder
  is waited out with capped exponential backoff and jitter, never past its
  expiry. A live lease of the same holder is renewed (acquire is idempotent).
- **renew**: a compare-and-swap to the same lease with a later expiry.
- **release**: a delete while our lease has at least :data:`_DELETE_WINDOW`
  seconds left (or never expires): nobody can take a live lease over, so the
  delete can only remove ours; its answer lost, the lease is read back (gone, or
  another holder's: ours was deleted). Closer to the expiry, a compare-and-swap
  to a *released* record (a tombstone) instead: a delete landing after the lease
  expired and was taken over would drop the new holder's lease. Tombstones stay
  behind (a few hundred bytes); the next acquire replaces them by compare-and-swap.

No step checks and then acts: each decision is a conditional write that fails
if the record changed since it was read. A conditional write whose answer is
lost (a reset, a 5xx, a timeout; or a client retry answered 412 because the
first attempt had landed) is never retried blindly: the lease is read back, and
its write id says whether our write landed.

Clocks. Expiry times are absolute, so the machines sharing a store must agree
on the time within :attr:`ResultStore.lock_clock_margin` seconds (1 s by
default; NTP keeps ordinary hosts within milliseconds). A lease counts as
expired for others only that margin after its expiry time, while its holder
stops counting on it at the expiry time itself, so clocks within the margin
never let two holders overlap. A holder paused longer than its lease (a
stopped VM, a swap storm) can still lose it; :func:`get_or_compute` renews in
the background and documents what happens then.

Holders. The default holder is ``host:pid:thread``: threads of one process are
different holders, tasks on one thread are one holder (pass ``holder=`` to tell
them apart). :func:`get_or_compute` uses a fresh holder per call.
"""

from __future__ import annotations

import contextlib
import enum
import inspect
import json
import logging
import math
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from resultstore._defaults import DEFAULT_COMPUTE_HOLD_TIMEOUT, DEFAULT_HOLD_TIMEOUT
from resultstore.errors import (
    ConfigurationError,
    ConflictError,
    IntegrityError,
    LockHeldError,
    LockNotHeldError,
    LockTimeoutError,
    ResultExistsError,
    ResultNotFoundError,
    StorageError,
    VersionConflictError,
)
from resultstore.keys import MAX_KEY_BYTES, RESERVED_PREFIX
from resultstore.retry import NO_RETRY
from resultstore.stores.base import Payload

if TYPE_CHECKING:
    import datetime

    from resultstore.records import ResultRecord
    from resultstore.result_store import ResultStore

__all__ = [
    "DEFAULT_COMPUTE_HOLD_TIMEOUT",
    "DEFAULT_HOLD_TIMEOUT",
    "LEASE_PREFIX",
    "IsolationLevel",
    "LockManager",
    "default_holder",
    "lease_key",
]

T = TypeVar("T")
logger = logging.getLogger("resultstore.locks")

LEASE_PREFIX = RESERVED_PREFIX + "locks/"
"""Where the lease of key ``k`` lives: ``LEASE_PREFIX + k``."""
_HASHED_PREFIX = RESERVED_PREFIX + "locks-sha256/"
"""Leases of keys too long to mirror (S3 caps keys at 1024 bytes): named by a hash."""

_FIRST_DELAY = 0.01  # the first wait for a held lock, doubled after each, up to _MAX_DELAY
_MAX_DELAY = 0.5
_MAX_WRITE_FAILURES = 5  # failed (not refused) lease writes in a row before giving up
_DELETE_WINDOW = 5.0  # seconds a lease must still have for release to delete it (a pause)
_KNOWN_LIMIT = 4096  # lease versions remembered per ResultStore (a cache: forgetting is safe)


class IsolationLevel(str, enum.Enum):
    """How isolated concurrent writers of one result are (Prefect 3's names).

    ``READ_COMMITTED``: readers see whole records only; concurrent writers may
    each compute and write (the last whole record wins). Every store offers it.
    ``SERIALIZABLE``: writers of a key take its lock, so one computes while the
    others wait; only stores with atomic conditional writes offer it.
    """

    READ_COMMITTED = "READ_COMMITTED"
    SERIALIZABLE = "SERIALIZABLE"


def default_holder() -> str:
    """``host:pid:thread`` of the caller: threads of one process are different holders."""
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def lease_key(key: str) -> str:
    """The reserved key of the lease of (validated) ``key``."""
    mirrored = LEASE_PREFIX + key
    if len(mirrored.encode("utf-8")) <= MAX_KEY_BYTES:
        return mirrored
    import hashlib

    return _HASHED_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


def _check_holder(holder: object) -> str:
    if not isinstance(holder, str) or not holder:
        raise ConfigurationError(f"holder must be a non-empty string, not {holder!r}")
    return holder


def _check_seconds(name: str, value: object, *, positive: bool) -> float | None:
    """``value`` as seconds: None, or a finite number (above 0 if ``positive``, else >= 0)."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
        or (positive and value == 0)
    ):
        bound = "above 0" if positive else ">= 0"
        raise ConfigurationError(
            f"{name} must be None or a finite number of seconds {bound}, not {value!r}"
        )
    return float(value)


@dataclass(frozen=True)
class Lease:
    """One lease record, as stored (JSON)."""

    holder: str
    nonce: str
    write: str
    expires: float | None  # wall-clock UTC seconds; None: until released
    released: bool = False

    @staticmethod
    def new(holder: str, hold_timeout: float | None, nonce: str | None = None) -> Lease:
        expires = None if hold_timeout is None else time.time() + hold_timeout
        return Lease(holder, nonce or secrets.token_hex(8), secrets.token_hex(8), expires)

    def released_by(self, holder: str) -> Lease:
        return Lease(holder, self.nonce, secrets.token_hex(8), None, released=True)

    def renewed(self, hold_timeout: float | None) -> Lease:
        expires = None if hold_timeout is None else time.time() + hold_timeout
        return replace(self, write=secrets.token_hex(8), expires=expires)

    def live(self, margin: float, now: float | None = None) -> bool:
        """Held, as others see it: not released, and not past its expiry plus ``margin``."""
        if self.released:
            return False
        return self.expires is None or (time.time() if now is None else now) < self.expires + margin

    def same(self, holder: str, nonce: str | None = None) -> bool:
        """Not released, of ``holder`` (and that acquisition): ours to renew by compare-and-swap."""
        return not self.released and self.holder == holder and nonce in (None, self.nonce)

    def held_by(self, holder: str, nonce: str | None = None) -> bool:
        """Held by ``holder`` (and that acquisition), as the holder sees it: no margin."""
        return (
            not self.released
            and self.holder == holder
            and (nonce is None or self.nonce == nonce)
            and (self.expires is None or time.time() < self.expires)
        )

    def encode(self) -> bytes:
        body = {
            "lease": 1,
            "holder": self.holder,
            "nonce": self.nonce,
            "write": self.write,
            "expires": self.expires,
            "released": self.released,
        }
        return json.dumps(body, separators=(",", ":")).encode()

    @staticmethod
    def decode(data: bytes) -> Lease:
        body = json.loads(data)
        if not isinstance(body, dict) or body.get("lease") != 1:
            raise ValueError("not a lease record")
        expires = body["expires"]
        if expires is not None and not isinstance(expires, (int, float)):
            raise ValueError("bad expiry")
        return Lease(
            str(body["holder"]),
            str(body["nonce"]),
            str(body["write"]),
            None if expires is None else float(expires),
            bool(body["released"]),
        )


class Known(NamedTuple):
    """A lease record and the version it was stored at."""

    version: str
    lease: Lease


class _Lost(Exception):
    """A lease write failed without an answer, and reading back showed it did not land."""


class LockManager:
    """The lease logic of one :class:`ResultStore`; its lock methods are thin calls to this.

    It remembers the version of the lease records it last wrote or read (a
    cache: a stale entry only costs a refused compare-and-swap), so releasing a
    lock it took, or taking again a lock it released, is one write.
    """

    def __init__(self, results: ResultStore) -> None:
        self.results = results
        self._known: dict[str, Known] = {}

    # -- plumbing ----------------------------------------------------------------

    def require(self, what: str = "locks") -> None:
        """Raise one clear line if the store cannot do atomic conditional writes."""
        if not self.results.store.supports_conditional_write:
            raise self.results.store.unsupported(
                f"{what} (they need atomic conditional writes; "
                "supports_isolation_level(SERIALIZABLE) is False)"
            )

    @property
    def margin(self) -> float:
        return float(self.results.lock_clock_margin)

    def _remember(self, key: str, known: Known | None) -> None:
        if known is None:
            self._known.pop(key, None)
            return
        if len(self._known) >= _KNOWN_LIMIT:
            self._known.clear()
        self._known[key] = known

    async def read(self, key: str) -> Known | None:
        """The lease of ``key`` and its version, or None if there is none (retried reads)."""
        results, name = self.results, lease_key(key)
        guard = results._guard("read the lock on", key)

        async def once() -> tuple[bytes, str | None] | None:
            with guard:
                try:
                    reader = await results.store.open(name)
                except ResultNotFoundError:
                    return None
                try:
                    return await reader.read(), reader.version
                finally:
                    await reader.aclose()

        found = await guard.run(results, once)
        if found is None:
            self._remember(key, None)
            return None
        data, version = found
        if version is None:
            raise StorageError(
                f"cannot lock key {key!r} in {results.storage_url}: the store reports no "
                "version for its records, which compare-and-swap needs; fix the store plugin",
                key=key,
                url=results.storage_url,
            )
        try:
            lease = Lease.decode(data)
        except (ValueError, KeyError, TypeError):
            raise IntegrityError(
                f"the lock record of key {key!r} in {results.storage_url} ({name!r}) is damaged; "
                "something other than resultstore wrote there",
                key=key,
                url=results.storage_url,
            ) from None
        known = Known(version, lease)
        self._remember(key, known)
        return known

    async def _put(
        self, key: str, lease: Lease, *, if_absent: bool = False, if_version: str | None = None
    ) -> Known:
        """Write ``lease`` conditionally; returns it with its version.

        Refusals (:class:`ResultExistsError`, :class:`VersionConflictError`) and
        failures without an answer are settled by reading the lease back: if it is
        the one we wrote (its write id), the write landed and we return it. Else a
        refusal is raised as is, and an unanswered failure as :class:`_Lost` (the
        caller decides again from what is there now, in ``self._known``).
        """
        results, name = self.results, lease_key(key)
        guard = results._guard("lock", key)
        payload = Payload([lease.encode()])

        async def once() -> str | None:
            with guard:
                return await results.store.write(
                    name, payload, if_absent=if_absent, if_version=if_version
                )

        try:
            version = await guard.run(results, once, policy=NO_RETRY)
        except ConflictError:
            now = await self.read(key)
            if now is not None and now.lease.write == lease.write:
                return now  # a client retry of a write that had landed was refused
            raise
        except StorageError as exc:
            now = await self.read(key)
            if now is not None and now.lease.write == lease.write:
                return now
            raise _Lost() from exc
        if version is None:  # a store with conditions but no versions: read it back
            now = await self.read(key)
            if now is None or now.lease.write != lease.write:
                raise _Lost()
            return now
        known = Known(version, lease)
        self._remember(key, known)
        return known

    async def _drop(self, key: str, known: Known) -> None:
        """Delete our live lease ``known`` (see the module docstring on when that is safe).

        Tried once: a retry after an answer was lost could delete the lease of a
        holder who took the freed key meanwhile. The lease is read back instead: gone,
        or someone else's, means ours was deleted; still ours raises :class:`_Lost`.
        """
        results, name = self.results, lease_key(key)
        guard = results._guard("unlock", key)

        async def once() -> None:
            with guard:
                await results.store.delete(name)

        try:
            await guard.run(results, once, policy=NO_RETRY)
        except StorageError as exc:
            now = await self.read(key)
            if now is not None and now.lease.same(known.lease.holder, known.lease.nonce):
                raise _Lost() from exc  # still our acquisition's lease: not deleted
            return
        self._remember(key, None)

    # -- the lock operations -----------------------------------------------------------

    async def acquire(
        self,
        key: str,
        holder: str,
        acquire_timeout: float | None,
        hold_timeout: float | None,
        *,
        ready: Callable[[], Awaitable[bool]] | None = None,
    ) -> Known | None:
        """Take the lease of ``key`` for ``holder``; None if ``acquire_timeout`` ran out.

        ``acquire_timeout``: None waits as long as it takes, 0 tries once. With
        ``ready``, it is awaited whenever the lease is seen released or changed
        hands while we wait; if it returns True the wait ends (None) without the
        lock: what we waited for is done.
        """
        self.require()
        deadline = None if acquire_timeout is None else time.monotonic() + acquire_timeout
        delay = _FIRST_DELAY
        failures = 0
        seen: str | None = None  # the version a wait last saw
        checked: str | None = None  # the version ``ready`` was last asked about
        known = self._known.get(key)
        if known is not None and known.lease.live(self.margin) and not known.lease.same(holder):
            known = await self.read(key)  # remembered held by another: look, it may be free now
        while True:
            try:
                if known is None:
                    try:
                        return await self._put(key, Lease.new(holder, hold_timeout), if_absent=True)
                    except ResultExistsError:
                        known = self._known.get(key) or await self.read(key)
                        if known is None:
                            continue  # deleted since: create it again
                lease = known.lease
                if lease.same(holder):  # ours already: renew (acquire is idempotent)
                    return await self._put(
                        key, lease.renewed(hold_timeout), if_version=known.version
                    )
                if not lease.live(self.margin):  # released or expired: take it over
                    if ready is not None and known.version != checked and seen is not None:
                        checked = known.version
                        if await ready():
                            return None
                    return await self._put(
                        key, Lease.new(holder, hold_timeout), if_version=known.version
                    )
            except VersionConflictError:  # it changed since we read it: look again
                known = self._known.get(key)
                continue
            except _Lost as lost:
                failures += 1
                if failures >= _MAX_WRITE_FAILURES:
                    raise lost.__cause__ or StorageError(
                        f"cannot lock key {key!r} in {self.results.storage_url}: "
                        f"{failures} lease writes in a row failed",
                        key=key,
                        url=self.results.storage_url,
                    ) from None
                known = self._known.get(key)
                await _sleep(_jittered(delay))
                continue
            # Held by another holder: wait, but not past its expiry (plus the margin).
            if ready is not None and seen is not None and known.version != seen:
                checked = known.version
                if await ready():
                    return None
            seen = known.version
            pause = _jittered(delay)
            if lease.expires is not None:
                pause = min(pause, max(0.0, lease.expires + self.margin - time.time()) + 0.001)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                pause = min(pause, left)
            await _sleep(pause)
            delay = min(delay * 2, _MAX_DELAY)
            known = await self.read(key)

    async def release(self, key: str, holder: str) -> None:
        """Release ``holder``'s lease of ``key`` (a delete, or near its expiry a tombstone).

        Raises :class:`LockNotHeldError` if ``holder`` does not hold it. A lease of
        ``holder`` that has expired but was not taken over is released quietly.
        """
        self.require()
        known = self._known.get(key)
        fresh = False  # known was read in this call, not remembered from before
        if known is None or known.lease.holder != holder or known.lease.released:
            known, fresh = await self.read(key), True
        failures = 0
        # Our lease, whose release may have landed without an answer. Reading back may
        # then show another holder's record already: while our lease had not expired,
        # only our own release can have let them in.
        unsure: Lease | None = None
        while True:
            if known is None or known.lease.released or known.lease.holder != holder:
                if unsure is not None and (unsure.expires is None or time.time() < unsure.expires):
                    return
                raise self._not_held(key, holder, known, "release")
            expires = known.lease.expires
            if expires is None or time.time() < expires - max(_DELETE_WINDOW, self.margin):
                try:
                    await self._drop(key, known)
                    return
                except _Lost as lost:
                    failures += 1
                    if failures >= _MAX_WRITE_FAILURES:
                        raise lost.__cause__ or lost from None
                    known = self._known.get(key)
                    continue
            try:
                await self._put(key, known.lease.released_by(holder), if_version=known.version)
                return
            except VersionConflictError:
                if fresh:  # it was ours a moment ago: a client retry of a landed write, maybe
                    unsure = known.lease
                known, fresh = await self.read(key), True
            except _Lost as lost:
                unsure = known.lease
                failures += 1
                if failures >= _MAX_WRITE_FAILURES:
                    raise lost.__cause__ or lost from None
                known = self._known.get(key)

    async def renew(self, key: str, held: Known, hold_timeout: float) -> Known:
        """Extend the lease ``held``; raises :class:`LockNotHeldError` if it was lost."""
        known = held
        failures = 0
        while True:
            try:
                return await self._put(
                    key, known.lease.renewed(hold_timeout), if_version=known.version
                )
            except (VersionConflictError, _Lost) as exc:
                if isinstance(exc, _Lost):
                    failures += 1
                    if failures >= _MAX_WRITE_FAILURES:
                        raise exc.__cause__ or StorageError(
                            f"cannot renew the lock on key {key!r}", key=key
                        ) from None
                now = self._known.get(key) or await self.read(key)
                if now is None or not now.lease.same(held.lease.holder, held.lease.nonce):
                    raise self._not_held(key, held.lease.holder, now, "renew") from None
                known = now  # our lease at another version (a renewal whose answer was lost)

    async def is_locked(self, key: str) -> bool:
        self.require()
        known = await self.read(key)
        return known is not None and known.lease.live(self.margin)

    async def is_holder(self, key: str, holder: str) -> bool:
        self.require()
        known = await self.read(key)
        return known is not None and known.lease.held_by(holder)

    async def wait(self, key: str, timeout: float | None) -> bool:
        """Wait until ``key`` is not locked; False if ``timeout`` seconds passed first."""
        self.require()
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = _FIRST_DELAY
        while True:
            known = await self.read(key)
            if known is None or not known.lease.live(self.margin):
                return True
            pause = _jittered(delay)
            if known.lease.expires is not None:
                left_on_lease = known.lease.expires + self.margin - time.time()
                pause = min(pause, max(0.0, left_on_lease) + 0.001)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                pause = min(pause, left)
            await _sleep(pause)
            delay = min(delay * 2, _MAX_DELAY)

    async def check_writer(self, key: str, holder: str) -> None:
        """Refuse a write by ``holder`` while another holder holds ``key``'s lock."""
        self.require("write(holder=...)")
        known = await self.read(key)
        if known is not None and known.lease.live(self.margin) and known.lease.holder != holder:
            raise LockHeldError(
                f"cannot write key {key!r} in {self.results.storage_url}: its lock is held by "
                f"{known.lease.holder!r}, not {holder!r}; acquire the lock first, or wait "
                "for it (wait_for_lock)",
                key=key,
                url=self.results.storage_url,
            )

    def _not_held(
        self, key: str, holder: str, known: Known | None, action: str
    ) -> LockNotHeldError:
        url = self.results.storage_url
        if known is None or known.lease.released:
            why = "it is not locked"
        elif known.lease.holder == holder:
            why = "its lease was taken over after it expired"
        else:
            why = f"it is held by {known.lease.holder!r}"
        hint = (
            "only its holder can release it; pass the holder that acquired it"
            if action == "release"
            else "it expired before it could be renewed (raise hold_timeout)"
        )
        return LockNotHeldError(
            f"cannot {action} the lock on key {key!r} in {url}: {holder!r} does not hold it "
            f"({why}); {hint}",
            key=key,
            url=url,
        )

    # -- context managers ---------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def alock(
        self,
        key: str,
        holder: str,
        hold_timeout: float | None,
        acquire_timeout: float | None,
    ) -> AsyncIterator[None]:
        if await self.acquire(key, holder, acquire_timeout, hold_timeout) is None:
            raise self._timed_out(key, acquire_timeout)
        try:
            yield
        except BaseException:
            import anyio

            with anyio.CancelScope(shield=True):  # released even when cancelled
                await self._release_after_error(key, holder)
            raise
        await self.release(key, holder)

    @contextlib.contextmanager
    def lock(
        self,
        key: str,
        holder: str,
        hold_timeout: float | None,
        acquire_timeout: float | None,
    ) -> Iterator[None]:
        from resultstore._loops import run_sync

        if run_sync(self.acquire(key, holder, acquire_timeout, hold_timeout)) is None:
            raise self._timed_out(key, acquire_timeout)
        try:
            yield
        except BaseException:
            run_sync(self._release_after_error(key, holder))
            raise
        run_sync(self.release(key, holder))

    async def _release_after_error(self, key: str, holder: str) -> None:
        """Release after the locked block raised: its exception matters more than ours."""
        try:
            await self.release(key, holder)
        except Exception as exc:
            logger.warning("could not release the lock on key %r after an error: %s", key, exc)

    def _timed_out(self, key: str, acquire_timeout: float | None) -> LockTimeoutError:
        url = self.results.storage_url
        return LockTimeoutError(
            f"cannot lock key {key!r} in {url}: another holder kept it for "
            f"acquire_timeout={acquire_timeout:g} s; wait longer, or find who holds it "
            "(is_locked)",
            key=key,
            url=url,
        )

    # -- compute once --------------------------------------------------------------------

    async def fresh(self, key: str) -> tuple[ResultRecord[Any] | None, str | None]:
        """The record under ``key`` if it exists and has not expired, else (None, its version).

        The version is that of an expired record (to replace it by compare-and-swap),
        or None when there is no record.
        """
        from resultstore.result_store import _Guard

        results = self.results
        try:
            record = await _Guard.bounded(results, "read", key, lambda: results._read_once(key))
        except ResultNotFoundError:
            return None, None
        if record.metadata.is_expired():
            return None, record.metadata.version
        return record, None

    async def begin(
        self, key: str, holder: str, hold_timeout: float
    ) -> tuple[ResultRecord[Any] | None, Known | None, str | None]:
        """Wait for ``key``: its fresh record (someone computed it), or our lease to compute it.

        Returns (record, None, None) or (None, lease, version of an expired record).
        """
        found: list[ResultRecord[Any]] = []

        async def ready() -> bool:
            record, _ = await self.fresh(key)
            if record is not None:
                found.append(record)
            return record is not None

        while True:
            held = await self.acquire(key, holder, None, hold_timeout, ready=ready)
            if held is None:
                if found:
                    return found[0], None, None
                continue  # pragma: no cover - ready() said yes; only found[] can say so
            record, prior = await self.fresh(key)  # written while we waited?
            if record is not None:
                await self._release_quietly(key, holder)
                return record, None, None
            return None, held, prior

    async def publish(
        self, key: str, value: Any, expiration: datetime.datetime | None, prior: str | None
    ) -> Any:
        """Write the computed ``value`` unless a fresh record came first; returns the stored one.

        The write is conditional (create-only, or compare-and-swap over the expired
        record ``prior``), so a computation that lost its lease never overwrites a
        result another caller wrote: every caller returns the one stored value.
        """
        results = self.results
        failed: StorageError | None = None
        for _ in range(_MAX_WRITE_FAILURES):
            try:
                await results.awrite(
                    value, key, expiration, if_absent=prior is None, if_version=prior
                )
                return value
            except ConflictError:  # a fresh record got there first, or an expired one changed
                pass
            except StorageError as exc:  # no answer: it may have landed; look
                failed = exc
            record, prior = await self.fresh(key)
            if record is not None:
                return record.result  # ours (landed without an answer) or the first writer's
        raise failed or StorageError(
            f"cannot write key {key!r} in {results.storage_url}: it kept changing under "
            f"{_MAX_WRITE_FAILURES} conditional writes of the computed result; try again",
            key=key,
            url=results.storage_url,
        )

    async def _release_quietly(self, key: str, holder: str) -> None:
        try:
            await self.release(key, holder)
        except LockNotHeldError as exc:  # lost while computing: documented, not an error
            logger.warning("%s", exc)

    async def aget_or_compute(
        self,
        key: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        expiration: datetime.datetime | None,
        hold_timeout: float,
    ) -> Any:
        """The slow path of :meth:`ResultStore.aget_or_compute`: the caller found no record."""
        self.require("get_or_compute")
        holder = f"{default_holder()}:{secrets.token_hex(4)}"
        record, held, prior = await self.begin(key, holder, hold_timeout)
        if record is not None:
            return record.result
        assert held is not None
        import anyio

        renewer = _Renewer(self, key, held, hold_timeout)
        error: Exception | None = None
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(renewer.arun)
                try:
                    if _is_async(fn):
                        value = await fn(*args, **kwargs)
                    else:  # in a thread: the loop stays free to renew the lease
                        value = await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))
                        if inspect.isawaitable(value):
                            value = await value
                except Exception as exc:  # raised after the task group, not wrapped in a group
                    error = exc
                finally:
                    tasks.cancel_scope.cancel()
            if error is not None:
                raise error
            return await self.publish(key, value, expiration, prior)
        finally:
            with anyio.CancelScope(shield=True):
                await self._release_quietly(key, holder)

    def get_or_compute(
        self,
        key: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        expiration: datetime.datetime | None,
        hold_timeout: float,
    ) -> Any:
        """The slow path of :meth:`ResultStore.get_or_compute`: the caller found no record."""
        from resultstore._loops import run_sync

        self.require("get_or_compute")
        holder = f"{default_holder()}:{secrets.token_hex(4)}"
        record, held, prior = run_sync(self.begin(key, holder, hold_timeout))
        if record is not None:
            return record.result
        assert held is not None
        try:
            with _Renewer(self, key, held, hold_timeout).thread():
                value = fn(*args, **kwargs)
                if inspect.isawaitable(value):
                    value = run_sync(_awaited(value))
            return run_sync(self.publish(key, value, expiration, prior))
        finally:
            run_sync(self._release_quietly(key, holder))


class _Renewer:
    """Renews a lease every third of its hold timeout while a computation runs.

    If a renewal finds the lease lost (it expired, say after a long pause, and
    another caller took it over) it stops and logs a warning: the computation
    goes on, and the other caller may compute the same result too. Each
    publishes with a conditional write, so the first record stays and both
    return it: a result may be computed twice, never torn or overwritten.
    """

    def __init__(self, manager: LockManager, key: str, held: Known, hold_timeout: float) -> None:
        self.manager, self.key, self.held = manager, key, held
        self.hold_timeout = hold_timeout
        self.interval = hold_timeout / 3

    async def _renew(self) -> bool:
        """One renewal; False when the lease is lost (stop renewing)."""
        try:
            self.held = await self.manager.renew(self.key, self.held, self.hold_timeout)
        except LockNotHeldError as exc:
            logger.warning("%s; the result may be computed twice", exc)
            return False
        except Exception as exc:  # unreachable for now, say: try again at the next interval
            logger.warning("could not renew the lock on key %r: %s", self.key, exc)
        return True

    async def arun(self) -> None:
        while True:
            await _sleep(self.interval)
            if not await self._renew():
                return

    @contextlib.contextmanager
    def thread(self) -> Iterator[None]:
        """Renew on time from a daemon thread (a sync computation blocks its caller's loop).

        The renewals themselves run on one process-wide worker thread, whose event
        loop keeps its storage clients: a fresh thread would connect (and, on S3,
        make a client) for every computation's first renewal.
        """
        from resultstore._loops import run_sync

        stop = threading.Event()

        def run() -> None:
            while not stop.wait(self.interval):
                if not _renewals().submit(run_sync, self._renew()).result():
                    return

        worker = threading.Thread(target=run, name=f"resultstore-renew {self.key}", daemon=True)
        worker.start()
        try:
            yield
        finally:
            stop.set()
            worker.join()


_renewal_pool: ThreadPoolExecutor | None = None
_renewal_lock = threading.Lock()


def _renewals() -> ThreadPoolExecutor:
    """The process's renewal worker: one thread, made on first use (again after a fork)."""
    global _renewal_pool
    with _renewal_lock:
        if _renewal_pool is None:
            _renewal_pool = ThreadPoolExecutor(1, thread_name_prefix="resultstore-renewals")
        return _renewal_pool


def _forget_renewals() -> None:
    global _renewal_pool
    _renewal_pool = None  # the parent's worker thread does not exist in a forked child


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_renewals)


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object whose __call__ is async
    )


async def _awaited(value: Awaitable[T]) -> T:
    return await value


def _jittered(delay: float) -> float:
    """``delay`` with equal jitter: between half of it and all of it."""
    return delay / 2 + random.uniform(0, delay / 2)


async def _sleep(seconds: float) -> None:
    import anyio

    await anyio.sleep(seconds)
