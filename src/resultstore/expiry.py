"""The expiry index: where ``gc`` finds the records that are due without reading the rest.

Every write with an expiration first writes a small index entry named
``.resultstore/expiry/<hour>/e/<key>.<expiration>``, where ``<hour>`` (``YYYYMMDDHH``,
UTC) is the later of the record's expiration hour and the hour it was written (its
``created`` time) and ``<expiration>`` is the expiration itself, in microseconds since
1970 (UTC). The entry's body names the key, the expiration and, on a store whose
listings show content MD5s (S3: an object's ETag), the MD5 of the record's bytes as
written; with a signing key it is signed too. :func:`adelete_expired` then lists only
the hours that have come due since the last collection (a watermark kept at
``.resultstore/expiry/watermark``), so its cost follows what expired, not the size of
the store. Keys too long to fit below the index prefix are indexed under
``<hour>/h/<hash>``, with the key in the entry's body; entries named ``<hour>/k/<key>``
(written before the expiration was in the name) are still read.

**What deletes a record.** The index only ever *suggests*; a record is deleted when
either of these says it has expired:

- its own header, read back (always available; what a file store does);
- on a store whose listings show content MD5s, the listings themselves, without a read:
  the record's listed MD5 is the one the entry's body names, and the entry's listed MD5
  is that of the body the writer would have written for that key, that expiration and
  that record MD5 (and, with a signing key, that signature). The writer computed the
  MD5 of the very bytes it wrote, whose header holds that expiration, so the record is
  byte for byte the one indexed. Anything else (a record rewritten since, with another
  expiration or none; an entry whose body does not match, forged or damaged; a record
  written in parts or encrypted so that its ETag is not its MD5) falls back to reading
  the header.

So a lost, damaged or stale entry can never delete a live record, and neither can a
forged one, except one forged by someone who can list the record (its MD5 is its ETag)
and write to the store: on an unsigned store that is someone who could overwrite or
delete the record anyway. With a signing key, forging an entry that deletes takes the
key too. Between the listing (or header read) and the delete a concurrent rewrite of an
expired key can still be deleted, as with any collector that does not lock.

The entry is written before the record, so a record with an expiration always has one
unless someone removes it; records that have none (written before the index existed, by
another tool, or whose entry was removed) are found by a full collection
(``delete_expired(full=True)``, ``resultstore gc --full``), which reads every header.
An entry whose expiration (in its name) is still ahead is left for a later collection
without a read. Entries left behind by overwrites or deletes are removed when their hour
comes due.

**Clocks.** Hours come from the writer's clock and from the collector's: a writer
whose clock is more than an hour behind the collector's may index a record in an
hour the collector has already passed; that record then waits for a full collection.
The watermark trails the collector's clock by two hours to leave that slack.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import xxhash

from resultstore.errors import (
    IntegrityError,
    InvalidKeyError,
    ResultNotFoundError,
    ResultStoreError,
)
from resultstore.keys import MAX_KEY_BYTES, MAX_SEGMENT_BYTES, RESERVED_PREFIX
from resultstore.records import ResultMetadata, utc
from resultstore.stores.base import Listed, Payload

if TYPE_CHECKING:
    from resultstore.bulk import Doomed, GcSummary, Progress
    from resultstore.result_store import ResultStore
    from resultstore.signing import Signer

__all__ = ["INDEX_PREFIX", "entry_key", "write_entry"]

INDEX_PREFIX = f"{RESERVED_PREFIX}expiry/"
WATERMARK_KEY = f"{INDEX_PREFIX}watermark"
_HOUR = "%Y%m%d%H"
_SLACK_HOURS = 2  # the watermark trails the collector's clock by this much
_MAX_HOURS_LISTED = 24 * 7  # further behind than this, one listing of the whole index
_ONE_HOUR = datetime.timedelta(hours=1)
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_MICROSECOND = datetime.timedelta(microseconds=1)
_JUDGED = 1000  # due entries judged together: one listing of their records per folder
_LISTED_AT_ONCE = 4  # due records of a folder this many or more: listed, not read each


def _hour(moment: datetime.datetime) -> str:
    return utc(moment).strftime(_HOUR)


def _parse_hour(text: str) -> datetime.datetime | None:
    try:
        return datetime.datetime.strptime(text, _HOUR).replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return None


def _micros(moment: datetime.datetime) -> int:
    return (utc(moment) - _EPOCH) // _MICROSECOND


def _from_micros(text: str) -> datetime.datetime | None:
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        return None
    return _EPOCH + int(text) * _MICROSECOND


def entry_key(key: str, expiration: datetime.datetime, created: datetime.datetime) -> str:
    """The index entry of a record under ``key`` with that expiration, written at ``created``.

    The expiration ends the name (``<key>.<microseconds>``), so the entries of the keys
    of one folder share one folder of the index (SeaweedFS and the file store keep a
    folder per name segment: a segment per expiration would cost a folder per entry).
    """
    hour = max(_hour(expiration), _hour(created))
    direct = f"{INDEX_PREFIX}{hour}/e/{key}.{_micros(expiration)}"
    last = direct.rpartition("/")[2]
    if len(direct.encode()) <= MAX_KEY_BYTES and len(last.encode()) <= MAX_SEGMENT_BYTES:
        return direct
    return f"{INDEX_PREFIX}{hour}/h/{xxhash.xxh3_128_hexdigest(key.encode())}"


def _legacy_entry_key(key: str, expiration: datetime.datetime, created: datetime.datetime) -> str:
    """The name an entry had before the expiration was in it (``<hour>/k/<key>``)."""
    hour = max(_hour(expiration), _hour(created))
    direct = f"{INDEX_PREFIX}{hour}/k/{key}"
    if len(direct.encode()) <= MAX_KEY_BYTES:
        return direct
    return f"{INDEX_PREFIX}{hour}/h/{xxhash.xxh3_128_hexdigest(key.encode())}"


def expected_entries(metadata: ResultMetadata) -> tuple[str, ...]:
    """The names a record's own write may have indexed it under, from its header."""
    if metadata.expiration is None:
        return ()
    key, expiration, created = metadata.storage_key, metadata.expiration, metadata.created
    return entry_key(key, expiration, created), _legacy_entry_key(key, expiration, created)


