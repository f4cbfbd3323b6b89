"""Whole-store operations: scan, verify, copy and expire every record under a prefix.

They stream: keys come from the store's listing in batches, each batch's headers
are read concurrently (ranged reads: a header is a few hundred bytes whatever the
record's size), and nothing grows with the number of records but the counts in
the summary and the keys that failed. The CLI's ``ls``, ``check``, ``copy`` and
``gc`` are thin layers over these functions, which :class:`~resultstore.ResultStore`
also offers as methods (``scan``, ``verify_all``, ``copy_all``, ``delete_expired``,
each with its ``a``-prefixed async twin).

Honest outcomes: a record that cannot be read because it is damaged is reported
(an entry with its error) and the operation goes on; a store that cannot be
reached, a missing bucket or a denied request raises, so no operation reports
"0 records" for storage it could not see. A record deleted while the operation
runs is left out.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypeVar

from resultstore._defaults import DEFAULT_CONCURRENCY
from resultstore._defaults import DELETE_BATCH as DELETE_BATCH  # expiry uses it too
from resultstore._loops import each
from resultstore.errors import (
    ConfigurationError,
    IntegrityError,
    InvalidKeyError,
    ResultNotFoundError,
    SignatureError,
)
from resultstore.keys import RESERVED_PREFIX
from resultstore.records import ResultMetadata, utc
from resultstore.stores.base import Listed

if TYPE_CHECKING:  # anyio is imported on first use: `import resultstore` stays light
    import anyio

    from resultstore.result_store import ResultStore

__all__ = [
    "DEFAULT_CONCURRENCY",
    "CheckSummary",
    "CopySummary",
    "GcSummary",
    "Outcome",
    "Progress",
    "RecordOutcome",
    "ScanEntry",
    "ascan",
    "ascan_batches",
    "acopy_all",
    "adelete_expired",
    "averify_all",
]

T = TypeVar("T")

_BATCH_PER_WORKER = 8  # keys taken from the listing per batch, per concurrent worker
_FIRST_BATCH = 16  # keys of the first batch (the next ones grow four-fold)
_LARGE = 64 * 1024 * 1024  # records this big are verified or copied one at a time

Outcome = Literal[
    "ok", "damaged", "refused", "copied", "skipped", "would-copy", "deleted", "would-delete"
]


@dataclass(frozen=True, slots=True)
class ScanEntry:
    """One record found by a scan: its metadata, or the error that makes it unreadable."""

    key: str
    metadata: ResultMetadata | None = None
    error: IntegrityError | None = None

    @property
    def damaged(self) -> bool:
        """True when the record's header could not be read back intact."""
        return self.error is not None


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    """What a bulk operation did with one record, as handed to its ``progress`` callback."""

    key: str
    outcome: Outcome
    size: int = 0
    error: IntegrityError | None = None


Progress = Callable[[RecordOutcome], None]


@dataclass(slots=True)
class CheckSummary:
    """What :func:`averify_all` found."""

    storage_url: str
    checked: int = 0
    ok: int = 0
    bytes_checked: int = 0
    failed: dict[str, IntegrityError] = field(default_factory=dict)
    signatures_verified: bool = False


@dataclass(slots=True)
class CopySummary:
    """What :func:`acopy_all` did (or, with ``dry_run``, would do)."""

    source_url: str
    destination_url: str
    copied: int = 0
    skipped: int = 0
    bytes_copied: int = 0
    damaged: dict[str, IntegrityError] = field(default_factory=dict)
    dry_run: bool = False


@dataclass(slots=True)
class GcSummary:
    """What :func:`adelete_expired` did (or, with ``dry_run``, would do)."""

    storage_url: str
    scanned: int = 0
    expired: int = 0
    deleted: int = 0
    bytes_freed: int = 0
    """The payload sizes of the records deleted, from their headers; the objects' whole
    sizes for those a listing settled without a read (:mod:`resultstore.expiry`)."""
    damaged: list[str] = field(default_factory=list)
    dry_run: bool = False
    indexed: bool = False
    """True when the expiry index chose what to read (``scanned`` counts its entries)."""


