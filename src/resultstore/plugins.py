"""Entry-point discovery shared by the store registry and the serializer registry.

Unlike ``importlib.metadata.entry_points()``, which keeps one entry point per
name, this keeps every distribution's claim, so two plugins claiming one name
are reported instead of one being picked silently.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

__all__ = ["discover", "dist_name", "providers"]


def dist_name(ep: EntryPoint) -> str:
    """The name of the distribution that declares ``ep``."""
    dist = getattr(ep, "dist", None)
    return str(dist.metadata["Name"]) if dist is not None else "unknown distribution"


@functools.cache
def discover(group: str) -> dict[str, list[EntryPoint]]:
    """Every entry point of ``group`` by name, one per declaring distribution."""
    from importlib.metadata import distributions  # imported on first lookup

    found: dict[str, list[EntryPoint]] = {}
    seen: set[str] = set()
    for dist in distributions():
        name = str(dist.metadata["Name"]).lower().replace("_", "-")
        if name in seen:  # the same distribution twice on sys.path: the first wins
            continue
        seen.add(name)
        for ep in dist.entry_points:
            if ep.group == group:
                found.setdefault(ep.name, []).append(ep)
    return found


def providers(group: str) -> dict[str, str]:
    """Each name in ``group`` with the distribution(s) providing it."""
    return {name: ", ".join(dist_name(ep) for ep in eps) for name, eps in discover(group).items()}
