"""The ``resultstore`` command line: store, fetch, list, inspect, copy and verify records.

``resultstore demo`` runs a small pipeline on the local default storage and shows
results travelling between processes; the other commands work on any store URL
(``--storage``, else ``RESULTSTORE_STORAGE_URL``, else ``~/.resultstore/storage``).

Errors are one line on stderr (``error: ...``) and a distinct exit code, decided in
one place (:func:`exit_code_for`); ``--debug`` adds the traceback. Progress bars are
drawn on stderr only when it is a terminal. Only this module imports typer and
rich, and only the console script and ``python -m resultstore`` import it.
"""

from __future__ import annotations

import datetime
import enum
import json
import logging
import math
import os
import re
import sys
import traceback
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from resultstore._loops import run_sync
from resultstore.bulk import RecordOutcome, ScanEntry
from resultstore.errors import (
    ConfigurationError,
    ConflictError,
    IntegrityError,
    InvalidKeyError,
    ResultNotFoundError,
    ResultStoreError,
    SerializationError,
    SignatureError,
    StorageError,
)
from resultstore.keys import validate_key
from resultstore.records import ResultMetadata
from resultstore.registry import available_stores
from resultstore.result_store import ResultStore
from resultstore.serializers import available_serializers

if sys.version_info < (3, 11):  # pragma: no cover
    pass

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

__all__ = ["CliError", "ExitCode", "app", "exit_code_for", "main"]


_LARGE = 1024 * 1024
"""From this size on, get and put show a spinner (on a terminal)."""


class ExitCode(enum.IntEnum):
    """What the process exit status means; documented in ``resultstore --help``."""

    OK = 0
    UNEXPECTED = 1
    NOT_FOUND = 2
    BAD_INPUT = 3
    STORAGE = 4
    INTEGRITY = 5
    CONFLICT = 6
    INTERRUPTED = 130


EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 1 unexpected error, 2 not found, 3 bad input or usage, "
    "4 storage unreachable or failing, 5 integrity (damaged, unsigned or forged record), "
    "6 conflict (a create-only or compare-and-swap write found another record), "
    "130 interrupted."
)


class CliError(Exception):
    """An error the CLI reports as ``error: <message>`` and exits with ``code``."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


def _click_exception(name: str) -> type[Exception]:
    """A click exception class as typer raises it (recent typer vendors its own click)."""
    for cls in typer.BadParameter.__mro__:
        if cls.__name__ == name and issubclass(cls, Exception):
            return cls
    raise ImportError(f"typer's click has no {name}")  # pragma: no cover


_CLICK_EXCEPTION = _click_exception("ClickException")
_USAGE_ERROR = _click_exception("UsageError")

# The one mapping from exceptions to exit codes; the first matching class wins.
_EXIT_CODES: tuple[tuple[type[BaseException], ExitCode], ...] = (
    (ResultNotFoundError, ExitCode.NOT_FOUND),
    (ConflictError, ExitCode.CONFLICT),  # ResultExistsError, VersionConflictError
    (IntegrityError, ExitCode.INTEGRITY),  # includes SignatureError
    (StorageError, ExitCode.STORAGE),  # includes StorageUnavailableError
    (InvalidKeyError, ExitCode.BAD_INPUT),
    (ConfigurationError, ExitCode.BAD_INPUT),  # unknown scheme/serializer, bad options
    (SerializationError, ExitCode.BAD_INPUT),
    (_CLICK_EXCEPTION, ExitCode.BAD_INPUT),  # usage errors, bad parameters
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
    return re.sub(r"\s*\n\s*", " ", text.strip())


def error_message(exc: BaseException) -> str:
    """The one-line message for ``exc``, without the ``error:`` prefix."""
    if isinstance(exc, _CLICK_EXCEPTION):
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


def _print_error(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


# --- global options -----------------------------------------------------------------


@dataclass
class CliOptions:
    """The global options, shared by every command through the click context."""

    storage: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)
    debug: bool = False


def parse_storage_options(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as a dict; a value is JSON when it parses, else a string."""
    options: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise CliError(
                f"bad --storage-option {item!r}: expected KEY=VALUE, e.g. part_size=8388608",
                ExitCode.BAD_INPUT,
            )
        try:
            options[name] = json.loads(raw)
        except ValueError:
            options[name] = raw
    return options


