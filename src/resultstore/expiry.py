"""The expiry index: where ``gc`` finds the records that are due without reading the rest.

Every write with an expiration first writes a small index entry under
``.resultstore/expiry/<hour>/k/<key>``, where ``<hour>`` (``YYYYMMDDHH``, UTC) is the
later of the record's expiration hour and the hour it was written (its ``created``
time). :func:`adelete_expired` then lists only the hours that have come due since the
last collection (a watermark kept at ``.resultstore/expiry/watermark``) and reads the
header of each record named there, so its cost follows what expired, not the size of
the store. Keys too long to fit below the index prefix are indexed under
``h/<hash>``, with the key in the entry's body.

**Guarantees.** The index only ever *suggests*: a record is deleted only after its
own header, read back, says it has expired, so a lost, damaged, stale or forged
entry can never delete a live record. The entry is written before the record, so a
record with an expiration always has one unless someone removes it; records that
have none (written before the index existed, by another tool, or whose entry was
removed) are found by a full collection (``delete_expired(full=True)``, ``resultstore
gc --full``), which reads every header as before. Entries left behind by overwrites
or deletes are removed when their hour comes due.

**Clocks.** Hours come from the writer's clock and from the collector's: a writer
whose clock is more than an hour behind the collector's may index a record in an
hour the collector has already passed; that record then waits for a full collection.
The watermark trails the collector's clock by two hours to leave that slack.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import xxhash

from resultstore.errors import IntegrityError, InvalidKeyError, ResultNotFoundError
from resultstore.keys import MAX_KEY_BYTES, RESERVED_PREFIX
from resultstore.records import ResultMetadata, utc
from resultstore.stores.base import Payload

if TYPE_CHECKING:
    from resultstore.bulk import GcSummary, Progress
    from resultstore.result_store import ResultStore

__all__ = ["INDEX_PREFIX", "entry_key", "write_entry"]

INDEX_PREFIX = f"{RESERVED_PREFIX}expiry/"
WATERMARK_KEY = f"{INDEX_PREFIX}watermark"
_HOUR = "%Y%m%d%H"
_SLACK_HOURS = 2  # the watermark trails the collector's clock by this much
_MAX_HOURS_LISTED = 24 * 7  # further behind than this, one listing of the whole index
_ONE_HOUR = datetime.timedelta(hours=1)


def _hour(moment: datetime.datetime) -> str:
    return utc(moment).strftime(_HOUR)


def _parse_hour(text: str) -> datetime.datetime | None:
    try:
        return datetime.datetime.strptime(text, _HOUR).replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return None


def entry_key(key: str, expiration: datetime.datetime, created: datetime.datetime) -> str:
    """The index entry of a record under ``key`` with that expiration, written at ``created``."""
    hour = max(_hour(expiration), _hour(created))
    direct = f"{INDEX_PREFIX}{hour}/k/{key}"
    if len(direct.encode()) <= MAX_KEY_BYTES:
        return direct
    return f"{INDEX_PREFIX}{hour}/h/{xxhash.xxh3_128_hexdigest(key.encode())}"


def expected_entry(metadata: ResultMetadata) -> str | None:
    """The entry a record's own write made, from its header; None without an expiration."""
    if metadata.expiration is None:
        return None
    return entry_key(metadata.storage_key, metadata.expiration, metadata.created)


async def write_entry(
    store: ResultStore, key: str, expiration: datetime.datetime, created: datetime.datetime
) -> None:
    """Index a record about to be written (before it is: see the module docstring)."""
    name = entry_key(key, expiration, created)
    body = json.dumps({"key": key, "expiration": utc(expiration).isoformat()}).encode()
    payload = Payload([body])
    guard = store._guard("index the expiration of", key)

    async def once() -> None:
        with guard:
            await store.store.write(name, payload)

    await guard.run(store, once)


async def _listing(store: ResultStore, prefix: str) -> AsyncIterator[str]:
    """The index entries under ``prefix`` (a reserved prefix, which ``akeys`` refuses)."""
    async for name in store._alisting(prefix, hide_reserved=False):
        yield name


async def _read_small(store: ResultStore, name: str, what: str) -> bytes | None:
    """The body of one of resultstore's own small records; None if there is none."""
    guard = store._guard(what, name)

    async def once() -> bytes | None:
        with guard:
            try:
                reader = await store.store.open(name, start=0, end=4096)
            except ResultNotFoundError:
                return None
            try:
                data: bytes = await reader.read(4096)
                return data
            finally:
                await reader.aclose()

    return await guard.run(store, once)


