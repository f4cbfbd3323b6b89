"""What the two S3 stores share: the ``s3://`` scheme, the client choice, URL and endpoint
checks, and the once-per-process check that a server really honours conditional writes.

One scheme, two clients. ``s3://BUCKET/PREFIX`` is served by s3fs (aiobotocore) or by
obstore (Rust's ``object_store``), chosen by the ``client`` storage option or
``RESULTSTORE_S3_CLIENT`` (``s3fs`` or ``obstore``), default :data:`DEFAULT_CLIENT`. Both
keep records as the same objects under the same keys, so either reads what the other
wrote, and both record ``s3://`` in references. ``s3+obstore://`` is an alias kept so
State JSON written by earlier releases still resolves: it selects obstore.

Conditional writes. Some S3-compatible servers accept ``If-None-Match``/``If-Match`` and
ignore them, so a create-only write would silently overwrite. Before the first
conditional write to an (endpoint, bucket), a store checks, once per process, that a
second create of a probe object fails and that a replace of it with a wrong ETag fails
(and, before the first conditional multipart upload, the same for
CompleteMultipartUpload). The probe object lives under :data:`PROBE_FOLDER` below the
store's prefix, a name no valid key can start with (its segment ends with the reserved
``.rsr``), is never listed, and is deleted afterwards. A server that ignores a condition
makes that kind of conditional write raise :class:`UnsupportedOperationError` saying so,
in one line; the verdict is cached, a failed probe (unreachable, denied) is not.

Header copies. Every write of a record also puts its header (``Payload.head``, a few
hundred bytes) base64-encoded in one user-metadata entry, :data:`HEAD_METADATA`, in the
same request (the PUT, or the CreateMultipartUpload of a multipart upload), when the
encoded copy is at most :data:`HEAD_LIMIT` bytes (well within S3's 2 KB of user
metadata); ``read_head`` reads it back with one HEAD. On a server that reads a whole
chunk for any GET, a ranged GET of a large object's header costs several times a HEAD,
so a metadata read then costs the same for a 200 MB record as for a 1 KB one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import operator
import os
import re
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

from resultstore._loops import each
from resultstore.errors import (
    ConfigurationError,
    ResultStoreError,
    StorageError,
    StorageUnavailableError,
    UnsupportedOperationError,
    store_error,
)
from resultstore.keys import shown_key
from resultstore.stores.base import Payload, Store

__all__ = [
    "CLIENTS",
    "CLIENT_VARIABLE",
    "DEFAULT_CLIENT",
    "HEAD_LIMIT",
    "HEAD_METADATA",
    "PROBE_FOLDER",
    "BaseS3Store",
    "ListingProgress",
    "Verdict",
    "check_endpoint",
    "choose_client",
    "etag_md5",
    "head_metadata",
    "judge",
    "kept_head",
    "listed_size",
    "s3_location",
]

CLIENTS = ("s3fs", "obstore")
CLIENT_VARIABLE = "RESULTSTORE_S3_CLIENT"
DEFAULT_CLIENT = "s3fs"
"""The client of ``s3://`` when neither ``client=`` nor ``RESULTSTORE_S3_CLIENT`` says."""
ALIASES = {"s3+obstore": "obstore"}
"""Older schemes that select a client; references made through them record ``s3://``."""

PROBE_FOLDER = ".resultstore.rsr/probe"
"""Where (below a store's prefix) the conditional-write probe writes; never listed."""
_RESERVED = PROBE_FOLDER.split("/", 1)[0] + "/"
_WRONG_ETAG = '"00000000000000000000000000000000"'