def _options(ctx: typer.Context) -> CliOptions:
    options = ctx.find_object(CliOptions)
    return options if options is not None else CliOptions()


def _open_store(ctx: typer.Context, serializer: str | None = None) -> ResultStore:
    options = _options(ctx)
    return ResultStore(
        options.storage, serializer=serializer, storage_options=options.storage_options
    )


app = typer.Typer(
    name="resultstore",
    help=(
        "Persist results of work to pluggable storage and fetch them back.\n\n"
        "Start with 'resultstore demo'. Storage is --storage URL, else "
        "RESULTSTORE_STORAGE_URL, else file://~/.resultstore/storage."
    ),
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _global_options(
    ctx: typer.Context,
    storage: Annotated[
        str | None,
        typer.Option(
            "--storage",
            metavar="URL",
            help="Store URL (file:///path, s3://bucket/prefix, ...). "
            "Default: RESULTSTORE_STORAGE_URL, else file://~/.resultstore/storage.",
        ),
    ] = None,
    storage_option: Annotated[
        list[str] | None,
        typer.Option(
            "--storage-option",
            metavar="KEY=VALUE",
            help="A store option (repeatable); VALUE is parsed as JSON when it can be.",
        ),
    ] = None,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks and debug logs on errors.")
    ] = False,
) -> None:
    """Record the global options for the command that follows."""
    options = ctx.ensure_object(CliOptions)
    options.debug = debug
    options.storage = storage
    options.storage_options = parse_storage_options(storage_option or [])
    if debug:
        logging.basicConfig(format="%(name)s: %(message)s")
        for name in ("resultstore", "states"):
            logging.getLogger(name).setLevel(logging.DEBUG)


# --- output helpers -------------------------------------------------------------------


def _console(*, stderr: bool = False) -> Console:
    """A rich console; when not a terminal, wide enough never to cut a key."""
    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=max(console.width, 10_000))
    return console


def _print_table(table: Table) -> None:
    """Print a table on stdout; without a terminal, as plain lines with no trailing blanks."""
    console = _console()
    if console.is_terminal:
        console.print(table)
        return
    with console.capture() as captured:
        console.print(table)
    for line in captured.get().splitlines():
        print(line.rstrip())


def _progress_enabled() -> bool:
    return sys.stderr.isatty()


class _Progress:
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
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}")]
        if total is not None:
            columns += [BarColumn(), MofNCompleteColumn()]
        elif counting:
            columns += [TextColumn("{task.completed:.0f} record(s)")]
        columns += [TextColumn("{task.fields[moved]}"), TimeElapsedColumn()]
        self._bar = Progress(*columns, console=_console(stderr=True), transient=True)
        self._task = self._bar.add_task(description, total=total, moved="")

    def __enter__(self) -> _Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def advance(self, records: int = 1) -> None:
        """Count finished records."""
        if self._bar is not None:
            self._bar.advance(self._task, records)

    def record(self, done: RecordOutcome) -> None:
        """Count one record a bulk operation finished (its ``progress`` callback)."""
        self.add_bytes(done.size)
        self.advance()

    def add_bytes(self, nbytes: int) -> None:
        """Count bytes moved so far (shown next to the bar)."""
        if self._bar is not None:
            self._bytes += nbytes
            self._bar.update(self._task, moved=_size(self._bytes))


def _spinner(description: str, nbytes: int) -> AbstractContextManager[_Progress]:
    """A spinner for one large read or write, on a terminal only."""
    return _Progress(description, None, enabled=_progress_enabled() and nbytes >= _LARGE)


