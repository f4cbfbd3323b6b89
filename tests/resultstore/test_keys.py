"""Keys: relative ``/``-separated paths that mean the same on every store and can never
escape a store's root."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from resultstore import InvalidKeyError, ResultStore, validate_key
from resultstore.keys import MAX_KEY_BYTES, MAX_SEGMENT_BYTES, RESERVED_SUFFIX, validate_prefix
from resultstore.stores.file import FileStore

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
    assert message.startswith(f"invalid key {key!r}: ")
    assert problem in message
    assert "\n" not in message
    assert caught.value.key == key
    assert isinstance(caught.value, ValueError)


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
    st.characters(codec="utf-8", exclude_categories=["Cc"]) | st.sampled_from(".\\/"),
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
    st.characters(codec="utf-8", exclude_categories=["Cc"], exclude_characters="/\\"),
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