def _body(
    name: str, key: str, expiration: datetime.datetime, md5: str | None, signer: Signer | None
) -> bytes:
    """The body of an entry: what its writer writes, and what gc checks its MD5 against."""
    fields: dict[str, str | None] = {
        "expiration": (_EPOCH + _micros(expiration) * _MICROSECOND).isoformat(),
        "key": key,
        "md5": md5,
    }
    core = json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()
    if signer is None:
        return core
    fields["signature"] = signer.sign(name, core)
    return json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()


async def write_entry(
    store: ResultStore,
    key: str,
    expiration: datetime.datetime,
    created: datetime.datetime,
    payload: Payload | None = None,
) -> None:
    """Index a record about to be written as ``payload`` (before it is: see the module
    docstring); ``payload`` gives the MD5 a listing of the store will show for it."""
    name = entry_key(key, expiration, created)
    md5 = None if payload is None else store.store.listed_md5(payload)
    body = Payload([_body(name, key, expiration, md5, store._signer)])
    guard = store._guard("index the expiration of", key)

    async def once() -> None:
        with guard:
            await store.store.write(name, body)

    try:
        await guard.run(store, once)
    except ResultStoreError as exc:
        if exc.key != name:
            raise
        # The store named its own entry; the caller wrote (and must hear about) ``key``.
        told = exc.message.replace(repr(name), repr(key)) + " (writing its expiry index entry)"
        raise exc._retold(told, key) from exc.__cause__


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
) -> AsyncIterator[Listed]:
    """Index entries of hours up to ``now``'s, after ``since`` (the watermark) if known."""
    current = _parse_hour(_hour(now))
    assert current is not None
    if since is None or (current - since) / _ONE_HOUR > _MAX_HOURS_LISTED:
        async for page in store._alisting_details(INDEX_PREFIX, hide_reserved=False):
            for entry in page:
                hour = _parse_hour(entry.key[len(INDEX_PREFIX) :].split("/", 1)[0])
                if hour is not None and hour <= current and entry.key != WATERMARK_KEY:
                    yield entry
        return
    hour = since + _ONE_HOUR
    while hour <= current:
        async for page in store._alisting_details(
            f"{INDEX_PREFIX}{_hour(hour)}/", hide_reserved=False
        ):
            for entry in page:
                yield entry
        hour += _ONE_HOUR


@dataclass(slots=True)
class _Due:
    """An index entry come due: the record it names, and what its name says."""

    name: str
    md5: str | None  # the entry's own, as listed
    key: str
    expiration: datetime.datetime | None  # from the name (``e/`` entries)


