"""The commands about the installation: ``stores`` and ``demo``."""

from __future__ import annotations

import dataclasses

import typer

from resultstore.cli._context import options
from resultstore.cli._output import Output, data_out, print_json, print_table

__all__ = ["demo", "stores"]


def stores(ctx: typer.Context) -> None:
    """List the installed store URL schemes and serializers.

    Each with the distribution that provides it.
    """
    from resultstore.registry import available_stores
    from resultstore.serializers import available_serializers

    out = Output(options(ctx))
    found = [("store", f"{scheme}://", dist) for scheme, dist in sorted(available_stores().items())]
    found += [("serializer", name, dist) for name, dist in sorted(available_serializers().items())]
    if out.json:
        for kind, name, dist in found:
            out.emit({"kind": kind, "name": name, "provided_by": dist})
        return
    from rich.table import Table

    table = Table("kind", "name", "provided by", box=None, pad_edge=False)
    for row in found:
        table.add_row(*row)
    print_table(table)
    out.info("Other schemes fsspec knows are served by the generic fsspec store.")


def demo(ctx: typer.Context) -> None:
    """Run a small pipeline whose results other processes fetch.

    It takes a few seconds, and uses the global --storage (before or after 'demo'),
    else the configured store.
    """
    from resultstore.demo import run_demo

    given = options(ctx)
    quiet = given.json or given.quiet
    report = run_demo(
        given.storage,
        storage_options=given.storage_options,
        echo=(lambda _text: None) if quiet else lambda text: print(text, file=data_out()),
    )
    if given.json:
        print_json(dataclasses.asdict(report), default=repr)
