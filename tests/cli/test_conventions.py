"""Issue 17: honest exit codes, pipes, --json everywhere and the habits of aws and rclone.

Every test runs the real command line in a subprocess (``python -m resultstore``, the
console script's own code), as a script or a person at a shell would.
"""

from __future__ import annotations

import datetime
import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_harness import Cli

from ports import free_port
from resultstore import ResultStore

RESULTSTORE = [sys.executable, "-m", "resultstore"]


def _fill(url: str, count: int, prefix: str = "k/") -> None:
    """``count`` small records under ``prefix``, written without fsync (fast)."""
    with ResultStore(url, storage_options={"fsync": False}) as store:
        for i in range(count):
            store.write(i, key=f"{prefix}{i:05d}")


# --- honest outcomes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["ls"],
        ["ls", "--keys-only"],
        ["check"],
        ["gc"],
        ["gc", "--full"],
        ["rm", "-r", "runs/", "--yes"],
    ],
    ids=" ".join,
)
def test_a_file_store_whose_folder_does_not_exist_is_exit_4(
    file_cli: Cli, tmp_path: Path, args: list[str]
) -> None:
    missing = tmp_path / "no-such-folder"
    done = file_cli.fails(
        *args, code=4, env={"RESULTSTORE_STORAGE_URL": missing.as_uri()}, says=[str(missing)]
    )
    assert "does not exist" in done.stderr and done.stdout == ""
    assert not missing.exists()  # reading never creates it


def test_copy_from_a_folder_that_does_not_exist_copies_nothing_and_says_so(
    file_cli: Cli, tmp_path: Path
) -> None:
    src, dst = tmp_path / "typo", tmp_path / "dst"
    done = file_cli.fails("copy", src.as_uri(), dst.as_uri(), code=4, says=[str(src)])
    assert "copied" not in done.stdout and not dst.exists()


def test_a_missing_bucket_is_exit_4_for_every_command(
    file_cli: Cli, s3_env: dict[str, str], tmp_path: Path
) -> None:
    url = "s3://no-such-bucket-here/results"
    for args in (["ls"], ["check"], ["gc"], ["get", "k"], ["rm", "-r", "a", "--yes"]):
        file_cli.fails("--storage", url, *args, code=4, env=s3_env, says=["'no-such-bucket-here'"])
    file_cli.fails("copy", url, tmp_path.as_uri(), code=4, env=s3_env, says=["no-such-bucket"])


def _refused(scheme: str) -> tuple[str, dict[str, str]]:
    port = free_port()  # nothing listens on it
    if scheme == "s3":
        return "s3://some-bucket/results", {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "x",
            "AWS_SECRET_ACCESS_KEY": "y",
            "RESULTSTORE_STORAGE_OPTIONS": json.dumps(
                {"s3://": {"config_kwargs": {"retries": {"max_attempts": 1}}}}
            ),
        }
    path = "0" if scheme == "redis" else "results"  # a Redis URL names a database
    return f"{scheme}://127.0.0.1:{port}/{path}", {}


@pytest.mark.parametrize("scheme", ["s3", "ftp", "redis"])
@pytest.mark.parametrize("command", [["ls"], ["check"], ["get", "k"], ["put", "k", "--json", "1"]])
def test_connection_refused_is_exit_4_on_every_scheme(
    file_cli: Cli, scheme: str, command: list[str]
) -> None:
    if scheme == "redis":
        pytest.importorskip("resultstore_redis")
    url, env = _refused(scheme)
    env = {**env, "RESULTSTORE_READ_ATTEMPTS": "1", "RESULTSTORE_TIMEOUT": "20"}
    file_cli.fails("--storage", url, *command, code=4, env=env)


