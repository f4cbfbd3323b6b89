"""Keys: relative ``/``-separated paths that mean the same on every store, can never
escape a store's root, and show as what they are (no control, invisible format or
unassigned characters)."""

from __future__ import annotations

import os
import re
import tempfile
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from resultstore import InvalidKeyError, Reason, ResultStore, validate_key
from resultstore.keys import (
    MAX_KEY_BYTES,
    MAX_SEGMENT_BYTES,
    RESERVED_SUFFIX,
    shown_key,
    validate_prefix,
)
from resultstore.stores.file import FileStore

FORBIDDEN_CATEGORIES = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
"""The Unicode categories no key may hold a character of."""

VALID = [
    "plain",
    "0123456789abcdef0123456789abcdef",
    "runs/2024-05-01/task.result",
    "deeply/nested/" * 20 + "leaf",
    "with space and (parens) & symbols=+%~!@#$^",
    "unicode/résumé/数据/🙂",
    ".hidden",
    "...",
    "trailing.dot.",
    "a.rsr.backup",  # the suffix is reserved only at the end of a segment
    "-leading-dash",
    "é" * (MAX_SEGMENT_BYTES // 2),  # 2 bytes per character: exactly at the limit
    "/".join(["s" * 100] * 10),  # 1009 bytes
    "no-break\u00a0space/ideographic\u3000space/em\u2003space",  # spaces (Zs) show as spaces
    "caf\u00e9",  # NFC
    "cafe\u0301",  # NFD: combining marks are visible, and keys are never normalized
    "heart/\u2764\ufe0f",  # an emoji with its variation selector (a mark, not a format char)
    "\u05e9\u05dc\u05d5\u05dd/\u0645\u0631\u062d\u0628\u0627",  # right-to-left letters
]


@pytest.mark.parametrize("key", VALID)
def test_valid_keys_are_returned_unchanged(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("", "keys may not be empty"),
        ("/absolute/key", "keys must be relative (no leading '/')"),
        ("/", "keys must be relative"),
        ("..", "'.' or '..' segments"),
        ("../escape", "'.' or '..' segments"),
        ("a/../../escape", "'.' or '..' segments"),
        ("a/..", "'.' or '..' segments"),
        (".", "'.' or '..' segments"),
        ("a/./b", "'.' or '..' segments"),
        ("a//b", "empty segments"),
        ("a/", "empty segments ('//' or a trailing '/')"),
        ("a\\b", "backslashes"),
        ("..\\escape", "backslashes"),
        ("nul\x00byte", "control characters"),
        ("new\nline", "control characters"),
        ("tab\there", "control characters"),
        ("del\x7f", "control characters"),
        ("bell\x07", "control characters"),
        ("x" * (MAX_KEY_BYTES + 1), f"at most {MAX_KEY_BYTES} bytes"),
        ("/".join(["s" * 100] * 11), f"at most {MAX_KEY_BYTES} bytes"),
        ("é" * (MAX_KEY_BYTES // 2 + 1), f"at most {MAX_KEY_BYTES} bytes"),  # counted in bytes
        ("s" * (MAX_SEGMENT_BYTES + 1), f"at most {MAX_SEGMENT_BYTES} bytes"),
        ("ok/" + "é" * (MAX_SEGMENT_BYTES // 2 + 1), f"at most {MAX_SEGMENT_BYTES} bytes"),
        ("record.rsr", f"reserved suffix {RESERVED_SUFFIX!r}"),
        ("folder.rsr/inner", f"reserved suffix {RESERVED_SUFFIX!r}"),
        ("lone\ud800surrogate", "valid UTF-8"),
    ],
)
def test_invalid_keys_raise_a_one_line_error_quoting_the_key(key: str, problem: str) -> None:
    with pytest.raises(InvalidKeyError) as caught:
        validate_key(key)
    message = str(caught.value)
    assert message.startswith(f"invalid key {shown_key(key)}: ")
    if len(key) < 100:
        assert shown_key(key) == repr(key)
    assert problem in message
    assert "\n" not in message
    assert caught.value.key == key
    assert caught.value.reason is Reason.BAD_INPUT
    assert isinstance(caught.value, ValueError)


# -- characters that do not show as what they are --------------------------------------

FORBIDDEN = [
    # (character, how the error names it, the kind of character it is)
    ("\x00", "U+0000", "control characters"),
    ("\x1b", "U+001B", "control characters"),
    ("\x7f", "U+007F", "control characters"),
    ("\x80", "U+0080", "control characters"),
    ("\x85", "U+0085", "control characters"),  # NEL: str.splitlines splits at it
    ("\x9b", "U+009B", "control characters"),  # CSI: a terminal escape on its own
    ("\x9f", "U+009F", "control characters"),
    ("\u200b", "U+200B ZERO WIDTH SPACE", "invisible format characters"),
    ("\u200c", "U+200C ZERO WIDTH NON-JOINER", "invisible format characters"),
    ("\u200d", "U+200D ZERO WIDTH JOINER", "invisible format characters"),
    ("\u200e", "U+200E LEFT-TO-RIGHT MARK", "reorders the text"),
    ("\u200f", "U+200F RIGHT-TO-LEFT MARK", "reorders the text"),
    ("\u202a", "U+202A LEFT-TO-RIGHT EMBEDDING", "reorders the text"),
    ("\u202e", "U+202E RIGHT-TO-LEFT OVERRIDE", "reorders the text"),
    ("\u2060", "U+2060 WORD JOINER", "invisible format characters"),
    ("\u2064", "U+2064 INVISIBLE PLUS", "invisible format characters"),
    ("\u2066", "U+2066 LEFT-TO-RIGHT ISOLATE", "reorders the text"),
    ("\u2069", "U+2069 POP DIRECTIONAL ISOLATE", "reorders the text"),
    ("\u061c", "U+061C ARABIC LETTER MARK", "reorders the text"),
    ("\ufeff", "U+FEFF ZERO WIDTH NO-BREAK SPACE", "invisible format characters"),  # a BOM
    ("\u00ad", "U+00AD SOFT HYPHEN", "invisible format characters"),
    ("\U000e0041", "U+E0041 TAG LATIN CAPITAL LETTER A", "invisible format characters"),
    ("\u2028", "U+2028 LINE SEPARATOR", "line or paragraph separators"),
    ("\u2029", "U+2029 PARAGRAPH SEPARATOR", "line or paragraph separators"),
    ("\ud800", "U+D800", "valid UTF-8 text"),
    ("\udfff", "U+DFFF", "valid UTF-8 text"),
    ("\ue000", "U+E000", "private-use characters"),
    ("\U000f0000", "U+F0000", "private-use characters"),
    ("\U0010fffd", "U+10FFFD", "private-use characters"),
    ("\ufdd0", "U+FDD0", "noncharacters"),
    ("\ufffe", "U+FFFE", "noncharacters"),
    ("\uffff", "U+FFFF", "noncharacters"),
    ("\U0001fffe", "U+1FFFE", "noncharacters"),
    ("\U0010ffff", "U+10FFFF", "noncharacters"),
    ("\u0378", "U+0378", "unassigned code points"),
    ("\u2065", "U+2065", "unassigned code points"),  # among the bidi isolates: keep out
]


@pytest.mark.parametrize(("char", "named", "kind"), FORBIDDEN, ids=[f[1] for f in FORBIDDEN])
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_a_key_holding_an_invisible_or_control_character_is_refused_naming_it(
    char: str, named: str, kind: str, where: str
) -> None:
    key = {"start": char + "reports/final.pkl", "middle": f"reports/final{char}.pkl"}.get(
        where, "reports/final.pkl" + char
    )
    index = key.index(char)
    with pytest.raises(InvalidKeyError) as caught:
        validate_key(key)
    message = str(caught.value)
    assert message.startswith(f"invalid key {key!r}: ")  # escaped: repr shows \u202e
    assert f"index {index} holds {named}" in message
    assert kind in message
    assert "remove" in message  # what to do
    assert message.isprintable()  # one line, and the character itself is not in it
    assert caught.value.key == key
    assert caught.value.reason is Reason.BAD_INPUT
    with pytest.raises(InvalidKeyError, match=f"^invalid prefix {re.escape(repr(key))}: "):
        validate_prefix(key)


def test_a_key_that_would_show_as_another_is_refused() -> None:
    # Shown raw, U+202E reverses what follows: this key displays as "reports/final.pkl".
    spoof = "reports/\u202elkp.lanif"
    with pytest.raises(InvalidKeyError) as caught:
        validate_key(spoof)
    assert str(caught.value) == (
        "invalid key 'reports/\\u202elkp.lanif': keys may not contain invisible format "
        "characters: index 8 holds U+202E RIGHT-TO-LEFT OVERRIDE, which reorders the text "
        "shown after it; remove or replace it"
    )
    # A byte order mark read with the key from a file is just as invisible.
    with pytest.raises(
        InvalidKeyError, match=r"^invalid key '\\ufeffreports/final\.pkl': .*U\+FEFF"
    ):
        validate_key("\ufeffreports/final.pkl")


def test_unassigned_code_points_are_refused_saying_which_unicode_this_python_knows() -> None:
    with pytest.raises(InvalidKeyError) as caught:
        validate_key("new/\u0378")
    assert f"not assigned in Unicode {unicodedata.unidata_version}" in str(caught.value)


def test_an_error_shows_a_long_key_shortened_and_escaped() -> None:
    huge = "a" * 100_000 + "\u202e"
    with pytest.raises(InvalidKeyError) as caught:
        validate_key(huge)
    message = str(caught.value)
    assert len(message) < 300
    assert message.startswith(f"invalid key {'a' * 60!r}...{'a' * 29 + chr(0x202E)!r} ")
    assert "(100001 characters)" in message
    assert message.isprintable()
    assert caught.value.key == huge  # the key itself, for programs

    near_limit = "\u00e9" * 500 + "\u202e"  # 1003 bytes: the character is what is wrong
    with pytest.raises(InvalidKeyError) as caught:
        validate_key(near_limit)
    assert "(501 characters): " in str(caught.value)
    assert "index 500 holds U+202E" in str(caught.value)
    assert shown_key("short/key") == "'short/key'"


def test_nfc_and_nfd_forms_are_two_distinct_keys(store: ResultStore) -> None:
    nfc, nfd = "names/caf\u00e9", "names/cafe\u0301"
    assert unicodedata.normalize("NFC", nfd) == nfc
    assert validate_key(nfc) == nfc and validate_key(nfd) == nfd  # returned unnormalized
    store.write("composed", key=nfc)
    store.write("decomposed", key=nfd)
    assert store.read(nfc).result == "composed"
    assert store.read(nfd).result == "decomposed"
    assert store.keys("names/") == sorted([nfc, nfd])


# Any character at all, surrogates included, but not '/': one segment between two x's,
# so the only rule the character can break is the character rule.
@given(st.text(st.characters(codec=None, exclude_characters="/"), min_size=1, max_size=30))
def test_a_key_is_refused_exactly_when_it_holds_a_forbidden_character(text: str) -> None:
    key = f"x{text}x"
    forbidden = [c for c in key if c == "\\" or unicodedata.category(c) in FORBIDDEN_CATEGORIES]
    try:
        validate_key(key)
    except InvalidKeyError as exc:
        assert forbidden, f"{key!r} holds nothing forbidden, yet: {exc}"
        first = forbidden[0]
        if first != "\\":
            assert f"index {key.index(first)} holds U+{ord(first):04X}" in str(exc)
        assert str(exc).isprintable()
    else:
        assert not forbidden, f"{key!r} accepted with {forbidden!r}"


HOSTILE = st.sampled_from([ch for ch, _, _ in FORBIDDEN] + ["\u00a0", "\u0301", "\ufe0f", "\\"])
visible_text = st.text(
    st.characters(codec="utf-8", exclude_categories=FORBIDDEN_CATEGORIES, exclude_characters="/")
    | st.sampled_from("aé数🙂 ."),
    min_size=1,
    max_size=8,
)
round_trip_key = st.builds(
    lambda segments, char, at: "/".join(segments)[:at] + char + "/".join(segments)[at:],
    st.lists(visible_text, min_size=1, max_size=4),
    st.just("") | HOSTILE | st.characters(codec=None, exclude_characters="/"),
    st.integers(min_value=0, max_value=40),
)
"""Keys of visible text with, often, one character of any kind put in: a hostile one,
or any character of Unicode (surrogates included)."""


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.filter_too_much])
@given(key=round_trip_key)
def test_every_accepted_key_shows_as_it_is_and_round_trips_on_memory_and_file_stores(
    key: str,
) -> None:
    assume(is_valid(key))
    categories = {unicodedata.category(c) for c in key}
    assert not categories & set(FORBIDDEN_CATEGORIES), (key, categories)
    with ResultStore("memory://test-keys-round-trip") as memory:
        memory.write(("value of", key), key=key)
        try:
            assert memory.read(key, retry=False).result == ("value of", key)
            assert memory.keys() == [key]
        finally:
            memory.delete(key)
    with tempfile.TemporaryDirectory() as folder:
        files = ResultStore(Path(folder).as_uri(), storage_options={"fsync": False})
        files.write(("value of", key), key=key)
        assert files.read(key, retry=False).result == ("value of", key)
        assert files.keys() == [key]
        assert ResultStore(Path(folder).as_uri()).keys() == [key]  # and so does another store on it


@pytest.mark.parametrize(
    ("key", "type_name"),
    [(None, "NoneType"), (42, "int"), (b"bytes/key", "bytes"), (Path("a/b"), "PosixPath")],
)
def test_non_string_keys_are_refused_naming_their_type(key: object, type_name: str) -> None:
    with pytest.raises(InvalidKeyError, match=f"^key must be a string, not {type_name}$") as caught:
        validate_key(key)
    assert caught.value.key == repr(key)


def test_every_store_operation_validates_its_key(tmp_path: Path) -> None:
    store = ResultStore(f"file://{tmp_path}")
    for operation in (store.read, store.exists, store.delete, store.read_metadata):
        with pytest.raises(InvalidKeyError, match=r"^invalid key '\.\./x'"):
            operation("../x")
    with pytest.raises(InvalidKeyError, match="reserved suffix"):
        store.write(1, key="x.rsr")
    with pytest.raises(InvalidKeyError, match=r"^key must be a string, not int$"):
        store.write(1, key=7)  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError, match="empty segments"):
        store.create_result(1, key="a//b")
    assert list(tmp_path.iterdir()) == []  # nothing was written anywhere


def test_prefixes_may_be_empty_or_end_with_a_slash() -> None:
    assert validate_prefix("") == ""
    assert validate_prefix("runs/") == "runs/"
    assert validate_prefix("runs/2024") == "runs/2024"
    for bad in ("/runs", "runs//", "../", "a\\"):
        with pytest.raises(InvalidKeyError, match=f"^invalid prefix {re.escape(repr(bad))}: "):
            validate_prefix(bad)
    with pytest.raises(InvalidKeyError, match=r"^prefix must be a string, not int$"):
        validate_prefix(3)


# -- keys never escape the file store's root -------------------------------------------

ROOT = FileStore("file:///srv/results")

segment_text = st.text(
    st.characters(codec="utf-8", exclude_categories=FORBIDDEN_CATEGORIES) | st.sampled_from(".\\/"),
    min_size=0,
    max_size=20,
)
any_key_text = (
    st.text(max_size=50)
    | st.lists(segment_text, min_size=1, max_size=6).map("/".join)
    | st.lists(st.sampled_from([".", "..", "", "a", ".rsr", "b.rsr", "\\"]), max_size=5).map(
        "/".join
    )
)
"""Any text, mostly invalid keys: for properties that must hold whenever a key validates."""

valid_segment = st.text(
    st.characters(codec="utf-8", exclude_categories=FORBIDDEN_CATEGORIES, exclude_characters="/\\"),
    min_size=1,
    max_size=20,
).filter(lambda s: s not in (".", "..") and not s.endswith(RESERVED_SUFFIX))
valid_key_text = st.lists(
    valid_segment | st.sampled_from(["a", ".a", "a.", "...", "a.rsr.x", "a.rs", "数据"]),
    min_size=1,
    max_size=6,
).map("/".join)
"""Valid keys, often built from look-alike segments, to hunt for two keys sharing a file."""


def is_valid(key: str) -> bool:
    try:
        validate_key(key)
    except InvalidKeyError:
        return False
    return True


def inside_root(path: str) -> bool:
    resolved = os.path.normpath(path)
    return os.path.commonpath([str(ROOT.root), resolved]) == str(ROOT.root) and resolved != str(
        ROOT.root
    )


@given(key=any_key_text | valid_key_text)
def test_a_valid_key_maps_to_a_record_file_inside_the_root(key: str) -> None:
    assume(is_valid(key))
    path = ROOT._path(key)
    assert inside_root(path)
    assert os.path.normpath(path) == path  # nothing for the OS to reinterpret
    assert path.endswith(RESERVED_SUFFIX)
    assert os.path.relpath(path, ROOT.root) == key + RESERVED_SUFFIX


@given(first=valid_key_text, second=valid_key_text)
def test_different_valid_keys_map_to_different_files(first: str, second: str) -> None:
    assume(first != second and is_valid(first) and is_valid(second))
    assert os.path.normpath(ROOT._path(first)) != os.path.normpath(ROOT._path(second))


@given(key=valid_key_text)
def test_no_valid_key_is_a_folder_of_another_key(key: str) -> None:
    # Key "a" is the file a.rsr and key "a/b" lives in the folder a/: never the same name.
    assume(is_valid(key))
    folders = os.path.relpath(ROOT._path(key), ROOT.root).split(os.sep)[:-1]
    assert not any(folder.endswith(RESERVED_SUFFIX) for folder in folders)


def test_a_key_and_a_key_below_it_coexist_on_disk(tmp_path: Path) -> None:
    store = ResultStore(f"file://{tmp_path}")
    store.write("parent", key="a")
    store.write("child", key="a/b")
    assert store.read("a").result == "parent"
    assert store.read("a/b").result == "child"
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.rsr")) == [
        "a.rsr",
        "a/b.rsr",
    ]


@given(st.text(alphabet="ab.-_/rs9", max_size=40))
def test_the_fast_path_for_plain_keys_agrees_with_the_full_rules(key: str) -> None:
    """validate_key skips the full checks for plain keys; it must never accept more."""
    from resultstore.keys import _problem

    full_verdict = _problem(key, allow_empty=False, allow_trailing_slash=False) is None
    try:
        validate_key(key)
    except InvalidKeyError:
        accepted = False
    else:
        accepted = True
    assert accepted == full_verdict
