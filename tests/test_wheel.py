"""The built wheel, installed without the source tree, works: a smoke test as CI runs it.

The wheel is built as a release would be (``pip wheel``, in an isolated build
environment), installed with ``--no-deps`` into a fresh virtual environment that
sees this interpreter's packages (``--system-site-packages``: the dependencies are
already installed, so nothing is downloaded but the build backend), and run from a
folder outside the source tree: ``import resultstore`` must resolve to the venv's copy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str | Path, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        [str(arg) for arg in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.timeout(600)
def test_the_wheel_installed_alone_runs_the_command_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESULTSTORE_", "PYTHON"))}
    env["HOME"] = str(tmp_path)
    dist = tmp_path / "dist"
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "-w",
        dist,
        ROOT,
        cwd=tmp_path,
        env=env,
    )
    (wheel,) = dist.glob("resultstore-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    assert "resultstore/cli/_app.py" in names and "resultstore/_demo_child.py" in names
    metadata = (
        zipfile.ZipFile(wheel)
        .read(next(name for name in names if name.endswith(".dist-info/METADATA")))
        .decode()
    )
    assert "License-Expression: Apache-2.0" in metadata
    assert 'Requires-Dist: exceptiongroup>=1.2; python_version < "3.11"' in metadata

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--system-site-packages", venv, cwd=tmp_path, env=env)
    python, script = venv / "bin" / "python", venv / "bin" / "resultstore"
    _run(python, "-m", "pip", "install", "-q", "--no-deps", wheel, cwd=tmp_path, env=env)

    where = _run(
        python, "-c", "import resultstore; print(resultstore.__file__)", cwd=tmp_path, env=env
    )
    assert Path(where.strip()).is_relative_to(venv), where  # the wheel's copy, not the tree's
    assert not Path(where.strip()).is_relative_to(ROOT)
    version = _run(script, "--version", cwd=tmp_path, env=env)
    assert version.startswith("resultstore 0.")
    store = {**env, "RESULTSTORE_STORAGE_URL": (tmp_path / "store").as_uri()}
    _run(script, "put", "smoke", "--json", '{"ok": true}', cwd=tmp_path, env=store)
    assert json.loads(_run(script, "get", "smoke", cwd=tmp_path, env=store)) == {"ok": True}
    assert "1 ok, 0 failed" in _run(script, "check", cwd=tmp_path, env=store)
