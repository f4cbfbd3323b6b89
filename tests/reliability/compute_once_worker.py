"""A worker process for test_compute_once.py: asks for results with get_or_compute.

    python compute_once_worker.py many URL MARKERS KEYS SEED GO_FILE
        waits for GO_FILE, then asks for keys k/0..k/KEYS-1 in an order shuffled by
        SEED; each computation appends one line to MARKERS/<n> (O_APPEND, outside the
        store), so the lines of a file count how often its key was computed. Prints
        one JSON line: {"values": {key: value}}.

    python compute_once_worker.py slow URL MARKERS HOLD_TIMEOUT
        asks for the key "slow" with a computation that marks MARKERS/started and then
        sleeps for a minute (the test kills it meanwhile).

    python compute_once_worker.py wait URL MARKERS HOLD_TIMEOUT
        waits for MARKERS/started, then asks for "slow" with a quick computation and
        prints {"value": ..., "finished": <wall-clock time>}.

Every store is opened with a lock clock margin of 0.1 s (the default is 1 s).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

from resultstore import ResultStore

MARGIN = 0.1


def _mark(markers: Path, name: str) -> None:
    fd = os.open(markers / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)


def main(argv: list[str]) -> None:
    mode, url, markers = argv[0], argv[1], Path(argv[2])
    store = ResultStore(url)
    store.lock_clock_margin = MARGIN
    if mode == "many":
        count, seed, go = int(argv[3]), int(argv[4]), Path(argv[5])
        keys = [f"k/{n}" for n in range(count)]
        random.Random(seed).shuffle(keys)
        store.exists("k/warm-up")  # connect before the start
        print("ready", flush=True)
        while not go.exists():
            time.sleep(0.005)

        def compute(key: str) -> str:
            _mark(markers, key.replace("/", "-"))
            time.sleep(0.005)  # long enough for others to ask meanwhile
            return f"value of {key}"

        values = {key: store.get_or_compute(key, compute, key) for key in keys}
        print(json.dumps({"values": values}), flush=True)
    elif mode == "slow":

        def slow() -> str:
            _mark(markers, "started")
            time.sleep(60)
            return "from the killed process"  # pragma: no cover

        store.get_or_compute("slow", slow, hold_timeout=float(argv[3]))
    elif mode == "wait":
        store.exists("warm-up")
        print("ready", flush=True)
        while not (markers / "started").exists():
            time.sleep(0.005)

        def quick() -> str:
            _mark(markers, "took-over")
            return "from the survivor"

        value = store.get_or_compute("slow", quick, hold_timeout=float(argv[3]))
        print(json.dumps({"value": value, "finished": time.time()}), flush=True)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
