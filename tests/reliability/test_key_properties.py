"""Property tests: no key, however strange, escapes the file store's root or collides.

Every key is either refused with an :class:`InvalidKeyError` whose message is one
printable line naming the key as :func:`~resultstore.keys.shown_key` shows it (its
repr, shortened when long), or accepted; an accepted key holds no control, invisible
format, separator, surrogate, private-use or unassigned character (categories Cc, Cf,
Zl, Zp, Cs, Co, Cn), written to the file store it lands inside its root (nothing
appears beside it), and two distinct accepted keys never share a record: each reads
back its own value and both are listed, exactly.
The keys come from all of Unicode (control characters, lone surrogates, line and
paragraph separators, combining marks), from path-like compositions of tricky
segments, and from very long strings.
"""

from __future__ import annotations

import os
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resultstore import InvalidKeyError, ResultStore
from resultstore.keys import RESERVED_SUFFIX, shown_key

ANY_CHAR = st.characters(codec=None, exclude_categories=())  # surrogates (Cs) included
FORBIDDEN_CATEGORIES = ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn")
TRICKY_SEGMENTS = [
    "",
    ".",
    "..",
    "...",
    "..a",
    "a..",
    "~",
    "$HOME",
    "*",
    "?",
    ":",
    "C:",
    "con",
    " ",
    "a ",
    "\\",
    "a\\b",
    "\x00",
    "\x1f",
    "\x7f",
    "\x85",
    "\u2028",
    "\ud800",
    "\udfff",
    "\ufeff",
    "\u202e",
    "e\u0301",
    "\u00e9",
    "A",
    "a",
    RESERVED_SUFFIX,
    "x" + RESERVED_SUFFIX,
    "x" + RESERVED_SUFFIX + ".tmp",
    ".x" + RESERVED_SUFFIX + ".0123456789abcdef.tmp",
    "x.RSR",
    "a" * 200,
    "a" * 201,
    "\u00e9" * 100,
    "\u00e9" * 101,
    "\U0001f600" * 50,
    "\U0001f600" * 51,
]
SEGMENT = st.one_of(st.sampled_from(TRICKY_SEGMENTS), st.text(ANY_CHAR, min_size=1, max_size=12))
PATH_LIKE = st.builds(
    lambda lead, segments, tail: lead + "/".join(segments) + tail,
    st.sampled_from(["", "", "", "/", "./", "../", "~/", "//"]),
    st.lists(SEGMENT, min_size=1, max_size=8),
    st.sampled_from(["", "", "", "/", "/."]),
)
KEYS = st.one_of(
    st.text(ANY_CHAR, max_size=40),
    st.text(ANY_CHAR, min_size=200, max_size=1500),
    PATH_LIKE,
    st.lists(st.sampled_from(["a", "b", "\u00e9", "x" * 199]), min_size=1, max_size=12).map(
        "/".join
    ),
)
# Keys that are usually valid, so that pairs of accepted keys are common.
MOSTLY_VALID = st.lists(
    st.one_of(
        st.text(
            st.characters(
                codec="utf-8", exclude_characters="/\\", exclude_categories=FORBIDDEN_CATEGORIES
            ),
            min_size=1,
            max_size=15,
        ),
        st.sampled_from(["a", "A", "e\u0301", "\u00e9", "x" * 200, "..a", "~"]),
    ),
    min_size=1,
    max_size=5,
).map("/".join)
# A second key made from the first: the likeliest collisions.
RELATIVES: list[Callable[[str], str]] = [
    lambda k: k + "/x",
    lambda k: k.rsplit("/", 1)[0],
    lambda k: k + RESERVED_SUFFIX,
    lambda k: k + "/" + RESERVED_SUFFIX,
    lambda k: k.upper(),
    lambda k: k.lower(),
    lambda k: unicodedata.normalize("NFC", k),
    lambda k: unicodedata.normalize("NFD", k),
    lambda k: k + " ",
    lambda k: k.replace("/", "\\"),
    lambda k: "." + k + RESERVED_SUFFIX + ".0123456789abcdef.tmp",
]
PAIRS = st.one_of(
    st.tuples(KEYS, KEYS),
    st.tuples(MOSTLY_VALID, MOSTLY_VALID),
    st.builds(lambda k, f: (k, f(k)), st.one_of(KEYS, MOSTLY_VALID), st.sampled_from(RELATIVES)),
)