HEAD_METADATA = "resultstore-head"
"""The user-metadata entry (``x-amz-meta-resultstore-head``) holding a copy of a record's header."""
HEAD_LIMIT = 1500
"""The longest base64 copy of a header written (S3 allows 2 KB of user metadata in all)."""
# A delete of many keys goes as DeleteObjects requests of at most this many keys, this
# many at once: measured on SeaweedFS (2 cores), 1,000 records and their 1,000 index
# entries went in 0.23 s as 8 concurrent requests of 125 against 0.38-0.49 s as two
# requests of 1,000 (S3's maximum). gc's ordering (records, then index entries) holds
# between batches, which ResultStore sends one after the other.
DELETE_PART = 125
DELETE_REQUESTS = 8
_HEAD_READ_LIMIT = 2048  # the longest copy decoded: S3 keeps no more; a hostile server might

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
MIN_PART = 5 * 1024 * 1024
_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def choose_client(client: object, scheme: str) -> str:
    """The client a store of ``scheme`` uses: the alias's, ``client``, the variable, the default."""
    if scheme in ALIASES:
        if client not in (None, ALIASES[scheme]):
            raise ConfigurationError(
                f"{scheme}:// always uses the {ALIASES[scheme]} client, not client={client!r}; "
                f"use s3:// with client={client!r}"
            )
        return ALIASES[scheme]
    source = "storage option client"
    if client is None:
        client, source = os.environ.get(CLIENT_VARIABLE) or None, CLIENT_VARIABLE
    if client is None:
        return DEFAULT_CLIENT
    if not isinstance(client, str) or client.strip().lower() not in CLIENTS:
        raise ConfigurationError(
            f"invalid {source} {client!r} for s3://: use one of {', '.join(CLIENTS)}"
        )
    return client.strip().lower()


def s3_location(url: str, scheme: str | tuple[str, ...], part_size: int) -> tuple[str, str]:
    """The (bucket, prefix) of an S3 store URL, checked; shared by the S3 stores."""
    schemes = (scheme,) if isinstance(scheme, str) else scheme
    parts = urlsplit(url)
    shown = schemes[0]
    if parts.scheme not in schemes:
        raise ConfigurationError(f"not an {shown}:// URL: {url!r}", url=url)
    if "@" in parts.netloc or parts.query or parts.fragment:
        raise ConfigurationError(
            f"{shown} URLs take the form {shown}://bucket/prefix; pass credentials as "
            "storage options or AWS_* environment variables, never in the URL"
        )
    if not _BUCKET.match(parts.netloc):
        raise ConfigurationError(
            f"invalid S3 bucket name {parts.netloc!r} in {url!r}: use 3-63 lowercase letters, "
            "digits, dots or dashes",
            url=url,
        )
    if part_size < MIN_PART:
        raise ConfigurationError(f"part_size must be at least {MIN_PART} bytes (S3's minimum)")
    return parts.netloc, parts.path.strip("/")


def check_endpoint(endpoint: object, source: str) -> str | None:
    """``endpoint`` if it is a usable endpoint URL (``http(s)://host[:port]``), else one line.

    Both clients take a scheme-less endpoint badly (botocore: "Invalid endpoint", obstore:
    a Rust panic dump), so it is refused when the store is made.
    """
    if endpoint is None or endpoint == "":
        return None
    if not isinstance(endpoint, str):
        raise ConfigurationError(f"{source} must be a URL string, not {type(endpoint).__name__}")
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        example = endpoint if "://" in endpoint else f"http://{endpoint}"
        raise ConfigurationError(
            f"invalid S3 endpoint {_redact(endpoint)!r} in {source}: it needs a scheme and a "
            f"host, e.g. {_redact(example)!r} (or https://...)"
        )
    return endpoint


def endpoint_from_environment() -> tuple[str | None, str]:
    """The endpoint the AWS variables name, checked, and the variable's name."""
    for name in _ENDPOINT_VARIABLES:
        value = os.environ.get(name)
        if value:
            return check_endpoint(value, name), name
    return None, ""


def _redact(endpoint: str) -> str:
    from resultstore.registry import redact_url

    return redact_url(endpoint)


# -- the conditional-write probe --------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What an (endpoint, bucket) does with conditions: None when honoured, else why not."""

    create: str | None = None
    replace: str | None = None


