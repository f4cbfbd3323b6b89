"""Exit codes and error messages of the command line, decided in one place.

Every error a command lets escape becomes one line on stderr (``error: ...``) and
the exit code :func:`exit_code_for` picks from the error's class, so scripts can
tell "not found" from "storage unreachable" from "damaged record".
"""

from __future__ import annotations

import enum
import re
import sys
from typing import Any, cast

import typer

from resultstore.errors import (
    ConfigurationError,
    ConflictError,
    IntegrityError,
    InvalidKeyError,
    ResultNotFoundError,
    ResultStoreError,
    SerializationError,
    StorageError,
)

__all__ = [
    "EXIT_CODES_HELP",
    "CliError",
    "ExitCode",
    "OutputError",
    "error_message",
    "exit_code_for",
    "print_error",
]


class ExitCode(enum.IntEnum):
    """What the process exit status means; documented in ``resultstore --help``."""

    OK = 0
    UNEXPECTED = 1
    NOT_FOUND = 2
    BAD_INPUT = 3
    STORAGE = 4
    INTEGRITY = 5
    CONFLICT = 6
    OUTPUT = 7
    """The output could not be written: stdout, or the file ``get -o PATH`` names."""
    INTERRUPTED = 130
    PIPE_CLOSED = 141
    """128 + SIGPIPE: the reader of stdout went away (``resultstore ls | head -1``)."""


EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 1 unexpected error, 2 not found, 3 bad input or usage, "
    "4 storage unreachable, missing or failing, 5 integrity (damaged, unsigned or forged "
    "record), 6 conflict (a create-only or compare-and-swap write found another record), "
    "7 the output could not be written (stdout or -o PATH: a full disk, a read-only or "
    "missing folder), 130 interrupted, 141 the reader of the output went away."
)


class CliError(Exception):
    """An error the CLI reports as ``error: <message>`` and exits with ``code``."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


class OutputError(CliError):
    """The command's output could not be written: ``stdout`` says whether it was stdout.

    A closed pipe is not one (its reader went away: exit 141, quietly); a full disk, a
    read-only or missing folder and an I/O error are, exit 7.
    """

    def __init__(self, message: str, *, stdout: bool) -> None:
        super().__init__(message, ExitCode.OUTPUT)
        self.stdout = stdout


def _click_exception(name: str) -> type[Exception]:
    """A click exception class as typer raises it (recent typer vendors its own click)."""
    for cls in typer.BadParameter.__mro__:
        if cls.__name__ == name and issubclass(cls, Exception):
            return cls
    raise ImportError(f"typer's click has no {name}")  # pragma: no cover


CLICK_EXCEPTION = _click_exception("ClickException")
_USAGE_ERROR = _click_exception("UsageError")

# The one mapping from exceptions to exit codes; the first matching class wins.
_EXIT_CODES: tuple[tuple[type[BaseException], ExitCode], ...] = (
    (ResultNotFoundError, ExitCode.NOT_FOUND),
    (ConflictError, ExitCode.CONFLICT),  # ResultExistsError, VersionConflictError
    (IntegrityError, ExitCode.INTEGRITY),  # includes SignatureError
    (StorageError, ExitCode.STORAGE),  # unreachable, denied, missing bucket or folder
    (InvalidKeyError, ExitCode.BAD_INPUT),
    (ConfigurationError, ExitCode.BAD_INPUT),  # unknown scheme/serializer, bad options
    (SerializationError, ExitCode.BAD_INPUT),
    (CLICK_EXCEPTION, ExitCode.BAD_INPUT),  # usage errors, bad parameters
)


def exit_code_for(exc: BaseException) -> ExitCode:
    """The exit code the CLI ends with when ``exc`` escapes a command."""
    if isinstance(exc, CliError):
        return exc.code
    for cls, code in _EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return ExitCode.UNEXPECTED


def _one_line(text: str) -> str:
    text = re.sub(r"\s*\n\s*", " ", text.strip())
    return text.replace("Value error, ", "")  # pydantic's prefix of a validator's message


def error_message(exc: BaseException) -> str:
    """The one-line message for ``exc``, without the ``error:`` prefix."""
    if isinstance(exc, CLICK_EXCEPTION):
        message = _one_line(str(cast(Any, exc).format_message()))
        ctx = getattr(exc, "ctx", None)
        if isinstance(exc, _USAGE_ERROR) and ctx is not None:
            message += f" (see '{ctx.command_path} --help')"
        return message
    if isinstance(exc, (CliError, ResultStoreError)):
        return _one_line(str(exc))
    detail = f": {exc}" if str(exc) else ""
    return _one_line(
        f"unexpected {type(exc).__name__}{detail} (rerun with --debug for the traceback)"
    )


def print_error(message: str) -> None:
    """Write ``error: <message>`` on stderr, at once, with its unprintable characters escaped.

    A message can quote what others wrote (a key, a folder's name, a server's reply):
    :func:`~resultstore.cli._output.printable` keeps their escape sequences and line
    breaks off the terminal, so the error stays one line that shows what it names.
    """
    from resultstore.cli._output import printable

    if sys.stderr is None:  # started with stderr closed: nowhere to say it
        return
    sys.stderr.write(f"error: {printable(message)}\n")
    sys.stderr.flush()
