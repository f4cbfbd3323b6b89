"""The commands over many records: ``ls``, ``check``, ``gc`` and ``copy``.

Each is a thin layer over the core's bulk operations (:mod:`resultstore.bulk`):
it checks the store is there (:meth:`~resultstore.ResultStore.require_container`,
so a missing folder or bucket is exit 4, never "0 records"), runs the operation
with a progress callback, and prints what it reports.
"""

from __future__ import annotations

import datetime
import math
from typing import TYPE_CHECKING, Annotated

import typer

from resultstore.cli._context import open_store, options, require_reachable
from resultstore.cli._errors import CliError, ExitCode
from resultstore.cli._output import (
    Output,
    Progress,
    StreamedTable,
    bytes_text,
    metadata_dict,
    outcome_dict,
    print_json,
    print_line,
    size_text,
    table_row,
)
from resultstore.errors import SignatureError
from resultstore.keys import validate_prefix
from resultstore.result_store import ResultStore

if TYPE_CHECKING:
    from resultstore.bulk import RecordOutcome

__all__ = ["check", "copy", "gc", "list_records"]

_PREFIX_HELP = "Only keys starting with this."


def list_records(
    ctx: typer.Context,
    prefix: Annotated[str, typer.Argument(metavar="PREFIX", help=_PREFIX_HELP)] = "",
    keys_only: Annotated[
        bool, typer.Option("--keys-only", help="Print only the keys (no header is read).")
    ] = False,
    limit: Annotated[
        int | None, typer.Option("--limit", metavar="N", min=1, help="Stop after N records.")
    ] = None,
) -> None:
    """List records: key, size, serializer, created, expiration.

    Records are printed as they are read, in the store's listing order; with --json,
    one JSON object per record.
    """
    from resultstore._loops import run_sync

    out = Output(options(ctx))
    validate_prefix(prefix)  # bad input before the store is touched
    with open_store(ctx) as store:
        store.require_container()
        shown, damaged = run_sync(_list(store, prefix, out, keys_only, limit))
    if not shown and not keys_only:
        where = f" under {prefix!r}" if prefix else ""
        out.info(f"no records{where} in {store.storage_url}")
    if damaged:
        out.warn(f"{damaged} damaged record(s); run 'resultstore check' for details")


async def _list(
    store: ResultStore, prefix: str, out: Output, keys_only: bool, limit: int | None
) -> tuple[int, int]:
    """Print the records under ``prefix`` as they come; returns (shown, damaged)."""
    from resultstore.bulk import ascan_batches

    left = math.inf if limit is None else limit
    shown = damaged = 0
    if keys_only:
        async for key in store.akeys(prefix):
            if shown >= left:
                break
            if out.json:
                print_json({"key": key})
            else:
                print_line(key)
            shown += 1
        return shown, 0
    table = StreamedTable()
    now = datetime.datetime.now(datetime.timezone.utc)
    async for batch in ascan_batches(store, prefix):
        entries = batch[: int(min(left - shown, len(batch)))]
        shown += len(entries)
        damaged += sum(entry.damaged for entry in entries)
        if out.json:
            for entry in entries:
                if entry.metadata is not None:
                    out.emit(metadata_dict(entry.metadata))
                else:
                    out.emit({"key": entry.key, "error": str(entry.error)})
        else:
            table.add([table_row(entry, now) for entry in entries])
        if shown >= left:
            break
    return shown, damaged


