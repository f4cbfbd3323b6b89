"""The commands on single records: ``put``, ``get``, ``inspect`` and ``rm``."""

# No `from __future__ import annotations`: typer reads the commands' annotations, and
# evaluating them from strings (a compile() each) took longer than a `get` does.

import enum
import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from resultstore.cli._context import open_store, options, parse_duration
from resultstore.cli._errors import CliError, ExitCode, OutputError
from resultstore.cli._output import (
    LARGE,
    Output,
    data_out,
    json_line,
    metadata_dict,
    print_json,
    printable,
    size_text,
    spinner,
    when,
    write_data,
)
from resultstore.errors import SerializationError
from resultstore.keys import validate_key, validate_prefix

__all__ = ["get", "inspect", "put", "rm"]

STDIO = "-"
"""The file name that means stdin (``put --file -``) or stdout (``get -o -``)."""


def _stdin(option: str, key: str) -> Any:
    """``sys.stdin``, or a one-line CliError when the process was started with it closed."""
    if sys.stdin is None:
        raise CliError(
            f"{option} - for key {key!r} reads stdin, but stdin is closed: pipe the value "
            "in or give a file",
            ExitCode.BAD_INPUT,
        )
    return sys.stdin


def _read_stdin_bytes(key: str) -> bytes:
    return bytes(_stdin("--file", key).buffer.read())


def _not_json(constant: str) -> Any:
    """json.loads' hook for NaN and Infinity: JSON has no such numbers."""
    raise ValueError(f"{constant} is not a JSON number")


def _finite(number: str) -> float:
    """json.loads' hook for floats: ``1e999`` would be stored as inf, which get refuses."""
    value = float(number)
    if not math.isfinite(value):
        raise ValueError(f"{number[:40]} is beyond the range of a float (it would be {value})")
    return value


def put(
    ctx: typer.Context,
    key: Annotated[
        str,
        typer.Argument(metavar="KEY", help="Key to store the value under, e.g. runs/7/model."),
    ],
    json_text: Annotated[
        str | None,
        typer.Option("--json", metavar="TEXT", help="The value, as JSON text ('-': read stdin)."),
    ] = None,
    file: Annotated[
        str | None,
        typer.Option(
            "--file",
            metavar="PATH",
            help="Store this file's bytes as a bytes value ('-': read stdin).",
        ),
    ] = None,
    serializer: Annotated[
        str | None,
        typer.Option("--serializer", metavar="NAME", help="pickle, json, pickle+zstd, ..."),
    ] = None,
    expires_in: Annotated[
        str | None,
        typer.Option(
            "--expires-in",
            metavar="DURATION",
            help="Expire the record after this long: 90s, 30m, 12h, 7d (a bare number is seconds).",
        ),
    ] = None,
    if_absent: Annotated[
        bool,
        typer.Option(
            "--if-absent", help="Create only: fail (exit 6) if a record exists under KEY."
        ),
    ] = False,
) -> None:
    """Store a JSON value or a file's bytes under KEY.

    With the global --json (resultstore --json put ...) the outcome is printed as JSON.
    """
    out = Output(options(ctx))
    if (json_text is None) == (file is None):
        raise CliError("put needs exactly one of --json TEXT or --file PATH", ExitCode.BAD_INPUT)
    value: Any
    if json_text is not None:
        text = _stdin("--json", key).read() if json_text == STDIO else json_text
        where = "stdin (--json -)" if json_text == STDIO else "--json"
        try:
            value = json.loads(text, parse_constant=_not_json, parse_float=_finite)
        except ValueError as exc:
            raise CliError(
                f"{where} for key {key!r} is not valid JSON: {exc}", ExitCode.BAD_INPUT
            ) from None
        nbytes = len(text)
    else:
        assert file is not None
        try:
            value = _read_stdin_bytes(key) if file == STDIO else Path(file).read_bytes()
        except OSError as exc:
            raise CliError(
                f"cannot read --file {file!r}: {exc.strerror or exc}", ExitCode.BAD_INPUT
            ) from None
        nbytes = len(value)
    expiration = None if expires_in is None else parse_duration(expires_in)
    with (
        open_store(ctx, serializer) as store,
        spinner(f"writing {key}", nbytes, enabled=out.progress),
    ):
        try:
            store.write(value, key=key, expiration=expiration, if_absent=if_absent)
        except SerializationError as exc:  # its message names the type, not the key
            raise CliError(
                f"cannot store key {key!r} in {store.storage_url}: {exc}", ExitCode.BAD_INPUT
            ) from exc
        expires_at = store.read_metadata(key).expiration if expiration is not None else None
    out.emit(
        {
            "key": key,
            "url": store.storage_url,
            "serializer": store.serializer.name,
            "expiration": None if expires_at is None else expires_at.isoformat(),
        }
    )
    expires = f", expires {when(expires_at)}" if expires_at else ""
    out.info(f"stored {key} in {store.storage_url} ({store.serializer.name}{expires})")


