"""Entry-point discovery shared by the store registry and the serializer registry.

Every distribution's claim is kept, so two plugins claiming one name are
reported instead of one being picked silently. The installed distributions are
scanned once per process.

Why not ``importlib.metadata.entry_points()`` every time: importing
``importlib.metadata`` (it pulls in ``email``, ``zipfile``, ``csv``, ...) and
scanning with it took about half of a ``resultstore get`` (some 50-80 ms of a
short command), while the scan itself is a directory listing and a few small
files. So where every ``sys.path`` entry is a plain folder (or missing) and no
import hook of the process finds distributions of its own, this module reads
the ``*.dist-info`` / ``*.egg-info`` folders' ``entry_points.txt`` itself, the
way ``importlib.metadata`` does: the first copy of a distribution found on
``sys.path`` wins, and entries are parsed by the same rules. Anywhere else (a
zip on ``sys.path``, a custom finder) it asks ``importlib.metadata``.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

__all__ = ["PluginEntry", "discover", "dist_name", "providers"]

# importlib.metadata.EntryPoint.pattern: "module", "module:attr.sub", with [extras].
_VALUE = re.compile(r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$")
_INFO_SUFFIXES = (".dist-info", ".egg-info")


class PluginEntry:
    """One entry point of one distribution: ``name = value`` under ``group``.

    The same surface as :class:`importlib.metadata.EntryPoint` where this package
    uses it: ``name``, ``value``, ``group``, ``dist.name`` and :meth:`load`.
    """

    __slots__ = ("_dist", "group", "name", "value")

    def __init__(self, name: str, value: str, group: str, dist: _Distribution) -> None:
        self.name, self.value, self.group, self._dist = name, value, group, dist

    @property
    def dist(self) -> _Distribution:
        """The declaring distribution (its ``name`` as its metadata spells it)."""
        return self._dist

    def load(self) -> Any:
        """Import the module the value names and return the attribute it names."""
        import importlib

        match = _VALUE.match(self.value)
        if match is None:
            raise ValueError(f"entry point {self.name!r} has a malformed value {self.value!r}")
        obj: Any = importlib.import_module(match.group("module"))
        for part in (match.group("attr") or "").split("."):
            if part:
                obj = getattr(obj, part)
        return obj

    def __repr__(self) -> str:
        return f"PluginEntry(name={self.name!r}, value={self.value!r}, group={self.group!r})"


class _Distribution:
    """A ``*.dist-info`` or ``*.egg-info`` folder; its name read from its metadata on demand."""

    __slots__ = ("_name", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self._name: str | None = None

    @property
    def name(self) -> str:
        if self._name is None:
            self._name = _metadata_name(self.path) or _folder_name(os.path.basename(self.path))
        return self._name


def _folder_name(folder: str) -> str:
    return folder.rsplit(".", 1)[0].split("-", 1)[0]


def _normalized(name: str) -> str:
    # importlib.metadata's Prepared.normalize: the key of "the same distribution".
    return re.sub(r"[-_.]+", "-", name).lower().replace("-", "_")


def _metadata_name(path: str) -> str | None:
    for file in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(path, file), encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    if not line.strip():
                        break  # the headers end at the first blank line
                    if line[:5].lower() == "name:":
                        return line[5:].strip()
        except OSError:
            continue
    return None


def _parse(text: str, dist: _Distribution) -> list[PluginEntry]:
    """``entry_points.txt``, by importlib.metadata's rules (``Sectioned``, ``_from_text``).

    A line without ``=`` makes importlib.metadata fail for every distribution; here it
    is an error only in this package's own groups (naming the distribution), and
    skipped in other packages' groups, which are not ours to refuse.
    """
    entries: list[PluginEntry] = []
    group: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            group = line.strip("[]")
            continue
        if group is None:
            continue
        name, sep, value = line.partition("=")
        if sep:
            entries.append(PluginEntry(name.strip(), value.strip(), group, dist))
        elif group.startswith("resultstore."):
            from resultstore.errors import PluginError

            raise PluginError(
                f"distribution {dist.name} declares a malformed {group} entry point "
                f"{line!r} (expected 'name = module:attribute'); fix or uninstall it"
            )
    return entries


def _scannable() -> bool:
    """Whether a folder scan sees every distribution ``importlib.metadata`` would."""
    from importlib.machinery import PathFinder

    for finder in sys.meta_path:
        if finder is PathFinder or isinstance(finder, PathFinder):
            continue
        if hasattr(finder, "find_distributions"):  # an import hook with distributions
            return False
    for entry in sys.path:
        folder = str(entry) or "."
        if folder.endswith(".egg") or (os.path.exists(folder) and not os.path.isdir(folder)):
            return False  # an egg or a zip: importlib.metadata's own lookups
    return True


def _scan() -> list[PluginEntry]:
    seen: set[str] = set()
    entries: list[PluginEntry] = []
    for entry in sys.path:
        folder = str(entry) or "."
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for child in names:
            if not child.endswith(_INFO_SUFFIXES):
                continue
            key = _normalized(_folder_name(child))
            if key in seen:
                continue  # the first copy on sys.path wins (an egg-info file too)
            seen.add(key)
            path = os.path.join(folder, child)
            try:
                with open(os.path.join(path, "entry_points.txt"), encoding="utf-8") as handle:
                    text = handle.read()
            except (OSError, UnicodeDecodeError):  # none, a file, or not text: no entries
                continue
            entries.extend(_parse(text, _Distribution(path)))
    return entries


def _from_importlib() -> list[PluginEntry | EntryPoint]:
    from importlib.metadata import entry_points

    found = entry_points()
    return [ep for group in found.groups for ep in found.select(group=group)]


@functools.cache
def _installed_entry_points() -> list[PluginEntry | EntryPoint]:
    if _scannable():
        return list(_scan())
    return _from_importlib()


def dist_name(ep: PluginEntry | EntryPoint) -> str:
    """The name of the distribution that declares ``ep``."""
    dist = getattr(ep, "dist", None)
    return str(dist.name) if dist is not None else "unknown distribution"


@functools.cache
def discover(group: str) -> dict[str, list[PluginEntry | EntryPoint]]:
    """Every entry point of ``group`` by name, one per declaring distribution."""
    found: dict[str, list[PluginEntry | EntryPoint]] = {}
    for ep in _installed_entry_points():
        if ep.group == group:
            found.setdefault(ep.name, []).append(ep)
    return found


def providers(group: str) -> dict[str, str]:
    """Each name in ``group`` with the distribution(s) providing it."""
    return {name: ", ".join(dist_name(ep) for ep in eps) for name, eps in discover(group).items()}
