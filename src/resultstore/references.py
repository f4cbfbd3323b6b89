"""Which store a result reference from outside this process may be read through.

A reference (``{storage_url, key, serializer, expiration}``) usually arrives
inside a State's JSON, from another process or machine: it is untrusted input.
Left to itself it could send a consumer to any URL, another bucket, an
``http://`` server, an FTP host, a folder of the attacker's choosing, and have
it read there through a freshly built store that checks no signature. So a
reference resolves only to storage this process allows:

1. stores registered with :meth:`ResultStore.use_for_references`: read
   through that very store (its signing key, serializers, retry policy and
   credentials), or, for a URL below it, a store derived from it with the same
   configuration;
2. the configured default storage (``RESULTSTORE_STORAGE_URL``) and below;
3. the URL prefixes listed in ``RESULTSTORE_REFERENCE_URLS`` and below.

Cases 2 and 3 read through a store configured from the environment, exactly
as ``ResultStore(url)`` would be. Anything else raises
:class:`ReferenceNotAllowedError` before any network request or file access.
The serializer a reference names is never used to configure the reader: what
may be decoded is the reading store's decision.

URLs are compared by location (scheme, host or bucket, and whole path
segments, decoded), never as raw text: ``file:///allowed/../etc``, a
percent-encoded ``%2e%2e``, ``s3://bucket-evil`` against ``s3://bucket`` and
user info are all refused; a query (``redis://host/0?prefix=team:``) must match
exactly.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import unquote, urlsplit

from resultstore.errors import ConfigurationError, ReferenceNotAllowedError
from resultstore.registry import has_userinfo, redact_url, scheme_of
from resultstore.settings import get_settings

if TYPE_CHECKING:
    from resultstore.result_store import ResultStore

__all__ = ["MAX_CACHED_STORES", "overlapping", "register", "store_for_reference"]

MAX_CACHED_STORES = 32
"""How many stores built for references are kept per process (least recently used go)."""

_registered: dict[_Location, ResultStore] = {}
_cache: OrderedDict[tuple[str, tuple[str, ...] | None], ResultStore] = OrderedDict()
_default: dict[str, _Location] = {}
_lock = threading.Lock()
_ALIASES = {"s3+obstore": "s3"}  # old State JSON names the client; the location is the same


class _Location(NamedTuple):
    scheme: str
    host: str
    path: tuple[str, ...]
    query: str = ""  # part of some plugins' locations (redis://host/0?prefix=...)

    def contains(self, other: _Location) -> bool:
        """True when ``other`` is this location or below it, by whole segments.

        ``s3://`` or ``memory://`` alone (no host, no path) covers the whole scheme.
        """
        if self.scheme != other.scheme:
            return False
        if not self.host and not self.path and not self.query:
            return True
        return (
            self.host == other.host
            and self.query == other.query
            and other.path[: len(self.path)] == self.path
        )


def _refused(url: str, why: str) -> ReferenceNotAllowedError:
    shown = redact_url(url) if isinstance(url, str) else repr(url)
    return ReferenceNotAllowedError(
        f"result reference to {shown!r} refused: {why}; to read it, add its storage URL to "
        "RESULTSTORE_REFERENCE_URLS or register a store for it with "
        "ResultStore(...).use_for_references()",
        url=shown,
    )


def _location(url: str, *, trusted: bool) -> _Location:
    """The location ``url`` names, checked; ``trusted`` URLs (settings) may be plain paths."""
    if not trusted:
        return _untrusted_location(url)[0]
    return _parse_location(url, trusted=True)


def _parse_location(url: str, *, trusted: bool, decode: bool = True) -> _Location:
    """The location ``url`` names; ``decode=False`` keeps percent-escapes in its path."""
    scheme = _ALIASES.get(scheme_of(url), scheme_of(url))
    if "://" not in url:
        if not trusted:
            raise _refused(url, "it is not a URL")
        url = f"file://{os.path.abspath(os.path.expanduser(url))}"
    parts = urlsplit(url)
    if parts.fragment:
        raise _refused(url, "storage URLs carry no fragment")
    if "@" in parts.netloc:
        raise _refused(url, "storage URLs in references carry no user info")
    # Kept as written: memory:// names (and a plugin's hosts) are case-sensitive, so
    # MEMORY://Allowed is not memory://allowed; refusing a differently-cased host that
    # would have been the same one costs nothing, accepting another one could.
    host = parts.netloc
    raw = unquote(parts.path) if decode else parts.path
    if scheme == "file":
        raw = unquote(parts.netloc + parts.path)
        if trusted:
            raw = os.path.realpath(os.path.expanduser(raw))
        host = ""
    segments = tuple(segment for segment in raw.split("/") if segment or not decode)
    if not decode:  # the path exactly as a store that does not decode it sees it
        segments = segments[1:] if segments[:1] == ("",) else segments
    if any(segment in (".", "..") or "\\" in segment for segment in segments):
        raise _refused(url, "its path has '.' or '..' segments")
    return _Location(scheme, host, segments, parts.query)


def _written_prefix(url: str) -> _Location:
    """An allowed prefix as a store that does not percent-decode reads it.

    A trailing ``/`` names the same prefix as none (``s3://bucket/a/`` allows ``a/x``).
    """
    location = _parse_location(url, trusted=True, decode=False)
    if location.scheme == "file":  # the file store decodes: one reading only
        return _parse_location(url, trusted=True)
    path = location.path
    while path and not path[-1]:
        path = path[:-1]
    return location._replace(path=path)


def _written_prefixes(reference_urls: list[str], storage_url: str) -> list[_Location]:
    found = []
    for url in [*reference_urls, storage_url]:
        try:
            found.append(_written_prefix(url))
        except (ConfigurationError, ReferenceNotAllowedError):  # fails where it is used
            continue
    return found


def _untrusted_location(url: str) -> tuple[_Location, _Location]:
    """A reference's location, decoded and as written, or ReferenceNotAllowedError.

    Stores differ on whether they percent-decode a URL's path (the file store does,
    S3 and memory do not), so a reference is allowed only when both readings lie in
    allowed storage: ``s3://bucket/%61llowed`` is not ``s3://bucket/allowed`` to an
    S3 store. Control characters, user info and URLs that do not parse are refused
    here, as references, not as settings.
    """
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url + unquote(url)):
        raise _refused(url, "its URL holds control characters")
    if has_userinfo(url):
        raise _refused(url, "storage URLs in references carry no user info")
    try:
        decoded = _parse_location(url, trusted=False)
        written = (
            decoded
            if decoded.scheme == "file"
            else _parse_location(url, trusted=False, decode=False)
        )
    except ReferenceNotAllowedError:
        raise
    except (ConfigurationError, ValueError) as exc:  # a bad scheme, an unclosed '[', ...
        raise _refused(url, f"it is not a valid storage URL ({str(exc).splitlines()[0]})") from None
    return decoded, written


def overlapping(first_url: str, second_url: str) -> bool:
    """True when two storage URLs name the same location, or one lies inside the other.

    What a copy between them must refuse: it would read its own writes.
    """
    try:
        first = _location(first_url, trusted=True)
        second = _location(second_url, trusted=True)
    except ReferenceNotAllowedError:
        return first_url == second_url
    return first.contains(second) or second.contains(first)


def register(store: ResultStore) -> None:
    """Have references to ``store``'s URL, and below it, read through ``store``."""
    location = _location(store.storage_url, trusted=True)
    with _lock:
        _registered[location] = store
        _cache.clear()  # stores derived from an earlier registration are stale


