"""The command line on hostile and careless input, run as a user or an attacker would.

Keys holding escape sequences, right-to-left marks or line separators are bad input
(validate_key refuses them); keys and record fields that are not printable (a no-break
space in a key, NULs and escapes in a value) never reach the terminal raw and never break
a JSON line; bad option values and
settings are one line naming the option or setting; closed or full pipes, closed stdin,
damaged records, unreachable stores and paths that try to leave the store all end with
the exit code the README documents. Every test runs ``python -m resultstore`` in a
subprocess.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_harness import Cli, assert_error

from ports import free_port
from resultstore import ResultStore

RESULTSTORE = [sys.executable, "-m", "resultstore"]

# Keys that a terminal or a line reader would act on: an 8-bit CSI, NEL, a line separator,
# a right-to-left override. validate_key refuses them (categories Cc, Cf, Zl, Zp, ...).
INVISIBLE_KEYS = {
    "csi": ("c1\x9b2Jgone", "U+009B"),
    "nel": ("next\x85line", "U+0085"),
    "line-separator": ("two\u2028lines", "U+2028"),
    "rtl": ("invoice\u202etxt.exe", "U+202E"),
}
# Valid keys that are still not str.isprintable (spaces other than ' '): shown escaped.
SPACED_KEYS = {"nbsp": "no\u00a0break", "ideographic-space": "wide\u3000space"}
SPACED_SHOWN = ("no\\xa0break", "wide\\u3000space")
RAW = ("\x1b", "\x9b", "\x85", "\u2028", "\u202e", "\x00", "\x07", "\u00a0", "\u3000")


def _shell(cli: Cli, script: str) -> subprocess.CompletedProcess[str]:
    """Run a bash ``script`` in which ``$RS`` is the resultstore command."""
    return subprocess.run(
        ["/bin/bash", "-c", script],
        env={**cli.env, "RS": " ".join(RESULTSTORE)},
        cwd=cli.cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _no_raw(text: str) -> None:
    found = [char for char in RAW if char in text]
    assert not found, (found, text)


def _json_lines(stdout: str) -> list[dict[str, object]]:
    """stdout as JSON lines; also split as Python's splitlines would (at \\x85, \\u2028)."""
    lines = stdout.splitlines()
    assert lines == stdout.split("\n")[:-1], "a line separator inside a JSON line"
    return [json.loads(line) for line in lines]


def _write(url: str, key: str, value: object, **kwargs: object) -> None:
    with ResultStore(url, storage_options={"fsync": False}, **kwargs) as store:  # type: ignore[arg-type]
        store.write(value, key=key)


# --- what keys and fields show --------------------------------------------------------


@pytest.mark.parametrize("command", ["put", "get", "inspect", "rm"])
@pytest.mark.parametrize("name", INVISIBLE_KEYS)
def test_a_key_that_would_not_show_as_it_is_is_bad_input_naming_the_character(
    file_cli: Cli, command: str, name: str
) -> None:
    key, code_point = INVISIBLE_KEYS[name]
    extra = ["--json", "1"] if command == "put" else []
    done = file_cli.fails(command, key, *extra, code=3, says=[f"invalid key {key!r}", code_point])
    _no_raw(done.stdout + done.stderr)


@pytest.fixture
def spaced(file_cli: Cli) -> Cli:
    """A file store holding one record under each of SPACED_KEYS."""
    for key in SPACED_KEYS.values():
        file_cli.run("put", key, "--json", "1")
    return file_cli


def test_ls_shows_unprintable_characters_in_keys_as_escapes(spaced: Cli) -> None:
    for args in (["ls"], ["ls", "--keys-only"]):
        done = spaced.run(*args)
        _no_raw(done.stdout)
        for shown in SPACED_SHOWN:
            assert shown in done.stdout, done.stdout


def test_json_output_escapes_them_and_round_trips_the_keys(spaced: Cli) -> None:
    for args in (
        ["--json", "ls"],
        ["--json", "ls", "--keys-only"],
        ["--json", "check"],
    ):
        done = spaced.run(*args)
        _no_raw(done.stdout)
        keys = {line["key"] for line in _json_lines(done.stdout) if "key" in line}
        assert keys == set(SPACED_KEYS.values())
    for key in SPACED_KEYS.values():
        shown = spaced.run("--json", "inspect", key).stdout
        _no_raw(shown)
        assert _json_lines(shown)[0]["key"] == key
        _no_raw(spaced.run("inspect", key).stdout)  # indented, for people


