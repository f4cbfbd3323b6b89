"""The global options every command sees, and the parsing of option values.

``--storage``, ``--storage-option``, ``--json``, ``--quiet`` and ``--debug`` are
options of the ``resultstore`` group, accepted before or after the command
(``resultstore gc --storage URL``): :func:`resultstore.cli._app.hoist_global_options`
moves them in front before click parses the line.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import typer

from resultstore.cli._errors import CliError, ExitCode
from resultstore.result_store import ResultStore

__all__ = [
    "CliOptions",
    "open_store",
    "options",
    "parse_duration",
    "parse_storage_options",
    "require_reachable",
]


@dataclass
class CliOptions:
    """The global options, shared by every command through the click context."""

    storage: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)
    debug: bool = False
    quiet: bool = False
    """Print only data (values, listings) and errors: no summaries, progress or warnings."""
    json: bool = False
    """Print JSON (one object per line) instead of text."""


def parse_storage_options(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as a dict; a value is JSON when it parses, else a string."""
    parsed: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise CliError(
                f"bad --storage-option {item!r}: expected KEY=VALUE, e.g. part_size=8388608",
                ExitCode.BAD_INPUT,
            )
        try:
            parsed[name] = json.loads(raw)
        except ValueError:
            parsed[name] = raw
    return parsed


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = r"(\d+(?:\.\d+)?)\s*([smhdw])"


def parse_duration(text: str, option: str = "--expires-in") -> datetime.timedelta:
    """``90s``, ``30m``, ``12h``, ``7d``, ``2w``, ``1h30m`` or a bare number of seconds.

    The units are those of ``sleep`` and of most schedulers; a bare number stays
    seconds, so scripts written for the older ``--expires-in SECONDS`` keep working.
    """
    spec = text.strip().lower()
    try:
        if re.fullmatch(r"\d+(?:\.\d+)?", spec):
            return datetime.timedelta(seconds=float(spec))
        if spec and re.fullmatch(f"(?:{_PART}\\s*)+", spec):
            seconds = sum(float(n) * _UNITS[u] for n, u in re.findall(_PART, spec))
            return datetime.timedelta(seconds=seconds)
    except OverflowError:
        pass
    raise CliError(
        f"{option} {text!r} is not a duration: use a number with a unit, such as 90s, "
        "30m, 12h or 7d (a bare number is seconds)",
        ExitCode.BAD_INPUT,
    )


def options(ctx: typer.Context) -> CliOptions:
    """The global options of the command running in ``ctx``."""
    found = ctx.find_object(CliOptions)
    return found if found is not None else CliOptions()


def require_reachable(store: ResultStore) -> None:
    """Raise the store's error when ``store``, a destination, cannot be listed.

    ``copy`` and ``import-prefect`` write to a store they may never read: with nothing
    to copy they would report "0 records" to an unreachable server or a missing bucket.
    One listing call (the first key) fails as any other call would (exit 4); a file
    store's folder that does not exist yet lists nothing, and is created by the first
    write.
    """
    from resultstore._loops import run_sync

    async def first_key() -> None:
        async for _ in store.akeys():
            break

    run_sync(first_key())


def open_store(
    ctx: typer.Context, serializer: str | None = None, url: str | None = None
) -> ResultStore:
    """The store the command works on: ``url``, else ``--storage``, else the configured one."""
    given = options(ctx)
    return ResultStore(
        url if url is not None else given.storage,
        serializer=serializer,
        storage_options=given.storage_options,
    )