def _default_location() -> _Location | None:
    """Where RESULTSTORE_STORAGE_URL points, as its store resolves it (cached per URL)."""
    url = get_settings().storage_url
    found = _default.get(url)
    if found is None:
        try:
            found = _location(url, trusted=True)
        except ConfigurationError:
            return None  # a broken setting fails where the default store is made
        _default.clear()
        _default[url] = found
    return found


def _remember(cache_key: tuple[str, tuple[str, ...] | None], store: ResultStore) -> ResultStore:
    _cache[cache_key] = store
    while len(_cache) > MAX_CACHED_STORES:
        _cache.popitem(last=False)
    return store


def store_for_reference(storage_url: str) -> ResultStore:
    """The store a reference to ``storage_url`` is read through, or ReferenceNotAllowedError."""
    from resultstore.result_store import ResultStore

    if not isinstance(storage_url, str) or not storage_url:
        raise _refused(str(storage_url), "the storage URL is not a non-empty string")
    location, written = _untrusted_location(storage_url)
    with _lock:
        exact = _registered.get(location)
        if exact is not None:
            return exact
        owners = [
            loc
            for loc, store in _registered.items()
            if loc.contains(location) and _written_prefix(store.storage_url).contains(written)
        ]
        owner = max(owners, key=lambda loc: len(loc.path)) if owners else None
        cache_key = (storage_url, owner.path if owner else None)
        cached = _cache.get(cache_key)
        if cached is not None:
            _cache.move_to_end(cache_key)
            return cached
        if owner is not None:
            return _remember(cache_key, _registered[owner].derive(storage_url))
    settings = get_settings()
    allowed = [_location(prefix, trusted=True) for prefix in settings.reference_urls]
    default = _default_location()
    if default is not None:
        allowed.append(default)
    # Each reading against the same reading of the prefixes: the decoded location
    # under a decoded prefix, the location as written under a prefix as written
    # (s3://bucket/%61 is under s3://bucket/%2561 decoded, but not as S3 reads it).
    if not any(prefix.contains(location) for prefix in allowed) or not any(
        prefix.contains(written)
        for prefix in _written_prefixes(settings.reference_urls, settings.storage_url)
    ):
        raise _refused(storage_url, "this process does not allow that storage")
    store = ResultStore(storage_url)
    if location.scheme == "file" and not any(
        prefix.contains(_location(store.storage_url, trusted=True)) for prefix in allowed
    ):  # a symlink below an allowed folder that leads out of it
        raise _refused(storage_url, "it resolves to a folder outside the allowed ones")
    with _lock:
        return _remember(cache_key, store)
