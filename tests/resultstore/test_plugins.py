"""Entry-point discovery: the folder scan finds what importlib.metadata finds, faster."""

from __future__ import annotations

import sys
import textwrap
import zipfile
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from resultstore import PluginError, plugins


@pytest.fixture
def fresh_scan() -> Iterator[None]:
    plugins._installed_entry_points.cache_clear()
    plugins.discover.cache_clear()
    yield
    plugins._installed_entry_points.cache_clear()
    plugins.discover.cache_clear()


def _dist(site: Path, folder: str, name: str, entry_points_txt: str) -> None:
    info = site / folder
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n\nBody\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points_txt))


def _as_importlib_sees_it() -> list[tuple[str, str, str, str]]:
    found = entry_points()
    return sorted(
        (group, ep.name, ep.value, ep.dist.name if ep.dist else "?")
        for group in found.groups
        for ep in found.select(group=group)
    )


def _as_we_see_it() -> list[tuple[str, str, str, str]]:
    return sorted((ep.group, ep.name, ep.value, plugins.dist_name(ep)) for ep in plugins._scan())


def test_the_scan_finds_every_entry_point_importlib_metadata_finds_here() -> None:
    assert plugins._scannable()
    assert _as_we_see_it() == _as_importlib_sees_it()


def test_the_scan_follows_importlib_metadata_rules_for_awkward_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_scan: None
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    _dist(
        first,
        "acme_stores-1.0.dist-info",
        "acme-stores",
        """
        # a comment
        [resultstore.stores]
          acme   =   acme_stores:AcmeStore
        acme2=acme_stores.sub:Outer.Inner [extra1, extra2]

        [console_scripts]
        acme = acme_stores.cli:main
        """,
    )
    # The same distribution again, later on sys.path: the first copy wins.
    _dist(second, "Acme.Stores-2.0.dist-info", "acme-stores", "[resultstore.stores]\nold = x:Y\n")
    _dist(second, "other-3.0.egg-info", "other", "[other.group]\nthing = other:thing\n")
    # An egg-info *file* is a distribution too: it hides a later copy of "shadow".
    (first / "shadow-1.0.egg-info").write_text("Metadata-Version: 1.1\nName: shadow\n")
    _dist(second, "shadow-2.0.dist-info", "shadow", "[resultstore.stores]\nshade = s:S\n")
    monkeypatch.setattr(sys, "path", [str(first), str(second), *sys.path])

    assert _as_we_see_it() == _as_importlib_sees_it()
    found = plugins.discover("resultstore.stores")
    assert [ep.value for ep in found["acme2"]] == ["acme_stores.sub:Outer.Inner [extra1, extra2]"]
    assert plugins.dist_name(found["acme"][0]) == "acme-stores"  # as its metadata spells it
    assert "old" not in found and "shade" not in found


def test_load_imports_the_named_attribute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_scan: None
) -> None:
    _dist(
        tmp_path,
        "acme-1.0.dist-info",
        "acme",
        "[resultstore.stores]\nacme = acme_mod:Outer.Inner\n",
    )
    (tmp_path / "acme_mod.py").write_text("class Outer:\n    class Inner:\n        pass\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    (ep,) = plugins.discover("resultstore.stores")["acme"]
    assert ep.load().__qualname__ == "Outer.Inner"


def test_a_malformed_line_in_our_group_names_the_distribution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_scan: None
) -> None:
    _dist(tmp_path, "broken-1.0.dist-info", "broken-plugin", "[resultstore.stores]\njust a name\n")
    _dist(tmp_path, "careless-1.0.dist-info", "careless", "[their.group]\nno equals sign\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    with pytest.raises(PluginError) as caught:
        plugins.discover("resultstore.stores")
    message = str(caught.value)
    assert "broken-plugin" in message and "'just a name'" in message and "\n" not in message
    assert "careless" not in message  # another package's group is not ours to refuse


def test_a_zip_on_sys_path_is_left_to_importlib_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_scan: None
) -> None:
    archive = tmp_path / "plugins.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("zipped-1.0.dist-info/METADATA", "Name: zipped\nVersion: 1.0\n")
        zipped.writestr("zipped-1.0.dist-info/entry_points.txt", "[resultstore.stores]\nz = zm:Z\n")
    monkeypatch.setattr(sys, "path", [str(archive), *sys.path])
    assert not plugins._scannable()
    (ep,) = plugins.discover("resultstore.stores")["z"]
    assert ep.value == "zm:Z" and plugins.dist_name(ep) == "zipped"