def test_rm_gc_and_check_lines_name_such_keys_escaped(file_cli: Cli) -> None:
    key = SPACED_KEYS["nbsp"]
    with ResultStore(file_cli.url) as store:
        store.write(1, key=key, expiration=datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))
    for args, shown in (
        (["gc", "--dry-run"], "no\\xa0break"),
        (["--json", "gc", "--dry-run"], "no\\u00a0break"),
        (["--json", "check"], "no\\u00a0break"),
    ):
        done = file_cli.run(*args)
        _no_raw(done.stdout)
        assert shown in done.stdout
    broken = SPACED_KEYS["ideographic-space"]
    _write(file_cli.url, broken, 1)
    (file_cli.cwd / "store" / f"{broken}.rsr").write_bytes(b"RSTR")
    done = file_cli.fails("check", code=5, says=["'wide\\u3000space'"])
    _no_raw(done.stdout + done.stderr)
    assert "DAMAGED  wide\\u3000space: record 'wide\\u3000space'" in done.stdout
    done = file_cli.fails("rm", key, "gone\u00a0", code=2, says=["'gone\\xa0'"])
    _no_raw(done.stdout + done.stderr)
    assert done.stdout == "deleted no\\xa0break\n"


@pytest.mark.parametrize("command", ["put", "get", "inspect", "rm"])
@pytest.mark.parametrize("key", ["red\x1b[31m", "two\nlines", "bell\x07", "del\x7f"])
def test_a_key_with_control_characters_is_bad_input_shown_escaped(
    file_cli: Cli, command: str, key: str
) -> None:
    extra = ["--json", "1"] if command == "put" else []
    done = file_cli.fails(command, key, *extra, code=3, says=["invalid key", "control"])
    _no_raw(done.stderr)


def test_an_error_quoting_a_folder_name_shows_its_escapes(file_cli: Cli, tmp_path: Path) -> None:
    folder = tmp_path / "no\x1b]0;owned\x07\x1b[2Jpe"
    for args in (["ls"], ["check"], ["gc"]):
        done = file_cli.fails("--storage", folder.as_uri(), *args, code=4, says=["does not exist"])
        _no_raw(done.stderr)
        assert "no\\x1b]0;owned\\x07\\x1b[2Jpe" in done.stderr


def test_values_with_nul_and_escapes_are_valid_json_with_json(file_cli: Cli) -> None:
    file_cli.run("put", "k", "--json", '{"text": "a\\u0000b\\u001b[2Jc\\u2028d"}')
    done = file_cli.run("--json", "get", "k")
    _no_raw(done.stdout)
    assert json.loads(done.stdout) == {"text": "a\x00b\x1b[2Jc\u2028d"}


def test_nan_and_infinity_are_not_json(file_cli: Cli) -> None:
    for text in ("NaN", "[Infinity]", '{"x": -Infinity}'):
        file_cli.fails("put", "k", "--json", text, code=3, says=["not valid JSON", "JSON number"])
    for text in ("1e999", "[1, -2.5E+400]"):  # numbers that would be stored as inf
        file_cli.fails("put", "k", "--json", text, code=3, says=["not valid JSON", "range"])
    file_cli.run("put", "k", "--json", "[1.5e300, 1e-400]")  # large, and an underflow to 0.0
    assert json.loads(file_cli.run("get", "k").stdout) == [1.5e300, 0.0]
    _write(file_cli.url, "nan", float("nan"))
    file_cli.fails("--json", "get", "nan", code=3, says=["'nan'", "float (nan)", "--format repr"])
    assert file_cli.run("get", "nan", "--format", "repr").stdout == "nan\n"


# --- bad option values and settings -----------------------------------------------------


