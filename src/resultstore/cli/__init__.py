"""The ``resultstore`` command line: store, fetch, list, inspect, copy and verify records.

``resultstore demo`` runs a small pipeline on the local default storage and shows
results travelling between processes; the other commands work on any store URL
(``--storage``, else ``RESULTSTORE_STORAGE_URL``, else ``~/.resultstore/storage``).

Errors are one line on stderr (``error: ...``) and a distinct exit code, decided in
one place (:func:`exit_code_for`); ``--debug`` adds the traceback. Progress bars are
drawn on stderr only when it is a terminal.

The package: :mod:`~resultstore.cli._app` (the app, its global options, :func:`main`),
:mod:`~resultstore.cli._records` (put, get, inspect, rm), :mod:`~resultstore.cli._bulk`
(ls, check, gc, copy), :mod:`~resultstore.cli._migrate` (import-prefect),
:mod:`~resultstore.cli._info` (stores, demo),
:mod:`~resultstore.cli._output` (text, JSON, tables and progress),
:mod:`~resultstore.cli._errors` (exit codes) and :mod:`~resultstore.cli._coercion`
(option values without pydantic, for a quick start). Only this package imports typer, and
rich only to draw on a terminal; only the console script and ``python -m resultstore``
import it.
"""

from __future__ import annotations

from resultstore.cli._app import app, main
from resultstore.cli._errors import CliError, ExitCode, exit_code_for

__all__ = ["CliError", "ExitCode", "app", "exit_code_for", "main"]