@dataclass(slots=True)
class Doomed:
    """Keys gc deletes in batches, and the outcomes it reports once their batch is gone."""

    store: ResultStore
    summary: GcSummary
    progress: Progress | None
    keys: list[str] = field(default_factory=list)
    outcomes: list[RecordOutcome] = field(default_factory=list)
    reported: set[str] = field(default_factory=set)
    """Records already counted (expired or damaged): a key that several due index
    entries name (written again with another expiration) is counted once."""

    async def flush(self) -> None:
        """Delete the keys gathered so far (one batched request per 1,000), then report."""
        keys, outcomes = self.keys, self.outcomes
        self.keys, self.outcomes = [], []
        # Records first, then (once they are gone) index entries: an interrupted gc never
        # leaves a record without its entry. Each sorted, so that a batch keeps to one
        # folder where it can (S3 servers delete neighbours faster than keys spread out).
        records = sorted(key for key in keys if not key.startswith(RESERVED_PREFIX))
        entries = sorted(key for key in keys if key.startswith(RESERVED_PREFIX))
        for group in (records, entries):
            if group:
                await self.store._adelete_raw(group)
        self.summary.deleted += len(outcomes)
        if self.progress is not None:
            for outcome in outcomes:
                self.progress(outcome)


def _check_concurrency(concurrency: object) -> int:
    if type(concurrency) is not int or not 1 <= concurrency <= 1024:
        raise ConfigurationError(
            f"concurrency must be an integer from 1 to 1024, not {concurrency!r}"
        )
    return concurrency


async def _batches(store: ResultStore, prefix: str, size: int) -> AsyncIterator[list[str]]:
    """The keys under ``prefix`` in listing order, in batches growing to ``size``.

    The first batches are small, so the first entries come after a few header
    reads (``ls`` shows its first lines at once); later ones are larger, so the
    readers seldom wait for a batch's slowest read.
    """
    batch: list[str] = []
    goal = min(size, _FIRST_BATCH)
    async for page in store._akey_pages(prefix):
        batch.extend(page)
        while len(batch) >= goal:
            yield batch[:goal]
            del batch[:goal]
            goal = min(size, goal * 4)
    if batch:
        yield batch


async def _headers(store: ResultStore, keys: list[str], concurrency: int) -> list[ScanEntry]:
    """The scan entries of ``keys``, in their order; keys deleted meanwhile are left out."""
    found: dict[str, ScanEntry] = {}

    async def read(key: str) -> None:
        try:
            found[key] = ScanEntry(key, metadata=await store.aread_metadata(key))
        except ResultNotFoundError:
            pass  # deleted since it was listed
        except IntegrityError as exc:
            found[key] = ScanEntry(key, error=exc)
        except InvalidKeyError as exc:
            # Stored under a key no key may be (by another tool, or before a key rule):
            # unreadable through resultstore, so reported and skipped as damage is.
            found[key] = ScanEntry(
                key,
                error=IntegrityError(
                    f"cannot read the record listed in storage under an {exc.message} (a key "
                    "written by another tool or an older release): delete or rename it with "
                    "the storage's own tools",
                    key=key,
                    url=store.storage_url,
                ),
            )

    await each(keys, read, concurrency)
    return [found[key] for key in keys if key in found]


LISTING_BUDGET = 10
"""Keys a range listing may read per key it looks for, before the rest are read one by one."""


async def listed_between(store: ResultStore, prefix: str, keys: list[str]) -> dict[str, Listed]:
    """What ``store``'s listing shows of ``keys`` (sorted, each under ``prefix``), by key.

    One listing from just before the first key, stopped once past the last, or after
    :data:`LISTING_BUDGET` keys per key looked for (where many other keys lie between
    them). Keys it did not reach, or that a listing out of key order did not show, are
    missing from the answer: callers read those records instead, so the answer may be
    incomplete but never wrong.
    """
    wanted = set(keys)
    found: dict[str, Listed] = {}
    budget = LISTING_BUDGET * len(keys) + 1000
    after = keys[0][:-1] if len(keys[0]) > len(prefix) else None
    async for page in store._adetail_pages(prefix, start_after=after):
        for item in page:
            if item.key > keys[-1]:
                return found
            if item.key in wanted:
                found[item.key] = item
        budget -= len(page)
        if budget <= 0 or len(found) == len(wanted):
            break
    return found


# -- the operations -----------------------------------------------------------------------


async def ascan(
    store: ResultStore, prefix: str = "", *, concurrency: int = DEFAULT_CONCURRENCY
) -> AsyncIterator[ScanEntry]:
    """Yield an entry for every record under ``prefix``, in the store's listing order.

    Headers are read ``concurrency`` at a time, in batches, so the first entries
    come after one batch and memory stays bounded whatever the store holds.
    Damaged records are yielded with their error; records deleted meanwhile are
    left out; unreachable storage raises.
    """
    async for entries in ascan_batches(store, prefix, concurrency=concurrency):
        for entry in entries:
            yield entry


