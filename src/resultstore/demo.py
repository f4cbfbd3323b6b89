"""``resultstore demo``: a small pipeline whose results outlive the process that made them.

Four tasks (plain functions) run in order: ``extract`` -> ``transform`` ->
``aggregate`` -> ``publish``, and the last one fails. Each outcome becomes a
State through the ``states`` API (``return_value_to_state`` /
``exception_to_failed_state``) and its value is persisted under
``demo/<run-id>/<task>``. Then:

1. the aggregate's State travels as JSON to a second Python process, which
   fetches the value with ``get_state_result``, knowing nothing but the JSON;
2. a State is sent *before* its result is written: the second process's read is
   retried until the result lands about a second later;
3. two worker processes ask for one result at the same moment with
   ``get_or_compute``: one computes it while the other waits, then reads it.

It needs no configuration (the local default ``~/.resultstore/storage``, or
``RESULTSTORE_STORAGE_URL``), prints each step and where the records live, and
takes a few seconds. Records expire after a week: ``resultstore gc`` removes them.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from resultstore._loops import run_sync
from resultstore.errors import ResultStoreError
from resultstore.result_store import ResultStore
from resultstore.results import PersistedResult
from resultstore.settings import get_settings
from resultstore.stores.file import FileStore
from states import (
    Completed,
    State,
    aget_state_result,
    exception_to_failed_state,
    return_value_to_state,
)

__all__ = ["DemoError", "DemoReport", "run_demo"]


def _result_of(state: State[Any]) -> Any:
    """``get_state_result(state)`` as sync code gets it, even where an event loop runs
    (a notebook): there, the reference's ``get_state_result`` returns ``state.data``
    unfetched, by its async calling convention."""
    return run_sync(aget_state_result(state))


Echo = Callable[[str], None]

EXPIRES_AFTER = datetime.timedelta(days=7)
LATE_WRITE_DELAY = 1.0
"""Seconds between the second process starting its read and the late result landing."""
_MIN_RETRY_WINDOW = 2.0
"""The second process must keep retrying at least this long to see the late result."""


class DemoError(ResultStoreError):
    """The demo could not complete a step (the message says which, and why)."""


# --- the pipeline: plain functions ----------------------------------------------------


def extract() -> list[dict[str, Any]]:
    """Orders as a source system hands them over: strings, and one without an amount."""
    return [
        {"order": 1001, "city": "Lisbon", "amount": "19.90"},
        {"order": 1002, "city": "Porto", "amount": "5.00"},
        {"order": 1003, "city": "Lisbon", "amount": "42.50"},
        {"order": 1004, "city": "Faro", "amount": None},
        {"order": 1005, "city": "Porto", "amount": "12.10"},
    ]


def transform(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop orders without an amount and turn amounts into numbers."""
    return [{**row, "amount": float(row["amount"])} for row in rows if row["amount"] is not None]