def _size(nbytes: int) -> str:
    from rich.filesize import decimal

    return decimal(nbytes)


def _bytes_text(nbytes: int) -> str:
    """``20 bytes``, or ``3018 bytes (3.0 kB)`` when a rounder figure helps."""
    human = _size(nbytes)
    return f"{nbytes} bytes" if human.endswith(" bytes") else f"{nbytes} bytes ({human})"


def _when(value: datetime.datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _metadata_dict(metadata: ResultMetadata) -> dict[str, Any]:
    """The metadata fields shown by ``inspect`` and ``ls --json``, in a stable order."""
    data = metadata.to_dict()
    fields = (
        "serializer",
        "size",
        "checksum",
        "created",
        "expiration",
        "storage_url",
        "storage_key",
        "signed",
    )
    return {name: data[name] for name in fields}


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _to_json(value: object) -> str | None:
    """``value`` as JSON text (indented unless a scalar), or None when it is not JSON."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return None
    try:
        return json.dumps(value, indent=None if _is_scalar(value) else 2, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return None


def _summary(value: object) -> str:
    """A one-line description of a value that is not shown as JSON."""
    name = type(value).__name__
    if isinstance(value, (bytes, bytearray)):
        return f"<{name}: {len(value)} bytes>"
    if isinstance(value, memoryview):
        return f"<{name}: {value.nbytes} bytes>"
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return f"<{name}: {nbytes} bytes>"
    return f"<{name} object>"


# --- streaming output -------------------------------------------------------------------


def _table_row(entry: ScanEntry, now: datetime.datetime) -> tuple[str, str, str, str, str]:
    meta = entry.metadata
    if meta is None:
        return entry.key, "-", "DAMAGED", "-", "-"
    expiration = _when(meta.expiration)
    if meta.is_expired(now):
        expiration += " (expired)"
    return meta.storage_key, _size(meta.size), meta.serializer, _when(meta.created), expiration


class _StreamedTable:
    """A table printed as its rows arrive: column widths come from the first batch.

    So ``ls`` shows its first lines after one batch of headers, whatever the
    store holds; a later, longer value widens its own line only.
    """

    HEADER = ("key", "size", "serializer", "created", "expiration")

    def __init__(self) -> None:
        self._widths: list[int] | None = None

    def add(self, rows: Sequence[tuple[str, ...]]) -> None:
        if self._widths is None:
            self._widths = [max(len(row[i]) for row in (self.HEADER, *rows)) for i in range(5)]
            self._print(self.HEADER)
        for row in rows:
            self._print(row)

    def _print(self, row: tuple[str, ...]) -> None:
        assert self._widths is not None
        key, size, *rest = row
        cells = [key.ljust(self._widths[0]), size.rjust(self._widths[1])]
        cells += [cell.ljust(width) for cell, width in zip(rest, self._widths[2:], strict=True)]
        print("  ".join(cells).rstrip())

    @property
    def empty(self) -> bool:
        return self._widths is None


# --- commands -------------------------------------------------------------------------


@app.command()
def put(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="Key to store the value under, e.g. runs/7/model.")],
    json_text: Annotated[
        str | None, typer.Option("--json", metavar="TEXT", help="The value, as JSON text.")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", metavar="PATH", help="Store this file's bytes as a bytes value."),
    ] = None,
    serializer: Annotated[
        str | None,
        typer.Option("--serializer", metavar="NAME", help="pickle, json, pickle+zstd, ..."),
    ] = None,
    expires_in: Annotated[
        float | None,
        typer.Option("--expires-in", metavar="SECONDS", help="Expire the record after this."),
    ] = None,
    if_absent: Annotated[
        bool,
        typer.Option(
            "--if-absent", help="Create only: fail (exit 6) if a record exists under KEY."
        ),
    ] = False,
) -> None:
    """Store a JSON value or a file's bytes under KEY."""
    if (json_text is None) == (file is None):
        raise CliError("put needs exactly one of --json TEXT or --file PATH", ExitCode.BAD_INPUT)
    value: Any
    if json_text is not None:
        try:
            value = json.loads(json_text)
        except ValueError as exc:
            raise CliError(
                f"--json for key {key!r} is not valid JSON: {exc}", ExitCode.BAD_INPUT
            ) from None
        nbytes = len(json_text)
    else:
        assert file is not None
        try:
            value = file.read_bytes()
        except OSError as exc:
            raise CliError(
                f"cannot read --file {str(file)!r}: {exc.strerror or exc}", ExitCode.BAD_INPUT
            ) from None
        nbytes = len(value)
    expiration = None
    if expires_in is not None:
        if not math.isfinite(expires_in) or expires_in < 0:
            raise CliError(
                f"--expires-in must be a number of seconds >= 0, got {expires_in}",
                ExitCode.BAD_INPUT,
            )
        now = datetime.datetime.now(datetime.timezone.utc)
        expiration = now + datetime.timedelta(seconds=expires_in)
    with _open_store(ctx, serializer) as store, _spinner(f"writing {key}", nbytes):
        try:
            store.write(value, key=key, expiration=expiration, if_absent=if_absent)
        except SerializationError as exc:  # its message names the type, not the key
            raise CliError(
                f"cannot store key {key!r} in {store.storage_url}: {exc}", ExitCode.BAD_INPUT
            ) from exc
    expires = f", expires {_when(expiration)}" if expiration else ""
    print(f"stored {key} in {store.storage_url} ({store.serializer.name}{expires})")


def _output_bytes(key: str, value: object) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    text = _to_json(value)
    if text is None:
        raise CliError(
            f"the value under key {key!r} is {_summary(value)}: --output writes only bytes, "
            "str or JSON-serializable values (store bytes or str to export other data)",
            ExitCode.BAD_INPUT,
        )
    return (text + "\n").encode("utf-8")


@app.command()
def get(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="Key of the record to read.")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="PATH",
            help="Write the value to PATH: bytes raw, str as UTF-8, others as JSON.",
        ),
    ] = None,
) -> None:
    """Read KEY and print its value as JSON (or a one-line summary), or save it."""
    with _open_store(ctx) as store:
        nbytes = store.read_metadata(key).size if _progress_enabled() else 0
        with _spinner(f"reading {key} ({_size(nbytes)})", nbytes):
            value = store.read(key, retry=False).result
    if output is None:
        text = _to_json(value)
        print(text if text is not None else _summary(value))
        return
    data = _output_bytes(key, value)
    try:
        output.write_bytes(data)
    except OSError as exc:
        raise CliError(
            f"cannot write the value of key {key!r} to {str(output)!r}: {exc.strerror or exc}",
            ExitCode.BAD_INPUT,
        ) from None
    print(f"wrote {len(data)} bytes to {output}")


