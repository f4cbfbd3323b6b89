"""How commands print: text for people, JSON lines for programs, progress on a terminal.

The JSON schema is one for every command (README, "Command line"): a record is
``{"key", "url", "size", "serializer", "checksum", "created", "expiration",
"signed"}``; a command acting on many records prints one line per record,
``{"key", "outcome", "size"}`` (plus ``"error"`` when it failed), then one
``{"summary": {...}}`` line. rich is imported only to draw on a terminal.

Everything a command shows goes through :func:`printable` (text) or :func:`json_line`
(JSON), here and nowhere else: keys, URLs and error messages can hold what a store's
other writers put there (terminal escapes, right-to-left marks, line separators), and
none of it reaches the terminal raw or splits a JSON line.

A command's data goes to :func:`data_out`, the real stdout; while the command runs
(:func:`stray_prints_to_stderr`, applied to every command by the app) ``sys.stdout`` is
stderr, so what a store plugin or a library prints cannot corrupt ``get KEY > file`` or
``ls --json | jq``. A write to stdout that fails (a full disk) is one
:class:`~resultstore.cli._errors.OutputError` line (:func:`checked_stdout`).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TextIO, cast

from resultstore.cli._errors import OutputError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from resultstore.bulk import RecordOutcome, ScanEntry
    from resultstore.cli._context import CliOptions
    from resultstore.records import ResultMetadata

__all__ = [
    "LARGE",
    "Output",
    "Progress",
    "StreamedTable",
    "bytes_text",
    "checked_stdout",
    "data_out",
    "json_line",
    "metadata_dict",
    "outcome_dict",
    "print_json",
    "print_line",
    "print_table",
    "printable",
    "size_text",
    "spinner",
    "stray_prints_to_stderr",
    "when",
    "write_data",
]

LARGE = 1024 * 1024
"""From this size on, get and put show a spinner (on a terminal)."""


# --- what may reach the terminal --------------------------------------------------------


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str, keep: str = "") -> str:
    """``text`` with every character that is not printable written as Python writes it.

    ESC (``\\x1b``), other C0 and C1 controls (``\\x9b``, a CSI on some terminals),
    DEL, line and paragraph separators, bidirectional overrides (``\\u202e``) and
    other invisible formatting characters are shown as escapes: a key or a message
    shows what it holds and cannot move the cursor, retitle the window, write the
    clipboard (OSC 52), reverse the text that follows or start a new line. The
    characters in ``keep`` stay as they are (``get`` keeps a value's newlines and tabs).
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() or char in keep else _escape(char) for char in text)


def _json_escape(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def json_line(
    obj: object, indent: int | None = None, default: Callable[[Any], Any] | None = None
) -> str:
    """``obj`` as JSON text whose characters are all printable (and ``\\n`` when indented).

    Non-ASCII text stays readable (``ensure_ascii=False``), but what :func:`printable`
    escapes is written as a ``\\uXXXX`` escape: the same JSON value, one that a
    terminal shows as it is, and a line that no reader splits (Python's
    ``str.splitlines`` also splits at ``\\x85`` and ``\\u2028``).
    """
    text = json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False, default=default)
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() or char == "\n" else _json_escape(char) for char in text
    )


# --- where a command's data goes -------------------------------------------------------

_data_out: TextIO | None = None
"""The real stdout while a command runs (see :func:`stray_prints_to_stderr`)."""


def data_out() -> TextIO:
    """The stream a command's data goes to: the real stdout, even while sys.stdout is stderr."""
    return _data_out if _data_out is not None else sys.stdout


