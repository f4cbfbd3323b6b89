"""A store plugin whose import never finishes fails after RESULTSTORE_PLUGIN_IMPORT_TIMEOUT.

The plugins are really installed (a distribution folder with ``entry_points.txt`` on
``sys.path``), and each check runs in a fresh interpreter: the hung import stays
hung in its daemon thread there, never in this test session.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HUNG = "import time\ntime.sleep(10**6)\n"
SLOW_BUT_FINE = (
    "import threading\nthreading.Event().wait(0.2)\n"
    "from resultstore.stores.memory import MemoryStore\n\n\n"
    "class S(MemoryStore):\n    interface_version = 2\n"
)

SELF_USING = (
    "from resultstore import ResultStore\n\n"
    "RESULTS = ResultStore('selfuse://app')  # while this package is still importing\n"
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Plugins whose module hangs at import, and one that imports in a moment."""
    site = tmp_path_factory.mktemp("site")
    for dist, scheme, module, source in [
        ("hung-plugin", "hung", "hung_plugin", HUNG),
        ("slow-plugin", "slow", "slow_plugin", SLOW_BUT_FINE),
    ]:
        info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[resultstore.stores]\n{scheme} = {module}:S\n")
        (site / f"{module}.py").write_text(source)
    info = site / "self_using-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: self-using\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[resultstore.stores]\nselfuse = selfuse.store:S\n")
    (site / "selfuse").mkdir()
    (site / "selfuse" / "__init__.py").write_text(SELF_USING)
    (site / "selfuse" / "store.py").write_text("import selfuse\n" + SLOW_BUT_FINE)
    return site


def run(site: Path, code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter that sees the plugins, with RESULTSTORE_* ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RESULTSTORE_")}
    clean["PYTHONPATH"] = os.pathsep.join([str(site), *sys.path])
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=120,
    )


def test_a_hung_import_is_one_plugin_error_naming_the_plugin_and_the_deadline(
    site: Path,
) -> None:
    done = run(
        site,
        """
        from resultstore import PluginError, ResultStore

        for attempt in (1, 2):  # the second fails at once: the module is still importing
            try:
                ResultStore("hung://somewhere/p")
            except PluginError as exc:
                print(attempt, exc)
        """,
        RESULTSTORE_PLUGIN_IMPORT_TIMEOUT="0.5",
    )
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert first.startswith("1 store plugin hung-plugin for scheme 'hung' (hung_plugin:S)")
    assert "did not finish importing within 0.5 s (RESULTSTORE_PLUGIN_IMPORT_TIMEOUT)" in first
    assert "its module hung_plugin blocks at import time" in first
    assert "fix or uninstall hung-plugin" in first
    assert second == "2" + first[1:]


def test_the_command_line_says_so_in_one_line_and_exits(site: Path) -> None:
    done = run(
        site,
        """
        import sys
        from resultstore.cli import main

        sys.exit(main(["--storage", "hung://somewhere/p", "ls"]))
        """,
        RESULTSTORE_PLUGIN_IMPORT_TIMEOUT="0.5",
    )
    assert done.returncode == 3, done.stderr
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("error: store plugin hung-plugin for scheme 'hung'")
    assert "within 0.5 s (RESULTSTORE_PLUGIN_IMPORT_TIMEOUT)" in line


def test_a_plugin_imported_within_the_deadline_is_the_module_every_import_sees(
    site: Path,
) -> None:
    done = run(
        site,
        """
        import sys
        import threading
        from resultstore import ResultStore

        results = ResultStore("slow://shared")
        results.write({"a": 1}, key="k")
        import slow_plugin

        assert type(results.store) is slow_plugin.S, "one module, imported once"
        assert sys.modules["slow_plugin"] is slow_plugin
        assert results.read("k").result == {"a": 1}
        assert ResultStore("slow://shared").read("k").result == {"a": 1}
        print(sorted(t.name for t in threading.enumerate() if "import" in t.name))
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"  # the import's thread is done


def test_a_package_using_its_own_plugin_while_it_imports_loads_it_inline(site: Path) -> None:
    """``selfuse.store`` imports ``selfuse``: a thread importing it would wait on the lock of
    ``selfuse``, held by the import under way; the registry imports it in place instead."""
    done = run(
        site,
        """
        import selfuse
        import selfuse.store

        assert type(selfuse.RESULTS.store) is selfuse.store.S
        selfuse.RESULTS.write([1, 2], key="k")
        print(selfuse.RESULTS.read("k").result)
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[1, 2]"


PRINTS_ITS_CONFIGURATION_ERROR = """
from resultstore import ConfigurationError, ResultStore

try:
    ResultStore("slow://x")
except ConfigurationError as exc:
    print(exc)
"""


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan"])
def test_the_deadline_must_be_a_positive_number_of_seconds(site: Path, value: str) -> None:
    done = run(
        site,
        PRINTS_ITS_CONFIGURATION_ERROR,
        RESULTSTORE_PLUGIN_IMPORT_TIMEOUT=value,
    )
    assert done.returncode == 0, done.stderr
    assert "RESULTSTORE_PLUGIN_IMPORT_TIMEOUT" in done.stdout


def test_a_misspelled_deadline_setting_is_still_refused(site: Path) -> None:
    done = run(
        site,
        PRINTS_ITS_CONFIGURATION_ERROR,
        RESULTSTORE_PLUGIN_IMPORT_TIMOUT="5",
    )
    assert done.returncode == 0, done.stderr
    assert "RESULTSTORE_PLUGIN_IMPORT_TIMOUT" in done.stdout