def aggregate(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Revenue per city."""
    totals: dict[str, float] = {}
    for row in rows:
        totals[row["city"]] = round(totals.get(row["city"], 0.0) + row["amount"], 2)
    return dict(sorted(totals.items()))


def publish(totals: dict[str, float]) -> None:
    """Send the totals to a reporting service, which is down: this task fails."""
    raise ConnectionRefusedError(
        f"reporting service reports.example.internal:443 refused {len(totals)} totals"
    )


# --- running tasks --------------------------------------------------------------------


@dataclass
class _TaskResults:
    """A result factory that files a task's outcome under the task's own key.

    ``exception_to_failed_state`` takes no key, so a failure would otherwise be
    stored under a random one.
    """

    store: ResultStore
    key: str
    expiration: datetime.datetime

    def create_result(
        self,
        obj: Any,
        key: str | None = None,
        expiration: datetime.datetime | None = None,
    ) -> PersistedResult:
        """Wrap ``obj`` for the task's key (or ``key``), expiring with the demo run."""
        return self.store.create_result(
            obj, key=key or self.key, expiration=expiration or self.expiration
        )


class _WriteFailures(logging.Handler):
    """Catches the warning ``states`` logs when it cannot persist a result.

    A run goes on when its result cannot be stored; the demo instead stops with
    that error (one line, the CLI's exit code for it), since showing stored
    results is its point.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        self.errors += [arg for arg in args if isinstance(arg, BaseException)]


def _run_task(results: _TaskResults, fn: Callable[..., Any], *args: Any) -> State[Any]:
    """Call ``fn`` and turn what it returned or raised into a State, persisting the value."""
    logger = logging.getLogger("states")
    failures = _WriteFailures()
    logger.addHandler(failures)
    propagate, logger.propagate = logger.propagate, False
    try:
        try:
            value = fn(*args)
        except Exception as exc:
            state = run_sync(exception_to_failed_state(exc, results, write_result=True))
        else:
            state = run_sync(return_value_to_state(value, results, write_result=True))
    finally:
        logger.removeHandler(failures)
        logger.propagate = propagate
    if failures.errors:
        raise failures.errors[0]
    return state


# --- the second process ---------------------------------------------------------------

CHILD = [sys.executable, "-m", "resultstore._demo_child"]
"""The other processes' command line: the real module :mod:`resultstore._demo_child`."""


def _child_env(storage_url: str, storage_options: Mapping[str, Any]) -> dict[str, str]:
    """The second process's environment: ours, plus what it needs to reach the store.

    A State's JSON is untrusted input, so the consumer reads references only from
    storage it allows: ``RESULTSTORE_REFERENCE_URLS`` names the demo's store.
    """
    env = dict(os.environ)
    env["RESULTSTORE_REFERENCE_URLS"] = storage_url
    if storage_options:
        env["RESULTSTORE_STORAGE_OPTIONS"] = json.dumps(dict(storage_options))
    settings = get_settings()
    if settings.read_attempts * settings.read_retry_delay < _MIN_RETRY_WINDOW:
        env["RESULTSTORE_READ_ATTEMPTS"] = "20"
        env["RESULTSTORE_READ_RETRY_DELAY"] = "0.25"
    return env


def _start_child(state_json: str, env: Mapping[str, str]) -> subprocess.Popen[str]:
    """Start a fresh Python process that fetches the result of the State it is sent."""
    child = subprocess.Popen(
        [*CHILD, "fetch"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(env),
    )
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(state_json + "\n")
    child.stdin.flush()  # left open: communicate() closes it
    if child.stdout.readline().strip() != "reading":
        _child_failed(child)
    return child


def _child_failed(child: subprocess.Popen[str]) -> None:
    _, stderr = child.communicate(timeout=60)
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    why = lines[-1] if lines else f"exit status {child.returncode}"
    raise DemoError(f"the second process (pid {child.pid}) could not fetch the result: {why}")


COMPUTE_SECONDS = 0.5
"""How long the shared result takes to compute in the compute-once step."""


def _start_worker(
    storage_url: str, key: str, expiration: datetime.datetime, env: Mapping[str, str]
) -> subprocess.Popen[str]:
    """Start a worker process that asks for ``key`` with get_or_compute once told to go."""
    worker = subprocess.Popen(
        [*CHILD, "compute", storage_url, key, expiration.isoformat(), str(COMPUTE_SECONDS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(env),
    )
    assert worker.stdout is not None
    if worker.stdout.readline().strip() != "reading":
        _child_failed(worker)
    return worker


def _child_result(child: subprocess.Popen[str]) -> dict[str, Any]:
    stdout, _ = child.communicate(timeout=60)
    if child.returncode != 0 or not stdout.strip():
        _child_failed(child)
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


# --- the demo -------------------------------------------------------------------------


@dataclass
class DemoReport:
    """What a demo run did: where, under which keys, and what the other processes saw."""

    run_id: str
    storage_url: str
    keys: list[str] = field(default_factory=list)
    fetched: Any = None
    late_fetched: Any = None
    computed_once: list[dict[str, Any]] = field(default_factory=list)


def _short(value: Any, limit: int = 90) -> str:
    text = json.dumps(value, default=repr)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(value: Any) -> str:
    return f"{len(value)} rows" if isinstance(value, list) else _short(value)


def run_demo(
    storage: str | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
    echo: Echo = print,
) -> DemoReport:
    """Run the demo against ``storage`` (default: the configured default store)."""
    options = dict(storage_options or {})
    started = time.monotonic()
    run_id = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)
    prefix = f"demo/{run_id}/"
    expiration = datetime.datetime.now(datetime.timezone.utc) + EXPIRES_AFTER

    def say(text: str = "") -> None:
        echo(text)
        if hasattr(sys.stdout, "flush"):
            sys.stdout.flush()

    def at() -> str:
        return f"[{time.monotonic() - started:4.1f}s]"

    with ResultStore(storage, storage_options=options) as store:
        report = DemoReport(run_id=run_id, storage_url=store.storage_url)
        folder = store.store.root if isinstance(store.store, FileStore) else None
        say("resultstore demo: task results that outlive the process that made them")
        say(f"   storage  {store.storage_url}")
        say(f"   run id   {run_id}")
        store.keys(prefix)  # fails early, with a clear error, if the storage is unreachable
        env = _child_env(store.storage_url, {**get_settings().storage_options, **options})

        say()
        say(f"1. Four tasks run; each outcome becomes a State, its value stored as {prefix}<task>")
        upstream: Any = None
        states: dict[str, State[Any]] = {}
        steps: list[tuple[str, Callable[..., Any]]] = [
            ("extract", extract),
            ("transform", transform),
            ("aggregate", aggregate),
            ("publish", publish),
        ]
        for name, fn in steps:
            key = prefix + name
            state = _run_task(
                _TaskResults(store, key, expiration), fn, *(() if upstream is None else (upstream,))
            )
            states[name] = state
            if not store.exists(key):
                raise DemoError(f"the result of task {name!r} was not written to {key!r}")
            report.keys.append(key)
            if state.is_completed():
                upstream = _result_of(state)
                say(f"   {name:<10} {state.type.value:<10} {_describe(upstream)}")
            else:
                say(f"   {name:<10} {state.type.value:<10} {(state.message or '').strip()}")
        try:
            _result_of(states["publish"])
        except Exception as exc:
            say(f"   get_state_result() on the failed state re-raises its {type(exc).__name__}")
        else:
            raise DemoError("get_state_result() on the failed state returned instead of raising")

        say()
        say("2. Send the aggregate's State as JSON to a second Python process")
        state_json = states["aggregate"].model_dump_json()
        reference = json.loads(state_json)["data"]
        say(f"   the JSON holds only a reference: {json.dumps(reference)}")
        child = _start_child(state_json, env)
        fetched = _child_result(child)
        report.fetched = fetched["value"]
        say(
            f"   the second process (pid {fetched['pid']}) fetched it with get_state_result: "
            f"{_short(fetched['value'])}"
        )

        say()
        say("3. A late result: the State is sent before its value is written")
        late_key = prefix + "late"
        late_value = {"report": "daily revenue", "cities": len(report.fetched or {})}
        late = store.create_result(late_value, key=late_key, expiration=expiration)
        late_state: State[Any] = Completed(data=late)
        child = _start_child(late_state.model_dump_json(), env)
        try:
            say(f"   {at()} the second process (pid {child.pid}) reads {late_key}: not there yet")
            time.sleep(LATE_WRITE_DELAY)
            late.write()
            report.keys.append(late_key)
            say(f"   {at()} wrote {late_key}")
            fetched = _child_result(child)
        finally:
            if child.poll() is None:  # only when something above failed
                child.kill()
                child.communicate()
        report.late_fetched = fetched["value"]
        say(
            f"   {at()} the second process's retried read returned {_short(fetched['value'])} "
            f"after {fetched['failed_attempts']} failed attempt(s) over {fetched['seconds']}s"
        )

        say()
        shared_key = f"demo/{run_id}-shared"  # beside the run's folder, not in it
        say(f"4. Compute once: two worker processes ask for {shared_key} at the same moment")
        workers = [_start_worker(store.storage_url, shared_key, expiration, env) for _ in range(2)]
        try:
            for worker in workers:
                assert worker.stdin is not None
                worker.stdin.write("go\n")
                worker.stdin.flush()
            report.computed_once = [_child_result(worker) for worker in workers]
        finally:
            for worker in workers:
                if worker.poll() is None:  # only when something above failed
                    worker.kill()
                    worker.communicate()
        for seen in report.computed_once:
            did = "computed it" if seen["computed"] else "waited, then read it"
            say(f"   worker pid {seen['pid']:<7} {did:<21} in {seen['seconds']}s")
        count = sum(seen["computed"] for seen in report.computed_once)
        say(f"   computed {count} time(s); the lock was a lease record in the store itself")

        say()
        if folder is not None:
            say(f"5. The records are files in the folder {folder / prefix}")
        else:
            say(f"5. The records are in {store.storage_url}/{prefix}")
        for metadata in store.list(prefix):
            name = metadata.storage_key[len(prefix) :] + (".rsr" if folder is not None else "")
            say(f"   {name:<16} {metadata.size:>5} bytes of {metadata.serializer}")
        say(f"   They expire in {EXPIRES_AFTER.days} days ('resultstore gc' deletes them then).")

    hint = f" --storage {storage}" if storage else ""
    say()
    say(f"Done in {time.monotonic() - started:.1f}s. Try:")
    say(f"   resultstore{hint} ls {prefix}")
    say(f"   resultstore{hint} get {prefix}aggregate")
    say(f"   resultstore{hint} inspect {prefix}aggregate")
    say(f"   resultstore{hint} check {prefix}")
    return report
