"""Connections stay bounded and are closed: no descriptor creep, no "Unclosed client session".

Each event loop gets its own s3fs client. A sync call runs on its thread's private loop,
so a store used from many short-lived threads makes a client per thread: each must be
closed when its thread's loop goes, not left holding its connections. The README's
examples, run as written in a fresh interpreter with ``-W error``, print no warning.
"""

from __future__ import annotations

import gc
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from resultstore import ResultStore
from resultstore._loops import run_sync

README = Path(__file__).resolve().parents[2] / "README.md"
ROUNDS, THREADS = 3, 8  # each new thread pays a new S3 client (~0.2-0.6 s)


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def private_loops_shut_down_async_generators() -> bool:
    """Whether a thread's private loop closes its async generators when the thread ends.

    That is how the S3 store learns that a loop goes away (asyncio.run and anyio.run do
    it too): the sync bridge (``resultstore._loops``) must call
    ``loop.shutdown_asyncgens()`` before it closes a thread's loop.
    """
    finished: list[bool] = []
    kept: list[object] = []

    async def generator() -> object:
        try:
            yield None
        finally:
            finished.append(True)

    async def start() -> None:
        agen = generator()
        kept.append(agen)
        await agen.__anext__()  # type: ignore[attr-defined]

    thread = threading.Thread(target=lambda: run_sync(start()))
    thread.start()
    thread.join()
    gc.collect()
    return bool(finished)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts /proc/self/fd")
def test_short_lived_threads_hold_a_bounded_number_of_connections(s3_url: str) -> None:
    # How the S3 store learns that a thread's loop goes away, so it closes its client.
    assert private_loops_shut_down_async_generators()
    store = ResultStore(s3_url)
    store.write("warm", key="warm")  # the main thread's client and connection

    def work(number: int) -> None:
        store.write({"n": number}, key=f"threads/{number}")
        assert store.read(f"threads/{number}").result == {"n": number}

    counts = [open_descriptors()]
    for round_ in range(ROUNDS):
        threads = [
            threading.Thread(target=work, args=(round_ * THREADS + i,)) for i in range(THREADS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        gc.collect()
        counts.append(open_descriptors())

    print(f"open descriptors after each round of {THREADS} threads: {counts}")
    assert max(counts) - counts[0] <= 4, counts  # not 8 more each round
    assert len(store.store._clients) == 1  # type: ignore[attr-defined]
    assert len(store.keys("threads/")) == ROUNDS * THREADS
    store.close()


# -- the README's examples, as written ------------------------------------------------------


def readme_examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def example(marker: str) -> str:
    found = [code for code in readme_examples() if marker in code]
    assert found, f"no README example contains {marker!r}"
    return found[0]


def run_strict(code: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter where any warning is an error."""
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("RESULTSTORE_")}, **env},
        check=False,
    )


def assert_quiet(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode == 0, done.stderr
    assert "Unclosed" not in done.stderr and "ResourceWarning" not in done.stderr, done.stderr
    assert done.stderr == ""


def test_the_readme_file_example_runs_without_a_warning(tmp_path: Path) -> None:
    code = example('ResultStore("file:///tmp/results")')
    code = code.replace("file:///tmp/results", f"file://{tmp_path}/results")
    assert_quiet(run_strict(code + "\nprint(record.result)", {}))


def test_the_readme_s3_producer_and_consumer_run_without_a_warning(
    s3_url: str, s3_env: dict[str, str]
) -> None:
    producer, consumer = example("# producer").split("# consumer, elsewhere")
    producer = producer.replace("s3://my-bucket/results", s3_url)
    # What the README leaves to the reader: the work, and how the JSON travels.
    prelude = "import sys\ndef train():\n    return {'weights': [0.5, 0.25]}\nsend = print\n"
    made = run_strict(prelude + producer, s3_env)
    assert_quiet(made)

    receive = "import sys\nreceive = sys.stdin.read\n"
    allowed = {**s3_env, "RESULTSTORE_REFERENCE_URLS": s3_url}
    read = run_strict(receive + consumer + "\nprint(model)", allowed, stdin=made.stdout)
    assert_quiet(read)
    assert read.stdout.strip() == "{'weights': [0.5, 0.25]}"


def test_stores_share_botocore_s_parsed_models_not_their_sessions(s3_url: str) -> None:
    # A new session parses botocore's JSON models again (100-300 ms of CPU per store);
    # the loader that caches them is shared, each store keeping a session of its own.
    first, second = ResultStore(s3_url + "/a"), ResultStore(s3_url + "/b")
    try:
        first.write(1, key="k")
        second.write(2, key="k")
        sessions = [run_sync(store.store._fs()).session for store in (first, second)]  # type: ignore[attr-defined]
        assert sessions[0] is not sessions[1]
        loaders = [session.get_component("data_loader") for session in sessions]
        assert loaders[0] is loaders[1]
        assert (first.read("k").result, second.read("k").result) == (1, 2)
    finally:
        first.close()
        second.close()