def test_ls_into_head_exits_quietly(file_cli: Cli) -> None:
    _fill(file_cli.url, 3000)  # more than a pipe holds, so ls is still writing
    for args in (["ls", "--keys-only"], ["ls"], ["--json", "ls"]):
        done = subprocess.run(
            f"{' '.join(RESULTSTORE)} {' '.join(args)} | head -1; "
            'echo "status=${PIPESTATUS[0]}" >&2',
            shell=True,
            executable="/bin/bash",
            env=file_cli.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert len(done.stdout.splitlines()) == 1
        lines = done.stderr.splitlines()
        assert lines[-1] in ("status=141", "status=0"), done.stderr  # 0: it had finished
        assert lines[:-1] == [], done.stderr  # no "unexpected error", no traceback


@pytest.mark.parametrize("command", ["copy", "check", "ls"])
def test_ctrl_c_prints_one_line_and_exits_130(file_cli: Cli, tmp_path: Path, command: str) -> None:
    _fill(file_cli.url, 3000)
    dst = tmp_path / "dst"
    args = {
        "copy": ["copy", file_cli.url, dst.as_uri()],
        "check": ["--json", "check"],
        "ls": ["ls"],
    }[command]
    with subprocess.Popen(
        [*RESULTSTORE, *args],
        env=file_cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        if command == "copy":
            deadline = time.monotonic() + 30
            while not (dst / "k").exists() and time.monotonic() < deadline:
                time.sleep(0.005)
        else:  # the first line: under way (and soon blocked on the full pipe)
            child.stdout.readline()
        child.send_signal(signal.SIGINT)
        stdout, stderr = child.communicate(timeout=60)
    assert child.returncode == 130, (stdout[-500:], stderr)
    assert stderr == "error: interrupted\n"
    if command == "copy":
        assert "copied" not in stdout


# --- pipes: see test_commands.py (get formats, -o -, --file - and --json -) ---------------


# --- conventions ----------------------------------------------------------------------


def test_version(file_cli: Cli) -> None:
    from importlib.metadata import version

    assert file_cli.run("--version").stdout == f"resultstore {version('resultstore')}\n"


def test_shell_completion_completes_commands_and_options(file_cli: Cli) -> None:
    def complete(words: str) -> list[str]:
        env = {
            **file_cli.env,
            "_RESULTSTORE_COMPLETE": "complete_bash",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
        }
        done = subprocess.run(
            [*RESULTSTORE], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        return done.stdout.split()

    assert {"gc", "get"} <= set(complete("resultstore g"))
    assert "--keys-only" in complete("resultstore ls --k")
    # The shell is named: typer's detection walks the process tree, which under a test
    # runner's workers may hold no shell at all.
    script = file_cli.run("--show-completion", "bash").stdout
    assert "_RESULTSTORE_COMPLETE" in script


def test_global_options_work_after_the_command(file_cli: Cli, tmp_path: Path) -> None:
    other = (tmp_path / "other").as_uri()
    file_cli.run("put", "k", "--json", "1", "--storage", other)
    assert file_cli.run("get", "k", "--storage", other).stdout == "1\n"
    assert file_cli.run("get", "k", f"--storage={other}").stdout == "1\n"
    file_cli.fails("get", "k", code=2)  # the default store has no k
    listed = file_cli.run("ls", "--storage", other, "--json").stdout
    assert json.loads(listed)["key"] == "k"
    assert "1 expired" not in file_cli.run("gc", "--storage", other, "--quiet").stdout
    # put's own --json is its value; the output --json goes before the command.
    stored = json.loads(
        file_cli.run("--json", "put", "j", "--json", "[1]", "--storage", other).stdout
    )
    assert stored == {"key": "j", "url": other, "serializer": "pickle", "expiration": None}
    # A value that looks like a global option stays a value.
    file_cli.run("put", "--storage", other, "s", "--json", '"--debug"')
    assert file_cli.run("get", "s", "--storage", other).stdout == "--debug"


def test_quiet_prints_only_data(file_cli: Cli, tmp_path: Path) -> None:
    assert file_cli.run("-q", "put", "k", "--json", "1").stdout == ""
    assert file_cli.run("put", "k2", "--json", "2", "--quiet").stdout == ""
    assert file_cli.run("get", "k", "-q").stdout == "1\n"  # the value is data
    assert file_cli.run("check", "-q").stdout == ""
    assert file_cli.run("gc", "-q").stdout == ""
    assert file_cli.run("copy", file_cli.url, (tmp_path / "c").as_uri(), "-q").stdout == ""
    assert file_cli.run("ls", "--keys-only", "-q").stdout == "k\nk2\n"
    assert file_cli.run("rm", "k2", "-q").stdout == ""


def test_rm_recursive_deletes_a_prefix_with_yes_and_refuses_without(file_cli: Cli) -> None:
    _fill(file_cli.url, 5, "runs/7/")
    _fill(file_cli.url, 2, "runs/8/")
    done = file_cli.fails("rm", "-r", "runs/7/", code=3, says=["--yes", "5 record(s)"])
    assert done.stdout == ""
    assert len(ResultStore(file_cli.url).keys("runs/7/")) == 5  # nothing deleted
    out = file_cli.run("rm", "--recursive", "runs/7/", "--yes").stdout
    assert out == f"deleted 5 record(s) under 'runs/7/' in {file_cli.url}\n"
    assert ResultStore(file_cli.url).keys() == ["runs/8/00000", "runs/8/00001"]
    file_cli.fails("rm", "-r", "runs/7/", "-y", code=2, says=["no records under 'runs/7/'"])
    lines = [
        json.loads(line)
        for line in file_cli.run("--json", "rm", "-r", "runs/", "-y").stdout.splitlines()
    ]
    assert [line.get("key") for line in lines[:-1]] == ["runs/8/00000", "runs/8/00001"]
    assert lines[-1] == {"summary": {"url": file_cli.url, "deleted": 2, "missing": 0}}


JSON_COMMANDS = {
    "put": ["--json", "put", "p", "--json", "1"],
    "get": ["get", "doc", "--json"],
    "ls": ["ls", "--json"],
    "ls keys": ["ls", "--keys-only", "--json"],
    "inspect": ["inspect", "doc", "--json"],
    "check": ["check", "--json"],
    "gc": ["gc", "--dry-run", "--json"],
    "copy": ["copy", "SRC", "DST", "--json"],
    "rm": ["rm", "p", "--json"],
    "stores": ["stores", "--json"],
}


@pytest.mark.parametrize("name", list(JSON_COMMANDS))
def test_json_output_on_every_command_is_json_lines_with_key_fields(
    file_cli: Cli, tmp_path: Path, name: str
) -> None:
    store = ResultStore(file_cli.url)
    store.write({"a": 1}, key="doc")
    store.write(
        1, key="old", expiration=datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    )
    if name == "rm":
        store.write(1, key="p")
    args = [
        {"SRC": file_cli.url, "DST": (tmp_path / "dst").as_uri()}.get(arg, arg)
        for arg in JSON_COMMANDS[name]
    ]
    lines = file_cli.run(*args).stdout.splitlines()
    parsed = [json.loads(line) for line in lines] if name != "get" else [json.loads("".join(lines))]
    assert parsed, lines
    text = "\n".join(lines)
    assert "storage_key" not in text and "storage_url" not in text
    if name in ("ls", "inspect"):
        assert all("key" in obj and "url" in obj and "size" in obj for obj in parsed)
    if name in ("check", "gc", "copy", "rm"):
        assert "summary" in parsed[-1]
        assert all({"key", "outcome", "size"} <= set(obj) for obj in parsed[:-1])
    if name == "get":
        assert parsed == [{"a": 1}]


def test_expires_in_takes_units(file_cli: Cli) -> None:
    cases = {"90s": 90, "30m": 1800, "12h": 43200, "7d": 604800, "1h30m": 5400, "45": 45}
    for spec, seconds in cases.items():
        before = datetime.datetime.now(datetime.timezone.utc)
        stored = json.loads(
            file_cli.run("--json", "put", f"k{spec}", "--json", "1", "--expires-in", spec).stdout
        )
        expiration = datetime.datetime.fromisoformat(stored["expiration"])
        left = (expiration - before).total_seconds()
        assert seconds - 1 <= left <= seconds + 30, (spec, left)
    for bad in ("soon", "-5", "5x", "", "h"):
        file_cli.fails(
            "put", "k", "--json", "1", "--expires-in", bad, code=3, says=["--expires-in", "90s"]
        )


def test_help_has_no_type_metavars_and_no_sentence_broken_mid_line(file_cli: Cli) -> None:
    from resultstore.cli._app import app  # noqa: F401  (the commands it lists)

    commands = ["put", "get", "ls", "inspect", "rm", "gc", "check", "copy", "import-prefect"]
    commands += ["stores", "demo"]
    for command in [[], *[[name] for name in commands]]:
        text = file_cli.run(*command, "--help", env={"COLUMNS": "80"}).stdout
        assert "<bool>" not in text and "<str>" not in text and "<list" not in text, text
        assert "{" not in text.split("\n", 1)[0], text  # usage line: KEY, not {KEY}
        for line in text.splitlines():
            assert len(line) <= 80, line
        for paragraph in text.split("\n\n"):
            lines = paragraph.splitlines()
            if not all(line.startswith("  ") and line[2:3].strip() for line in lines):
                continue  # not prose: the usage line, option lists
            for first, second in itertools.pairwise(lines):
                # Prose is re-wrapped to the width: a line ends only where the next
                # word would not fit (no sentence cut where the docstring's line was).
                assert len(first) + 1 + len(second.split()[0]) > 78, (first, second)
