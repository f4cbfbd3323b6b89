"""Count interpreter aborts of short S3 CLI runs, per S3 client.

A short process that uses obstore can abort at exit ("Fatal Python error: Aborted",
exit 134) when a Rust runtime thread is still handing a result back to Python while
the interpreter finalizes. This runs ``resultstore --storage s3://... get KEY`` (and,
with ``--script``, a three-line script doing the same) ``--runs`` times per client and
counts the aborts; the bar is 0 in 300 runs for every client.

    python benchmarks/aborts.py                     # a fresh local SeaweedFS, 300 runs each
    python benchmarks/aborts.py --runs 40 --clients obstore --script
    python benchmarks/aborts.py --s3-url s3://bucket/prefix   # an existing server (AWS_* env)

Exits 1 if any run aborted or failed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPT = (
    "import sys; from resultstore import ResultStore\n"
    "store = ResultStore(sys.argv[1])\n"
    "print(store.read(sys.argv[2]).result)\n"
)


@contextlib.contextmanager
def _target(url: str | None) -> Iterator[tuple[str, dict[str, str]]]:
    """An s3:// URL and the AWS_* variables that reach it: given, or a fresh SeaweedFS."""
    if url:
        yield url, {}
        return
    sys.path.insert(0, str(HERE.parent / "tests"))
    from seaweedfs import SeaweedFS

    with SeaweedFS() as server:
        server.create_bucket("aborts")
        yield f"s3://aborts/run-{uuid.uuid4().hex[:8]}", server.env()


def _one(argv: list[str], env: dict[str, str]) -> str:
    """Run once: ``ok``, ``abort`` or ``failed: <why>``."""
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)
    if done.returncode in (134, -6) or "Fatal Python error" in done.stderr:
        return "abort"
    printed = done.stdout.replace(" ", "").replace("\n", "")
    if done.returncode != 0 or printed not in ('{"rows":42}', "{'rows':42}"):
        tail = (done.stderr.strip().splitlines() or [""])[-1]
        return f"failed: exit {done.returncode}: {tail[:200]}"
    return "ok"


def count(
    label: str, argv: list[str], env: dict[str, str], runs: int, jobs: int
) -> dict[str, object]:
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        outcomes = Counter(pool.map(lambda _: _one(argv, env), range(runs)))
    seconds = time.perf_counter() - started
    row: dict[str, object] = {
        "run": label,
        "runs": runs,
        "aborts": outcomes.pop("abort", 0),
        "ok": outcomes.pop("ok", 0),
        "failed": dict(outcomes),
        "seconds_per_run": seconds * jobs / runs,
    }
    print(
        f"{label:44} {row['aborts']:>3} aborts in {runs} runs, {row['ok']} ok"
        + (f", failures: {row['failed']}" if outcomes else "")
        + f" ({row['seconds_per_run']:.2f} s a run)",
        flush=True,
    )
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=2, help="runs at once")
    parser.add_argument("--clients", default="s3fs,obstore")
    parser.add_argument("--script", action="store_true", help="also run the three-line script")
    parser.add_argument("--alias", action="store_true", help="also run s3+obstore:// URLs")
    parser.add_argument("--s3-url", default=None, help="existing s3://bucket/prefix (AWS_* env)")
    parser.add_argument("--json", default=None, help="write the counts here")
    args = parser.parse_args()

    rows = []
    with _target(args.s3_url) as (url, aws):
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESULTSTORE_")}
        env.update(aws)
        from resultstore import ResultStore

        with ResultStore(url, storage_options={"client": "s3fs"}) as store:
            store.write({"rows": 42}, key="k")
        for client in [c.strip() for c in args.clients.split(",") if c.strip()]:
            runs = [
                (f"{client}: resultstore get", [sys.executable, "-m", "resultstore"], url),
            ]
            if args.alias and client == "obstore":
                alias = url.replace("s3://", "s3+obstore://", 1)
                runs.append(("obstore: resultstore get (s3+obstore://)", runs[0][1], alias))
            for label, base, target in runs:
                argv = [*base, "--storage", target, "get", "k"]
                rows.append(
                    count(
                        label, argv, {**env, "RESULTSTORE_S3_CLIENT": client}, args.runs, args.jobs
                    )
                )
            if args.script:
                argv = [sys.executable, "-c", SCRIPT, url, "k"]
                rows.append(
                    count(
                        f"{client}: three-line script",
                        argv,
                        {**env, "RESULTSTORE_S3_CLIENT": client},
                        args.runs,
                        args.jobs,
                    )
                )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 1 if any(row["aborts"] or row["failed"] for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