def gc(
    ctx: typer.Context,
    prefix: Annotated[str, typer.Argument(metavar="PREFIX", help=_PREFIX_HELP)] = "",
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
    """Delete expired records and leftovers of interrupted writes.

    Reports the bytes freed. The expiry index says which records may be due, so gc
    reads only their headers; each record is deleted only once its own header says it
    has expired. Leftovers are temporary files of writes interrupted over an hour ago.
    """
    out = Output(options(ctx))
    validate_prefix(prefix)  # bad input before the store is touched

    def show(done: RecordOutcome) -> None:
        out.emit(outcome_dict(done))
        verb = "would delete" if dry_run else "deleted"
        out.info(f"{verb} {done.key} ({size_text(done.size)})")

    with open_store(ctx) as store:
        store.require_container()
        summary = store.delete_expired(prefix, dry_run=dry_run, full=full, progress=show)
        leftovers, leftover_bytes = store.clean_abandoned(dry_run=dry_run)
    out.summary(
        url=store.storage_url,
        dry_run=dry_run,
        expired=summary.expired,
        deleted=summary.deleted,
        bytes_freed=summary.bytes_freed,
        leftovers=leftovers,
        leftover_bytes=leftover_bytes,
        damaged=len(summary.damaged),
    )
    verb = "would free" if dry_run else "freed"
    out.info(
        f"{summary.expired} expired record(s) in {store.storage_url}: "
        f"{verb} {bytes_text(summary.bytes_freed)}"
    )
    if leftovers:
        out.info(
            f"{leftovers} leftover(s) of interrupted writes older than an hour: "
            f"{verb} {bytes_text(leftover_bytes)}"
        )
    if summary.damaged:
        out.warn(
            f"{len(summary.damaged)} damaged record(s) were kept; run 'resultstore check' "
            "for details"
        )


def check(
    ctx: typer.Context,
    prefix: Annotated[str, typer.Argument(metavar="PREFIX", help=_PREFIX_HELP)] = "",
    require_signed: Annotated[
        bool,
        typer.Option(
            "--require-signed",
            help="Fail every record that is unsigned or whose signature cannot be verified.",
        ),
    ] = False,
) -> None:
    """Verify every record's checksums and signatures.

    Exits 5 (integrity) if any record fails. Signatures are verified only with a
    signing key (RESULTSTORE_SIGNING_KEY); without one, check says so, and
    --require-signed fails every record.
    """
    out = Output(options(ctx))
    validate_prefix(prefix)  # bad input before the store is touched
    with open_store(ctx) as store:
        store.require_container()
        with Progress("checking", None, enabled=out.progress, counting=True) as progress:

            def seen(done: RecordOutcome) -> None:
                progress.record(done)
                out.emit(outcome_dict(done))

            summary = store.verify_all(prefix, require_signed=require_signed, progress=seen)
    for key, exc in sorted(summary.failed.items()):
        from resultstore.prefect import PrefectRecordError  # (unverifiable: no checksum)

        refused = isinstance(exc, (SignatureError, PrefectRecordError))
        out.info(f"{'REFUSED' if refused else 'DAMAGED'}  {key}: {exc}")
    failed = len(summary.failed)
    out.summary(
        url=store.storage_url,
        checked=summary.checked,
        ok=summary.ok,
        failed=failed,
        bytes_checked=summary.bytes_checked,
        signatures_verified=store.signed,
    )
    out.info(
        f"checked {summary.checked} record(s) in {store.storage_url}: "
        f"{summary.ok} ok, {failed} failed"
    )
    if not store.signed:
        out.info(
            "signatures were not verified: no signing key is configured "
            "(set RESULTSTORE_SIGNING_KEY to verify them)"
        )
    if failed:
        names = ", ".join(repr(key) for key in sorted(summary.failed))
        raise CliError(
            f"{failed} record(s) failed verification in {store.storage_url}: {names}",
            ExitCode.INTEGRITY,
        )


def copy(
    ctx: typer.Context,
    src_url: Annotated[str, typer.Argument(metavar="SRC_URL", help="Store to copy from.")],
    dst_url: Annotated[str, typer.Argument(metavar="DST_URL", help="Store to copy to.")],
    prefix: Annotated[str, typer.Option("--prefix", metavar="PREFIX", help=_PREFIX_HELP)] = "",
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
    """Copy records byte-exact between stores (file to S3, say).

    Checksums and signatures stay valid: each record is verified before and after the
    copy. Records the destination already holds with the same checksum are skipped.
    --storage-option applies to both stores.
    """
    out = Output(options(ctx))
    validate_prefix(prefix)  # bad input before the store is touched
    with open_store(ctx, url=src_url) as src, open_store(ctx, url=dst_url) as dst:
        src.require_container()
        require_reachable(dst)
        with Progress("copying", None, enabled=out.progress, counting=True) as progress:

            def seen(done: RecordOutcome) -> None:
                progress.record(done)
                out.emit(outcome_dict(done))

            summary = src.copy_all(
                dst, prefix, skip_existing=not overwrite, dry_run=dry_run, progress=seen
            )
    for key, exc in sorted(summary.damaged.items()):
        out.info(f"DAMAGED  {key}: {exc} (not copied)")
    out.summary(
        source=src.storage_url,
        destination=dst.storage_url,
        dry_run=dry_run,
        copied=summary.copied,
        skipped=summary.skipped,
        damaged=len(summary.damaged),
        bytes_copied=summary.bytes_copied,
    )
    verb = "would copy" if dry_run else "copied"
    skipped = f"; skipped {summary.skipped} unchanged" if summary.skipped else ""
    out.info(
        f"{verb} {summary.copied} record(s), {bytes_text(summary.bytes_copied)}, "
        f"from {src.storage_url} to {dst.storage_url}{skipped}"
    )
    if summary.damaged:
        names = ", ".join(repr(key) for key in sorted(summary.damaged))
        raise CliError(
            f"{len(summary.damaged)} damaged record(s) in {src.storage_url} not copied: {names}",
            ExitCode.INTEGRITY,
        )
