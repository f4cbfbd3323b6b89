"""Run the ``resultstore`` command line as a user would: ``python -m resultstore``."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import threading
import tty
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Cli", "assert_error", "assert_exit", "clean_env"]

_LEAKY_PREFIXES = ("RESULTSTORE_", "AWS_")
_LEAKY_NAMES = {"FORCE_COLOR", "NO_COLOR", "CLICOLOR_FORCE", "TTY_COMPATIBLE", "COLUMNS"}


def clean_env(home: Path) -> dict[str, str]:
    """The caller's environment minus resultstore/AWS/colour settings, with HOME=home."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.upper().startswith(_LEAKY_PREFIXES) and name.upper() not in _LEAKY_NAMES
    }
    env["HOME"] = str(home)
    return env


@dataclass
class Cli:
    """Runs ``python -m resultstore`` with a fixed environment and checks its exit code."""

    env: dict[str, str]
    cwd: Path
    url: str

    def invoke(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``python -m resultstore ARGS``; check nothing."""
        return subprocess.run(
            [sys.executable, "-m", "resultstore", *args],
            env={**self.env, **(env or {})},
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def run(
        self, *args: str, code: int = 0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command; assert its exit code (0 by default) and a quiet stderr on success."""
        done = self.invoke(*args, env=env)
        assert_exit(done, code)
        return done

    def on_a_terminal(self, *args: str, stream: str = "stdout") -> tuple[int, bytes, str]:
        """Run a command with ``stream`` (``stdout`` or ``stderr``) on a real terminal, a
        pty, and the other on a pipe: its exit code, the screen, and the other's text.

        The terminal is raw, so the bytes read from it are the bytes the command wrote.
        """
        primary, secondary = pty.openpty()
        tty.setraw(secondary)
        shown: list[bytes] = []

        def read_screen() -> None:
            while True:
                try:
                    chunk = os.read(primary, 65536)
                except OSError:  # the command closed the terminal
                    return
                if not chunk:
                    return
                shown.append(chunk)

        on_pty = stream == "stdout"
        try:
            with subprocess.Popen(
                [sys.executable, "-m", "resultstore", *args],
                env=self.env,
                cwd=self.cwd,
                stdout=secondary if on_pty else subprocess.PIPE,
                stderr=subprocess.PIPE if on_pty else secondary,
                text=True,
            ) as child:
                os.close(secondary)
                reader = threading.Thread(target=read_screen)
                reader.start()
                piped = child.stderr if on_pty else child.stdout
                other = piped.read() if piped is not None else ""
                code = child.wait()
                reader.join()
        finally:
            os.close(primary)
        return code, b"".join(shown), other

    def fails(
        self, *args: str, code: int, says: Sequence[str] = (), env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a failing command; assert its exit code and ONE ``error:`` line on stderr."""
        done = self.invoke(*args, env=env)
        assert_error(done, code, says)
        return done


def assert_exit(done: subprocess.CompletedProcess[str], code: int) -> None:
    """The command exited with ``code``; a successful one wrote nothing on stderr."""
    assert done.returncode == code, (
        f"{done.args[3:]}: exit {done.returncode}, expected {code}\n"
        f"stdout: {done.stdout}\nstderr: {done.stderr}"
    )
    if code == 0:
        assert done.stderr == "", done.stderr


def assert_error(
    done: subprocess.CompletedProcess[str], code: int, says: Sequence[str] = ()
) -> None:
    """The command failed with ``code`` and ONE ``error:`` line containing ``says``."""
    assert_exit(done, code)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in done.stderr
    for fragment in says:
        assert fragment in lines[0], lines[0]
