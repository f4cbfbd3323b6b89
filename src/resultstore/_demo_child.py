"""The other processes of ``resultstore demo``: run as ``python -m resultstore._demo_child``.

- ``fetch``: reads a State's JSON from stdin, says ``reading``, fetches its result
  with ``get_state_result`` (retrying until a late result lands) and prints one JSON
  line: its pid, the value, the failed attempts it saw and the seconds it took.
- ``compute URL KEY EXPIRATION SECONDS``: connects to the store, says ``reading``,
  waits for a line on stdin (so two workers start together), then asks for KEY with
  ``get_or_compute``, whose computation takes SECONDS, and prints one JSON line:
  its pid, whether it computed the value, the value and the seconds it took.

A real module rather than code in a string, so it is linted, type-checked and
importable by tests.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["compute", "fetch", "main"]


class _Retries(logging.Handler):
    """Counts the retry log lines of ``resultstore.retry``: the failed attempts."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def _say(obj: Any) -> None:
    print(obj if isinstance(obj, str) else json.dumps(obj, default=repr), flush=True)


def fetch() -> None:
    """Fetch the result of the State whose JSON is the first line of stdin."""
    from states import State, get_state_result

    retries = _Retries()
    log = logging.getLogger("resultstore.retry")
    log.setLevel(logging.DEBUG)
    log.addHandler(retries)
    state: State[Any] = State.model_validate_json(sys.stdin.readline())
    _say("reading")
    started = time.monotonic()
    value = get_state_result(state)
    _say(
        {
            "pid": os.getpid(),
            "value": value,
            "failed_attempts": retries.count,
            "seconds": round(time.monotonic() - started, 2),
        }
    )


def compute(url: str, key: str, expiration: str, seconds: float) -> None:
    """Ask for ``key`` with get_or_compute once told to go (a line on stdin)."""
    from resultstore import ResultStore

    store = ResultStore(url)
    store.exists(key)  # connected before the start signal
    _say("reading")
    sys.stdin.readline()  # both workers start together
    computed: list[bool] = []

    def summarize() -> dict[str, int]:
        computed.append(True)
        time.sleep(seconds)  # an expensive computation
        return {"computed by pid": os.getpid()}

    started = time.monotonic()
    when = datetime.datetime.fromisoformat(expiration)
    value = store.get_or_compute(key, summarize, expiration=when)
    _say(
        {
            "pid": os.getpid(),
            "computed": bool(computed),
            "value": value,
            "seconds": round(time.monotonic() - started, 2),
        }
    )


def main(argv: Sequence[str]) -> int:
    """Run the step ``argv[0]`` names (``fetch`` or ``compute``)."""
    if argv[:1] == ["fetch"] and len(argv) == 1:
        fetch()
        return 0
    if argv[:1] == ["compute"] and len(argv) == 5:
        compute(argv[1], argv[2], argv[3], float(argv[4]))
        return 0
    sys.stderr.write(
        "usage: python -m resultstore._demo_child fetch | compute URL KEY EXPIRATION SECONDS\n"
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