async def _watermark(store: ResultStore) -> datetime.datetime | None:
    """The hour up to which every entry has been collected; None if unknown."""
    data = await _read_small(store, WATERMARK_KEY, "read the gc watermark")
    if data is None:
        return None
    try:
        hour = json.loads(data)["hour"]
    except (ValueError, KeyError, TypeError):
        return None  # damaged: list the whole index, which is always correct
    return _parse_hour(hour) if isinstance(hour, str) else None


async def _set_watermark(store: ResultStore, hour: datetime.datetime) -> None:
    payload = Payload([json.dumps({"hour": _hour(hour)}).encode()])
    guard = store._guard("write the gc watermark", WATERMARK_KEY)

    async def once() -> None:
        with guard:
            await store.store.write(WATERMARK_KEY, payload)

    await guard.run(store, once)


async def _due_entries(
    store: ResultStore, now: datetime.datetime, since: datetime.datetime | None
) -> AsyncIterator[str]:
    """Index entries of hours up to ``now``'s, after ``since`` (the watermark) if known."""
    current = _parse_hour(_hour(now))
    assert current is not None
    if since is None or (current - since) / _ONE_HOUR > _MAX_HOURS_LISTED:
        async for name in _listing(store, INDEX_PREFIX):
            hour = _parse_hour(name[len(INDEX_PREFIX) :].split("/", 1)[0])
            if hour is not None and hour <= current and name != WATERMARK_KEY:
                yield name
        return
    hour = since + _ONE_HOUR
    while hour <= current:
        async for name in _listing(store, f"{INDEX_PREFIX}{_hour(hour)}/"):
            yield name
        hour += _ONE_HOUR


async def _entry_target(store: ResultStore, name: str) -> str | None:
    """The user key an entry names; None for an entry that is not one of ours."""
    rest = name[len(INDEX_PREFIX) :].split("/", 2)
    if len(rest) != 3:
        return None
    _, kind, tail = rest
    if kind == "k":
        return tail
    if kind != "h":
        return None
    data = await _read_small(store, name, "read the expiry index entry")
    try:
        key = json.loads(data or b"")["key"]
    except (ValueError, KeyError, TypeError):
        return None
    return key if isinstance(key, str) else None


async def adelete_expired(
    store: ResultStore,
    prefix: str,
    *,
    dry_run: bool,
    now: datetime.datetime,
    concurrency: int,
    progress: Progress | None,
) -> GcSummary:
    """Delete the expired records under ``prefix`` the index names (see the module docstring).

    ``summary.scanned`` counts the index entries looked at, not the store's records.
    """
    from resultstore.bulk import DELETE_BATCH, Doomed, GcSummary, RecordOutcome, each
    from resultstore.keys import validate_key

    summary = GcSummary(store.storage_url, dry_run=dry_run, indexed=True)
    since = await _watermark(store)
    doomed = Doomed(store, summary, progress)  # records and entries, deleted together
    pending: list[tuple[str, str]] = []  # (entry, key) whose record is still to be read

    async def judge(item: tuple[str, str]) -> None:
        name, key = item
        try:
            metadata = await store.aread_metadata(key)
        except ResultNotFoundError:
            doomed.keys.append(name)  # deleted since: the entry goes too
            return
        except IntegrityError:
            summary.damaged.append(key)  # kept, entry and all: `check` says what is wrong
            return
        if metadata.is_expired(now):
            summary.expired += 1
            summary.bytes_freed += metadata.size
            if dry_run:
                if progress is not None:
                    progress(RecordOutcome(key, "would-delete", metadata.size))
                return
            doomed.keys.extend((key, name))
            doomed.outcomes.append(RecordOutcome(key, "deleted", metadata.size))
        elif expected_entry(metadata) != name:
            doomed.keys.append(name)  # left by an earlier write of the key: its own is elsewhere

    async def settle() -> None:
        await each(list(pending), judge, concurrency)
        pending.clear()
        if not dry_run and len(doomed.keys) >= DELETE_BATCH:
            await doomed.flush()

    async for name in _due_entries(store, now, since):
        summary.scanned += 1
        key = await _entry_target(store, name)
        if key is None:
            continue
        try:
            validate_key(key)
        except InvalidKeyError:
            continue  # not a key resultstore could have written: never acted on
        if not key.startswith(prefix):
            continue
        pending.append((name, key))
        if len(pending) >= concurrency * 8:
            await settle()
    await settle()
    if doomed.keys and not dry_run:
        await doomed.flush()
    if not dry_run and not prefix:  # every due entry was looked at: skip those hours next time
        collected = _parse_hour(_hour(now))
        assert collected is not None
        mark = collected - _SLACK_HOURS * _ONE_HOUR
        if since is None or mark > since:
            await _set_watermark(store, mark)
    return summary