async def ascan_batches(
    store: ResultStore, prefix: str = "", *, concurrency: int = DEFAULT_CONCURRENCY
) -> AsyncIterator[list[ScanEntry]]:
    """:func:`ascan`, a batch of entries at a time (what the sync ``scan`` steps through)."""
    concurrency = _check_concurrency(concurrency)
    async for keys in _batches(store, prefix, concurrency * _BATCH_PER_WORKER):
        if entries := await _headers(store, keys, concurrency):
            yield entries


def _lock() -> anyio.Lock:
    import anyio

    return anyio.Lock()


async def _one_large_at_a_time(size: int, large: anyio.Lock, work: Awaitable[T]) -> T:
    """Await ``work``; records of ``_LARGE`` bytes or more wait for each other."""
    if size < _LARGE:
        return await work
    async with large:
        return await work


def _unverifiable_prefect_record(store: ResultStore, key: str) -> IntegrityError:
    from resultstore.prefect import unverifiable

    return unverifiable(key, store.storage_url)


async def averify_all(
    store: ResultStore,
    prefix: str = "",
    *,
    require_signed: bool = False,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: Progress | None = None,
) -> CheckSummary:
    """Read and verify every record under ``prefix`` (framing, checksum, signature).

    Nothing is deserialized. With ``require_signed``, a record that is unsigned, or
    whose signature cannot be checked because ``store`` has no signing key, fails
    with a :class:`SignatureError`. Records of 64 MiB or more are verified one at a
    time, the rest ``concurrency`` at a time, so memory stays bounded.
    """
    concurrency = _check_concurrency(concurrency)
    summary = CheckSummary(store.storage_url, signatures_verified=store.signed)
    large = _lock()

    def done(key: str, outcome: Outcome, size: int, error: IntegrityError | None) -> None:
        summary.checked += 1
        if error is None:
            summary.ok += 1
            summary.bytes_checked += size
        else:
            summary.failed[key] = error
        if progress is not None:
            progress(RecordOutcome(key, outcome, size, error))

    async def verify(entry: ScanEntry) -> None:
        if entry.metadata is None:
            assert entry.error is not None
            done(entry.key, "damaged", 0, entry.error)
            return
        size = entry.metadata.size
        if entry.metadata.serializer.startswith("prefect:"):  # read in place, no checksum
            done(entry.key, "refused", size, _unverifiable_prefect_record(store, entry.key))
            return
        try:
            metadata = await _one_large_at_a_time(size, large, store.averify(entry.key))
            if require_signed and not store.signed:
                why = "its signature cannot be verified" if metadata.signed else "it is not signed"
                raise SignatureError(
                    f"record {entry.key!r} in {store.storage_url}: {why} (no signing key "
                    "configured; set RESULTSTORE_SIGNING_KEY)",
                    key=entry.key,
                    url=store.storage_url,
                )
        except ResultNotFoundError:
            return  # deleted meanwhile
        except SignatureError as exc:
            done(entry.key, "refused", size, exc)
        except IntegrityError as exc:
            done(entry.key, "damaged", size, exc)
        else:
            done(entry.key, "ok", size, None)

    async for keys in _batches(store, prefix, concurrency * _BATCH_PER_WORKER):
        await each(await _headers(store, keys, concurrency), verify, concurrency)
    return summary