@app.command("ls")
def list_records(
    ctx: typer.Context,
    prefix: Annotated[str, typer.Argument(help="Only keys starting with this.")] = "",
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per line instead of a table.")
    ] = False,
    keys_only: Annotated[
        bool, typer.Option("--keys-only", help="Print only the keys (no header is read).")
    ] = False,
    limit: Annotated[
        int | None, typer.Option("--limit", metavar="N", min=1, help="Stop after N records.")
    ] = None,
) -> None:
    """List records: key, size, serializer, created, expiration.

    Records are printed as they are read, in the store's listing order.
    """
    with _open_store(ctx) as store:
        shown, damaged = run_sync(_list(store, prefix, as_json, keys_only, limit))
    if not shown and not as_json:
        where = f" under {prefix!r}" if prefix else ""
        print(f"no records{where} in {store.storage_url}")
    if damaged:
        sys.stderr.write(
            f"warning: {damaged} damaged record(s); run 'resultstore check' for details\n"
        )


async def _list(
    store: ResultStore, prefix: str, as_json: bool, keys_only: bool, limit: int | None
) -> tuple[int, int]:
    """Print the records under ``prefix`` as they come; returns (shown, damaged)."""
    from resultstore.bulk import ascan_batches

    left = math.inf if limit is None else limit
    shown = damaged = 0
    if keys_only:
        async for key in store.akeys(prefix):
            if shown >= left:
                break
            print(key)
            shown += 1
        return shown, 0
    table = _StreamedTable()
    now = datetime.datetime.now(datetime.timezone.utc)
    async for batch in ascan_batches(store, prefix):
        entries = batch[: int(min(left - shown, len(batch)))]
        shown += len(entries)
        damaged += sum(entry.damaged for entry in entries)
        if as_json:
            for entry in entries:
                if entry.metadata is not None:
                    print(json.dumps(_metadata_dict(entry.metadata)))
                else:
                    print(json.dumps({"storage_key": entry.key, "error": str(entry.error)}))
        else:
            table.add([_table_row(entry, now) for entry in entries])
        if shown >= left:
            break
    return shown, damaged