class Format(str, enum.Enum):
    """How ``get`` writes a value."""

    AUTO = "auto"
    """bytes raw, str as text, other JSON values as JSON; anything else is an error."""
    JSON = "json"
    """JSON only (a str as a JSON string); anything else is an error."""
    REPR = "repr"
    """Python's repr() of any value: for people, not for parsing."""


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _to_json(value: object) -> str | None:
    """``value`` as JSON text (indented unless a scalar), or None when it is not JSON."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return None
    try:
        return json_line(value, None if _is_scalar(value) else 2)
    except (TypeError, ValueError, RecursionError):  # NaN and Infinity too: not JSON
        return None


def _kind(value: object) -> str:
    """``of type set``, ``of type ndarray (800 bytes)``: what a value is, for an error."""
    nbytes = getattr(value, "nbytes", None)
    size = f" ({nbytes} bytes)" if isinstance(nbytes, int) else ""
    if isinstance(value, float):  # nan or inf: JSON has no such number
        size = f" ({value!r})"
    return f"of type {type(value).__name__}{size}"


def encode_value(key: str, value: object, fmt: Format, *, terminal: bool = False) -> bytes:
    """The bytes ``get`` writes for ``value`` in ``fmt``, or a one-line CliError.

    For a ``terminal`` the text has its control characters shown escaped, newlines and
    tabs excepted (:func:`~resultstore.cli._output.printable`): a record's text cannot
    move the cursor, write the clipboard or reverse what follows; and it ends with a
    newline, so that the prompt starts on its own line.
    """
    text: str | None
    if fmt is Format.REPR:
        text = repr(value) + "\n"
    elif fmt is Format.AUTO and isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    elif fmt is Format.AUTO and isinstance(value, str):
        text = value
    elif (text := _to_json(value)) is not None:
        text += "\n"
    else:
        allowed = "JSON" if fmt is Format.JSON else "bytes, str or JSON"
        raise CliError(
            f"the value under key {key!r} is {_kind(value)}, not {allowed}: nothing written; "
            "use --format repr to print its repr()",
            ExitCode.BAD_INPUT,
        )
    if terminal:
        text = printable(text, keep="\n\t")
        text += "" if text.endswith("\n") else "\n"
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate: no UTF-8 text holds it
        raise CliError(
            f"the value under key {key!r} holds U+{ord(exc.object[exc.start]):04X} at index "
            f"{exc.start} of its text, a lone surrogate UTF-8 cannot encode: nothing written; "
            "use --format repr to print its repr()",
            ExitCode.BAD_INPUT,
        ) from None


def get(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(metavar="KEY", help="Key of the record to read.")],
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            metavar="PATH",
            help="Write the value to PATH instead of stdout ('-': stdout, exactly as stored "
            "even on a terminal: bytes raw, text unescaped).",
        ),
    ] = None,
    fmt: Annotated[
        Format,
        typer.Option(
            "--format",
            metavar="FORMAT",
            help="auto: bytes raw, str as text, others as JSON. json: JSON only. "
            "repr: Python's repr() of any value.",
            case_sensitive=False,
        ),
    ] = Format.AUTO,
) -> None:
    """Read KEY and write its value to stdout (or to a file).

    bytes are written raw and str as text; other values as JSON when they can be,
    else nothing is written and get fails (exit 3) unless --format repr. On a terminal,
    control characters in text are shown escaped (\\x1b) and bytes are not written
    (exit 3): use -o PATH or a pipe, or -o - to write them as they are.
    """
    given = options(ctx)
    out = Output(given)
    if given.json and fmt is Format.AUTO:
        fmt = Format.JSON
    with open_store(ctx) as store:
        nbytes = store.read_metadata(key).size if out.progress else 0
        label = f"reading {key} ({size_text(nbytes)})" if nbytes >= LARGE else ""
        with spinner(label, nbytes, enabled=out.progress):
            value = store.read(key, retry=False).result
    terminal = output is None and data_out().isatty()
    data = encode_value(key, value, fmt, terminal=terminal)
    if output is None or output == STDIO:
        binary = isinstance(value, (bytes, bytearray, memoryview)) and fmt is Format.AUTO
        if binary and terminal:
            raise CliError(
                f"the value under key {key!r} is {len(data)} bytes of binary data, and binary "
                "output can mess up your terminal: not written; use -o PATH or a pipe "
                "(| xxd), or -o - to write it to the terminal anyway",
                ExitCode.BAD_INPUT,
            )
        write_data(data)
        return
    try:
        Path(output).write_bytes(data)
    except OSError as exc:
        raise OutputError(
            f"cannot write the value of key {key!r} to -o {output!r}: {exc.strerror or exc}",
            stdout=False,
        ) from None
    out.emit({"key": key, "path": output, "size": len(data)})
    out.info(f"wrote {len(data)} bytes to {output}")


def inspect(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(metavar="KEY", help="Key of the record to describe.")],
) -> None:
    """Print a record's metadata as JSON, without loading its value.

    With a signing key configured the record is verified first (its signature, and so
    its payload), and "signature" says "verified"; without one a signature is reported
    as "not verified", never just as present.
    """
    from resultstore.prefect import PrefectRecordError

    with open_store(ctx) as store:
        try:
            metadata = store.verify(key) if store.signed else store.read_metadata(key)
        except PrefectRecordError:  # read in place, nothing to verify: described below
            metadata = store.read_metadata(key)
    shown = metadata_dict(metadata)
    if metadata.serializer.startswith("prefect:"):
        shown["created"] = shown["checksum"] = None  # Prefect records hold neither
        shown["format"] = (
            "a Prefect result record, read in place by 'get' (no checksum; "
            "'resultstore import-prefect' makes it a native record)"
        )
        shown["signature"] = "none" + (
            " (this store has a signing key, so it refuses to read it)" if store.signed else ""
        )
    elif store.signed:
        shown["signature"] = "verified"
    elif metadata.signed:
        shown["signature"] = "not verified (no signing key configured: set RESULTSTORE_SIGNING_KEY)"
    else:
        shown["signature"] = "none"
    print_json(shown, indent=None if options(ctx).json else 2)


def rm(
    ctx: typer.Context,
    keys: Annotated[
        list[str],
        typer.Argument(metavar="KEY", help="Keys of the records (with -r: key prefixes)."),
    ],
    recursive: Annotated[
        bool,
        typer.Option(
            "--recursive", "-r", help="Delete every record whose key starts with each KEY."
        ),
    ] = False,
    yes: Annotated[
        bool,
        typer.Option("--yes", "-y", help="Do not ask for confirmation (for scripts)."),
    ] = False,
) -> None:
    """Delete records (with -r, every record under a prefix).

    Exits 2 (not found) if a key or prefix had no record; the other keys are still
    deleted. With --recursive, each KEY is a prefix: the records
    under it are counted and, on a terminal, you confirm before they are deleted; where
    stdin is not a terminal, --yes is required.
    """
    if recursive:
        _rm_recursive(ctx, keys, yes)
        return
    out = Output(options(ctx))
    for key in keys:
        validate_key(key)
    missing: list[str] = []
    with open_store(ctx) as store:
        for key in keys:
            existed = store.exists(key)
            deleted = store.delete(key)
            if deleted is False or (deleted is None and not existed):
                missing.append(key)
                out.emit({"key": key, "outcome": "missing", "size": 0})
            else:
                out.emit({"key": key, "outcome": "deleted", "size": 0})
                out.info(f"deleted {key}")
    out.summary(url=store.storage_url, deleted=len(keys) - len(missing), missing=len(missing))
    if missing:
        names = ", ".join(repr(key) for key in missing)
        plural = "keys" if len(missing) > 1 else "key"
        raise CliError(
            f"no result under {plural} {names} in {store.storage_url}", ExitCode.NOT_FOUND
        )


def _rm_recursive(ctx: typer.Context, prefixes: list[str], yes: bool) -> None:
    out = Output(options(ctx))
    for prefix in prefixes:  # bad input before the store is touched
        validate_prefix(prefix)
    with open_store(ctx) as store:
        store.require_container()
        found = {prefix: store.keys(prefix) for prefix in prefixes}
        doomed = sorted({key for keys in found.values() for key in keys})
        empty = [prefix for prefix, keys in found.items() if not keys]
        where = ", ".join(repr(prefix) for prefix in prefixes)
        if doomed and not yes:
            question = f"delete {len(doomed)} record(s) under {where} in {store.storage_url}?"
            if sys.stdin is None or not sys.stdin.isatty():
                raise CliError(
                    f"rm --recursive would {question[:-1]}: pass --yes to confirm "
                    "(stdin is not a terminal, so it cannot ask)",
                    ExitCode.BAD_INPUT,
                )
            if not typer.confirm(question, default=False, err=True):
                out.info("nothing deleted")
                return
        store.delete_many(doomed)
    for key in doomed:
        out.emit({"key": key, "outcome": "deleted", "size": 0})
    out.summary(url=store.storage_url, deleted=len(doomed), missing=len(empty))
    out.info(f"deleted {len(doomed)} record(s) under {where} in {store.storage_url}")
    if empty:
        names = ", ".join(repr(prefix) for prefix in empty)
        raise CliError(f"no records under {names} in {store.storage_url}", ExitCode.NOT_FOUND)