class _Probes:
    """Verdicts per (endpoint, bucket, kind), each found once per process.

    Concurrent first uses (tasks of one loop, or threads with loops of their own) wait
    for one probe instead of each running theirs; a probe that fails is forgotten, so the
    next use tries again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done: dict[tuple[str, str, str], Verdict] = {}
        self._running: dict[tuple[str, str, str], threading.Event] = {}

    def forget(self) -> None:
        with self._lock:
            self._done.clear()

    async def get(
        self, key: tuple[str, str, str], probe: Callable[[], Awaitable[Verdict]]
    ) -> Verdict:
        import anyio

        while True:
            with self._lock:
                done = self._done.get(key)
                if done is not None:
                    return done
                event = self._running.get(key)
                mine = event is None
                if event is None:
                    event = self._running[key] = threading.Event()
            if not mine:
                while not event.is_set():  # another task or thread probes: wait for it
                    await anyio.sleep(0.002)
                continue
            try:
                verdict = await probe()
            except BaseException:
                with self._lock:
                    del self._running[key]
                event.set()
                raise
            with self._lock:
                self._done[key] = verdict
                del self._running[key]
            event.set()
            return verdict


PROBES = _Probes()


class BaseS3Store(Store):
    """``s3://``: made as the store of the chosen client (s3fs or obstore).

    ``BaseS3Store(url, client=...)`` returns an :class:`~resultstore.stores.s3.S3Store`
    or an :class:`~resultstore.stores.obstore.ObstoreS3Store`; each shares this class's
    layout, probe and listing filter.
    """

    interface_version = 2
    supports_ranged_read = True
    supports_conditional_write = True
    supports_read_head = True
    client_name: ClassVar[str] = ""
    """``s3fs`` or ``obstore``."""

    bucket: str
    prefix: str
    endpoint: str
    """The endpoint URL requests go to, ``aws`` for AWS's own (for messages and the cache)."""

    async def _delete_in_parts(
        self, keys: list[str], delete: Callable[[list[str]], Awaitable[None]]
    ) -> None:
        """``delete(part)`` for parts of ``keys`` of at most :data:`DELETE_PART`, up to
        :data:`DELETE_REQUESTS` at once; the first failure is raised as itself.

        No retries here: the caller's retry layer repeats the whole (idempotent) delete.
        """
        parts = [keys[first : first + DELETE_PART] for first in range(0, len(keys), DELETE_PART)]
        if len(parts) == 1:
            await delete(parts[0])
        else:
            await each(parts, delete, DELETE_REQUESTS)

    def conditional_in_progress(self, key: str) -> StorageUnavailableError:
        """S3's 409 ConditionalRequestConflict: another conditional write of ``key`` ran."""
        return store_error(
            StorageUnavailableError,
            "write",
            key,
            self.url,
            "another conditional write of this key was in progress (409 "
            "ConditionalRequestConflict)",
            hint="read the key, then try again",
        )

    def __new__(cls, url: str = "", *args: Any, client: object = None, **options: Any) -> Any:
        if cls is not BaseS3Store:
            return super().__new__(cls)
        scheme = urlsplit(url).scheme if isinstance(url, str) else ""
        if choose_client(client, scheme) == "obstore":
            from resultstore.stores.obstore import ObstoreS3Store

            return super().__new__(ObstoreS3Store)
        from resultstore.stores.s3 import S3Store

        return super().__new__(S3Store)

    def _object(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @staticmethod
    def _listed(key: str) -> bool:
        """False for the store's own bookkeeping (the probe folder)."""
        return not key.startswith(_RESERVED)

    # Conditions --------------------------------------------------------------------

    async def _require(self, key: str, *, if_absent: bool, multipart: bool = False) -> None:
        """Raise unless this endpoint honours the condition (probed once per process)."""
        kind = "multipart" if multipart else "put"
        verdict = await PROBES.get(
            (self.endpoint, self.bucket, kind), lambda: self._run_probe(key, multipart)
        )
        why = verdict.create if if_absent else verdict.replace
        if why is not None:
            what = "create-only" if if_absent else "compare-and-swap"
            risk = (
                f", so a {what} write could silently overwrite" if why.startswith("ignores") else ""
            )
            raise store_error(
                UnsupportedOperationError,
                "write",
                key,
                self.url,
                f"the S3 endpoint {self.endpoint} {why}{risk}; conditional writes are refused "
                "there",
                hint="use a server that honours If-None-Match and If-Match (AWS S3, SeaweedFS)",
            )

    async def _run_probe(self, key: str, multipart: bool) -> Verdict:
        name = f"{self._object(PROBE_FOLDER)}/{uuid.uuid4().hex}"
        try:
            if multipart:
                return await self._probe_multipart(name, key)
            return await self._probe_put(name, key)
        except ResultStoreError as exc:
            raise _while_probing(exc, self.endpoint, name) from exc.__cause__

    async def _probe_put(self, name: str, key: str) -> Verdict:
        """Create ``name`` twice and replace it with a wrong ETag: both must be refused."""
        first = await self._probe_request(name, key, if_none_match=True)
        try:
            # A 412 for a new, randomly named object: it exists, so the client's own
            # retry re-sent a create whose answer was lost, and the server evaluated the
            # condition (one that ignored it would have answered 200). Not a refusal: the
            # checks below decide, as after "ok".
            if first.startswith("rejected "):
                why = (
                    "does not support If-None-Match (a create-only PUT of a new probe object "
                    f"was answered {first.removeprefix('rejected ')})"
                )
                return Verdict(create=why, replace=why)
            again = await self._probe_request(name, key, if_none_match=True)
            wrong = await self._probe_request(name, key, if_match=_WRONG_ETAG)
        finally:
            await self._probe_cleanup(name, key)
        return Verdict(
            create=judge(again, "If-None-Match", "a second create-only PUT of a probe object"),
            replace=judge(wrong, "If-Match", "a PUT of a probe object with a wrong If-Match"),
        )

    async def _probe_multipart(self, name: str, key: str) -> Verdict:
        raise NotImplementedError  # only the s3fs store sends conditional multipart uploads

    async def _probe_request(
        self, name: str, key: str, *, if_none_match: bool = False, if_match: str | None = None
    ) -> str:
        """One conditional PUT of a tiny body to object ``name``: ``ok``, ``precondition``,
        or ``rejected <code>`` (the server refuses the header itself); other failures raise."""
        raise NotImplementedError

    async def _probe_cleanup(self, name: str, key: str) -> None:
        """Delete the probe object; a failure leaves a few bytes under the probe folder."""
        raise NotImplementedError

    # Listing ----------------------------------------------------------------------------

    def list(self, prefix: str = "") -> AsyncIterator[str]:
        raise NotImplementedError

    part_size: int

    def listed_md5(self, payload: Payload) -> str | None:
        """The MD5 of ``payload`` when it is written in one PUT: its ETag, as listings show.

        Both clients write values up to ``part_size`` bytes in one PUT (larger ones in
        parts, whose ETag is not an MD5), so that is when this returns one.
        """
        if payload.size > self.part_size:
            return None
        digest = hashlib.md5(usedforsecurity=False)
        for buffer in payload:
            digest.update(buffer)
        return digest.hexdigest()


class ListingProgress:
    """Where an S3 listing has got to, so that an endpoint's pages must move it on.

    S3 lists each key once, only keys under the prefix asked for, and gives a new
    continuation token with each truncated page. A broken or hostile endpoint that
    repeats a page or its token would keep a listing going for ever, each page within
    the timeout; one that lists names outside the prefix would hand back keys that are
    not the store's. Either is refused with one :class:`StorageError` (not retried)
    naming the name, the store and the endpoint.

    That each page moves on is checked without remembering the keys. AWS lists in
    ascending order of the keys' UTF-8 bytes (the order of Python's strings); servers
    that keep folders (SeaweedFS) list a folder's names in order with each folder's
    contents in place, which is ascending in the order of the keys' ``/``-separated
    segments (``a/b/c`` before ``a b/c``). Each name must come after the one before it
    in byte order, until the first that does not but does in segment order; from then
    on (a folder-keeping server) each must come after the one before it in segment
    order. So no name repeats within either stretch, a name of the first can come again
    at most once in the second, and a listing ends unless its server keeps inventing new
    names, as a bucket that large would. AWS's listings cost one string comparison per
    name (the segments are split only on the second stretch).
    """

    __slots__ = ("_cut", "_last", "_prefix", "_segments", "_store", "_token", "_what")

    def __init__(
        self,
        store: BaseS3Store,
        base: str,
        prefix: str,
        start_after: str | None = None,
        *,
        what: str = "",
    ) -> None:
        self._store = store
        self._what = what or prefix or "*"
        self._prefix = base + prefix
        self._cut = len(base)
        self._last = None if start_after is None else base + start_after
        self._segments: list[str] | None = None  # the last name's, once in segment order
        self._token: tuple[str, ...] | None = None

    def keys(self, names: list[Any]) -> list[str]:
        """The keys (below the store's prefix) of a page's object ``names``, checked."""
        if not names:
            return []
        try:
            inside = all(map(str.startswith, names, itertools.repeat(self._prefix)))
        except TypeError:  # a name that is not a string
            inside = False
        if not inside:
            for name in names:
                self.key(name)  # raises for the first outside
        last = self._last
        if (
            self._segments is None
            and (last is None or names[0] > last)
            and all(map(operator.lt, names, itertools.islice(names, 1, None)))
        ):
            self._last = names[-1]  # in byte order, as AWS lists: the common case
        else:
            self._ordered_slowly(names)
        cut = self._cut
        return [name[cut:] for name in names] if cut else names

    def _ordered_slowly(self, names: list[str]) -> None:
        """:meth:`keys`' order check name by name, switching to segment order once."""
        last, segments = self._last, self._segments
        for name in names:
            if last is None:
                last = name
                continue
            if segments is None:
                if name > last:
                    last = name
                    continue
                segments = last.split("/")  # not in byte order: segment order from now on
            parts = name.split("/")
            if not parts > segments:
                raise self._broken(
                    f"it listed {shown_key(name)} again or out of order (after "
                    f"{shown_key(last)}); S3 lists each key once"
                )
            last, segments = name, parts
        self._last, self._segments = last, segments

    def key(self, name: object) -> str:
        """The key of one object ``name`` under the prefix (of a listing in no set order,
        such as of multipart uploads, where one key may come several times)."""
        if not isinstance(name, str):
            raise self._broken(f"it listed an object named by a {type(name).__name__}")
        if not name.startswith(self._prefix):
            raise self._broken(
                f"it listed {shown_key(name)}, outside the prefix {shown_key(self._prefix)} "
                "asked for"
            )
        return name[self._cut :]

    def token(self, token: object) -> str:
        """The continuation token of a truncated page, refused if missing or repeated."""
        (checked,) = self.markers(token)
        return checked

    def markers(self, *markers: object) -> tuple[str, ...]:
        """The markers a truncated page says to go on from (a continuation token; a
        key and an upload id), refused if one is missing or all repeat the last page's."""
        if not all(isinstance(marker, str) and marker for marker in markers):
            raise self._broken("a truncated page came without the marker to go on from")
        checked = tuple(str(marker) for marker in markers)
        if checked == self._token:
            raise self._broken("it gave the same page marker twice")
        self._token = checked
        return checked

    def _broken(self, why: str) -> StorageError:
        return store_error(
            StorageError,
            "list",
            self._what,
            self._store.url,
            f"the S3 endpoint {self._store.endpoint} answered a listing wrongly: {why}",
            hint="check the server; a listing is never taken from such answers",
        )


def head_metadata(payload: Payload) -> dict[str, str] | None:
    """The user metadata that keeps ``payload.head`` with the object, or None.

    None when the payload carries no header or its base64 is over :data:`HEAD_LIMIT`
    bytes: the object is then written without a copy, and read_metadata reads it.
    """
    head = payload.head
    if head is None or len(head) > HEAD_LIMIT * 3 // 4:
        return None
    return {HEAD_METADATA: base64.b64encode(head).decode("ascii")}


def kept_head(value: object) -> bytes | None:
    """The header copy an object's metadata entry holds, decoded; None when it holds none.

    The entry is as untrusted as the object: anything but a string of at most
    ``_HEAD_READ_LIMIT`` characters of strict base64 is no copy (the core then reads
    the object's own header), and the decoded bytes are at most 1.5 KB.
    """
    if not isinstance(value, str) or not value or len(value) > _HEAD_READ_LIMIT:
        return None
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeError, binascii.Error, ValueError):
        return None


