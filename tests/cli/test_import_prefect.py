"""``resultstore import-prefect``, run as a user would, on records written by real Prefect 3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cli_harness import Cli

from resultstore import ResultStore

PREFECT3 = Path(__file__).parents[1] / "fixtures" / "prefect3" / "records"
BARE = "54e3286517284566bed7a03ae84ee42a"


def test_import_prefect_imports_every_record_and_skips_the_rest(
    file_cli: Cli, tmp_path: Path
) -> None:
    dest = (tmp_path / "dest").as_uri()
    done = file_cli.run("import-prefect", str(PREFECT3), dest)
    assert f"SKIPPED  {BARE}: not a Prefect result record" in done.stdout
    assert "imported 12 record(s)" in done.stdout and "failed 0" in done.stdout
    got = file_cli.run("--storage", dest, "get", "dict-json")
    assert json.loads(got.stdout) == {"a": [1, 2, 3], "b": {"c": None}, "s": "text"}
    store = ResultStore(dest)
    assert store.read("dict-compressed-pickle").result["a"] == [1, 2, 3]
    assert store.read_metadata("int-json").serializer == "pickle"


def test_import_prefect_reports_failures_and_exits_non_zero(file_cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "prefect"
    src.mkdir()
    shutil.copy(PREFECT3 / "int-pickle", src / "int-pickle")
    shutil.copy(PREFECT3 / "uuid-json", src / "uuid-json")
    doc = json.loads((PREFECT3 / "int-json").read_text())
    doc["result"] = json.dumps({"__class__": "os.system", "data": "touch pwned"})
    (src / "evil").write_text(json.dumps(doc))
    (src / "readme.txt").write_text("not a record")
    dest = (tmp_path / "dest").as_uri()
    done = file_cli.fails(
        "import-prefect",
        src.as_uri(),
        dest,
        "--serializer",
        "json",
        code=5,
        says=["2 Prefect record(s)", "not imported"],
    )
    assert "FAILED   evil:" in done.stdout and "'os.system'" in done.stdout
    assert "FAILED   int-pickle:" in done.stdout and "allowed_serializers" in done.stdout
    assert "SKIPPED  readme.txt" in done.stdout
    assert "imported 1 record(s)" in done.stdout
    assert not (tmp_path / "pwned").exists()
    assert ResultStore(dest, serializer="json").read("uuid-json").result.hex.startswith("1234")


def test_import_prefect_of_a_missing_folder_is_one_error_line(
    file_cli: Cli, tmp_path: Path
) -> None:
    file_cli.fails(
        "import-prefect",
        str(tmp_path / "nope"),
        (tmp_path / "dest").as_uri(),
        code=3,
        says=["is not a folder"],
    )


def test_inspect_and_ls_describe_a_prefect_record_that_get_reads(file_cli: Cli) -> None:
    # Detected by content: Prefect's bytes where a native record was expected.
    root = Path(file_cli.cwd) / "store"
    root.mkdir(exist_ok=True)
    shutil.copy(PREFECT3 / "dict-json", root / "p.rsr")
    ResultStore(file_cli.url).write(1, key="native")

    shown = json.loads(file_cli.run("inspect", "p").stdout)
    assert shown["serializer"] == "prefect:json" and shown["key"] == "p"
    assert shown["size"] == (PREFECT3 / "dict-json").stat().st_size
    assert shown["checksum"] is None and shown["created"] is None
    assert shown["format"].startswith("a Prefect result record") and shown["signature"] == "none"
    assert json.loads(file_cli.run("get", "p").stdout)["s"] == "text"

    listed = [json.loads(line) for line in file_cli.run("--json", "ls").stdout.splitlines()]
    assert {row["key"]: row["serializer"] for row in listed} == {
        "native": "pickle",
        "p": "prefect:json",
    }

    checked = file_cli.fails("check", code=5, says=["1 record(s) failed"])
    assert "REFUSED  p: record 'p'" in checked.stdout and "no checksum" in checked.stdout

    signed = {"RESULTSTORE_SIGNING_KEY": "cli-signing-key-0123456789"}
    shown = json.loads(file_cli.run("inspect", "p", env=signed).stdout)
    assert shown["serializer"] == "prefect:json"
    assert shown["signature"] == "none (this store has a signing key, so it refuses to read it)"
    file_cli.fails("get", "p", code=5, env=signed, says=["'p'", "Prefect record"])

    (root / "junk.rsr").write_bytes(b'{"not": "a Prefect record, nor a native one"}')
    file_cli.fails("inspect", "junk", code=5, says=["'junk'", "damaged"])
