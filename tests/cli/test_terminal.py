"""What a person sees in a real terminal: progress bars of copy and check, ls at 80 columns.

Each test runs the real command line in tmux (send-keys to type, capture-pane to
read the screen). tmux comes with this project's machines (a Debian package of the
base image); where it is missing the tests are skipped, saying so.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cli_harness import Cli

from resultstore import ResultStore

# A real terminal redraws on a timer: run alone (scripts/check.sh), where load cannot
# hold back the screen the test reads.
pytestmark = [
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
    pytest.mark.serial,
]


class Terminal:
    """A tmux session of a fixed size, one shell in it, read with capture-pane."""

    def __init__(self, env: dict[str, str], columns: int, rows: int = 30) -> None:
        self.name = f"rs-{uuid.uuid4().hex[:8]}"
        self._tmux = ["tmux", "-L", self.name]  # a server of its own: no user config, no clash
        self.env = env
        subprocess.run(
            [*self._tmux, "-f", "/dev/null", "new-session", "-d", "-s", self.name],
            check=True,
            env={**env, "TERM": "xterm-256color"},
        )
        subprocess.run(
            [*self._tmux, "resize-window", "-t", self.name, "-x", str(columns), "-y", str(rows)],
            check=True,
        )

    def type(self, line: str) -> None:
        """Type ``line`` and Enter."""
        subprocess.run([*self._tmux, "send-keys", "-t", self.name, line, "Enter"], check=True)

    def screen(self) -> str:
        """The visible screen, as text."""
        done = subprocess.run(
            [*self._tmux, "capture-pane", "-p", "-t", self.name],
            check=True,
            capture_output=True,
            text=True,
        )
        return done.stdout

    def wait_for(self, found: Callable[[str], bool], timeout: float = 60) -> str:
        """Poll the screen until ``found(screen)``; returns that screen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if found(screen):
                return screen
            time.sleep(0.02)
        raise AssertionError(f"not seen within {timeout}s; the screen:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run([*self._tmux, "kill-server"], check=False)


@pytest.fixture
def terminal(file_cli: Cli) -> Iterator[Callable[[int], Terminal]]:
    opened: list[Terminal] = []

    def open_terminal(columns: int) -> Terminal:
        term = Terminal(file_cli.env, columns)
        opened.append(term)
        term.type(f"cd {shlex.quote(str(file_cli.cwd))}")
        return term

    yield open_terminal
    for term in opened:
        term.close()


def _command(*args: str) -> str:
    env = "RESULTSTORE_STORAGE_URL"
    prefix = f"{env}={shlex.quote(args[0])} " if args and "://" in args[0] else ""
    rest = args[1:] if prefix else args
    return f"{prefix}{shlex.quote(sys.executable)} -m resultstore " + " ".join(
        map(shlex.quote, rest)
    )


def _exited(name: str) -> Callable[[str], bool]:
    """Whether the screen shows ``NAME-exit=<status>`` (not the typed ``$?``)."""
    return lambda screen: re.search(rf"{name}-exit=\d", screen) is not None


def _fill(url: str, count: int, size: int) -> None:
    with ResultStore(url, storage_options={"fsync": False}) as store:
        for i in range(count):
            store.write(bytes(size), key=f"runs/{i:05d}")


def test_copy_and_check_draw_a_progress_bar_that_a_person_sees(
    file_cli: Cli, terminal: Callable[[int], Terminal], tmp_path: Path
) -> None:
    _fill(file_cli.url, 4000, 2000)
    term = terminal(100)
    dst = (tmp_path / "dst").as_uri()

    term.type(_command("copy", file_cli.url, dst) + "; echo copy-exit=$?")
    moving = re.compile(r"copying ([1-9]\d*) record\(s\) +[\d.]+ (kB|MB)")
    drawing = term.wait_for(lambda s: moving.search(s) is not None)  # records, bytes moved
    line = next(row for row in drawing.splitlines() if "copying" in row)
    assert int(moving.search(line).group(1)) < 4000, line  # drawn while it copies
    done = term.wait_for(_exited("copy"))
    assert "copy-exit=0" in done and "copied 4000 record(s)" in done
    assert "copying" not in done  # the bar is gone once the copy is done; the summary stays

    term.type("clear; " + _command(dst, "check") + "; echo check-exit=$?")
    checking = re.compile(r"checking ([1-9]\d*) record\(s\)")
    drawing = term.wait_for(lambda s: checking.search(s) is not None)
    assert int(checking.search(drawing).group(1)) < 4000, drawing
    done = term.wait_for(_exited("check"))
    assert "check-exit=0" in done and "4000 ok, 0 failed" in done


def test_ls_fits_an_80_column_terminal_without_cutting_keys(
    file_cli: Cli, terminal: Callable[[int], Terminal]
) -> None:
    store = ResultStore(file_cli.url)
    keys = [f"experiments/2026-11-28/resnet50-lr0.001/checkpoint-{i:04d}" for i in range(3)]
    for key in keys:
        store.write(b"x" * 1500, key=key)
    store.write({"short": True}, key="a")
    term = terminal(80)

    term.type("clear; " + _command("ls") + "; echo ls-exit=$?")
    screen = term.wait_for(_exited("ls"))
    lines = [line.rstrip() for line in screen.splitlines()]
    header = next(i for i, line in enumerate(lines) if line.startswith("key "))
    rows = lines[header + 1 : header + 5]
    assert [row.split()[0] for row in rows] == ["a", *keys]  # whole keys, one line each
    assert all(len(line) <= 80 for line in lines)
    assert lines[header].split()[:3] == ["key", "size", "serializer"]
    assert "1.5 kB" in rows[1]
    assert "ls-exit=0" in screen


def test_rm_recursive_asks_on_a_terminal(
    file_cli: Cli, terminal: Callable[[int], Terminal]
) -> None:
    _fill(file_cli.url, 3, 10)
    term = terminal(100)

    term.type(_command("rm", "-r", "runs/") + "; echo rm-exit=$?")
    term.wait_for(lambda s: "delete 3 record(s) under 'runs/'" in s and "[y/N]" in s)
    term.type("n")
    screen = term.wait_for(_exited("rm"))
    assert "nothing deleted" in screen and "rm-exit=0" in screen
    assert len(ResultStore(file_cli.url).keys()) == 3

    term.type("clear; " + _command("rm", "-r", "runs/") + "; echo rm-exit=$?")
    term.wait_for(lambda s: "[y/N]" in s)
    term.type("y")
    screen = term.wait_for(_exited("rm"))
    assert "deleted 3 record(s)" in screen and "rm-exit=0" in screen
    assert ResultStore(file_cli.url).keys() == []