@contextlib.contextmanager
def _reported() -> Iterator[None]:
    """A failed write to stdout as an OutputError; a closed pipe stays a BrokenPipeError."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OutputError(f"cannot write to stdout: {exc.strerror or exc}", stdout=True) from exc


class _Checked:
    """A stream (stdout, or its binary buffer) whose failed writes are OutputErrors."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, data: Any) -> Any:
        with _reported():
            return self._stream.write(data)

    def writelines(self, lines: Any) -> None:
        with _reported():
            self._stream.writelines(lines)

    def flush(self) -> None:
        with _reported():
            self._stream.flush()

    @property
    def buffer(self) -> Any:
        return _Checked(self._stream.buffer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def checked_stdout(stream: TextIO) -> TextIO:
    """``stream`` (the process's stdout) with a failed write raising a one-line OutputError.

    "cannot write to stdout: No space left on device" (exit 7) instead of an unexpected
    OSError; a closed pipe is still the BrokenPipeError that ends the process quietly.
    """
    return cast(TextIO, _Checked(stream))


@contextlib.contextmanager
def stray_prints_to_stderr() -> Iterator[None]:
    """While a command runs: ``sys.stdout`` is stderr, and its data goes to :func:`data_out`.

    What a store plugin, or anything it imports, prints lands on stderr (nowhere, when
    stderr is closed), not in the middle of the value or the JSON lines that stdout
    carries. The command's output is flushed before it ends, so that a write error is
    reported as the command's error.
    """
    global _data_out
    saved, saved_data = sys.stdout, _data_out
    devnull = open(os.devnull, "w") if sys.stderr is None else None  # noqa: SIM115
    _data_out = saved
    sys.stdout = sys.stderr if devnull is None else devnull
    try:
        yield
        saved.flush()
    finally:
        sys.stdout, _data_out = saved, saved_data
        if devnull is not None:
            devnull.close()


def write_data(data: bytes) -> None:
    """Write all of ``data`` to stdout, or raise (BrokenPipeError when its reader left).

    A buffered write of more than its buffer to a pipe can return after part of it,
    without an error, when the reader goes away (``resultstore get big | head -c 10``):
    the rest is written again, so that the next write reports the closed pipe.
    """
    stream = data_out()
    stream.flush()
    out = stream.buffer
    view = memoryview(data)
    while view:
        view = view[out.write(view) :]
    out.flush()


def print_line(text: str) -> None:
    """Print one line for people on stdout, through :func:`printable`."""
    print(printable(text), file=data_out())


def print_json(
    obj: object, indent: int | None = None, default: Callable[[Any], Any] | None = None
) -> None:
    """Print ``obj`` as JSON on stdout, through :func:`json_line`."""
    print(json_line(obj, indent, default), file=data_out())


class Output:
    """Prints a command's results the way the global options ask (text, JSON, quiet)."""

    def __init__(self, given: CliOptions) -> None:
        self.json = given.json
        self.quiet = given.quiet

    def info(self, text: str) -> None:
        """A line for people (a summary, a confirmation): not with --json or --quiet."""
        if not self.json and not self.quiet:
            print_line(text)

    def emit(self, obj: dict[str, Any]) -> None:
        """One JSON object on one line (only with --json)."""
        if self.json:
            print_json(obj)

    def summary(self, **fields: Any) -> None:
        """The closing ``{"summary": {...}}`` line of a command over many records."""
        self.emit({"summary": fields})

    def warn(self, text: str) -> None:
        """``warning: <text>`` on stderr, unless --quiet."""
        if not self.quiet:
            sys.stderr.write(f"warning: {printable(text)}\n")

    @property
    def progress(self) -> bool:
        """Whether to draw progress: on a terminal (stderr), without --quiet."""
        return not self.quiet and sys.stderr.isatty()


# --- values and fields ------------------------------------------------------------------


def size_text(nbytes: int) -> str:
    """``3.0 kB``: a size for people, in decimal units (as rich and most tools show them)."""
    if nbytes < 1000:
        return "1 byte" if nbytes == 1 else f"{nbytes} bytes"
    value, unit = nbytes / 1000, "kB"
    for bigger in ("MB", "GB", "TB", "PB"):
        if value < 1000:
            break
        value, unit = value / 1000, bigger
    return f"{value:,.1f} {unit}"


def bytes_text(nbytes: int) -> str:
    """``20 bytes``, or ``3018 bytes (3.0 kB)`` when a rounder figure helps."""
    human = size_text(nbytes)
    return human if nbytes < 1000 else f"{nbytes} bytes ({human})"


def when(value: datetime.datetime | None) -> str:
    """A moment as ``2026-11-28 09:15:00Z``, or ``-``."""
    if value is None:
        return "-"
    return value.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _iso(value: datetime.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def metadata_dict(metadata: ResultMetadata) -> dict[str, Any]:
    """A record as ``ls --json`` and ``inspect`` show it, in the documented field order."""
    return {
        "key": metadata.storage_key,
        "url": metadata.storage_url,
        "size": metadata.size,
        "serializer": metadata.serializer,
        "checksum": metadata.checksum,
        "created": _iso(metadata.created),
        "expiration": _iso(metadata.expiration),
        "signed": metadata.signed,
    }


def outcome_dict(done: RecordOutcome) -> dict[str, Any]:
    """One record a bulk command acted on: ``{"key", "outcome", "size"[, "error"]}``."""
    found: dict[str, Any] = {"key": done.key, "outcome": done.outcome, "size": done.size}
    if done.error is not None:
        found["error"] = str(done.error)
    return found


# --- tables -----------------------------------------------------------------------------


def _console(*, stderr: bool = False) -> Console:
    """A rich console; when not a terminal, wide enough never to cut a key."""
    from rich.console import Console

    file = None if stderr else data_out()
    console = Console(stderr=stderr, file=file)
    if not console.is_terminal:
        console = Console(stderr=stderr, file=file, width=max(console.width, 10_000))
    return console


def print_table(table: Table) -> None:
    """Print a table on stdout; without a terminal, as plain lines with no trailing blanks."""
    console = _console()
    if console.is_terminal:
        console.print(table)
        return
    with console.capture() as captured:
        console.print(table)
    for line in captured.get().splitlines():
        print_line(line.rstrip())


def _terminal_columns() -> int | None:
    """The width of the terminal stdout is, or None when stdout is not one."""
    return shutil.get_terminal_size().columns if data_out().isatty() else None


def table_row(entry: ScanEntry, now: datetime.datetime) -> tuple[str, str, str, str, str]:
    """An ``ls`` row: key, size, serializer, created, expiration (or DAMAGED), printable."""
    meta = entry.metadata
    if meta is None:
        return printable(entry.key), "-", "DAMAGED", "-", "-"
    expiration = when(meta.expiration)
    if meta.is_expired(now):
        expiration += " (expired)"
    key, serializer = printable(meta.storage_key), printable(meta.serializer)
    return key, size_text(meta.size), serializer, when(meta.created), expiration


class StreamedTable:
    """A table printed as its rows arrive: column widths come from the first batch.

    So ``ls`` shows its first lines after one batch of headers, whatever the store
    holds; a later, longer value widens its own line only. On a terminal too narrow
    for every column, the last columns (expiration, then created, then serializer)
    are left out rather than wrapping each line: keys are never cut.
    """

    HEADER = ("key", "size", "serializer", "created", "expiration")

    def __init__(self, columns: int | None = None) -> None:
        self._widths: list[int] | None = None
        self._shown = len(self.HEADER)
        self._columns = columns if columns is not None else _terminal_columns()

    def add(self, rows: Sequence[tuple[str, ...]]) -> None:
        """Print ``rows`` (the header first, with the first batch)."""
        if self._widths is None:
            widths = [max(len(row[i]) for row in (self.HEADER, *rows)) for i in range(5)]
            self._widths = widths
            if self._columns is not None:
                while self._shown > 2 and sum(widths[: self._shown]) + 2 * (self._shown - 1) > (
                    self._columns - 1
                ):
                    self._shown -= 1
            self._print(self.HEADER)
        for row in rows:
            self._print(row)

    def _print(self, row: tuple[str, ...]) -> None:
        assert self._widths is not None
        key, size, *rest = row[: self._shown]
        cells = [key.ljust(self._widths[0]), size.rjust(self._widths[1])]
        cells += [cell.ljust(width) for cell, width in zip(rest, self._widths[2:], strict=False)]
        print("  ".join(cells).rstrip(), file=data_out())

    @property
    def empty(self) -> bool:
        """True until a row was printed."""
        return self._widths is None


# --- progress ---------------------------------------------------------------------------


class Progress:
    """A progress bar on stderr when it is a terminal; does nothing otherwise."""

    def __init__(
        self, description: str, total: int | None, *, enabled: bool, counting: bool = False
    ) -> None:
        self._bar: Any = None
        self._task: Any = None
        self._bytes = 0
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as Bar

        columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}")]
        if total is not None:
            columns += [BarColumn(), MofNCompleteColumn()]
        elif counting:
            columns += [TextColumn("{task.completed:.0f} record(s)")]
        columns += [TextColumn("{task.fields[moved]}"), TimeElapsedColumn()]
        self._bar = Bar(*columns, console=_console(stderr=True), transient=True)
        self._task = self._bar.add_task(description, total=total, moved="")

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self) -> None:
        """Count one more record done."""
        if self._bar is not None:
            self._bar.advance(self._task, 1)

    def record(self, done: RecordOutcome) -> None:
        """Count one record a bulk operation finished (its ``progress`` callback)."""
        if self._bar is not None:
            self._bytes += done.size
            self._bar.update(self._task, advance=1, moved=size_text(self._bytes))


def spinner(description: str, nbytes: int, *, enabled: bool) -> AbstractContextManager[Progress]:
    """A spinner for one large read or write, on a terminal only."""
    return Progress(description, None, enabled=enabled and nbytes >= LARGE)
