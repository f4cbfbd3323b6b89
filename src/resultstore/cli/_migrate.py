"""``resultstore import-prefect``: Prefect's result records as native records.

A thin layer over :func:`resultstore.prefect.import_prefect`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from resultstore.cli._context import open_store, options, require_reachable
from resultstore.cli._errors import CliError, ExitCode
from resultstore.cli._output import Output, Progress

__all__ = ["import_prefect_command"]


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
    """Import Prefect result records as native records under the same keys.

    Prefect 3 ResultRecords and Prefect 2 blobs keep their expirations. Other files
    are skipped; a record that does not decode is reported and the import goes on
    (exit 5 if any failed). --storage-option applies to both SRC and DEST.
    """
    from resultstore.prefect import import_prefect

    given = options(ctx)
    out = Output(given)
    with (
        open_store(ctx, serializer, url=dest) as dst,
        Progress("importing", None, enabled=out.progress, counting=True) as progress,
    ):
        require_reachable(dst)
        summary = import_prefect(
            src,
            dst,
            allow_pickle=allow_pickle,
            storage_options=given.storage_options,
            progress=lambda outcome: progress.advance(),
        )
    for key in summary.skipped:
        out.emit({"key": key, "outcome": "skipped", "size": 0})
        out.info(f"SKIPPED  {key}: not a Prefect result record")
    for key, reason in sorted(summary.failed.items()):
        out.emit({"key": key, "outcome": "failed", "size": 0, "error": str(reason)})
        out.info(f"FAILED   {key}: {reason}")
    out.summary(
        source=summary.source_url,
        destination=dst.storage_url,
        imported=summary.imported,
        skipped=len(summary.skipped),
        failed=len(summary.failed),
    )
    out.info(
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