async def _parse(store: ResultStore, entry: Listed) -> _Due | None:
    """The due entry ``entry`` is; None for one that is not one of ours."""
    from resultstore.keys import validate_key

    name = entry.key
    _, _, rest = name[len(INDEX_PREFIX) :].partition("/")  # after the hour
    kind, _, tail = rest.partition("/")
    expiration = None
    if kind == "e":
        key, _, micros = tail.rpartition(".")
        expiration = _from_micros(micros)
        if expiration is None:
            return None
    elif kind == "k":
        key = tail
    elif kind == "h" and tail:
        data = await _read_small(store, name, "read the expiry index entry")
        try:
            found = json.loads(data or b"")["key"]
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(found, str):
            return None
        key = found
    else:
        return None
    try:
        validate_key(key)
    except InvalidKeyError:
        return None  # not a key resultstore could have written: never acted on
    return _Due(name, entry.md5, key, expiration)


async def _settled_by_listing(store: ResultStore, due: list[_Due]) -> dict[str, Listed]:
    """The due entries (by name) whose record the listings prove expired (see above)."""
    from resultstore.bulk import listed_between

    candidates = [d for d in due if d.md5 is not None and d.expiration is not None]
    folders: dict[str, list[str]] = {}
    for d in candidates:
        folders.setdefault(d.key.rpartition("/")[0], []).append(d.key)
    listed: dict[str, Listed] = {}
    for folder, keys in folders.items():
        if len(keys) < _LISTED_AT_ONCE:
            continue  # a few headers cost what a listing does
        keys = sorted(set(keys))
        listed.update(await listed_between(store, f"{folder}/" if folder else "", keys))
    proven: dict[str, Listed] = {}
    for d in candidates:
        record = listed.get(d.key)
        if record is None or record.md5 is None or d.expiration is None:
            continue
        body = _body(d.name, d.key, d.expiration, record.md5, store._signer)
        if hashlib.md5(body, usedforsecurity=False).hexdigest() == d.md5:
            proven[d.name] = record
    return proven


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
    from resultstore._loops import each
    from resultstore.bulk import DELETE_BATCH, Doomed, GcSummary

    summary = GcSummary(store.storage_url, dry_run=dry_run, indexed=True)
    since = await _watermark(store)
    doomed = Doomed(store, summary, progress)  # records and entries, deleted together
    pending: list[_Due] = []

    async def settle() -> None:
        due = [d for d in pending if d.expiration is None or d.expiration <= now]
        pending.clear()
        proven = await _settled_by_listing(store, due)
        unproven: list[_Due] = []
        for d in due:
            record = proven.get(d.name)
            if record is None:
                unproven.append(d)
            else:
                _expired(doomed, d.key, d.name, record.size or 0, dry_run)
        await each(unproven, lambda d: _judge(store, doomed, d, now, dry_run), concurrency)
        if not dry_run and len(doomed.keys) >= DELETE_BATCH:
            await doomed.flush()

    async for entry in _due_entries(store, now, since):
        summary.scanned += 1
        due = await _parse(store, entry)
        if due is None or not due.key.startswith(prefix):
            continue
        pending.append(due)
        if len(pending) >= _JUDGED:
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


def _expired(doomed: Doomed, key: str, name: str, size: int, dry_run: bool) -> None:
    """Count an expired record; unless ``dry_run``, doom it with its entry ``name``."""
    from resultstore.bulk import RecordOutcome

    if key in doomed.reported:  # another due entry of a record already counted
        if not dry_run:
            doomed.keys.append(name)
        return
    doomed.reported.add(key)
    doomed.summary.expired += 1
    doomed.summary.bytes_freed += size
    if dry_run:
        if doomed.progress is not None:
            doomed.progress(RecordOutcome(key, "would-delete", size))
        return
    doomed.keys.extend((key, name))
    doomed.outcomes.append(RecordOutcome(key, "deleted", size))


async def _judge(
    store: ResultStore, doomed: Doomed, due: _Due, now: datetime.datetime, dry_run: bool
) -> None:
    """Settle a due entry by its record's header (what the listings could not prove)."""
    try:
        metadata = await store.aread_metadata(due.key)
    except ResultNotFoundError:
        doomed.keys.append(due.name)  # deleted since: the entry goes too
        return
    except IntegrityError:  # kept, entry and all: `check` says what is wrong
        if due.key not in doomed.reported:
            doomed.reported.add(due.key)
            doomed.summary.damaged.append(due.key)
        return
    if metadata.serializer.startswith("prefect:"):
        doomed.keys.append(due.name)  # another tool's record, never indexed by a write of ours
    elif metadata.is_expired(now):
        _expired(doomed, due.key, due.name, metadata.size, dry_run)
    elif due.name not in expected_entries(metadata):
        doomed.keys.append(due.name)  # left by an earlier write of the key: its own is elsewhere