@app.command()
def inspect(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="Key of the record to describe.")],
) -> None:
    """Print a record's metadata as JSON, without loading its value.

    With a signing key configured the record is verified first (its signature,
    and so its payload), and "signature" says "verified"; without one a signature
    is reported as "not verified", never just as present.
    """
    with _open_store(ctx) as store:
        metadata = store.verify(key) if store.signed else store.read_metadata(key)
    shown = _metadata_dict(metadata)
    if store.signed:
        shown["signature"] = "verified"
    elif metadata.signed:
        shown["signature"] = "not verified (no signing key configured: set RESULTSTORE_SIGNING_KEY)"
    else:
        shown["signature"] = "none"
    print(json.dumps(shown, indent=2))


@app.command()
def rm(
    ctx: typer.Context,
    keys: Annotated[list[str], typer.Argument(help="Keys of the records to delete.")],
) -> None:
    """Delete records; exits 'not found' if any key had no record (the others are deleted).

    Where a store's delete does not say whether there was a record (S3), the key is
    looked up first, so a missing one is still reported.
    """
    for key in keys:
        validate_key(key)
    missing: list[str] = []
    with _open_store(ctx) as store:
        for key in keys:
            existed = store.exists(key)
            deleted = store.delete(key)
            if deleted is False or (deleted is None and not existed):
                missing.append(key)
            else:
                print(f"deleted {key}")
    if missing:
        names = ", ".join(repr(key) for key in missing)
        plural = "keys" if len(missing) > 1 else "key"
        raise CliError(
            f"no result under {plural} {names} in {store.storage_url}", ExitCode.NOT_FOUND
        )


@app.command()
def gc(
    ctx: typer.Context,
    prefix: Annotated[str, typer.Argument(help="Only keys starting with this.")] = "",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only report what would be deleted.")
    ] = False,
    full: Annotated[
        bool,
        typer.Option(
            "--full",
            help="Read every record's header, not only those the expiry index names "
            "(finds records written before the index existed, or by other tools).",
        ),
    ] = False,
) -> None:
    """Delete expired records, and leftovers of writes interrupted over an hour ago;
    report how many bytes were freed.

    The expiry index says which records may be due, so gc reads only their headers;
    each record is deleted only once its own header says it has expired.
    """

    def show(done: RecordOutcome) -> None:
        print(f"{'would delete' if dry_run else 'deleted'} {done.key} ({_size(done.size)})")

    with _open_store(ctx) as store:
        summary = store.delete_expired(prefix, dry_run=dry_run, full=full, progress=show)
        leftovers, leftover_bytes = store.clean_abandoned(dry_run=dry_run)
    verb = "would free" if dry_run else "freed"
    print(
        f"{summary.expired} expired record(s) in {store.storage_url}: "
        f"{verb} {_bytes_text(summary.bytes_freed)}"
    )
    if leftovers:
        print(
            f"{leftovers} leftover(s) of interrupted writes older than an hour: "
            f"{verb} {_bytes_text(leftover_bytes)}"
        )
    if summary.damaged:
        sys.stderr.write(
            f"warning: {len(summary.damaged)} damaged record(s) were kept; run "
            "'resultstore check' for details\n"
        )


