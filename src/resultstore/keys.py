"""Key validation, done once above every store.

A valid key is a relative, ``/``-separated path of non-empty segments, so the
same key addresses the same record on every backend and can never leave a
store's root: no absolute paths, no ``.``/``..`` segments, no backslashes, no
control characters, bounded lengths, and no segment ending in the reserved
record suffix (which the file store uses to keep ``a`` and ``a/b`` apart).

Keys whose first segment is ``.resultstore`` (:data:`RESERVED_PREFIX`) belong to
`resultstore` itself (lock leases, indexes): user keys may not use them, and
listings never show them.
"""

from __future__ import annotations

import re

from resultstore.errors import InvalidKeyError

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_SEGMENT_BYTES",
    "RESERVED_PREFIX",
    "RESERVED_SUFFIX",
    "is_reserved",
    "is_storable",
    "validate_key",
    "validate_prefix",
]

MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 200
RESERVED_SUFFIX = ".rsr"
RESERVED_PREFIX = ".resultstore/"
"""The one namespace of `resultstore`'s own records: ``.resultstore/locks/<key>`` holds
the lease of ``<key>``. A dot-name, so no plain key can start with it (the file store
keeps it as a folder; its temporary files are named ``.<name>.rsr.<hex>.tmp``, never
``.resultstore``). :func:`validate_key` refuses user keys under it, and
``ResultStore.keys``/``list`` (so ``resultstore ls``, ``gc`` and ``check``) skip it."""
_RESERVED_SEGMENT = RESERVED_PREFIX[:-1]

_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")
# Keys of plain segments (letters, digits, '_', '-', inner dots) are valid without the
# slower checks below: no '.'/'..' segments, no empty segments, no reserved suffix.
_PLAIN = re.compile(
    r"[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*(?:/[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*)*"
)
_PLAIN_MAX = MAX_SEGMENT_BYTES


def is_reserved(key: str) -> bool:
    """True for keys (or prefixes) inside :data:`RESERVED_PREFIX`, `resultstore`'s own."""
    return key.startswith(RESERVED_PREFIX) or key == _RESERVED_SEGMENT


def _problem(key: str, *, allow_empty: bool, allow_trailing_slash: bool) -> str | None:
    if key == "":
        return None if allow_empty else "keys may not be empty"
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        return "keys must be valid UTF-8 text"
    if len(encoded) > MAX_KEY_BYTES:
        return f"keys may be at most {MAX_KEY_BYTES} bytes long"
    found = _CONTROL.search(key)
    if found:
        what = "backslashes" if found.group() == "\\" else "control characters"
        return f"keys may not contain {what}"
    if key.startswith("/"):
        return "keys must be relative (no leading '/')"
    segments = key.split("/")
    if allow_trailing_slash and segments[-1] == "":
        segments.pop()
    for segment in segments:
        if segment == "":
            return "keys may not contain empty segments ('//' or a trailing '/')"
        if segment in (".", ".."):
            return "keys may not contain '.' or '..' segments"
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            return f"each '/'-separated segment may be at most {MAX_SEGMENT_BYTES} bytes long"
        if segment.endswith(RESERVED_SUFFIX):
            return f"segments may not end with the reserved suffix {RESERVED_SUFFIX!r}"
    return None


def validate_key(key: object) -> str:
    """Return ``key`` if it is a valid key, else raise :class:`InvalidKeyError`."""
    if not isinstance(key, str):
        raise InvalidKeyError(f"key must be a string, not {type(key).__name__}", key=repr(key))
    if (
        len(key) <= _PLAIN_MAX
        and _PLAIN.fullmatch(key)
        and not key.endswith(RESERVED_SUFFIX)
        and RESERVED_SUFFIX + "/" not in key
    ):
        return key
    problem = _problem(key, allow_empty=False, allow_trailing_slash=False)
    if problem:
        raise InvalidKeyError(f"invalid key {key!r}: {problem}", key=key)
    if key.split("/", 1)[0] == _RESERVED_SEGMENT:
        raise InvalidKeyError(
            f"invalid key {key!r}: keys under {RESERVED_PREFIX!r} are reserved for "
            "resultstore's own records (lock leases); choose another first segment",
            key=key,
        )
    return key


def is_storable(key: str) -> bool:
    """True when ``key`` is well formed: a valid key, or one of `resultstore`'s own.

    What a store checks of the names it lists (the reserved namespace is for the
    layer above to hide or use, not for the store to drop).
    """
    if len(key) <= _PLAIN_MAX and _PLAIN.fullmatch(key) and RESERVED_SUFFIX not in key:
        return True  # the common case, without the slower checks
    return _problem(key, allow_empty=False, allow_trailing_slash=False) is None


def validate_prefix(prefix: object) -> str:
    """Like :func:`validate_key`, but empty and ``/``-terminated prefixes are allowed."""
    if not isinstance(prefix, str):
        raise InvalidKeyError(f"prefix must be a string, not {type(prefix).__name__}")
    problem = _problem(prefix, allow_empty=True, allow_trailing_slash=True)
    if problem:
        raise InvalidKeyError(f"invalid prefix {prefix!r}: {problem}", key=prefix)
    return prefix
