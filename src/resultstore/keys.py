"""Key validation, done once above every store.

A valid key is a relative, ``/``-separated path of non-empty segments, so the
same key addresses the same record on every backend and can never leave a
store's root: no absolute paths, no ``.``/``..`` segments, no backslashes,
bounded lengths, and no segment ending in the reserved record suffix (which the
file store uses to keep ``a`` and ``a/b`` apart).

A key is also text that shows as what it is, on one line: it may not hold a
character of Unicode category Cc (C0 and C1 controls, DEL), Cf (invisible format
characters: bidirectional controls such as U+202E, zero-width characters such as
U+200B and U+200D, U+2060-U+2064, U+FEFF, soft hyphens, tag characters), Zl or Zp
(U+2028, U+2029: line breaks to ``str.splitlines`` and JSON readers), Cs (lone
surrogates: not UTF-8), Co (private use) or Cn (noncharacters such as U+FFFE, and
code points unassigned in this Python's Unicode database). Such a key could show
in ``resultstore ls`` or a log line as another key (``reports/final.pkl``) and may
not survive a backend's metadata or file names. Spaces of every kind (Zs),
combining marks and all other assigned characters are allowed.

Keys are exact strings, never normalized: ``"caf\u00e9"`` (NFC) and
``"cafe\u0301"`` (NFD) are two valid, distinct keys, and every store keeps them
apart (the conformance kit checks it). Normalize keys yourself
(``unicodedata.normalize("NFC", key)``) if they come from sources that differ.

Keys whose first segment is ``.resultstore`` (:data:`RESERVED_PREFIX`) belong to
`resultstore` itself (lock leases, indexes): user keys may not use them, and
listings never show them.
"""

from __future__ import annotations

import re
import unicodedata

from resultstore.errors import InvalidKeyError

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_SEGMENT_BYTES",
    "RESERVED_PREFIX",
    "RESERVED_SUFFIX",
    "is_reserved",
    "is_storable",
    "shown_key",
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

# In an ASCII key, the characters a key may not hold: C0 controls, DEL and backslashes.
_ASCII_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\\]")
# Keys of plain segments (letters, digits, '_', '-', inner dots) are valid without the
# slower checks below: no '.'/'..' segments, no empty segments, no reserved suffix.
_PLAIN = re.compile(
    r"[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*(?:/[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*)*"
)
_PLAIN_MAX = MAX_SEGMENT_BYTES
_SHOWN_MAX = 160
"""Keys whose ``repr`` is longer are shown shortened in error messages."""

_TOO_LONG = f"keys may be at most {MAX_KEY_BYTES} bytes long"
# The space separators (Zs) other than ' ', which keys may hold but str.isprintable
# refuses; filtered by this Python's database (U+180E was one until Unicode 6.3).
_SPACES = re.compile(
    "[{}]".format(
        "".join(
            char
            for char in "\u00a0\u1680\u180e\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
            "\u2007\u2008\u2009\u200a\u202f\u205f\u3000"
            if unicodedata.category(char) == "Zs"
        )
    )
)
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def is_reserved(key: str) -> bool:
    """True for keys (or prefixes) inside :data:`RESERVED_PREFIX`, `resultstore`'s own."""
    return key.startswith(RESERVED_PREFIX) or key == _RESERVED_SEGMENT


def shown_key(key: str) -> str:
    """``key`` as error messages show it: its ``repr`` (every character that is not
    printable escaped, so the text shows as what it holds, on one line), shortened to
    its start, its end and its length when longer than 160 characters."""
    shown = repr(key)
    if len(shown) <= _SHOWN_MAX:
        return shown
    head, tail = key[:60], key[-30:]
    while len(repr(head)) > 92:  # escapes are up to 10 characters long: bound them too
        head = head[:-1]
    while len(repr(tail)) > 47:
        tail = tail[1:]
    return f"{head!r}...{tail!r} ({len(key)} characters)"


def _first_forbidden(key: str) -> int:
    """The index of the first character of ``key`` a key may not hold, or -1."""
    for index, char in enumerate(key):
        if char == "\\" or not (char.isprintable() or unicodedata.category(char) == "Zs"):
            return index
    return -1


