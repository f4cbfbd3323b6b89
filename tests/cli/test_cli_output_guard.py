"""stdout carries a command's data and nothing else, and a terminal never runs a record's text.

- A store plugin that prints (on import, on every call, from the store's thread) does not
  corrupt ``get KEY > file`` or ``ls --json | jq``: its prints go to stderr.
- Output that cannot be written (``> /dev/full``, ``-o`` on a full or read-only location)
  is one line naming stdout or the ``-o`` path and the OS error, exit 7.
- On a terminal, ``get`` shows a text value's escape sequences, clipboard writes and bidi
  overrides escaped, and refuses raw bytes; pipes and files get the exact value.

Every test runs ``python -m resultstore`` in a subprocess; the plugin is really
installed (a ``.dist-info`` folder on ``PYTHONPATH``) and the terminal is a real pty.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cli_harness import Cli, assert_error

from resultstore import ResultStore

RESULTSTORE = [sys.executable, "-m", "resultstore"]

BLOB = b"\x00\x01raw\xff\n\x1b[2J" + bytes(range(256))
TEXT = "caf\u00e9 line one\nline two\twith a tab\n"
DOC = {"rows": [1, 2], "note": "\x1b]52;c;ZXZpbA==\x07"}

# --- a store plugin that prints ---------------------------------------------------------

NOISY_PLUGIN = '''
"""A file store reached as noisy:///path that prints on import and on every call."""

import functools
import inspect
import sys

print("rs_noisy: imported")
sys.stdout.write("rs_noisy: written with sys.stdout.write\\n")

from resultstore.stores.file import FileStore


def _noisy(name, method):
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def generator(self, *args, **kwargs):
            print(f"rs_noisy: {name}")
            async for item in method(self, *args, **kwargs):
                yield item

        return generator
    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def coroutine(self, *args, **kwargs):
            print(f"rs_noisy: {name}")
            return await method(self, *args, **kwargs)

        return coroutine

    @functools.wraps(method)
    def function(self, *args, **kwargs):
        print(f"rs_noisy: {name}")
        return method(self, *args, **kwargs)

    return function


class NoisyStore(FileStore):
    def __init__(self, url, **options):
        print(f"rs_noisy: opening {url}")
        super().__init__("file://" + url.split("://", 1)[1], **options)


for _name in dir(FileStore):
    _method = inspect.getattr_static(FileStore, _name)
    if not _name.startswith("_") and inspect.isfunction(_method):
        setattr(NoisyStore, _name, _noisy(_name, _method))