async def acopy_all(
    source: ResultStore,
    destination: ResultStore,
    prefix: str = "",
    *,
    skip_existing: bool = True,
    dry_run: bool = False,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: Progress | None = None,
) -> CopySummary:
    """Copy every record under ``prefix`` from ``source`` to ``destination``, byte-exact.

    Each copy is verified before and after (checksums and signatures stay valid).
    With ``skip_existing`` (the default) a record the destination already holds
    with the same checksum, size and serializer is skipped. Where both stores'
    listings show content MD5s (S3), a record listed with the same MD5 and size on
    both sides is skipped without being read at all, so a second copy of an
    unchanged store costs a listing of each; the others are compared by their
    headers. Damaged source records are reported and not copied (a damaged record
    the destination already holds byte for byte is skipped: ``check`` finds it).
    Copying a store onto itself, or into or out of a location inside it, is refused
    before anything is read.
    """
    from resultstore.references import overlapping

    concurrency = _check_concurrency(concurrency)
    if overlapping(source.storage_url, destination.storage_url):
        raise ConfigurationError(
            f"cannot copy {source.storage_url} to {destination.storage_url}: one is inside "
            "the other, so the copy would read its own writes; pick another destination"
        )
    summary = CopySummary(source.storage_url, destination.storage_url, dry_run=dry_run)
    large = _lock()

    def done(key: str, outcome: Outcome, size: int, error: IntegrityError | None = None) -> None:
        if outcome in ("copied", "would-copy"):
            summary.copied += 1
            summary.bytes_copied += size
        elif outcome == "skipped":
            summary.skipped += 1
        elif error is not None:
            summary.damaged[key] = error
        if progress is not None:
            progress(RecordOutcome(key, outcome, size, error))

    async def unchanged(metadata: ResultMetadata) -> bool:
        try:
            there = await destination.aread_metadata(metadata.storage_key)
        except (ResultNotFoundError, IntegrityError):
            return False  # missing, or damaged there: copy it again
        return (there.checksum, there.size, there.serializer) == (
            metadata.checksum,
            metadata.size,
            metadata.serializer,
        )

    async def copy(entry: ScanEntry) -> None:
        if entry.metadata is None:
            assert entry.error is not None
            done(entry.key, "damaged", 0, entry.error)
            return
        size = entry.metadata.size
        if skip_existing and await unchanged(entry.metadata):
            done(entry.key, "skipped", size)
            return
        if dry_run:
            done(entry.key, "would-copy", size)
            return
        try:
            await _one_large_at_a_time(size, large, source.acopy_to(entry.key, destination))
        except ResultNotFoundError:
            return  # deleted meanwhile
        except IntegrityError as exc:
            done(entry.key, "damaged", size, exc)
        else:
            done(entry.key, "copied", size)

    async def identical(page: list[Listed]) -> set[str]:
        """The keys of ``page`` the destination's listing shows with the same MD5 and size."""
        keys = sorted(item.key for item in page if item.md5 is not None)
        if not keys:
            return set()
        there = await listed_between(destination, prefix, keys)
        return {
            item.key
            for item in page
            if item.md5 is not None
            and (copy := there.get(item.key)) is not None
            and (copy.md5, copy.size) == (item.md5, item.size)
        }

    batch = concurrency * _BATCH_PER_WORKER
    keys: list[str] = []
    async for page in source._adetail_pages(prefix):
        same = await identical(page) if skip_existing else set()
        for item in page:
            if item.key in same:  # byte for byte what the destination holds: not even read
                done(item.key, "skipped", item.size or 0)
            else:
                keys.append(item.key)
        while len(keys) >= batch:
            await each(await _headers(source, keys[:batch], concurrency), copy, concurrency)
            del keys[:batch]
    if keys:
        await each(await _headers(source, keys, concurrency), copy, concurrency)
    return summary


async def adelete_expired(
    store: ResultStore,
    prefix: str = "",
    *,
    dry_run: bool = False,
    full: bool = False,
    now: datetime.datetime | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: Progress | None = None,
) -> GcSummary:
    """Delete every record under ``prefix`` whose expiration has passed (at ``now``).

    By default the expiry index (:mod:`resultstore.expiry`) says which records may
    be due, and only their headers are read: the cost follows what expired. With
    ``full``, every record's header is read (ranged and concurrent) instead, which
    also finds expired records the index does not know (written before it existed,
    or by other tools). Either way a record is deleted only once its own header
    says it has expired, in batches (one DeleteObjects request per 1,000 keys on
    S3), and damaged records are reported, never deleted.
    """
    from resultstore.expiry import adelete_expired as indexed
    from resultstore.expiry import expected_entries

    concurrency = _check_concurrency(concurrency)
    moment = utc(now) if now is not None else datetime.datetime.now(datetime.timezone.utc)
    if not full:
        return await indexed(
            store,
            prefix,
            dry_run=dry_run,
            now=moment,
            concurrency=concurrency,
            progress=progress,
        )
    summary = GcSummary(store.storage_url, dry_run=dry_run)
    doomed = Doomed(store, summary, progress)  # expired records, and their index entries

    async for entry in ascan(store, prefix, concurrency=concurrency):
        summary.scanned += 1
        metadata = entry.metadata
        if metadata is None:
            summary.damaged.append(entry.key)
            continue
        if not metadata.is_expired(moment) or metadata.serializer.startswith("prefect:"):
            continue  # a Prefect record (read in place) is another tool's: never deleted
        summary.expired += 1
        summary.bytes_freed += metadata.size
        if dry_run:
            if progress is not None:
                progress(RecordOutcome(metadata.storage_key, "would-delete", metadata.size))
            continue
        doomed.outcomes.append(RecordOutcome(metadata.storage_key, "deleted", metadata.size))
        doomed.keys.append(metadata.storage_key)
        doomed.keys.extend(expected_entries(metadata))
        if len(doomed.keys) >= DELETE_BATCH:
            await doomed.flush()
    if doomed.keys:
        await doomed.flush()
    return summary
