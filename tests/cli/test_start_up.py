"""``resultstore get KEY`` starts quickly: it imports and builds only what it uses.

The time itself is measured by ``benchmarks/run.py --only start-up``, never here; these
tests check what that time is made of. A fresh interpreter runs one ``get`` and reports
the modules it imported and the commands typer built: pydantic (typer's coercion and the
former settings model), rich, the bulk and lock modules, the Prefect and array code, and
the commands other than ``get`` (their modules, and typer's build of them) must all
stay out.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cli_harness import Cli

from resultstore import ResultStore

# Loaded by `get` before this work, and not needed by it.
HEAVY = (
    "pydantic",
    "pydantic.main",
    "pydantic_core.core_schema",  # headers need only the compiled parser (resultstore._json)
    "typer._adapters",
    "rich",
    "rich.console",
    "resultstore.bulk",
    "resultstore.locks",
    "resultstore.expiry",
    "resultstore.prefect",
    "resultstore.array_serializers",
    "resultstore.demo",
    "resultstore.cli._bulk",
    "resultstore.cli._info",
    "resultstore.cli._migrate",
    "numpy",
    "s3fs",
    "botocore",
    "obstore",
    "fsspec",
    "importlib.metadata",  # the entry-point scan reads the folders itself (plugins.py)
    "email",
    # signing (hashlib, hmac) serves signed records only, secrets lock leases only: a
    # get of an unsigned record needs neither
    "hmac",
    "secrets",
)

_CHILD = """
import json, sys
import typer.main

built = []
build = typer.main.get_command_from_info
def counting(info, **kwargs):
    built.append(info.name)
    return build(info, **kwargs)
typer.main.get_command_from_info = counting

from resultstore.cli import main
code = main(["--quiet", "--storage", sys.argv[1], "get", "some/key", "-o", sys.argv[2]])
print(json.dumps({"code": code, "modules": sorted(sys.modules), "built": built}))
"""


def test_get_imports_no_heavy_module_and_builds_only_get(tmp_path: Path, file_cli: Cli) -> None:
    url = (tmp_path / "store").as_uri()
    ResultStore(url).write({"a": [1, 2]}, key="some/key")
    out = tmp_path / "value.json"
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, url, str(out)],
        env=file_cli.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(done.stdout)
    assert report["code"] == 0, done.stderr
    assert json.loads(out.read_text()) == {"a": [1, 2]}
    loaded = set(report["modules"])
    assert "resultstore.stores.file" in loaded  # the child did read through the file store
    assert sorted(loaded.intersection(HEAVY)) == []
    assert report["built"] == ["get"]


def test_option_values_are_coerced_as_typer_coerces_them(file_cli: Cli) -> None:
    # str, list[str] and choices take the quick way; a refused choice and an int
    # (ls --limit) go through typer's own coercion and keep its messages.
    file_cli.run("put", "k", "--json", '"text"')
    file_cli.run("put", "j", "--json", "[1]")
    assert file_cli.run("get", "k", "--format", "REPR").stdout == "'text'\n"
    assert file_cli.run("--storage-option", "fsync=false", "get", "j").stdout == "[\n  1\n]\n"
    file_cli.fails(
        "get",
        "k",
        "--format",
        "nope",
        code=3,
        says=["Invalid value for '--format'", "'nope' is not one of 'auto', 'json', 'repr'"],
    )
    file_cli.fails("ls", "--limit", "0", code=3, says=["'--limit'", "greater than or equal to 1"])
    file_cli.fails("ls", "--limit", "x", code=3, says=["'--limit'", "valid integer"])
    assert file_cli.run("ls", "--limit", "1", "--keys-only").stdout.count("\n") == 1
    file_cli.run("rm", "j", "k")
    file_cli.fails("get", "k", code=2, says=["'k'"])