# The examples write files: no per-example deadline.
SLOW_OK = settings(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


class Tally:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def try_write(self, store: ResultStore, key: str, value: object) -> bool:
        """Write ``value`` under ``key``; False if the key was (properly) refused."""
        self.counts["tried"] += 1
        try:
            store.write(value, key=key)
        except InvalidKeyError as exc:
            message = str(exc)
            assert len(message.splitlines()) == 1, message
            assert message.isprintable(), message
            assert shown_key(key) in message, message
            assert len(message) < 500, message  # a long key is shown shortened
            assert exc.key == key
            self.counts["refused"] += 1
            return False
        forbidden = [c for c in key if unicodedata.category(c) in FORBIDDEN_CATEGORIES]
        assert not forbidden, f"{key!r} was accepted, holding {forbidden!r}"
        self.counts["accepted"] += 1
        return True


def _assert_inside(sandbox: Path, root: Path, key: str) -> None:
    record = Path(os.path.realpath(root / (key + RESERVED_SUFFIX)))
    assert record.is_file(), key
    assert os.path.commonpath([record, root]) == str(root), (key, record)
    assert os.listdir(sandbox) == [root.name], f"{key!r} wrote beside the root"


def _store(sandbox: Path) -> tuple[ResultStore, Path]:
    root = sandbox / "root"
    return ResultStore(root.as_uri(), storage_options={"fsync": False}), root


def test_every_key_is_refused_in_one_line_or_stays_inside_the_root() -> None:
    tally = Tally()

    @settings(SLOW_OK, max_examples=1000)
    @given(KEYS)
    def check(key: str) -> None:
        with tempfile.TemporaryDirectory() as folder:
            sandbox = Path(folder).resolve()
            store, root = _store(sandbox)
            if not tally.try_write(store, key, ("value of", key)):
                return
            _assert_inside(sandbox, root, key)
            assert store.read(key, retry=False).result == ("value of", key)
            assert store.keys() == [key]

    check()
    counts = tally.counts
    print(
        f"keys: {counts['tried']} tried, {counts['refused']} refused with a one-line "
        f"InvalidKeyError naming the key, {counts['accepted']} accepted and kept inside the root"
    )
    assert counts["refused"] > 100 and counts["accepted"] > 100


def test_two_distinct_accepted_keys_never_collide() -> None:
    tally = Tally()
    pairs = Counter[str]()

    @settings(SLOW_OK, max_examples=800)
    @given(PAIRS)
    def check(pair: tuple[str, str]) -> None:
        first, second = pair
        if first == second:
            return
        with tempfile.TemporaryDirectory() as folder:
            sandbox = Path(folder).resolve()
            store, root = _store(sandbox)
            if not (tally.try_write(store, first, ("1st", first))):
                return
            if not (tally.try_write(store, second, ("2nd", second))):
                return
            pairs["written"] += 1
            _assert_inside(sandbox, root, first)
            _assert_inside(sandbox, root, second)
            assert store.read(first, retry=False).result == ("1st", first)
            assert store.read(second, retry=False).result == ("2nd", second)
            assert store.keys() == sorted([first, second])

    check()
    counts = tally.counts
    print(
        f"key pairs: {counts['tried']} keys tried, {counts['refused']} refused, "
        f"{pairs['written']} pairs of distinct accepted keys written, none collided"
    )
    assert pairs["written"] > 200
