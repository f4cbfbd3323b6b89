"""Racing conditional writers for the resultstore-sqlite tests, in threads of one process.

Run as a script (``python sqlite_raceworker.py MODE URL KEY THREADS ROUNDS GO NAME``) so the
tests can start several such processes at once, or call :func:`race` in the test's own
process. Every thread waits for the file ``GO`` to appear, then:

- ``create``: writes its own value under ``KEY`` with ``if_absent=True``, once;
- ``increment``: ``ROUNDS`` times, reads the counter under ``KEY`` with its version and writes
  the counter plus one with ``if_version=`` that version, reading again after each conflict.

It prints (as a script) or returns a JSON-able summary: the values that won a create, how
many lost, how many increments landed, how many conflicts were retried, and any errors.
"""

from __future__ import annotations

# Imported before the threads start: the first sync calls of many threads at once otherwise
# race on asyncio's first import in the core (resultstore's sync bridge looks it up in
# sys.modules).
import asyncio  # noqa: F401
import json
import os
import sys
import threading
import time
from typing import Any

from resultstore import resolve_store
from resultstore.errors import ResultExistsError, VersionConflictError
from resultstore.stores.base import Payload, Store
from resultstore.testing import run


async def _read(store: Store, key: str) -> tuple[bytes, str | None]:
    reader = await store.open(key)
    try:
        return await reader.read(), reader.version
    finally:
        await reader.aclose()


def _wait_for(go: str) -> None:
    deadline = time.monotonic() + 120
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{go} never appeared")
        time.sleep(0.001)


def race(mode: str, url: str, key: str, threads: int, rounds: int, go: str, name: str) -> Any:
    """Run ``threads`` racing writers against ``url``; a summary of what each got."""
    store = resolve_store(url)
    lock = threading.Lock()
    summary: dict[str, Any] = {"won": [], "lost": 0, "landed": 0, "conflicts": 0, "errors": []}

    def create(value: bytes) -> None:
        try:
            run(store.write(key, Payload([value]), if_absent=True))
        except ResultExistsError:
            with lock:
                summary["lost"] += 1
        else:
            with lock:
                summary["won"].append(value.decode())

    def increment() -> None:
        for _ in range(rounds):
            while True:
                data, version = run(_read(store, key))
                assert version is not None, "a counter without a version"
                try:
                    run(store.write(key, Payload([b"%d" % (int(data) + 1)]), if_version=version))
                except VersionConflictError:
                    with lock:
                        summary["conflicts"] += 1
                    continue
                with lock:
                    summary["landed"] += 1
                break

    def worker(index: int) -> None:
        try:
            _wait_for(go)
            if mode == "create":
                create(f"{name}-{index}".encode())
            else:
                increment()
        except BaseException as exc:  # reported to the test
            with lock:
                summary["errors"].append(f"{type(exc).__name__}: {exc}")
        finally:
            run(store.aclose())  # this thread's connections

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return summary


if __name__ == "__main__":
    mode, url, key, threads, rounds, go, name = sys.argv[1:8]
    print(json.dumps(race(mode, url, key, int(threads), int(rounds), go, name)))
