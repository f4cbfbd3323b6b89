"""Key validation, done once above every store.

A valid key is a relative, ``/``-separated path of non-empty segments, so the
same key addresses the same record on every backend and can never leave a
store's root: no absolute paths, no ``.``/``..`` segments, no backslashes, no
control characters, bounded lengths, and no segment ending in the reserved
record suffix (which the file store uses to keep ``a`` and ``a/b`` apart).
"""

from __future__ import annotations

import re

from resultstore.errors import InvalidKeyError

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_SEGMENT_BYTES",
    "RESERVED_SUFFIX",
    "validate_key",
    "validate_prefix",
]

MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 200
RESERVED_SUFFIX = ".rsr"

_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")
# Keys of plain segments (letters, digits, '_', '-', inner dots) are valid without the
# slower checks below: no '.'/'..' segments, no empty segments, no reserved suffix.
_PLAIN = re.compile(
    r"[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*(?:/[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*)*"
)
_PLAIN_MAX = MAX_SEGMENT_BYTES


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
    return key


def validate_prefix(prefix: object) -> str:
    """Like :func:`validate_key`, but empty and ``/``-terminated prefixes are allowed."""
    if not isinstance(prefix, str):
        raise InvalidKeyError(f"prefix must be a string, not {type(prefix).__name__}")
    problem = _problem(prefix, allow_empty=True, allow_trailing_slash=True)
    if problem:
        raise InvalidKeyError(f"invalid prefix {prefix!r}: {problem}", key=prefix)
    return prefix