@app.command()
def check(
    ctx: typer.Context,
    prefix: Annotated[str, typer.Argument(help="Only keys starting with this.")] = "",
    require_signed: Annotated[
        bool,
        typer.Option(
            "--require-signed",
            help="Fail every record that is unsigned or whose signature cannot be verified.",
        ),
    ] = False,
) -> None:
    """Read and verify every record (checksums, signatures); exit 5 if any fails.

    Signatures are verified only with a signing key (RESULTSTORE_SIGNING_KEY);
    without one, check says so, and --require-signed fails every record.
    """
    with (
        _open_store(ctx) as store,
        _Progress("checking", None, enabled=_progress_enabled(), counting=True) as progress,
    ):
        summary = store.verify_all(prefix, require_signed=require_signed, progress=progress.record)
    for key, exc in sorted(summary.failed.items()):
        print(f"{'REFUSED' if isinstance(exc, SignatureError) else 'DAMAGED'}  {key}: {exc}")
    failed = len(summary.failed)
    print(
        f"checked {summary.checked} record(s) in {store.storage_url}: "
        f"{summary.ok} ok, {failed} failed"
    )
    if not store.signed:
        print(
            "signatures were not verified: no signing key is configured "
            "(set RESULTSTORE_SIGNING_KEY to verify them)"
        )
    if failed:
        names = ", ".join(repr(key) for key in sorted(summary.failed))
        raise CliError(
            f"{failed} record(s) failed verification in {store.storage_url}: {names}",
            ExitCode.INTEGRITY,
        )


@app.command()
def copy(
    ctx: typer.Context,
    src_url: Annotated[str, typer.Argument(metavar="SRC_URL", help="Store to copy from.")],
    dst_url: Annotated[str, typer.Argument(metavar="DST_URL", help="Store to copy to.")],
    prefix: Annotated[
        str, typer.Option("--prefix", metavar="P", help="Only keys starting with this.")
    ] = "",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only report what would be copied.")
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Copy records the destination already holds unchanged too."
        ),
    ] = False,
) -> None:
    """Copy records byte-exact between stores (e.g. file to S3): checksums and
    signatures stay valid. Each record is verified before and after the copy;
    records the destination already holds with the same checksum are skipped.
    --storage-option applies to both stores."""
    options = _options(ctx).storage_options
    with (
        ResultStore(src_url, storage_options=options) as src,
        ResultStore(dst_url, storage_options=options) as dst,
        _Progress("copying", None, enabled=_progress_enabled(), counting=True) as progress,
    ):
        summary = src.copy_all(
            dst, prefix, skip_existing=not overwrite, dry_run=dry_run, progress=progress.record
        )
    for key, exc in sorted(summary.damaged.items()):
        print(f"DAMAGED  {key}: {exc} (not copied)")
    verb = "would copy" if dry_run else "copied"
    skipped = f"; skipped {summary.skipped} unchanged" if summary.skipped else ""
    print(
        f"{verb} {summary.copied} record(s), {_bytes_text(summary.bytes_copied)}, "
        f"from {src.storage_url} to {dst.storage_url}{skipped}"
    )
    if summary.damaged:
        names = ", ".join(repr(key) for key in sorted(summary.damaged))
        raise CliError(
            f"{len(summary.damaged)} damaged record(s) in {src.storage_url} not copied: {names}",
            ExitCode.INTEGRITY,
        )


