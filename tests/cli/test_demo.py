"""``resultstore demo``: the newcomer's first run, end to end, with no configuration."""

from __future__ import annotations

import json
import re
from pathlib import Path

from cli_harness import Cli, clean_env

TASKS = ["aggregate", "extract", "late", "publish", "transform"]


def _run_id(output: str) -> str:
    found = re.search(r"run id\s+(\S+)", output)
    assert found, output
    return found.group(1)


def test_demo_runs_on_the_local_default_with_no_configuration(tmp_path: Path) -> None:
    cli = Cli(env=clean_env(tmp_path), cwd=tmp_path, url="")  # HOME=tmp_path, no RESULTSTORE_*
    storage = tmp_path / ".resultstore" / "storage"

    out = cli.run("demo").stdout

    run_id = _run_id(out)
    records = storage / "demo" / run_id
    assert sorted(p.name for p in records.iterdir()) == [f"{task}.rsr" for task in TASKS]
    assert storage.as_uri() in out and str(records) in out
    assert "publish    FAILED     ConnectionRefusedError" in out
    assert "the second process (pid" in out and 'fetched it with get_state_result: {"Lisbon"' in out
    late = next(line for line in out.splitlines() if "retried read returned" in line)
    assert '{"report": "daily revenue", "cities": 2}' in late
    assert re.search(r"after [1-9]\d* failed attempt", late), late
    # What the demo suggests next works, on the same default storage.
    prefix = f"demo/{run_id}/"
    assert json.loads(cli.run("get", prefix + "aggregate").stdout) == {
        "Lisbon": 62.4,
        "Porto": 17.1,
    }
    cli.fails("get", prefix + "publish", code=3, says=["ConnectionRefusedError", "--format repr"])
    failure = cli.run("get", prefix + "publish", "--format", "repr").stdout
    assert failure.startswith("ConnectionRefusedError('reporting service")
    assert "5 ok, 0 failed" in cli.run("check", prefix).stdout


def test_demo_on_s3(file_cli: Cli, s3_env: dict[str, str], s3_url: str) -> None:
    cli = Cli(env={**file_cli.env, **s3_env}, cwd=file_cli.cwd, url=s3_url)

    out = cli.run("demo", "--storage", s3_url).stdout

    assert f"storage  {s3_url}" in out and "retried read returned" in out
    listed = cli.run("--storage", s3_url, "ls", "--json", f"demo/{_run_id(out)}/").stdout
    assert len(listed.splitlines()) == len(TASKS)
    assert f"resultstore --storage {s3_url} ls demo/" in out


def test_the_demo_runs_where_an_event_loop_runs_as_in_a_notebook(tmp_path: Path) -> None:
    # A notebook runs cells inside an event loop: run_demo, a sync function, must still
    # fetch each task's value (the reference's get_state_result returns it unfetched there).
    import asyncio

    from resultstore.demo import run_demo

    lines: list[str] = []

    async def cell() -> None:
        run_demo((tmp_path / "storage").as_uri(), echo=lines.append)

    asyncio.run(cell())
    out = "\n".join(lines)
    assert "aggregate  COMPLETED" in out and "Lisbon" in out
    assert "re-raises its ConnectionRefusedError" in out