def _character_problem(char: str, index: int) -> str:
    """Why a key may not hold ``char`` (at ``index``), and what to do: one line."""
    if char == "\\":
        return (
            f"keys may not contain backslashes: index {index} holds one; separate segments with '/'"
        )
    code = ord(char)
    category = unicodedata.category(char)
    name = unicodedata.name(char, "")
    held = f"index {index} holds U+{code:04X}" + (f" {name}" if name else "")
    remove = "remove or replace it"
    if category == "Cc":
        kind = "C0" if code < 0x80 else "C1"
        return f"keys may not contain control characters: {held}, a {kind} control; {remove}"
    if category == "Cf":
        does = (
            "reorders the text shown after it"
            if char in _BIDI_CONTROLS
            else "is invisible or changes how the text around it shows"
        )
        return f"keys may not contain invisible format characters: {held}, which {does}; {remove}"
    if category in ("Zl", "Zp"):
        return (
            f"keys may not contain line or paragraph separators: {held}, which breaks the "
            f"line a key is shown on; {remove}"
        )
    if category == "Cs":
        return (
            f"keys must be valid UTF-8 text: {held}, a lone surrogate (text decoded with "
            "errors='surrogateescape'?); decode the text properly or remove it"
        )
    if category == "Co":
        return (
            f"keys may not contain private-use characters: {held}, which has no agreed "
            f"meaning or look; {remove}"
        )
    if 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE:
        return f"keys may not contain noncharacters: {held}; {remove}"
    return (
        f"keys may not contain unassigned code points: {held}, not assigned in Unicode "
        f"{unicodedata.unidata_version} (this Python's); {remove}: every Python that "
        "reads the store must know the characters of its keys"
    )


def _problem(key: str, *, allow_empty: bool, allow_trailing_slash: bool) -> str | None:
    if key == "":
        return None if allow_empty else "keys may not be empty"
    if len(key) > MAX_KEY_BYTES:  # at least a byte a character: no need to look further
        return _TOO_LONG
    is_ascii = key.isascii()
    if is_ascii:
        found = _ASCII_FORBIDDEN.search(key)
        if found:
            return _character_problem(found.group(), found.start())
    else:
        # str.isprintable is False for Cc, Cf, Zl, Zp, Cs, Co, Cn and for Zs but ' ':
        # a key that is printable once its spaces are gone holds nothing forbidden.
        if "\\" in key or not (key.isprintable() or _SPACES.sub("", key).isprintable()):
            index = _first_forbidden(key)
            if index >= 0:
                return _character_problem(key[index], index)
        if len(key.encode("utf-8")) > MAX_KEY_BYTES:
            return _TOO_LONG
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
        if (len(segment) if is_ascii else len(segment.encode("utf-8"))) > MAX_SEGMENT_BYTES:
            return f"each '/'-separated segment may be at most {MAX_SEGMENT_BYTES} bytes long"
        if segment.endswith(RESERVED_SUFFIX):
            return f"segments may not end with the reserved suffix {RESERVED_SUFFIX!r}"
    return None


def validate_key(key: object) -> str:
    """Return ``key``, unchanged, if it is a valid key, else raise :class:`InvalidKeyError`.

    A valid key is a relative ``/``-separated path of non-empty segments, at most
    :data:`MAX_KEY_BYTES` UTF-8 bytes (:data:`MAX_SEGMENT_BYTES` per segment), with no
    ``.`` or ``..`` segment, no backslash, no segment ending in :data:`RESERVED_SUFFIX`,
    not under :data:`RESERVED_PREFIX`, and no character of Unicode category Cc, Cf,
    Zl, Zp, Cs, Co or Cn (controls, invisible format characters such as U+202E or
    U+200B, line and paragraph separators, lone surrogates, private-use characters,
    noncharacters, unassigned code points). Keys are not normalized: the NFC and NFD
    forms of a key are two distinct keys.

    The error is one line: the key as :func:`shown_key` shows it (escaped, bounded),
    what is wrong (the offending character as ``U+XXXX``, and where) and what to do.
    Its ``key`` attribute holds the key itself.
    """
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
        raise InvalidKeyError(f"invalid key {shown_key(key)}: {problem}", key=key)
    if key.split("/", 1)[0] == _RESERVED_SEGMENT:
        raise InvalidKeyError(
            f"invalid key {shown_key(key)}: keys under {RESERVED_PREFIX!r} are reserved for "
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
        raise InvalidKeyError(f"invalid prefix {shown_key(prefix)}: {problem}", key=prefix)
    return prefix