@app.command("import-prefect")
def import_prefect_command(
    ctx: typer.Context,
    src: Annotated[
        str,
        typer.Argument(
            metavar="SRC",
            help="Prefect's result storage: a folder (path or file:// URL) or s3://bucket/prefix.",
        ),
    ],
    dest: Annotated[str, typer.Argument(metavar="DEST", help="Store URL to write records to.")],
    serializer: Annotated[
        str | None,
        typer.Option("--serializer", metavar="NAME", help="Serializer to write with (pickle)."),
    ] = None,
    allow_pickle: Annotated[
        bool | None,
        typer.Option(
            "--allow-pickle/--no-pickle",
            help="Decode Prefect's pickle records (default: when DEST's serializer reads pickle).",
        ),
    ] = None,
) -> None:
    """Import Prefect result records (Prefect 3 ResultRecords, Prefect 2 blobs) as
    native records under the same keys, keeping their expirations. Other files are
    skipped; a record that does not decode is reported and the import goes on
    (exit 5 if any failed). --storage-option applies to both SRC and DEST."""
    from resultstore.prefect import import_prefect

    options = _options(ctx).storage_options
    with (
        ResultStore(dest, serializer=serializer, storage_options=options) as dst,
        _Progress("importing", None, enabled=_progress_enabled(), counting=True) as progress,
    ):
        summary = import_prefect(
            src,
            dst,
            allow_pickle=allow_pickle,
            storage_options=options,
            progress=lambda outcome: progress.advance(),
        )
    for key in summary.skipped:
        print(f"SKIPPED  {key}: not a Prefect result record")
    for key, reason in sorted(summary.failed.items()):
        print(f"FAILED   {key}: {reason}")
    print(
        f"imported {summary.imported} record(s) from {summary.source_url} to "
        f"{dst.storage_url}; skipped {len(summary.skipped)} not Prefect; "
        f"failed {len(summary.failed)}"
    )
    if summary.failed:
        raise CliError(
            f"{len(summary.failed)} Prefect record(s) in {summary.source_url} not imported; "
            "see the FAILED lines",
            ExitCode.INTEGRITY,
        )


@app.command()
def stores() -> None:
    """List the installed store URL schemes and serializers, with their distributions."""
    from rich.table import Table

    table = Table("kind", "name", "provided by", box=None, pad_edge=False)
    for scheme, dist in sorted(available_stores().items()):
        table.add_row("store", f"{scheme}://", dist)
    for name, dist in sorted(available_serializers().items()):
        table.add_row("serializer", name, dist)
    _print_table(table)
    print("Other schemes fsspec knows are served by the generic fsspec store.")


@app.command()
def demo(
    ctx: typer.Context,
    storage: Annotated[
        str | None,
        typer.Option("--storage", metavar="URL", help="Store URL (default: the local default)."),
    ] = None,
) -> None:
    """Run a small pipeline whose results are fetched by other processes (a few seconds)."""
    from resultstore.demo import run_demo

    options = _options(ctx)
    run_demo(storage or options.storage, storage_options=options.storage_options)


# --- entry point ------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    options = CliOptions()
    command = typer.main.get_command(app)
    try:
        result = command.main(
            args=list(argv) if argv is not None else None,
            prog_name="resultstore",
            standalone_mode=False,
            obj=options,
        )
    except typer.Abort:
        _print_error("aborted")
        return ExitCode.INTERRUPTED
    except KeyboardInterrupt:
        _print_error("interrupted")
        return ExitCode.INTERRUPTED
    except BrokenPipeError:  # the reader went away (e.g. `| head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.UNEXPECTED
    except Exception as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # no command given: show the help
            text = str(cast(Any, exc).format_message())  # empty when rich printed it already
            if text.strip():
                print(text)
            return ExitCode.OK
        if options.debug:
            traceback.print_exception(type(exc), exc, exc.__traceback__)
        _print_error(error_message(exc))
        return exit_code_for(exc)
    return result if isinstance(result, int) else ExitCode.OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
