"""`ResultStore`: write values to a store and read them back, safely.

This is the one place where everything shared by all stores happens: key
validation, serialization, record framing and checksums, signing, retried
reads, and turning unexpected backend exceptions into one-line errors. Each
I/O method is a coroutine (``awrite``, ``aread``, ...) with a plain sync twin
(``write``, ``read``, ...) that drives it.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any, TypeVar

from resultstore._defaults import (
    DEFAULT_COMPUTE_HOLD_TIMEOUT,
    DEFAULT_CONCURRENCY,
    DEFAULT_HOLD_TIMEOUT,
    DELETE_BATCH,
)
from resultstore._loops import run_sync
from resultstore.errors import (
    ConfigurationError,
    ContainerMissingError,
    IntegrityError,
    ResultStoreError,
    SerializationError,
    SerializerNotAllowedError,
    StorageError,
    StorageUnavailableError,
    UnknownSerializerError,
)
from resultstore.keys import validate_key, validate_prefix
from resultstore.records import (
    HEADER_PROBE,
    HeaderBeyond,
    NotARecordError,
    ResultMetadata,
    ResultRecord,
    encode_record,
    read_header,
    read_record,
    record_head,
    utc,
)
from resultstore.registry import broken_contract, redact_url, resolve_store, scheme_of
from resultstore.retry import NO_RETRY, RetryPolicy, bounded
from resultstore.serializers import (
    Buffer,
    Serializer,
    available_serializers,
    get_serializer,
    record_serializer,
)
from resultstore.settings import Settings, get_settings
from resultstore.signing import Signer, check_old_signing_keys, check_signing_key
from resultstore.stores.base import BytesReader, Head, Listed, Payload, Store

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager, AbstractContextManager

    from resultstore.bulk import CheckSummary, CopySummary, GcSummary, Progress, ScanEntry
    from resultstore.locks import IsolationLevel, LockManager
    from resultstore.results import PersistedResult

__all__ = ["ResultStore"]

T = TypeVar("T")

_RAW_CHUNK = 8 * 1024 * 1024


def _uuid_key() -> str:
    return uuid.uuid4().hex


def _check_expiration(expiration: object) -> datetime.datetime | None:
    """``expiration`` as an aware UTC datetime (naive ones are taken as UTC), or None.

    A :class:`~datetime.timedelta` is a time from now (when the call is made): the
    record expires that long after it is written, as ``resultstore put --expires-in``.
    """
    if expiration is None:
        return None
    if isinstance(expiration, datetime.timedelta):
        if expiration < datetime.timedelta(0):
            raise ConfigurationError(f"expiration must not be a negative timedelta: {expiration}")
        try:
            return datetime.datetime.now(datetime.timezone.utc) + expiration
        except OverflowError:
            raise ConfigurationError(f"expiration {expiration!r} is out of range") from None
    if not isinstance(expiration, datetime.datetime):
        raise ConfigurationError(
            f"expiration must be a datetime, a timedelta or None, not {type(expiration).__name__}"
        )
    try:
        return utc(expiration)
    except OverflowError:
        raise ConfigurationError(f"expiration {expiration!r} is out of range") from None


_SCHEME_ALIASES = {"s3+obstore": "s3"}  # the alias of s3:// with client=obstore


def _env_options(settings: Settings, scheme: str) -> dict[str, Any]:
    """The options ``RESULTSTORE_STORAGE_OPTIONS`` gives a store of ``scheme``.

    Keyed by scheme (``{"s3://": {...}, "sqlite://": {...}}``), each store gets its
    own. A plain object configures the stores of ``RESULTSTORE_STORAGE_URL``'s scheme
    when that is set (an S3 endpoint must not reach another backend), else every store.
    """
    options = settings.storage_options
    keyed = [name for name in options if name.endswith("://")]
    if keyed:
        if len(keyed) != len(options) or not all(isinstance(v, dict) for v in options.values()):
            raise ConfigurationError(
                "invalid setting RESULTSTORE_STORAGE_OPTIONS: either key every entry by "
                'scheme ({"s3://": {...}}) or none; fix or unset it'
            )
        return dict(options.get(f"{_SCHEME_ALIASES.get(scheme, scheme)}://", {}))
    if "storage_url" in settings.model_fields_set and scheme_of(settings.storage_url) != scheme:
        return {}
    return dict(options)


def _signer(settings: Settings, signing_key: object, old_signing_keys: object) -> Signer | None:
    """The signer for a key given in code, else for ``RESULTSTORE_SIGNING_KEY``; keys checked."""
    if signing_key is None and settings.signing_key is not None:
        key = check_signing_key(settings.signing_key.get_secret_value(), "RESULTSTORE_SIGNING_KEY")
        old = check_old_signing_keys(
            [k.get_secret_value() for k in settings.signing_keys_old],
            "RESULTSTORE_SIGNING_KEYS_OLD",
        )
        return Signer(key, old)
    old = check_old_signing_keys(old_signing_keys)
    if signing_key is None:
        if old:
            raise ConfigurationError(
                "old_signing_keys were given without a signing_key; pass the current key too"
            )
        return None
    return Signer(check_signing_key(signing_key), old)


def _allowed_serializers(
    serializer: Serializer, names: Iterable[str] | None, what: str | None
) -> frozenset[str]:
    """The serializers a store decodes besides code-free ones; each name checked."""
    setting = what or "RESULTSTORE_ALLOWED_SERIALIZERS"
    if isinstance(names, str) or (names is not None and not isinstance(names, Iterable)):
        raise ConfigurationError(
            f"{setting} must be a list of serializer names, not {type(names).__name__}"
        )
    extra = list(names or ())
    for name in extra:
        if not isinstance(name, str):
            raise ConfigurationError(
                f"{setting} must list serializer names, not {type(name).__name__}"
            )
        try:
            get_serializer(name)
        except UnknownSerializerError as exc:
            raise UnknownSerializerError(f"{setting}: {exc}") from None
    return frozenset({serializer.name, *serializer.also_reads, *extra})


def _reopen(storage_url: str, serializer: str | dict[str, Any]) -> ResultStore:
    """Unpickle a ResultStore: the store this process allows for its URL, and the
    pickled store's serializer (its configuration, or a name from older pickles)."""
    from resultstore.references import store_for_reference

    store = store_for_reference(storage_url)
    wanted = get_serializer(serializer)
    if store.serializer == wanted:
        return store
    # That store's keys, retry policy, timeout and allowed serializers, writing with the
    # pickled serializer (and so reading it: a store always decodes its own serializer).
    reopened = ResultStore(
        store.store,
        wanted,
        store.storage_key_fn,
        store.cache_result_in_memory,
        store.persist_result,
        retry=store.retry,
        timeout=store.timeout,
    )
    reopened._given_options, reopened._signer = store._given_options, store._signer
    reopened._allowed = store._allowed | _allowed_serializers(wanted, (), None)
    return reopened