'''


@pytest.fixture
def noisy(file_cli: Cli, tmp_path: Path) -> Cli:
    """The CLI on ``noisy://`` (the file store of ``file_cli``), with records under
    ``blob`` (bytes), ``text`` (str) and ``doc`` (a dict)."""
    site = tmp_path / "site"
    info = site / "rs_noisy-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rs-noisy\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[resultstore.stores]\nnoisy = rs_noisy:NoisyStore\n")
    (site / "rs_noisy.py").write_text(textwrap.dedent(NOISY_PLUGIN))
    with ResultStore(file_cli.url) as store:
        store.write(BLOB, key="blob")
        store.write(TEXT, key="text")
        store.write(DOC, key="doc")
    path = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    url = "noisy://" + str(tmp_path / "store")
    env = {**file_cli.env, "PYTHONPATH": path, "RESULTSTORE_STORAGE_URL": url}
    return Cli(env=env, cwd=file_cli.cwd, url=url)


def _run_bytes(cli: Cli, *args: str) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(
        [*RESULTSTORE, *args], env=cli.env, cwd=cli.cwd, capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done


def _only_noise(stderr: str) -> None:
    """stderr holds the plugin's prints, and nothing else."""
    lines = stderr.splitlines()
    assert "rs_noisy: imported" in lines and "rs_noisy: written with sys.stdout.write" in lines
    assert any(line.startswith("rs_noisy: opening noisy://") for line in lines), lines
    assert all(line.startswith("rs_noisy: ") for line in lines), lines


def test_get_writes_exactly_the_value_while_a_plugin_prints(noisy: Cli) -> None:
    done = _run_bytes(noisy, "get", "blob")
    assert done.stdout == BLOB
    _only_noise(done.stderr.decode())
    assert "rs_noisy: open" in done.stderr.decode().splitlines()  # its calls printed too

    done = _run_bytes(noisy, "get", "text")
    assert done.stdout == TEXT.encode()
    _only_noise(done.stderr.decode())

    done = _run_bytes(noisy, "--json", "get", "doc")
    assert json.loads(done.stdout) == DOC


@pytest.mark.parametrize(
    "command",
    ["--json ls", "--json ls --keys-only", "--json check", "--json rm doc"],
)
def test_json_lines_stay_json_while_a_plugin_prints(noisy: Cli, command: str) -> None:
    done = noisy.invoke(*command.split())
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    keys = {"doc"} if "rm" in command else {"blob", "doc", "text"}
    assert {line["key"] for line in lines if "key" in line} == keys
    _only_noise(done.stderr)


def test_text_output_for_people_carries_no_plugin_print(noisy: Cli) -> None:
    done = noisy.invoke("ls", "--keys-only")
    assert done.stdout == "blob\ndoc\ntext\n"
    _only_noise(done.stderr)
    done = noisy.invoke("ls")
    assert [line.split()[0] for line in done.stdout.splitlines()] == ["key", "blob", "doc", "text"]
    _only_noise(done.stderr)


def test_help_still_goes_to_stdout(noisy: Cli) -> None:
    assert noisy.run("get", "--help").stdout.startswith("Usage: resultstore get")
    assert noisy.run("--version").stdout.startswith("resultstore ")


# --- output that cannot be written ------------------------------------------------------


def _into(cli: Cli, target: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a command with stdout opened on ``target`` (``/dev/full``)."""
    with open(target, "wb") as stdout:
        return subprocess.run(
            [*RESULTSTORE, *args],
            env=cli.env,
            cwd=cli.cwd,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )


@pytest.fixture
def filled(file_cli: Cli) -> Cli:
    with ResultStore(file_cli.url) as store:
        store.write(BLOB, key="blob")
        store.write(TEXT, key="text")
        for i in range(50):
            store.write(i, key=f"runs/{i:03d}")
    return file_cli


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize(
    "args",
    [["get", "text"], ["get", "blob"], ["ls"], ["--json", "ls"], ["ls", "--keys-only"], ["--help"]],
    ids=" ".join,
)
def test_stdout_on_a_full_device_is_one_line_and_exit_7(
    filled: Cli, args: list[str], buffered: bool
) -> None:
    env = {name: value for name, value in filled.env.items() if name != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    done = _into(Cli(env=env, cwd=filled.cwd, url=filled.url), "/dev/full", *args)
    assert done.returncode == 7, done.stderr
    assert done.stderr == "error: cannot write to stdout: No space left on device\n"


def test_a_command_that_fails_keeps_its_own_error_when_stdout_is_full(filled: Cli) -> None:
    env = {name: value for name, value in filled.env.items() if name != "PYTHONUNBUFFERED"}
    done = _into(Cli(env=env, cwd=filled.cwd, url=filled.url), "/dev/full", "get", "nope")
    assert done.returncode == 2
    assert done.stderr == f"error: no result under key 'nope' in {filled.url}\n"


def test_get_o_on_a_full_read_only_or_missing_location_is_exit_7(
    filled: Cli, tmp_path: Path
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for target, reason in [
        ("/dev/full", "No space left on device"),
        ("/sys/kernel/notes", "Permission denied"),  # read-only for root too (sysfs)
        (str(a_file / "value"), "Not a directory"),
        (str(tmp_path / "no-such-folder" / "value"), "No such file or directory"),
    ]:
        filled.fails(
            "get", "text", "-o", target, code=7, says=[f"to -o {target!r}: {reason}", "'text'"]
        )


# --- a terminal -------------------------------------------------------------------------


HOSTILE = (
    "title\x1b]0;pwned\x07 clipboard\x1b]52;c;ZXZpbA==\x07 clear\x1b[2J c1\x9b2J "
    "invoice\u202etxt.exe isolate\u2066x\u2069 del\x7f nul\x00\r\n"
    "second line\twith a tab"
)
ESCAPED = (
    "title\\x1b]0;pwned\\x07 clipboard\\x1b]52;c;ZXZpbA==\\x07 clear\\x1b[2J c1\\x9b2J "
    "invoice\\u202etxt.exe isolate\\u2066x\\u2069 del\\x7f nul\\x00\\x0d\n"
    "second line\twith a tab\n"
)
RAW = ("\x1b", "\x9b", "\x07", "\x7f", "\x00", "\r", "\u202e", "\u2066", "\u2069")


@pytest.fixture
def hostile(file_cli: Cli) -> Cli:
    """A store holding a hostile text, bytes, and JSON and Python values holding it."""
    with ResultStore(file_cli.url) as store:
        store.write(HOSTILE, key="text")
        store.write(BLOB, key="blob")
        store.write({"note": HOSTILE}, key="doc")
        store.write({HOSTILE}, key="a-set")
    return file_cli


def test_get_shows_a_texts_control_characters_escaped_on_a_terminal(hostile: Cli) -> None:
    code, screen, stderr = hostile.on_a_terminal("get", "text")
    assert (code, stderr) == (0, "")
    assert screen.decode() == ESCAPED
    assert not [char for char in RAW if char in screen.decode()]


def test_json_and_repr_on_a_terminal_show_it_escaped_too(hostile: Cli) -> None:
    for args in (["get", "doc"], ["--json", "get", "text"], ["get", "a-set", "--format", "repr"]):
        code, screen, stderr = hostile.on_a_terminal(*args)
        assert (code, stderr) == (0, ""), args
        shown = screen.decode()
        assert not [char for char in RAW if char in shown], (args, shown)
        assert "clipboard" in shown and "\\u202e" in shown, shown


def test_pipes_and_files_get_the_exact_text(hostile: Cli, tmp_path: Path) -> None:
    piped = _run_bytes(hostile, "get", "text")
    assert piped.stdout == HOSTILE.encode()
    hostile.run("get", "text", "-o", str(tmp_path / "value.txt"))
    assert (tmp_path / "value.txt").read_bytes() == HOSTILE.encode()
    code, screen, _ = hostile.on_a_terminal("get", "text", "-o", "-")  # asked for: as stored
    assert (code, screen) == (0, HOSTILE.encode())


def test_bytes_are_refused_on_a_terminal_unless_o_dash_asks(hostile: Cli) -> None:
    code, screen, stderr = hostile.on_a_terminal("get", "blob")
    assert (code, screen) == (3, b"")
    done = subprocess.CompletedProcess[str](["-m", "resultstore", "get"], code, "", stderr)
    assert_error(
        done,
        3,
        says=[
            f"'blob' is {len(BLOB)} bytes of binary data",
            "binary output can mess up your terminal",
            "use -o PATH or a pipe",
            "-o - to write it to the terminal anyway",
        ],
    )
    code, screen, stderr = hostile.on_a_terminal("get", "blob", "-o", "-")
    assert (code, screen, stderr) == (0, BLOB, "")
    assert _run_bytes(hostile, "get", "blob").stdout == BLOB  # a pipe: raw


# --- a progress bar on the terminal does not take the data -----------------------------


def test_json_lines_reach_the_pipe_while_a_progress_bar_is_drawn(
    filled: Cli, tmp_path: Path
) -> None:
    # rich's progress bar swaps sys.stdout while it draws; the data does not go with it.
    for args in (["--json", "check"], ["--json", "copy", filled.url, (tmp_path / "b").as_uri()]):
        code, _, stdout = filled.on_a_terminal(*args, stream="stderr")
        assert code == 0
        lines = [json.loads(line) for line in stdout.splitlines()]
        assert len(lines) == 53 and "summary" in lines[-1], args


def test_a_text_with_a_lone_surrogate_is_one_line_not_a_traceback(file_cli: Cli) -> None:
    # Python keeps "\ud800" in a str; UTF-8 has no bytes for it, so no text output can.
    with ResultStore(file_cli.url) as store:
        store.write("a\ud800b", key="surrogate")
        store.write(["a\ud800b"], key="in-json")
    file_cli.fails("get", "surrogate", code=3, says=["'surrogate'", "U+D800", "--format repr"])
    assert file_cli.run("get", "surrogate", "--format", "repr").stdout == "'a\\ud800b'\n"
    # JSON escapes it (\ud800), and reads back as the same list
    assert json.loads(file_cli.run("get", "in-json").stdout) == ["a\ud800b"]
