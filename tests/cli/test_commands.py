"""Every ``resultstore`` command and error path, run in a subprocess, on file storage and S3."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import numpy as np
import pytest
from cli_harness import Cli, assert_error, clean_env

from ports import free_port
from resultstore import ResultStore
from resultstore.records import encode_record
from resultstore.stores.base import Payload

COMMANDS = (
    "put",
    "get",
    "ls",
    "inspect",
    "rm",
    "gc",
    "check",
    "copy",
    "import-prefect",
    "stores",
    "demo",
)
METADATA_FIELDS = [
    "key",
    "url",
    "size",
    "serializer",
    "checksum",
    "created",
    "expiration",
    "signed",
]


def _listed(cli: Cli, *args: str) -> dict[str, dict[str, object]]:
    lines = cli.run("ls", "--json", *args).stdout.splitlines()
    return {entry["key"]: entry for entry in map(json.loads, lines)}


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-2] ^= 0xFF
    path.write_bytes(bytes(data))


# --- help, entry points -------------------------------------------------------------------


def test_help_lists_the_commands_and_documents_the_exit_codes(file_cli: Cli) -> None:
    text = file_cli.run("--help").stdout

    for command in COMMANDS:
        assert command in text
    flat = " ".join(text.replace("│", " ").split())
    assert "Exit codes: 0 ok, 1 unexpected error, 2 not found, 3 bad input or usage" in flat
    assert "4 storage unreachable, missing or failing, 5 integrity" in flat
    assert "Usage: resultstore" in file_cli.run().stdout  # no command: the help, exit 0


def test_the_console_script_is_python_dash_m(file_cli: Cli) -> None:
    script = Path(sys.executable).with_name("resultstore")
    if not script.exists():
        pytest.skip("the resultstore console script is not installed next to this Python")
    done = subprocess.run(
        [str(script), "get", "missing"], env=file_cli.env, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr == file_cli.run("get", "missing", code=2).stderr


def test_importing_the_library_does_not_import_the_cli_stack(file_cli: Cli) -> None:
    code = (
        "import sys, resultstore, states\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'typer', 'rich', 'click'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=file_cli.env, capture_output=True, text=True
    )
    assert done.stdout.strip() == "[]", done.stderr


# --- the commands, on file storage and on S3 ------------------------------------------------


def test_put_get_inspect_ls_and_rm(cli: Cli, tmp_path: Path) -> None:
    blob = os.urandom(5000)
    (tmp_path / "blob.bin").write_bytes(blob)

    stored = cli.run("put", "a/doc", "--json", '{"rows": [1, 2], "ok": true}').stdout
    assert stored.startswith(f"stored a/doc in {cli.url}")
    cli.run("put", "a/blob", "--file", str(tmp_path / "blob.bin"), "--serializer", "pickle+zstd")

    assert json.loads(cli.run("get", "a/doc").stdout) == {"rows": [1, 2], "ok": True}
    wrote = cli.run("get", "a/blob", "--output", str(tmp_path / "blob.out")).stdout
    assert wrote == f"wrote 5000 bytes to {tmp_path / 'blob.out'}\n"
    assert (tmp_path / "blob.out").read_bytes() == blob

    inspected = json.loads(cli.run("inspect", "a/blob").stdout)
    assert list(inspected) == [*METADATA_FIELDS, "signature"]
    assert inspected["signature"] == "none"
    assert inspected["key"] == "a/blob"
    assert inspected["url"] == cli.url
    assert inspected["serializer"] == "pickle+zstd"
    assert inspected["checksum"].startswith("xxh3_128:")
    assert inspected["expiration"] is None
    assert inspected["signed"] is False

    table = cli.run("ls").stdout.splitlines()
    assert table[0].split() == ["key", "size", "serializer", "created", "expiration"]
    assert [row.split()[0] for row in table[1:]] == ["a/blob", "a/doc"]
    listed = _listed(cli, "a/")
    assert sorted(listed) == ["a/blob", "a/doc"]
    assert listed["a/blob"] == {k: v for k, v in inspected.items() if k != "signature"}

    removed = cli.fails("rm", "a/doc", "a/nope", code=2, says=["'a/nope'", cli.url])
    assert removed.stdout == "deleted a/doc\n"  # the other key is still deleted
    assert "'a/doc'" not in removed.stderr
    cli.fails("get", "a/doc", code=2, says=["no result under key 'a/doc'", cli.url])


def test_gc_deletes_only_expired_records(cli: Cli) -> None:
    store = ResultStore(cli.url)
    now = datetime.datetime.now(datetime.timezone.utc)
    store.write(1, key="old", expiration=now)
    store.write(2, key="fresh", expiration=now + datetime.timedelta(hours=1))
    store.write(3, key="forever")

    dry = cli.run("gc", "--dry-run").stdout
    assert "would delete old" in dry and "1 expired record(s)" in dry and "would free" in dry
    done = cli.run("gc").stdout
    assert "deleted old" in done and "freed" in done and "fresh" not in done
    assert sorted(_listed(cli)) == ["forever", "fresh"]


PAST = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)


def test_gc_full_finds_expired_records_the_expiry_index_does_not_know(file_cli: Cli) -> None:
    store = ResultStore(file_cli.url)
    # A record as an older release wrote it: expired, but with no expiry index entry.
    buffers = encode_record(store.serializer.dumps(1), serializer="pickle", expiration=PAST)
    anyio.run(store.store.write, "legacy", Payload(buffers))

    assert "0 expired record(s)" in file_cli.run("gc").stdout
    done = file_cli.run("gc", "--full").stdout
    assert "deleted legacy" in done and "1 expired record(s)" in done
    assert list(_listed(file_cli)) == []


def test_gc_removes_leftovers_of_interrupted_writes(file_cli: Cli, tmp_path: Path) -> None:
    ResultStore(file_cli.url).write(1, key="runs/kept")
    folder = tmp_path / "store" / "runs"
    stale = folder / ".lost.rsr.0123456789abcdef.tmp"  # what a writer killed mid-write leaves
    stale.write_bytes(b"x" * 1000)
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    in_progress = folder / ".busy.rsr.fedcba9876543210.tmp"
    in_progress.write_bytes(b"y" * 10)

    dry = file_cli.run("gc", "--dry-run").stdout
    assert "1 leftover(s) of interrupted writes" in dry and stale.exists()
    done = file_cli.run("gc").stdout
    assert "1 leftover(s) of interrupted writes older than an hour: freed 1000 bytes" in done
    assert not stale.exists() and in_progress.exists()
    assert list(_listed(file_cli)) == ["runs/kept"]


def test_copy_file_to_s3_and_back_is_byte_exact(
    file_cli: Cli, tmp_path: Path, s3_env: dict[str, str], s3_url: str
) -> None:
    src = tmp_path / "store"
    big = os.urandom(9 * 1024 * 1024)  # more than one 8 MiB read chunk
    store = ResultStore(file_cli.url)
    store.write(big, key="runs/big")
    ResultStore(file_cli.url, serializer="json").write({"n": 1}, key="runs/small")
    ResultStore(file_cli.url, signing_key="k-0123456789abcdef").write([1, 2, 3], key="runs/signed")
    store.write(0, key="other/x")
    cli = Cli(env={**file_cli.env, **s3_env}, cwd=tmp_path, url=s3_url)

    out = cli.run("copy", file_cli.url, s3_url, "--prefix", "runs/").stdout
    assert out.startswith("copied 3 record(s)") and f"to {s3_url}" in out
    assert "3 ok, 0 failed" in cli.run("--storage", s3_url, "check").stdout
    signed = {"RESULTSTORE_SIGNING_KEY": "k-0123456789abcdef"}  # the signature survived the copy
    assert cli.run("--storage", s3_url, "get", "runs/signed", env=signed).stdout.startswith("[")

    back = tmp_path / "back"
    cli.run("copy", s3_url, back.as_uri())
    copied = sorted(p.relative_to(back) for p in back.rglob("*.rsr"))
    assert [str(p) for p in copied] == ["runs/big.rsr", "runs/signed.rsr", "runs/small.rsr"]
    for name in copied:
        assert (back / name).read_bytes() == (src / name).read_bytes()
    cli.run("--storage", back.as_uri(), "get", "runs/big", "-o", str(tmp_path / "big.out"))
    assert (tmp_path / "big.out").read_bytes() == big


# --- output formats -------------------------------------------------------------------------


def test_get_writes_bytes_raw_str_as_text_and_json_values_as_json(
    file_cli: Cli, tmp_path: Path
) -> None:
    store = ResultStore(file_cli.url)
    store.write({"rows": [1, 2]}, key="doc")
    store.write("héllo", key="word")
    store.write(b"\x00\x01\x02", key="blob")
    store.write(np.zeros(100), key="array")
    store.write({1, 2}, key="a-set")

    assert file_cli.run("get", "doc").stdout == '{\n  "rows": [\n    1,\n    2\n  ]\n}\n'
    assert file_cli.run("get", "word").stdout == "héllo"  # text, as it is: no quotes
    assert file_cli.run("get", "word", "--format", "json").stdout == '"héllo"\n'
    assert file_cli.run("--json", "get", "word").stdout == '"héllo"\n'
    raw = subprocess.run(
        [sys.executable, "-m", "resultstore", "get", "blob"], env=file_cli.env, capture_output=True
    )
    assert raw.returncode == 0 and raw.stdout == b"\x00\x01\x02"
    # Anything else is an error, never a summary on stdout with exit 0.
    for key, kind in [("array", "ndarray (800 bytes)"), ("a-set", "set")]:
        done = file_cli.fails("get", key, code=3, says=[f"{key!r}", kind, "--format repr"])
        assert done.stdout == ""
    assert file_cli.run("get", "a-set", "--format", "repr").stdout == "{1, 2}\n"
    assert file_cli.run("get", "array", "--format", "repr").stdout.startswith("array([0., 0.")

    file_cli.run("get", "word", "-o", str(tmp_path / "word.txt"))
    assert (tmp_path / "word.txt").read_bytes() == "héllo".encode()
    file_cli.run("get", "doc", "-o", str(tmp_path / "doc.json"))
    assert json.loads((tmp_path / "doc.json").read_text()) == {"rows": [1, 2]}
    out = str(tmp_path / "set.out")
    file_cli.fails("get", "a-set", "-o", out, code=3, says=["'a-set'", "bytes, str or JSON"])
    assert not (tmp_path / "set.out").exists()
    file_cli.fails("get", "doc", "-o", str(tmp_path / "no" / "f"), code=7, says=["cannot write"])
    assert "no records under 'zzz'" in file_cli.run("ls", "zzz").stdout


def test_dash_means_stdout_for_get_and_stdin_for_put(file_cli: Cli, tmp_path: Path) -> None:
    blob = os.urandom(3000)
    put = subprocess.run(
        [sys.executable, "-m", "resultstore", "put", "blob", "--file", "-"],
        input=blob,
        env=file_cli.env,
        capture_output=True,
    )
    assert put.returncode == 0, put.stderr
    got = subprocess.run(
        [sys.executable, "-m", "resultstore", "get", "blob", "-o", "-"],
        env=file_cli.env,
        capture_output=True,
        cwd=tmp_path,
    )
    assert got.returncode == 0 and got.stdout == blob
    assert not (tmp_path / "-").exists()  # not a file named "-"
    done = subprocess.run(
        [sys.executable, "-m", "resultstore", "put", "doc", "--json", "-"],
        input='{"from": "stdin"}',
        env=file_cli.env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(file_cli.run("get", "doc").stdout) == {"from": "stdin"}


def test_put_expires_in_sets_the_expiration_ls_shows(file_cli: Cli) -> None:
    stored = file_cli.run("put", "soon", "--json", "1", "--expires-in", "1h").stdout
    file_cli.run("put", "now", "--json", "2", "--expires-in", "0")

    assert "expires " in stored
    expiration = datetime.datetime.fromisoformat(
        json.loads(file_cli.run("inspect", "soon").stdout)["expiration"]
    )
    left = expiration - datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(minutes=59) < left <= datetime.timedelta(hours=1)
    rows = {line.split()[0]: line for line in file_cli.run("ls").stdout.splitlines()[1:]}
    assert rows["now"].endswith("(expired)")
    assert "(expired)" not in rows["soon"]


def test_stores_lists_schemes_and_serializers_with_their_distribution(file_cli: Cli) -> None:
    rows = [line.split() for line in file_cli.run("stores").stdout.splitlines()]

    for kind, name in [
        ("store", "file://"),
        ("store", "memory://"),
        ("store", "s3://"),
        ("serializer", "pickle"),
        ("serializer", "json"),
        ("serializer", "pickle+zstd"),
    ]:
        assert [kind, name, "resultstore"] in rows


def test_progress_is_drawn_on_a_terminal_only(file_cli: Cli) -> None:
    for n in range(3):
        ResultStore(file_cli.url).write(n, key=f"k{n}")
    quiet = file_cli.run("check")  # stderr is a pipe: nothing drawn (run() asserts it)
    assert "3 ok, 0 failed" in quiet.stdout

    code, drawn, stdout = file_cli.on_a_terminal("check", stream="stderr")
    assert code == 0
    assert stdout == quiet.stdout
    assert b"checking" in drawn and b"3 record(s)" in drawn


# --- integrity ------------------------------------------------------------------------------


def test_check_finds_a_corrupted_record(file_cli: Cli, tmp_path: Path) -> None:
    store = ResultStore(file_cli.url)
    store.write({"fine": True}, key="good")
    store.write({"fine": False}, key="bad")
    _corrupt(tmp_path / "store" / "bad.rsr")

    done = file_cli.fails("check", code=5, says=["1 record(s) failed verification", "'bad'"])
    assert "'good'" not in done.stderr
    assert "DAMAGED  bad:" in done.stdout and "payload checksum mismatch" in done.stdout
    assert "1 ok, 1 failed" in done.stdout
    file_cli.fails("get", "bad", code=5, says=["'bad'", "damaged"])
    assert "1 ok, 0 failed" in file_cli.run("check", "good").stdout
    assert sorted(_listed(file_cli)) == ["bad", "good"]  # ls still lists it


def test_copy_skips_damaged_records_and_fails_with_integrity(file_cli: Cli, tmp_path: Path) -> None:
    store = ResultStore(file_cli.url)
    store.write(1, key="ok")
    store.write(2, key="broken")
    _corrupt(tmp_path / "store" / "broken.rsr")
    dst = (tmp_path / "dst").as_uri()

    done = file_cli.fails("copy", file_cli.url, dst, code=5, says=["'broken'", "not copied"])
    assert "'ok'" not in done.stderr and "copied 1 record(s)" in done.stdout
    assert (tmp_path / "dst" / "ok.rsr").exists()
    assert not (tmp_path / "dst" / "broken.rsr").exists()


def test_a_signing_key_refuses_unsigned_records(file_cli: Cli) -> None:
    ResultStore(file_cli.url).write(1, key="plain")
    signed = {"RESULTSTORE_SIGNING_KEY": "s3cret-0123456789abcdef"}

    file_cli.fails("get", "plain", code=5, env=signed, says=["'plain'", "not signed"])
    refused = file_cli.fails("check", code=5, env=signed, says=["'plain'"])
    assert "REFUSED  plain:" in refused.stdout
    file_cli.run("put", "sealed", "--json", "2", env=signed)
    assert file_cli.run("get", "sealed", env=signed).stdout == "2\n"


# --- errors ---------------------------------------------------------------------------------


# Each case: arguments, extra environment, exit code, fragments of the one error line.
ERROR_CASES: dict[str, tuple[list[str], dict[str, str], int, list[str]]] = {
    "get missing": (["get", "missing"], {}, 2, ["no result under key 'missing'"]),
    "inspect missing": (["inspect", "missing"], {}, 2, ["'missing'"]),
    "invalid key": (["get", "../escape"], {}, 3, ["invalid key '../escape'"]),
    "rm invalid key": (["rm", "ok", "a//b"], {}, 3, ["invalid key 'a//b'"]),
    "bad json": (["put", "k", "--json", "{nope"], {}, 3, ["--json for key 'k' is not valid JSON"]),
    "no value": (["put", "k"], {}, 3, ["exactly one of --json TEXT or --file PATH"]),
    "no file": (["put", "k", "--file", "nothere.bin"], {}, 3, ["cannot read --file", "nothere"]),
    "bad serializer": (
        ["put", "k", "--json", "1", "--serializer", "nope"],
        {},
        3,
        ["unknown serializer 'nope'"],
    ),
    # (bytes are no longer "not encodable" by json: it stores them losslessly, tagged)
    "bad serializer option": (
        ["put", "k", "--json", "1", "--serializer", '{"type": "pickle", "picklelib": "dill"}'],
        {},
        3,
        ["picklelib must be one of 'cloudpickle', 'pickle', not 'dill'"],
    ),
    "negative expiry": (["put", "k", "--json", "1", "--expires-in", "-5"], {}, 3, ["--expires-in"]),
    "bad expiry": (["put", "k", "--json", "1", "--expires-in", "soon"], {}, 3, ["--expires-in"]),
    "missing argument": (["put"], {}, 3, ["Missing argument", "resultstore put --help"]),
    "unknown command": (["frobnicate"], {}, 3, ["No such command 'frobnicate'"]),
    "unknown option": (["--no-such-flag"], {}, 3, ["No such option: --no-such-flag"]),
    "option syntax": (["--storage-option", "novalue", "ls"], {}, 3, ["'novalue'", "KEY=VALUE"]),
    "bad option value": (
        ["--storage", "s3://bkt/p", "--storage-option", "part_size=1", "ls"],
        {},
        3,
        ["part_size"],
    ),
    "unknown scheme": (["--storage", "nosuch://x", "ls"], {}, 3, ["URL scheme 'nosuch'"]),
    "bad setting": (["ls"], {"RESULTSTORE_READ_ATTEMPTS": "zero"}, 3, ["READ_ATTEMPTS"]),
    "storage failure": (
        ["--storage", "file:///dev/null/x", "put", "k", "--json", "1"],
        {},
        4,
        ["'k'", "file:///dev/null/x"],
    ),
    "demo storage failure": (
        ["demo", "--storage", "file:///dev/null/x"],
        {},
        4,
        ["/extract'", "file:///dev/null/x"],
    ),
}


@pytest.fixture(scope="module")
def error_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every error case, run at once (they are independent) to keep the suite fast."""
    folder = tmp_path_factory.mktemp("errors")
    (folder / "binary.bin").write_bytes(b"\xff\xfe")  # not UTF-8: JSON cannot hold it
    env = {**clean_env(folder), "RESULTSTORE_STORAGE_URL": (folder / "store").as_uri()}
    cli = Cli(env=env, cwd=folder, url=env["RESULTSTORE_STORAGE_URL"])
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {
            name: pool.submit(cli.invoke, *args, env=extra)
            for name, (args, extra, _, _) in ERROR_CASES.items()
        }
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_are_one_line_with_a_distinct_exit_code(
    error_runs: dict[str, subprocess.CompletedProcess[str]], case: str
) -> None:
    _, _, code, says = ERROR_CASES[case]
    assert_error(error_runs[case], code, says)


def test_unreachable_s3_or_a_missing_bucket_is_exit_4(
    file_cli: Cli, s3_env: dict[str, str]
) -> None:
    file_cli.fails(
        "--storage",
        "s3://no-such-bucket-here/results",
        "ls",
        code=4,
        env=s3_env,
        says=["'no-such-bucket-here' does not exist"],
    )
    port = free_port()  # nothing listens on it
    file_cli.fails(
        "--storage",
        "s3://some-bucket/results",
        "--storage-option",
        'config_kwargs={"retries": {"max_attempts": 1}}',
        "get",
        "k",
        code=4,
        env={**s3_env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"},
        says=["'k'", "s3://some-bucket/results", "unavailable"],
    )


def test_debug_shows_the_traceback(file_cli: Cli) -> None:
    quiet = file_cli.run("get", "missing", code=2).stderr
    loud = file_cli.run("--debug", "get", "missing", code=2).stderr

    assert "Traceback" not in quiet
    assert "Traceback (most recent call last)" in loud
    assert "ResultNotFoundError" in loud
    assert loud.splitlines()[-1] == quiet.strip()