def _holder(holder: object) -> str:
    """A lock holder's name, checked; the default (``host:pid:thread``) for None."""
    from resultstore.locks import _check_holder, default_holder

    return default_holder() if holder is None else _check_holder(holder)


def _lock_seconds(name: str, value: object, *, positive: bool) -> float | None:
    from resultstore.locks import _check_seconds

    return _check_seconds(name, value, positive=positive)


def _check_timeout(timeout: object) -> float:
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not 0 < timeout < float("inf")
    ):
        raise ConfigurationError(
            f"timeout must be a finite number of seconds above 0, not {timeout!r}"
        )
    return float(timeout)


class ResultStore:
    """Persist values under keys in a store chosen by URL, and read them back.

    ``result_storage`` is a URL (``file:///path``, ``memory://name``,
    ``s3://bucket/prefix``, any installed plugin's scheme), a :class:`Store`,
    or ``None`` for the configured default (``RESULTSTORE_STORAGE_URL``, else
    ``file://~/.resultstore/storage``). Reads are retried by ``retry``
    (``RESULTSTORE_READ_ATTEMPTS`` / ``RESULTSTORE_READ_RETRY_DELAY``).
    With a ``signing_key`` (or ``RESULTSTORE_SIGNING_KEY``) every record is
    signed and unsigned or forged records are refused before deserializing.

    A record names the serializer that wrote it, but that name is data from
    storage, not an instruction: a record is decoded only by the configured
    ``serializer`` (and those it declares it also reads, as ``pickle`` does
    ``pickle+zstd``), serializers that cannot run code (``json``), and those
    listed in ``allowed_serializers`` (``RESULTSTORE_ALLOWED_SERIALIZERS``).
    Any other is refused with :class:`SerializerNotAllowedError` before its
    payload is read.

    Pickling a ResultStore carries only its URL and serializer configuration,
    never a key or credential: it is unpickled as the store this process allows
    for that URL (see :meth:`use_for_references`), writing with the same
    serializer (``{"type": "compressed/json", "compressionlib": "zlib"}`` stays
    that; unpickling runs the sender's code anyway, so this grants it nothing).
    """

    def __init__(
        self,
        result_storage: str | Store | None = None,
        serializer: str | Serializer | None = None,
        storage_key_fn: Callable[[], str] = _uuid_key,
        cache_result_in_memory: bool = True,
        persist_result: bool = True,
        *,
        storage_options: Mapping[str, Any] | None = None,
        retry: RetryPolicy | None = None,
        signing_key: str | bytes | None = None,
        old_signing_keys: Sequence[str | bytes] = (),
        timeout: float | None = None,
        allowed_serializers: Iterable[str] | None = None,
    ) -> None:
        settings = get_settings()
        self._given_options = dict(storage_options or {})  # kept for derive(); never shown
        if isinstance(result_storage, Store):
            self.store = result_storage
        elif result_storage is None or isinstance(result_storage, str):
            url = result_storage if result_storage is not None else settings.storage_url
            scheme = scheme_of(url)
            options: dict[str, Any] = {
                **_env_options(settings, scheme),
                **(storage_options or {}),
            }
            if scheme == "file":
                options.setdefault("fsync", settings.fsync)
            self.store = resolve_store(url, **options)
        else:
            raise ConfigurationError(
                "result_storage must be a URL string, a Store or None, "
                f"not {type(result_storage).__name__}"
            )
        self.serializer = get_serializer(serializer or settings.serializer)
        if not callable(storage_key_fn):
            raise ConfigurationError(
                f"storage_key_fn must be callable, not {type(storage_key_fn).__name__}"
            )
        self.storage_key_fn = storage_key_fn
        self.cache_result_in_memory = cache_result_in_memory
        self.persist_result = persist_result
        self.retry = retry if retry is not None else RetryPolicy.from_settings(settings)
        self.timeout = _check_timeout(settings.timeout if timeout is None else timeout)
        """Seconds one operation, retries included, may take (``RESULTSTORE_TIMEOUT``)."""
        self._signer = _signer(settings, signing_key, old_signing_keys)
        self._allowed = _allowed_serializers(
            self.serializer,
            settings.allowed_serializers if allowed_serializers is None else allowed_serializers,
            "allowed_serializers" if allowed_serializers is not None else None,
        )
        self._storage_url = redact_url(self.store.url)

    @property
    def storage_url(self) -> str:
        """The store's URL, without credentials: what persisted results record."""
        return self._storage_url

    def __repr__(self) -> str:
        signed = ", signed" if self._signer else ""
        return f"ResultStore({self.storage_url!r}, serializer={self.serializer.name!r}{signed})"

    @property
    def signed(self) -> bool:
        """True when this store signs what it writes and verifies what it reads."""
        return self._signer is not None

    def __reduce__(self) -> tuple[Callable[[str, Any], ResultStore], tuple[str, Any]]:
        # Only the URL and the serializer's configuration travel (its name if it has
        # none): never a signing key or a credential. The receiving process reads
        # through the store it allows for that URL, with this serializer.
        config = self.serializer.configuration
        return _reopen, (self.storage_url, self.serializer.name if config is None else config)

    def derive(self, storage_url: str) -> ResultStore:
        """A store for ``storage_url`` configured as this one is.

        Same serializer, allowed serializers, signing keys, retry policy, timeout
        and storage options: what references to URLs below a store registered
        with :meth:`use_for_references` are read through.
        """
        derived = ResultStore(
            storage_url,
            self.serializer,
            storage_options=self._given_options,
            retry=self.retry,
            timeout=self.timeout,
        )
        derived._signer, derived._allowed = self._signer, self._allowed
        return derived

    def __copy__(self) -> ResultStore:
        return self  # a handle on shared storage: copies would share everything anyway

    def __deepcopy__(self, memo: dict[int, Any]) -> ResultStore:
        return self

    lock_clock_margin: float = 1.0
    """Seconds a lock's lease is still honoured by others past its expiry time.

    The clock skew tolerated between machines sharing the store; see "Compute
    once" in the README. Raise it for hosts without time synchronization.
    """

    @property
    def _locks(self) -> LockManager:
        """The lease logic of this store (:mod:`resultstore.locks`), made on first use."""
        manager: LockManager | None = self.__dict__.get("_lock_manager")
        if manager is None:
            from resultstore.locks import LockManager

            manager = self.__dict__["_lock_manager"] = LockManager(self)
        return manager

    def _guard(self, action: str, key: str) -> _Guard:
        """A context that turns non-resultstore exceptions from a store into one-line errors."""
        return _Guard(self.storage_url, action, key, self.store)

    # -- writing -------------------------------------------------------------

    def _new_key(self, key: str | None) -> str:
        return validate_key(self.storage_key_fn() if key is None else key)

    async def awrite(
        self,
        obj: Any,
        key: str | None = None,
        expiration: datetime.datetime | datetime.timedelta | None = None,
        *,
        if_absent: bool = False,
        if_version: str | None = None,
        holder: str | None = None,
    ) -> str:
        """Serialize ``obj`` and store it under ``key`` (or a new key); returns the key.

        ``expiration`` is a moment or a time from now (``timedelta(days=7)``); an
        expired record is still readable until ``delete_expired`` (``resultstore gc``)
        removes it.

        ``if_absent=True`` creates the record only if none exists, else raises
        :class:`ResultExistsError`; ``if_version=v`` replaces it only if its
        version (``ResultMetadata.version``) is still ``v``, else raises
        :class:`VersionConflictError`. Both are atomic on the storage, on stores
        whose ``supports_conditional_write`` is true (others raise
        :class:`UnsupportedOperationError` before any I/O), and are not retried:
        a conditional write whose answer was lost may have landed, so the caller
        decides (read the key back).

        With ``holder``, the write is refused with :class:`LockHeldError` while
        another holder holds the key's lock (see :meth:`lock`), as Prefect 3's
        ``ResultStore`` does. That check is advisory: it is not atomic with the
        write, so it keeps out writers that check, while a lock taken between
        the check and the write is not seen. Writers that all take the lock
        first (or use :meth:`get_or_compute`) are serialized.
        """
        key = self._new_key(key)
        if holder is not None:
            await self._locks.check_writer(key, _holder(holder))
        conditional = if_absent or if_version is not None
        if if_version is not None and (not isinstance(if_version, str) or not if_version):
            raise ConfigurationError(f"if_version must be a version string, not {if_version!r}")
        if if_absent and if_version is not None:
            raise ConfigurationError("pass if_absent or if_version, not both")
        if conditional and not self.store.supports_conditional_write:
            raise self.store.unsupported("conditional writes")
        expires = _check_expiration(expiration)
        created = None if expires is None else datetime.datetime.now(datetime.timezone.utc)
        serializer_name, segments = self.serializer.encode(obj)  # "auto" names its choice
        buffers = encode_record(
            segments,
            serializer=serializer_name,
            expiration=expires,
            created=created,
            signer=self._signer,
            key=key,
        )
        head = buffers[0]  # encode_record: the record's prefix and header, as bytes
        payload = Payload(buffers, head=head if isinstance(head, bytes) else None)
        if expires is not None and created is not None:
            # Indexed first, so gc finds the record without reading every header; an
            # entry whose record never lands is removed by gc when it comes due.
            from resultstore.expiry import write_entry

            await write_entry(self, key, expires, created, payload)
        guard = self._guard("write", key)

        async def once() -> None:
            with guard:
                if conditional:
                    await self.store.write(key, payload, if_absent=if_absent, if_version=if_version)
                else:  # the plain call: stores whose write() predates the conditions work too
                    await self.store.write(key, payload)

        # A whole record rewritten is safe to retry; a conditional write is not.
        await guard.run(self, once, policy=NO_RETRY if conditional else None)
        return key

    def write(
        self,
        obj: Any,
        key: str | None = None,
        expiration: datetime.datetime | datetime.timedelta | None = None,
        *,
        if_absent: bool = False,
        if_version: str | None = None,
        holder: str | None = None,
    ) -> str:
        """Sync twin of :meth:`awrite`."""
        return run_sync(
            self.awrite(
                obj,
                key=key,
                expiration=expiration,
                if_absent=if_absent,
                if_version=if_version,
                holder=holder,
            )
        )

    def create_result(
        self,
        obj: Any,
        key: str | None = None,
        expiration: datetime.datetime | datetime.timedelta | None = None,
    ) -> PersistedResult:
        """Wrap ``obj`` in a reference to be persisted by its ``write()``/``awrite()``."""
        from resultstore.results import PersistedResult

        return PersistedResult(
            storage_url=self.storage_url,
            key=self._new_key(key),
            serializer=self.serializer.name,
            expiration=_check_expiration(expiration),
            value=obj,
            result_store=self,
        )

    # -- reading -------------------------------------------------------------

    async def _verified(
        self, action: str, key: str, *, decode: bool = False
    ) -> tuple[ResultMetadata, list[Buffer]]:
        """Open, read and verify a record (framing, checksum, signature); nothing unpickled.

        With ``decode``, a record whose serializer this store may not decode is
        refused before its payload is read.
        """
        with self._guard(action, key):
            reader = await self.store.open(key)
            try:
                return await read_record(
                    reader,
                    key,
                    self.storage_url,
                    self._signer,
                    self._check_serializer if decode else None,
                )
            finally:
                await reader.aclose()

    def _check_serializer(self, metadata: ResultMetadata) -> None:
        """Refuse to decode a record whose serializer is neither allowed nor code-free."""
        name = metadata.serializer
        if name in self._allowed:
            return
        if name not in available_serializers():  # its error, with the record's key and URL
            try:
                record_serializer(name)  # not installed: raises before importing anything
            except UnknownSerializerError as exc:
                raise UnknownSerializerError(
                    f"record {metadata.storage_key!r} in {self.storage_url}: {exc}",
                    key=metadata.storage_key,
                    url=self.storage_url,
                ) from None
        if record_serializer(name).code_free:  # installed: a plugin's own promise
            return
        allowed = ", ".join(sorted(self._allowed))
        raise SerializerNotAllowedError(
            f"record {metadata.storage_key!r} in {self.storage_url} was written with the "
            f"{name!r} serializer, which can run code and is not allowed here (allowed: "
            f"{allowed} and code-free serializers); if you trust everyone who can write to "
            f"this storage, allow it with allowed_serializers=[{name!r}] or "
            f"RESULTSTORE_ALLOWED_SERIALIZERS={name}",
            key=metadata.storage_key,
            url=self.storage_url,
        )

    async def _read_once(self, key: str) -> ResultRecord[Any]:
        try:
            # What _verified("read", key, decode=True) does, inline: read()'s hot path.
            with self._guard("read", key):
                reader = await self.store.open(key)
                try:
                    metadata, segments = await read_record(
                        reader, key, self.storage_url, self._signer, self._check_serializer
                    )
                finally:
                    await reader.aclose()
        except UnknownSerializerError as exc:
            if exc.key is not None:  # already names the record (_check_serializer)
                raise
            raise UnknownSerializerError(
                f"record {key!r} in {self.storage_url}: {exc}", key=key, url=self.storage_url
            ) from None
        except NotARecordError as exc:
            # Not a native record at all: it may be a Prefect record, read in place.
            from resultstore.prefect import read_in_place

            return await read_in_place(self, key, exc)
        try:
            serializer = (
                self.serializer
                if metadata.serializer == self.serializer.name
                else record_serializer(metadata.serializer)
            )
            value = serializer.loads(segments)
        except (SerializationError, UnknownSerializerError) as exc:
            raise type(exc)(
                f"record {key!r} in {self.storage_url}: {exc}", key=key, url=self.storage_url
            ) from None
        return ResultRecord(value, metadata)

    async def aread(
        self,
        key: str,
        *,
        retry: bool = True,
        mmap: bool = False,
        columns: Sequence[str] | None = None,
        verify: bool | None = None,
    ) -> ResultRecord[Any]:
        """Read, verify and deserialize the record under ``key``.

        ``mmap=True`` (file store only; other stores raise
        :class:`UnsupportedOperationError`) maps the record file read-only and
        decodes from the map: ``npy`` arrays and ``arrow`` tables come back as
        read-only views of the file, without a copy. Its checksum (and
        signature) is verified on open by reading the file once in chunks, no
        copy kept; ``verify=False`` skips that read (refused with a signing key).

        ``columns=[...]`` reads only those columns of an ``arrow`` record, with
        ranged reads (the header, the IPC footer, their buffers). It cannot check
        the whole payload's checksum: it checks the header and validates the
        Arrow data read; ``verify=True`` reads and verifies the record whole
        first (required with a signing key). See :mod:`resultstore.mapped`.

        A missing record or unreachable storage is retried by :attr:`retry`
        unless ``retry=False``; damaged records fail at once. A Prefect result
        record under ``key`` is read in place, by the same trust rules (see
        :mod:`resultstore.prefect`); its metadata's serializer is ``prefect:<type>``.
        """
        key = validate_key(key)
        once: Callable[[], Awaitable[ResultRecord[Any]]] = lambda: self._read_once(key)  # noqa: E731
        if mmap or columns is not None:  # reads of less than a whole record
            from resultstore.mapped import partial_read

            once = partial_read(self, key, mmap=mmap, columns=columns, verify=verify)
        elif verify is not None:
            raise ConfigurationError(
                "verify= applies to mmap=True and columns= reads; a whole read always verifies"
            )
        return await _Guard.bounded(
            self,
            "read",
            key,
            once,
            policy=None if retry else NO_RETRY,
            missing=True,
        )

    def read(
        self,
        key: str,
        *,
        retry: bool = True,
        mmap: bool = False,
        columns: Sequence[str] | None = None,
        verify: bool | None = None,
    ) -> ResultRecord[Any]:
        """Sync twin of :meth:`aread`."""
        return run_sync(self.aread(key, retry=retry, mmap=mmap, columns=columns, verify=verify))

    async def aread_metadata(self, key: str) -> ResultMetadata:
        """The metadata of the record under ``key``, without loading its payload.

        A Prefect result record, which :meth:`read` reads in place, is described
        too (serializer ``prefect:<type>``, no checksum; nothing decoded).
        """
        key = validate_key(key)
        guard = self._guard("inspect", key)

        async def once() -> ResultMetadata:
            end = HEADER_PROBE  # the header alone: ranged stores fetch no payload
            with guard:
                if self.store.supports_read_head:  # a copy kept with the object (S3: a HEAD)
                    kept = await self.store.read_head(key)
                    if kept is not None:
                        metadata = await self._kept_metadata(key, kept)
                        if metadata is not None:
                            return metadata
                while True:
                    reader = await self.store.open(key, end=end)
                    try:
                        header, _, _ = await read_header(reader, key, self.storage_url, end)
                        return header.metadata
                    except HeaderBeyond as beyond:  # a header larger than the probe: rare
                        end = beyond.end
                    except NotARecordError as exc:  # read() falls back on this error alone
                        native = exc
                        break
                    finally:
                        await reader.aclose()
            from resultstore.prefect import metadata_in_place

            return await metadata_in_place(self, key, native)

        return await guard.run(self, once)

    async def _kept_metadata(self, key: str, kept: Head) -> ResultMetadata | None:
        """The metadata in the header copy a store kept (``read_head``), or None.

        The copy is as untrusted as the object, and parsed by the same bounded,
        verifying parser as the object's header, against the object's size from the
        same request. Anything else than exactly a header that verifies (too long,
        damaged, followed by other bytes, with a signing key: not signed by it) is
        None: the object is then read, since it alone is authoritative, and a bad
        copy never makes a record look damaged.
        """
        data, size, version = kept
        if (
            not isinstance(data, bytes)
            or len(data) > HEADER_PROBE
            or type(size) is not int
            or size < len(data)
            or not (version is None or isinstance(version, str))
        ):
            return None
        reader = BytesReader(data, version=version)
        reader.size = size
        try:
            header, rest, _ = await read_header(reader, key, self.storage_url)
        except ResultStoreError:
            return None
        if rest:
            return None
        signer = self._signer
        if signer is not None:
            signature = header.signature
            if (
                signature is None
                or signer.is_v2(signature)  # an earlier release's: covers the payload
                or header.digest is None
                or not signer.verify_header(key, header.signed_bytes, signature)
            ):
                return None
        return header.metadata

    def read_metadata(self, key: str) -> ResultMetadata:
        """Sync twin of :meth:`aread_metadata`."""
        return run_sync(self.aread_metadata(key))

    async def _read_raw(self, key: str) -> tuple[ResultMetadata, list[bytes]]:
        """The record's bytes as stored, after verifying them (nothing is deserialized)."""
        with self._guard("read", key):
            reader = await self.store.open(key)
            try:
                chunks = [await reader.read(_RAW_CHUNK)]
                while len(chunks[-1]) == _RAW_CHUNK:
                    chunks.append(await reader.read(_RAW_CHUNK))
            finally:
                await reader.aclose()
        metadata, _ = await read_record(BytesReader(chunks), key, self.storage_url, self._signer)
        return metadata, chunks

    async def averify(self, key: str) -> ResultMetadata:
        """Check the record under ``key`` (framing, checksum, signature) without unpickling it.

        Raises :class:`IntegrityError` (or :class:`SignatureError`) for a bad record; a
        Prefect record, which :meth:`read` reads in place, has no checksum to verify and
        raises :class:`~resultstore.prefect.PrefectRecordError` saying so.
        """
        key = validate_key(key)
        try:
            metadata, _ = await _Guard.bounded(
                self, "verify", key, lambda: self._verified("verify", key)
            )
        except NotARecordError as native:
            from resultstore.prefect import metadata_in_place, unverifiable

            await metadata_in_place(self, key, native)  # raises native unless Prefect's
            raise unverifiable(key, self.storage_url) from None
        return metadata

    def verify(self, key: str) -> ResultMetadata:
        """Sync twin of :meth:`averify`."""
        return run_sync(self.averify(key))

    async def acopy_to(self, key: str, destination: ResultStore) -> ResultMetadata:
        """Copy the record under ``key`` byte for byte into ``destination``.

        The record is verified before it is written, so damage is never copied,
        and its checksum and signature stay valid; the copy's metadata is read
        back and compared. Returns the copy's metadata.
        """
        key = validate_key(key)
        source, chunks = await _Guard.bounded(self, "read", key, lambda: self._read_raw(key))
        payload = Payload(chunks, head=record_head(chunks[0]))
        if source.expiration is not None:  # indexed there too, so its gc finds the copy
            from resultstore.expiry import write_entry

            await write_entry(destination, key, source.expiration, source.created, payload)
        guard = destination._guard("write", key)

        async def put() -> None:
            with guard:
                await destination.store.write(key, payload)

        await guard.run(destination, put)
        copied = await destination.aread_metadata(key)
        compared = ("serializer", "size", "checksum", "created", "expiration", "signed")
        if any(getattr(copied, name) != getattr(source, name) for name in compared):
            raise IntegrityError(
                f"the copy of key {key!r} in {destination.storage_url} does not match the "
                f"source in {self.storage_url}; copy it again",
                key=key,
                url=destination.storage_url,
            )
        return copied

    def copy_to(self, key: str, destination: ResultStore) -> ResultMetadata:
        """Sync twin of :meth:`acopy_to`."""
        return run_sync(self.acopy_to(key, destination))

    # -- the rest --------------------------------------------------------------

    async def aexists(self, key: str) -> bool:
        """True when a record exists under ``key``."""
        key = validate_key(key)
        guard = self._guard("check", key)

        async def once() -> bool:
            with guard:
                return await self.store.exists(key)

        return await guard.run(self, once)

    def exists(self, key: str) -> bool:
        """Sync twin of :meth:`aexists`."""
        return run_sync(self.aexists(key))

    async def adelete(self, key: str) -> bool | None:
        """Delete the record under ``key``, if any: idempotent, one request.

        Returns True when a record was deleted, False when there was none, and
        None when the store does not say (S3 answers a delete the same either
        way) or an attempt was cut off after the storage may have applied it.
        """
        key = validate_key(key)
        guard = self._guard("delete", key)
        attempts = 0

        async def once() -> bool | None:
            nonlocal attempts
            attempts += 1
            with guard:
                deleted = await self.store.delete(key)
            # After a lost answer, "nothing there" may be our own earlier attempt's doing.
            return None if attempts > 1 and deleted is False else deleted

        return await guard.run(self, once)

    def delete(self, key: str) -> bool | None:
        """Sync twin of :meth:`adelete`."""
        return run_sync(self.adelete(key))

    async def adelete_many(self, keys: Sequence[str]) -> None:
        """Delete the records under ``keys`` (missing ones are fine), in batched requests.

        Stores with a batch delete use it (S3: DeleteObjects, 1,000 keys a request);
        each batch is retried as a whole, which is safe: deletes are idempotent.
        """
        await self._adelete_raw([validate_key(key) for key in keys])

    async def _adelete_raw(self, keys: Sequence[str]) -> None:
        """:meth:`adelete_many` of keys already valid, `resultstore`'s own ones included.

        Batches of 1,000 one after the other, each retried whole; a store splits a batch
        as its server likes (the S3 stores: concurrent requests of 125 keys).
        """
        for start in range(0, len(keys), DELETE_BATCH):
            batch = list(keys[start : start + DELETE_BATCH])
            guard = self._guard(
                "delete", batch[0] if len(batch) == 1 else f"{batch[0]} (+{len(batch) - 1} more)"
            )

            async def once(batch: list[str] = batch, guard: _Guard = guard) -> None:
                with guard:
                    await self.store.delete_many(batch)

            await guard.run(self, once)

    def delete_many(self, keys: Sequence[str]) -> None:
        """Sync twin of :meth:`adelete_many`."""
        run_sync(self.adelete_many(keys))

    async def arequire_container(self) -> None:
        """Raise :class:`ContainerMissingError` when the folder that holds the records is missing.

        A file store creates its folder on the first write, so a store whose folder
        does not exist lists nothing, as a fresh store should. A command that reports
        on a whole store (``resultstore ls``, ``check``, ``gc``, ``copy``) calls this
        first: a mistyped path is then an error naming the folder, as an S3 URL with
        a missing bucket is, never "0 records". Other stores need no check here: S3
        raises :class:`ContainerMissingError` from its listing, and a server that
        cannot be reached fails every call.
        """
        from resultstore.stores.file import FileStore

        if not isinstance(self.store, FileStore) or self.store.root.is_dir():
            return
        root = self.store.root
        why = "is not a folder" if root.exists() else "does not exist"
        raise ContainerMissingError(
            f"cannot read {self.storage_url}: the folder {root} {why} (a file store's folder "
            "is created by its first write); check the URL (--storage, RESULTSTORE_STORAGE_URL)",
            url=self.storage_url,
        )

    def require_container(self) -> None:
        """Sync twin of :meth:`arequire_container`."""
        run_sync(self.arequire_container())

    async def akeys(self, prefix: str = "") -> AsyncIterator[str]:
        """Yield the keys under ``prefix``, in no particular order.

        Each page of keys is bounded by :attr:`timeout`, not the whole listing. A
        listing cut off by unreachable storage is retried from the start, skipping
        the keys already yielded (so it holds those in memory).
        """
        async for page in self._akey_pages(prefix):
            for key in page:
                yield key

    async def _akey_pages(self, prefix: str) -> AsyncIterator[list[str]]:
        """:meth:`akeys`, a page at a time (what bulk operations read)."""
        async for page in self._alisting_pages(_user_prefix(prefix), hide_reserved=True):
            yield page

    async def _adetail_pages(
        self, prefix: str, *, start_after: str | None = None
    ) -> AsyncIterator[list[Listed]]:
        """:meth:`_akey_pages` with what the listing shows of each key (``Store.list_details``),
        after ``start_after`` if given."""
        async for page in self._alisting_details(
            _user_prefix(prefix), start_after=start_after, hide_reserved=True
        ):
            yield page

    async def _alisting(self, prefix: str, *, hide_reserved: bool) -> AsyncIterator[str]:
        """The keys under ``prefix``, `resultstore`'s own ones too unless ``hide_reserved``."""
        async for page in self._alisting_pages(prefix, hide_reserved=hide_reserved):
            for key in page:
                yield key

    def _alisting_pages(self, prefix: str, *, hide_reserved: bool) -> AsyncIterator[list[str]]:
        """:meth:`_alisting` a page at a time: each page fetched under the timeout and
        retried as a whole; a retried listing starts again and skips what was yielded."""
        return self._apaged(
            prefix, hide_reserved, lambda: self.store.list_pages(prefix), lambda key: key
        )

    def _alisting_details(
        self, prefix: str, *, start_after: str | None = None, hide_reserved: bool
    ) -> AsyncIterator[list[Listed]]:
        """:meth:`_alisting_pages` through ``Store.list_details``: keys after ``start_after``
        (if given), each with its size and content MD5 where the store's listing shows them."""
        return self._apaged(
            prefix,
            hide_reserved,
            lambda: self.store.list_details(prefix, start_after=start_after),
            _listed_key,
        )

    async def _apaged(
        self,
        prefix: str,
        hide_reserved: bool,
        start: Callable[[], AsyncIterator[list[T]]],
        key_of: Callable[[T], str],
    ) -> AsyncIterator[list[T]]:
        """The pages of a listing pass ``start()`` makes, each fetched under the timeout
        and retried as a whole; a retried pass starts again and skips what was yielded."""
        from resultstore.keys import RESERVED_PREFIX, is_reserved

        guard = self._guard("list", prefix or "*")
        # The pages yielded so far, kept by reference (nothing per key); a pass retried
        # after a failure makes a set of their keys, and skips those from then on.
        yielded: list[list[T]] = []
        seen: set[str] | None = None
        listing: list[AsyncIterator[list[T]]] = []  # the pass under way, if any
        # Keys under a prefix that is not a beginning of the reserved namespace, nor
        # inside it, cannot be reserved: no check per key.
        hide_reserved = hide_reserved and (
            RESERVED_PREFIX.startswith(prefix) or is_reserved(prefix)
        )

        async def page() -> list[T] | None:
            nonlocal seen
            try:
                with guard:
                    if not listing:
                        if yielded:  # a retried pass: skip what the failed one yielded
                            seen = {key_of(item) for done in yielded for item in done}
                            yielded.clear()
                        listing.append(aiter(start()))
                    try:
                        found = await anext(listing[0])
                    except StopAsyncIteration:
                        return None
            except BaseException:
                if listing:
                    await _aclose(listing.pop())
                raise
            items = found if seen is None else [i for i in found if key_of(i) not in seen]
            if hide_reserved:
                items = [item for item in items if not is_reserved(key_of(item))]
            if seen is None:
                yielded.append(items)
            else:
                seen.update(key_of(item) for item in items)
            return items

        try:
            while (items := await guard.run(self, page)) is not None:
                if items:
                    yield items
        finally:
            if listing:
                await _aclose(listing.pop())

    def keys(self, prefix: str = "") -> list[str]:
        """Sync twin of :meth:`akeys`, as a sorted list."""
        return sorted(run_sync(_collect(self.akeys(prefix))))

    async def alist(self, prefix: str = "") -> AsyncIterator[ResultMetadata]:
        """Yield the metadata of every record under ``prefix``, without loading payloads."""
        async for key in self.akeys(prefix):
            yield await self.aread_metadata(key)

    def list(self, prefix: str = "") -> Iterator[ResultMetadata]:
        """Sync twin of :meth:`alist`, sorted by key."""
        found = run_sync(_collect(self.alist(prefix)))
        return iter(sorted(found, key=lambda m: m.storage_key))

    async def aclean_abandoned(
        self, older_than: float = 3600.0, *, dry_run: bool = False
    ) -> tuple[int, int]:
        """Remove leftovers of writers killed mid-write (e.g. temporary files).

        Only what has been untouched for ``older_than`` seconds goes, so writes in
        progress are safe. Returns (items, bytes) removed, or that would be.
        """
        guard = self._guard("clean", "*")

        async def once() -> tuple[int, int]:
            with guard:
                return await self.store.clean_abandoned(older_than, dry_run=dry_run)

        return await guard.run(self, once)

    def clean_abandoned(
        self, older_than: float = 3600.0, *, dry_run: bool = False
    ) -> tuple[int, int]:
        """Sync twin of :meth:`aclean_abandoned`."""
        return run_sync(self.aclean_abandoned(older_than, dry_run=dry_run))

    # -- whole-store operations (resultstore.bulk) ------------------------------------------

    def ascan(
        self, prefix: str = "", *, concurrency: int = DEFAULT_CONCURRENCY
    ) -> AsyncIterator[ScanEntry]:
        """Yield a :class:`ScanEntry` for every record under ``prefix``: metadata, or why
        it is damaged; streaming, with bounded memory (see :func:`resultstore.bulk.ascan`)."""
        from resultstore.bulk import ascan

        return ascan(self, prefix, concurrency=concurrency)

    def scan(
        self, prefix: str = "", *, concurrency: int = DEFAULT_CONCURRENCY
    ) -> Iterator[ScanEntry]:
        """Sync twin of :meth:`ascan`: an iterator to consume in the thread that made it."""
        from resultstore.bulk import ascan_batches

        batches = ascan_batches(self, prefix, concurrency=concurrency)
        try:
            while True:
                try:
                    batch = run_sync(_next(batches))
                except StopAsyncIteration:
                    return
                yield from batch
        finally:
            run_sync(_aclose(batches))

    async def averify_all(
        self,
        prefix: str = "",
        *,
        require_signed: bool = False,
        concurrency: int = DEFAULT_CONCURRENCY,
        progress: Progress | None = None,
    ) -> CheckSummary:
        """Verify every record under ``prefix`` (see :func:`resultstore.bulk.averify_all`)."""
        from resultstore.bulk import averify_all

        return await averify_all(
            self, prefix, require_signed=require_signed, concurrency=concurrency, progress=progress
        )

    def verify_all(
        self,
        prefix: str = "",
        *,
        require_signed: bool = False,
        concurrency: int = DEFAULT_CONCURRENCY,
        progress: Progress | None = None,
    ) -> CheckSummary:
        """Sync twin of :meth:`averify_all`."""
        return run_sync(
            self.averify_all(
                prefix, require_signed=require_signed, concurrency=concurrency, progress=progress
            )
        )

    async def acopy_all(
        self,
        destination: ResultStore,
        prefix: str = "",
        *,
        skip_existing: bool = True,
        dry_run: bool = False,
        concurrency: int = DEFAULT_CONCURRENCY,
        progress: Progress | None = None,
    ) -> CopySummary:
        """Copy every record under ``prefix`` to ``destination``, skipping unchanged ones
        (see :func:`resultstore.bulk.acopy_all`)."""
        from resultstore.bulk import acopy_all

        return await acopy_all(
            self,
            destination,
            prefix,
            skip_existing=skip_existing,
            dry_run=dry_run,
            concurrency=concurrency,
            progress=progress,
        )

    def copy_all(
        self,
        destination: ResultStore,
        prefix: str = "",
        *,
        skip_existing: bool = True,
        dry_run: bool = False,
        concurrency: int = DEFAULT_CONCURRENCY,
        progress: Progress | None = None,
    ) -> CopySummary:
        """Sync twin of :meth:`acopy_all`."""
        return run_sync(
            self.acopy_all(
                destination,
                prefix,
                skip_existing=skip_existing,
                dry_run=dry_run,
                concurrency=concurrency,
                progress=progress,
            )
        )

    async def adelete_expired(
        self,
        prefix: str = "",
        *,
        dry_run: bool = False,
        full: bool = False,
        concurrency: int = DEFAULT_CONCURRENCY,
        progress: Progress | None = None,
    ) -> GcSummary:
        """Delete the expired records under ``prefix``: those the expiry index names, or
        with ``full`` every one (see :func:`resultstore.bulk.adelete_expired`)."""
        from resultstore.bulk import adelete_expired

        return await adelete_expired(
            self,
            prefix,
            dry_run=dry_run,
            full=full,
            concurrency=concurrency,
            progress=progress,
        )

    def delete_expired(
        self,
        prefix: str = "",
        *,
        dry_run: bool = False,
        full: bool = False,
        concurrency: int = DEFAULT_CONCURRENCY,
        progress: Progress | None = None,
    ) -> GcSummary:
        """Sync twin of :meth:`adelete_expired`."""
        return run_sync(
            self.adelete_expired(
                prefix, dry_run=dry_run, full=full, concurrency=concurrency, progress=progress
            )
        )

    # -- locks and compute-once (resultstore.locks) ---------------------------------------

    def supports_isolation_level(self, level: IsolationLevel | str) -> bool:
        """True when this store offers ``level``.

        ``READ_COMMITTED`` always; ``SERIALIZABLE`` (locks, :meth:`get_or_compute`)
        only on stores with atomic conditional writes (``supports_conditional_write``).
        """
        from resultstore.locks import IsolationLevel

        try:
            level = IsolationLevel(level)
        except ValueError:
            names = ", ".join(member.value for member in IsolationLevel)
            raise ConfigurationError(
                f"unknown isolation level {level!r}; choose one of {names}"
            ) from None
        if level is IsolationLevel.SERIALIZABLE:
            return self.store.supports_conditional_write
        return True

    async def aacquire_lock(
        self,
        key: str,
        holder: str | None = None,
        acquire_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> bool:
        """Take the lock on ``key`` for ``holder``; False if ``acquire_timeout`` ran out.

        ``holder`` defaults to ``host:pid:thread``. ``acquire_timeout``: None waits
        as long as it takes, 0 tries once. ``hold_timeout``: seconds the lock lasts
        unless released or acquired again (which renews it: acquiring a lock one
        holds is idempotent); None lasts until released, even if its holder dies.
        Stores without conditional writes raise :class:`UnsupportedOperationError`.
        """
        key = validate_key(key)
        held = await self._locks.acquire(
            key,
            _holder(holder),
            _lock_seconds("acquire_timeout", acquire_timeout, positive=False),
            _lock_seconds("hold_timeout", hold_timeout, positive=True),
        )
        return held is not None

    def acquire_lock(
        self,
        key: str,
        holder: str | None = None,
        acquire_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> bool:
        """Sync twin of :meth:`aacquire_lock`."""
        return run_sync(self.aacquire_lock(key, _holder(holder), acquire_timeout, hold_timeout))

    async def arelease_lock(self, key: str, holder: str | None = None) -> None:
        """Release ``holder``'s lock on ``key``.

        Raises :class:`LockNotHeldError` if ``holder`` does not hold it (another
        does, or nobody, or its lease expired and was taken over).
        """
        key = validate_key(key)
        await self._locks.release(key, _holder(holder))

    def release_lock(self, key: str, holder: str | None = None) -> None:
        """Sync twin of :meth:`arelease_lock`."""
        run_sync(self.arelease_lock(key, _holder(holder)))

    async def ais_locked(self, key: str) -> bool:
        """True while some holder holds the lock on ``key`` (its lease has not expired)."""
        return await self._locks.is_locked(validate_key(key))

    def is_locked(self, key: str) -> bool:
        """Sync twin of :meth:`ais_locked`."""
        return run_sync(self.ais_locked(key))

    async def ais_lock_holder(self, key: str, holder: str | None = None) -> bool:
        """True when ``holder`` (default: this thread) holds the lock on ``key``."""
        return await self._locks.is_holder(validate_key(key), _holder(holder))

    def is_lock_holder(self, key: str, holder: str | None = None) -> bool:
        """Sync twin of :meth:`ais_lock_holder`."""
        return run_sync(self.ais_lock_holder(key, _holder(holder)))

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Wait until ``key`` is not locked; False if ``timeout`` seconds passed first."""
        key = validate_key(key)
        return await self._locks.wait(key, _lock_seconds("timeout", timeout, positive=False))

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Sync twin of :meth:`await_for_lock`."""
        return run_sync(self.await_for_lock(key, timeout))

    def alock(
        self,
        key: str,
        *,
        holder: str | None = None,
        hold_timeout: float | None = DEFAULT_HOLD_TIMEOUT,
        acquire_timeout: float | None = None,
    ) -> AbstractAsyncContextManager[None]:
        """``async with store.alock(key):`` holds the lock on ``key`` for the block.

        Waits up to ``acquire_timeout`` seconds (None: as long as it takes), then
        raises :class:`LockTimeoutError`. The lease lasts ``hold_timeout`` seconds
        and is not renewed: a block that runs longer may lose it, and then its
        exit raises :class:`LockNotHeldError` (if the block itself raised, that
        error wins and the release failure is logged).
        """
        return self._locks.alock(
            validate_key(key),
            _holder(holder),
            _lock_seconds("hold_timeout", hold_timeout, positive=True),
            _lock_seconds("acquire_timeout", acquire_timeout, positive=False),
        )

    def lock(
        self,
        key: str,
        *,
        holder: str | None = None,
        hold_timeout: float | None = DEFAULT_HOLD_TIMEOUT,
        acquire_timeout: float | None = None,
    ) -> AbstractContextManager[None]:
        """``with store.lock(key):`` holds the lock on ``key`` for the block; see :meth:`alock`."""
        return self._locks.lock(
            validate_key(key),
            _holder(holder),
            _lock_seconds("hold_timeout", hold_timeout, positive=True),
            _lock_seconds("acquire_timeout", acquire_timeout, positive=False),
        )

    async def _ahit(self, key: str) -> ResultRecord[Any] | None:
        """The record under ``key`` if it exists and has not expired: get_or_compute's hit.

        As cheap as :meth:`aread` (unreachable storage retried, a missing record not).
        """
        try:
            record = await _Guard.bounded(self, "read", key, lambda: self._read_once(key))
        except ResultStoreError as exc:
            if exc.reason != "not_found":
                raise
            return None
        return None if record.metadata.is_expired() else record

    async def aget_or_compute(
        self,
        key: str,
        fn: Callable[..., Any],
        /,
        *args: Any,
        expiration: datetime.datetime | datetime.timedelta | None = None,
        hold_timeout: float = DEFAULT_COMPUTE_HOLD_TIMEOUT,
        **kwargs: Any,
    ) -> Any:
        """The value under ``key``; if there is none, ``fn(*args, **kwargs)`` computed once.

        A record that exists and has not expired is read (an expired one counts as
        absent). Otherwise one caller across all processes and machines takes the
        key's lock, computes, writes (with ``expiration``) and releases; the others
        wait and read what it wrote. ``fn`` may be sync (run in a worker thread) or
        async. The lease lasts ``hold_timeout`` seconds and is renewed every third
        of it while ``fn`` runs; if the computing process dies, a waiter takes over
        once the lease expires. If ``fn`` raises, the lock is released, the error
        reaches this caller, and the waiters compete again. See "Compute once" in
        the README for when ``fn`` may run twice (never with a torn result).
        """
        key = validate_key(key)
        hit = await self._ahit(key)
        if hit is not None:
            return hit.result
        hold = _lock_seconds("hold_timeout", hold_timeout, positive=True)
        if hold is None:
            raise ConfigurationError("hold_timeout of get_or_compute must be a number of seconds")
        if not callable(fn):
            raise ConfigurationError(f"fn must be callable, not {type(fn).__name__}")
        return await self._locks.aget_or_compute(
            key, fn, args, kwargs, _check_expiration(expiration), hold
        )

    def get_or_compute(
        self,
        key: str,
        fn: Callable[..., Any],
        /,
        *args: Any,
        expiration: datetime.datetime | datetime.timedelta | None = None,
        hold_timeout: float = DEFAULT_COMPUTE_HOLD_TIMEOUT,
        **kwargs: Any,
    ) -> Any:
        """Sync twin of :meth:`aget_or_compute`: ``fn`` runs in the calling thread."""
        key = validate_key(key)
        hit = run_sync(self._ahit(key))
        if hit is not None:
            return hit.result
        hold = _lock_seconds("hold_timeout", hold_timeout, positive=True)
        if hold is None:
            raise ConfigurationError("hold_timeout of get_or_compute must be a number of seconds")
        if not callable(fn):
            raise ConfigurationError(f"fn must be callable, not {type(fn).__name__}")
        return self._locks.get_or_compute(
            key, fn, args, kwargs, _check_expiration(expiration), hold
        )

    def use_for_references(self) -> ResultStore:
        """Read persisted results that point into this store through it; returns ``self``.

        A State's JSON names only a URL and key, so another process fetches the
        value through a store configured from the environment (``RESULTSTORE_*``,
        ``AWS_*``). Call this on a store configured in code (storage options,
        ``signing_key``, retry policy) to have references to its URL use that
        configuration instead, in this process.
        """
        from resultstore.results import serve_references

        serve_references(self)
        return self

    async def aclose(self) -> None:
        """Release the store's connections."""
        await self.store.aclose()

    def close(self) -> None:
        """Sync twin of :meth:`aclose`."""
        run_sync(self.aclose())

    async def __aenter__(self) -> ResultStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Guard:
    """One operation's guard, made by :meth:`ResultStore._guard`.

    As a sync context manager (cheap even around awaits) it turns non-resultstore
    exceptions from a store into one-line errors; :meth:`run` retries and bounds
    the operation in time.
    """

    __slots__ = ("action", "key", "store", "url")

    def __init__(self, url: str, action: str, key: str, store: Store | None = None) -> None:
        self.url, self.action, self.key, self.store = url, action, key, store

    def run(
        self,
        results: ResultStore,
        fn: Callable[[], Awaitable[T]],
        *,
        policy: RetryPolicy | None = None,
    ) -> Awaitable[T]:
        """``fn()`` retried on unreachable storage and bounded by ``results.timeout``."""
        return _Guard.bounded(results, self.action, self.key, fn, policy=policy)

    @staticmethod
    def bounded(
        results: ResultStore,
        action: str,
        key: str,
        fn: Callable[[], Awaitable[T]],
        *,
        policy: RetryPolicy | None = None,
        missing: bool = False,
    ) -> Awaitable[T]:
        """``fn()`` retried by ``results.retry`` and bounded by ``results.timeout``, to await.

        Unreachable storage is retried for every operation (each is idempotent); a
        missing record only with ``missing`` (reads). ``policy`` replaces the store's.
        The guard naming ``action`` and ``key`` is made only if time runs out.
        """
        timeout = results.timeout
        return bounded(
            results.retry if policy is None else policy,
            fn,
            BaseException if missing else StorageUnavailableError,
            timeout,
            lambda: _Guard(results.storage_url, action, key).expired(timeout),
        )

    def expired(self, timeout: float) -> StorageUnavailableError:
        """The error of an operation that took longer than ``timeout`` seconds."""
        return StorageUnavailableError(
            f"cannot {self.action} key {self.key!r} in {self.url}: no answer within "
            f"{timeout:g} s (RESULTSTORE_TIMEOUT); check the endpoint and the network",
            key=self.key,
            url=self.url,
        )

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if exc is None or isinstance(exc, ResultStoreError) or not isinstance(exc, Exception):
            return
        where = f"{self.action} key {self.key!r}"
        if isinstance(exc, (ConnectionError, TimeoutError)):
            raise StorageUnavailableError(
                f"cannot {where}: {self.url} is unreachable ({type(exc).__name__}: {exc}); "
                "check the URL and network",
                key=self.key,
                url=self.url,
            ) from exc
        if self.store is not None:  # a plugin's store that returned the wrong thing
            broken = broken_contract(self.store, self.action, self.key, self.url, exc)
            if broken is not None:
                raise broken from exc
        raise StorageError(
            f"cannot {where} in {self.url}: {type(exc).__name__}: {exc}", key=self.key, url=self.url
        ) from exc


def _listed_key(item: Listed) -> str:
    return item.key


def _user_prefix(prefix: str) -> str:
    """``prefix`` validated, and refused inside the reserved namespace (never listed)."""
    from resultstore.errors import InvalidKeyError
    from resultstore.keys import RESERVED_PREFIX, is_reserved

    prefix = validate_prefix(prefix)
    if is_reserved(prefix):
        raise InvalidKeyError(
            f"invalid prefix {prefix!r}: keys under {RESERVED_PREFIX!r} are reserved for "
            "resultstore's own records (lock leases, the expiry index) and never listed",
            key=prefix,
        )
    return prefix


async def _collect(items: AsyncIterator[T]) -> list[T]:
    return [item async for item in items]


async def _next(items: AsyncIterator[T]) -> T:
    """The next item of ``items`` (StopAsyncIteration at the end), as a coroutine."""
    return await anext(items)


async def _aclose(items: AsyncIterator[Any]) -> None:
    """Close a store's listing (an async generator) at once, not whenever it is collected."""
    close = getattr(items, "aclose", None)
    if close is not None:
        await close()