_MD5_ETAG = re.compile(r'"?([0-9a-fA-F]{32})"?')


def listed_size(size: object) -> int | None:
    """A listed object's size; None (unknown) for what is not one (a hostile answer)."""
    return size if type(size) is int and size >= 0 else None


def etag_md5(etag: object) -> str | None:
    """The MD5 an S3 ETag is, for an object written in one PUT; None for any other ETag.

    A multipart object's ETag ends in ``-<parts>``, and is not matched. An object
    encrypted with SSE-KMS (or SSE-C) has an ETag of the same shape that is not its
    MD5: it only ever fails to match a digest the core computed, which sends the core
    back to reading the record (see :meth:`Store.list_details`).
    """
    if not isinstance(etag, str):
        return None
    found = _MD5_ETAG.fullmatch(etag)
    return found.group(1).lower() if found else None


def judge(outcome: str, header: str, what: str) -> str | None:
    if outcome == "precondition":
        return None
    if outcome == "ok":
        return f"ignores {header} ({what} succeeded)"
    return f"does not support {header} ({what} was answered {outcome.removeprefix('rejected ')})"


def _while_probing(exc: ResultStoreError, endpoint: str, name: str) -> ResultStoreError:
    """``exc``, saying it happened while checking the endpoint's conditions."""
    suffix = (
        f" (while checking that {endpoint} honours conditional writes with probe object "
        f"{name!r}: allow s3:PutObject and s3:DeleteObject there)"
        if exc.reason.value == "denied"
        else f" (while checking that {endpoint} honours conditional writes with probe "
        f"object {name!r})"
    )
    return exc._with_suffix(suffix)