BAD_OPTIONS = {
    "format": (
        ["get", "k", "--format", "reprr"],
        ["'--format'", "'reprr' is not one of"],
    ),
    "expires-in": (
        ["put", "k", "--json", "1", "--expires-in", "10x"],
        ["--expires-in '10x'"],
    ),
    "limit negative": (
        ["ls", "--limit", "-1"],
        ["'--limit'", "greater than or equal to 1"],
    ),
    "limit abc": (["ls", "--limit", "abc"], ["'--limit'", "valid integer"]),
    "concurrency": (
        ["copy", "file:///a", "file:///b", "--concurrency", "0"],
        ["--concurrency"],
    ),
    "unknown option": (["ls", "--colour"], ["No such option: --colour"]),
    "storage-option": (
        ["--storage-option", "fsync", "ls"],
        ["--storage-option 'fsync'"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_a_bad_option_value_is_one_line_naming_the_option(file_cli: Cli, case: str) -> None:
    args, says = BAD_OPTIONS[case]
    done = file_cli.fails(*args, code=3, says=says)
    assert "Value error" not in done.stderr  # pydantic's prefix is not part of the message


BAD_SETTINGS = {
    "RESULTSTORE_TIMEOUT": "abc",
    "RESULTSTORE_STORAGE_OPTIONS": "{bad",
    "RESULTSTORE_SERIALIZER": "nope",
    "RESULTSTORE_READ_ATTEMPTS": "-1",
}


@pytest.mark.parametrize("setting", list(BAD_SETTINGS))
@pytest.mark.parametrize("command", [["ls"], ["get", "k"], ["put", "k", "--json", "1"]])
def test_a_bad_setting_is_one_line_naming_it(
    file_cli: Cli, setting: str, command: list[str]
) -> None:
    file_cli.fails(*command, code=3, env={setting: BAD_SETTINGS[setting]}, says=[setting])


# --- pipes, stdin and stdout ------------------------------------------------------------


def test_a_large_value_into_a_pipe_closed_early_exits_141_quietly(
    file_cli: Cli,
) -> None:
    _write(file_cli.url, "big", b"\0" * 8_000_000)  # far more than a pipe holds
    done = _shell(file_cli, '$RS get big | head -c 10 | wc -c; echo "status=${PIPESTATUS[0]}" >&2')
    assert done.stdout.split() == ["10"]
    assert done.stderr == "status=141\n"  # not 0: the value was not all written


def test_ls_into_head_0_exits_quietly(file_cli: Cli) -> None:
    with ResultStore(file_cli.url, storage_options={"fsync": False}) as store:
        for i in range(2000):
            store.write(i, key=f"k/{i:05d}")
    for args in ("ls", "--json ls", "--json check"):
        done = _shell(file_cli, f'$RS {args} | head -0; echo "status=${{PIPESTATUS[0]}}" >&2')
        assert done.stderr in ("status=141\n", "status=0\n"), done.stderr


def test_get_of_a_large_value_into_a_pipe_is_byte_exact(file_cli: Cli) -> None:
    value = bytes(range(256)) * 100_000  # 25.6 MB
    _write(file_cli.url, "big", value)
    done = subprocess.run(
        [*RESULTSTORE, "get", "big"], env=file_cli.env, capture_output=True, check=False
    )
    assert done.returncode == 0 and done.stderr == b""
    assert hashlib.sha256(done.stdout).digest() == hashlib.sha256(value).digest()


@pytest.mark.parametrize("args", [["ls"], ["get", "k"], ["put", "k", "--json", "1"]], ids=" ".join)
def test_a_closed_stdout_is_one_line_and_nothing_done(file_cli: Cli, args: list[str]) -> None:
    _write(file_cli.url, "k", "v")
    done = _shell(file_cli, f'$RS {" ".join(args)} >&-; echo "status=$?" >&2')
    lines = done.stderr.splitlines()
    assert lines[-1] == "status=3", done.stderr
    assert len(lines) == 2 and lines[0].startswith("error: stdout is closed"), done.stderr


@pytest.mark.parametrize("option", ["--file", "--json"])
def test_put_from_a_closed_stdin_is_bad_input(file_cli: Cli, option: str) -> None:
    done = _shell(file_cli, f'$RS put k {option} - <&-; echo "status=$?" >&2')
    lines = done.stderr.splitlines()
    assert lines == [
        f"error: {option} - for key 'k' reads stdin, but stdin is closed: pipe the "
        "value in or give a file",
        "status=3",
    ]
    assert not (file_cli.cwd / "store").exists()


def test_rm_recursive_with_a_closed_stdin_asks_for_yes(file_cli: Cli) -> None:
    _write(file_cli.url, "runs/1", 1)
    done = _shell(file_cli, '$RS rm -r runs/ <&-; echo "status=$?" >&2')
    assert done.stderr.splitlines()[-1] == "status=3"
    assert "pass --yes" in done.stderr.splitlines()[0]


# --- records written elsewhere, damaged or unreadable -----------------------------------


def test_get_reads_a_record_written_by_another_serializer(file_cli: Cli) -> None:
    _write(file_cli.url, "from-json", {"rows": [1, 2]}, serializer="json")
    _write(file_cli.url, "from-zstd", "text", serializer="pickle+zstd")
    assert json.loads(file_cli.run("get", "from-json").stdout) == {"rows": [1, 2]}
    assert file_cli.run("get", "from-zstd").stdout == "text"
    # a store configured for json refuses a pickle record rather than loading it
    file_cli.fails(
        "get",
        "from-zstd",
        code=5,
        env={"RESULTSTORE_SERIALIZER": "json"},
        says=["'from-zstd'", "RESULTSTORE_ALLOWED_SERIALIZERS"],
    )


@pytest.fixture
def damaged(file_cli: Cli) -> Cli:
    """Two good records, a truncated one, a bit flip, garbage and an unreadable folder."""
    for key in ("good", "also-good", "truncated", "flipped", "garbage"):
        _write(file_cli.url, key, "v" * 100)
    root = file_cli.cwd / "store"
    (root / "truncated.rsr").write_bytes((root / "truncated.rsr").read_bytes()[:20])
    flipped = bytearray((root / "flipped.rsr").read_bytes())
    flipped[-5] ^= 1
    (root / "flipped.rsr").write_bytes(bytes(flipped))
    (root / "garbage.rsr").write_bytes(b"\x1b[2J\x1b]0;owned\x07not a record\n")
    (root / "folder.rsr").mkdir()
    return file_cli


def test_ls_lists_damaged_records_and_warns(damaged: Cli) -> None:
    done = damaged.invoke("ls")
    assert done.returncode == 0
    assert done.stderr == "warning: 3 damaged record(s); run 'resultstore check' for details\n"
    rows = {
        row[0]: "DAMAGED" if "DAMAGED" in row else row[3]  # key, 115, bytes, serializer
        for row in (line.split() for line in done.stdout.splitlines()[1:])
    }
    assert rows == {
        "also-good": "pickle",
        "flipped": "pickle",  # its header is fine: only check reads the payload
        "folder": "DAMAGED",
        "garbage": "DAMAGED",
        "good": "pickle",
        "truncated": "DAMAGED",
    }
    lines = _json_lines(damaged.invoke("--json", "ls").stdout)
    errors = {line["key"]: line["error"] for line in lines if "error" in line}
    assert sorted(errors) == ["folder", "garbage", "truncated"]
    assert all(set(line) == {"key", "error"} for line in lines if "error" in line)


def test_check_exits_5_naming_every_damaged_record(damaged: Cli) -> None:
    done = damaged.fails(
        "check",
        code=5,
        says=["4 record(s) failed", "'flipped'", "'folder'", "'garbage'"],
    )
    _no_raw(done.stdout)
    assert "checked 6 record(s)" in done.stdout
    lines = _json_lines(damaged.invoke("--json", "check").stdout)
    outcomes = {line["key"]: line["outcome"] for line in lines if "key" in line}
    assert outcomes == {
        "also-good": "ok",
        "flipped": "damaged",
        "folder": "damaged",
        "garbage": "damaged",
        "good": "ok",
        "truncated": "damaged",
    }
    assert lines[-1]["summary"] == {
        "url": damaged.url,
        "checked": 6,
        "ok": 2,
        "failed": 4,
        "bytes_checked": 230,
        "signatures_verified": False,
    }


@pytest.mark.parametrize("command", ["get", "inspect"])
def test_get_and_inspect_of_a_damaged_record_exit_5(damaged: Cli, command: str) -> None:
    for key in ("garbage", "truncated", "folder"):
        damaged.fails(command, key, code=5, says=[f"'{key}'", damaged.url])


# --- unreachable stores -----------------------------------------------------------------


EVERY_COMMAND = [
    ["put", "k", "--json", "1"],
    ["get", "k"],
    ["inspect", "k"],
    ["rm", "k"],
    ["rm", "-r", "runs/", "--yes"],
    ["ls"],
    ["ls", "--keys-only"],
    ["gc"],
    ["check"],
    ["--json", "ls"],
]


@pytest.mark.parametrize("command", EVERY_COMMAND, ids=" ".join)
def test_every_command_on_an_unreachable_server_is_exit_4(
    file_cli: Cli, command: list[str]
) -> None:
    url = f"ftp://127.0.0.1:{free_port()}/results"  # nothing listens there
    done = file_cli.fails("--storage", url, *command, code=4, says=[url, "unreachable"])
    assert done.stdout == ""


def test_copy_and_import_to_an_unreachable_destination_are_exit_4_with_nothing_to_do(
    file_cli: Cli, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    url = f"ftp://127.0.0.1:{free_port()}/results"
    for args in (["copy", empty.as_uri(), url], ["import-prefect", str(empty), url]):
        done = file_cli.fails(*args, code=4, says=[url])
        assert "0 record(s)" not in done.stdout


def test_copy_and_import_to_a_missing_bucket_are_exit_4_with_nothing_to_do(
    file_cli: Cli, tmp_path: Path, s3_env: dict[str, str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    url = "s3://no-such-bucket-here/results"
    for args in (["copy", empty.as_uri(), url], ["import-prefect", str(empty), url]):
        done = file_cli.fails(*args, code=4, env=s3_env, says=["'no-such-bucket-here'"])
        assert "0 record(s)" not in done.stdout


def test_copy_to_a_file_store_folder_that_does_not_exist_yet_is_fine(
    file_cli: Cli, tmp_path: Path
) -> None:
    _write(file_cli.url, "k", 1)
    dst = tmp_path / "new"
    file_cli.run("copy", file_cli.url, dst.as_uri())
    assert (dst / "k.rsr").is_file()


# --- keys that try to leave the store, and keys that are not there ----------------------


@pytest.mark.parametrize("key", ["../outside", "a/../../b", "/etc/passwd", "./k"])
@pytest.mark.parametrize("command", ["put", "get", "inspect", "rm"])
def test_keys_leaving_the_store_are_bad_input(
    file_cli: Cli, tmp_path: Path, key: str, command: str
) -> None:
    extra = ["--json", "1"] if command == "put" else []
    file_cli.fails(command, key, *extra, code=3, says=[f"invalid key {key!r}"])
    assert not (tmp_path / "outside.rsr").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["ls", "../"],
        ["ls", "/abs"],
        ["check", "../"],
        ["gc", "/abs"],
        ["gc", "../"],
        ["gc", "--full", "../"],
        ["rm", "-r", "../", "--yes"],
        ["copy", "file:///a", "file:///b", "--prefix", "../x"],
    ],
    ids=" ".join,
)
def test_prefixes_leaving_the_store_are_bad_input(file_cli: Cli, args: list[str]) -> None:
    file_cli.fails(*args, code=3, says=["invalid prefix"])


def test_rm_of_a_missing_key_is_exit_2_and_deletes_the_others(file_cli: Cli) -> None:
    _write(file_cli.url, "here", 1)
    done = file_cli.invoke("--json", "rm", "here", "missing")
    assert_error(done, 2, ["no result under key 'missing'"])
    assert _json_lines(done.stdout) == [
        {"key": "here", "outcome": "deleted", "size": 0},
        {"key": "missing", "outcome": "missing", "size": 0},
        {"summary": {"url": file_cli.url, "deleted": 1, "missing": 1}},
    ]
    file_cli.fails("get", "here", code=2)
