"""Entry-point discovery shared by the store registry and the serializer registry.

Every distribution's claim is kept, so two plugins claiming one name are
reported instead of one being picked silently. The installed distributions are
scanned once per process, through ``importlib.metadata.entry_points()``, which
reads only each distribution's ``entry_points.txt`` (not its full metadata)
and keeps the first copy of a distribution found twice on ``sys.path``.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint, EntryPoints

__all__ = ["discover", "dist_name", "providers"]


def dist_name(ep: EntryPoint) -> str:
    """The name of the distribution that declares ``ep``."""
    dist = getattr(ep, "dist", None)
    return str(dist.name) if dist is not None else "unknown distribution"


class _Selectable(Protocol):  # EntryPoints, or SelectableGroups before Python 3.12
    def select(self, *, group: str) -> EntryPoints: ...


@functools.cache
def _installed_entry_points() -> _Selectable:
    from importlib.metadata import entry_points  # imported on first lookup

    return entry_points()


@functools.cache
def discover(group: str) -> dict[str, list[EntryPoint]]:
    """Every entry point of ``group`` by name, one per declaring distribution."""
    found: dict[str, list[EntryPoint]] = {}
    for ep in _installed_entry_points().select(group=group):
        found.setdefault(ep.name, []).append(ep)
    return found


def providers(group: str) -> dict[str, str]:
    """Each name in ``group`` with the distribution(s) providing it."""
    return {name: ", ".join(dist_name(ep) for ep in eps) for name, eps in discover(group).items()}
