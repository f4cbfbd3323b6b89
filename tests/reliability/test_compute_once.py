"""Compute once across processes, process deaths and a faulty network.

- 8 processes ask for the same 50 keys with ``get_or_compute``, each in its own order:
  every key is computed exactly once, counted by lines appended to a file per key
  outside the store (tests/reliability/compute_once_worker.py).
- A holder SIGKILLed mid-computation: a waiting process finishes within the
  lease's hold_timeout plus SLACK.
- Through the fault proxy (connection resets before and after the server acted, 500s
  and 503s, on the conditional PUTs and on reads): every value returned or stored is
  whole and right. Where a computation may run twice is documented in the README's
  "Compute once": a caller that fails outright (its error reaches it) leaves its lease
  to expire, and a waiter then computes again; such repeats are counted, not forbidden.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from faultproxy import FaultProxy
from lockstores import locks_redis, url_for  # noqa: F401 - fixtures
from resultstore import ResultStore, RetryPolicy, StorageError
from seaweedfs import SeaweedFS

# Deadlines and leases measured in elapsed time: run alone (scripts/check.sh), not
# beside parallel workers that share the machine's cores.
pytestmark = pytest.mark.serial

WORKER = Path(__file__).with_name("compute_once_worker.py")
PROCESSES = 8
KEYS = 50
HOLD_TIMEOUT = 1.5
SLACK = 1.5
"""Past the lease's expiry: the clock margin (0.1 s), a waiter's last pause, the
quick computation and its write, and a loaded 2-core machine's scheduling."""


@pytest.fixture(params=["file", "s3"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh URL that several processes can share."""
    return url_for(str(request.param), request, tmp_path)


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_ready(worker: subprocess.Popen[str]) -> None:
    assert worker.stdout is not None
    line = worker.stdout.readline().strip()
    if line != "ready":
        _, stderr = worker.communicate(timeout=30)
        pytest.fail(f"worker {worker.pid} did not start: {line!r} {stderr[-2000:]}")


def _finish(worker: subprocess.Popen[str]) -> dict[str, Any]:
    stdout, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 0, stderr[-3000:]
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


def test_eight_processes_compute_each_of_fifty_keys_once(shared_url: str, tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    go = tmp_path / "go"
    workers = [
        _start("many", shared_url, str(markers), str(KEYS), str(seed), str(go))
        for seed in range(PROCESSES)
    ]
    try:
        for worker in workers:
            _wait_ready(worker)
        go.touch()
        results = [_finish(worker) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    expected = {f"k/{n}": f"value of k/{n}" for n in range(KEYS)}
    for result in results:
        assert result["values"] == expected  # every process got every value, right
    runs = {path.name: len(path.read_text().splitlines()) for path in markers.iterdir()}
    assert runs == {f"k-{n}": 1 for n in range(KEYS)}  # each computed exactly once
    computers = Counter(
        path.read_text().strip() for path in markers.iterdir()
    )  # which pids computed: spread over the processes, not all in one
    assert len(computers) > 1
    with ResultStore(shared_url) as store:
        assert store.keys("k/") == sorted(expected)
        assert all(store.read(key).result == value for key, value in expected.items())
        assert not any(store.is_locked(key) for key in expected)


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_a_killed_holder_is_taken_over_within_hold_timeout(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = url_for(backend, request, tmp_path)
    markers = tmp_path / "markers"
    markers.mkdir()
    waiter = _start("wait", url, str(markers), str(HOLD_TIMEOUT))
    holder = _start("slow", url, str(markers), str(HOLD_TIMEOUT))
    try:
        _wait_ready(waiter)
        deadline = time.monotonic() + 30
        while not (markers / "started").exists():
            assert time.monotonic() < deadline and holder.poll() is None, holder.communicate()
            time.sleep(0.005)
        holder.send_signal(signal.SIGKILL)
        killed = time.time()
        holder.wait(timeout=10)
        result = _finish(waiter)
    finally:
        for worker in (waiter, holder):
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    assert result["value"] == "from the survivor"
    took = result["finished"] - killed
    assert took < HOLD_TIMEOUT + SLACK, f"the survivor finished {took:.2f}s after the kill"
    assert (markers / "took-over").read_text().count("\n") == 1
    with ResultStore(url) as store:
        assert store.read("slow").result == "from the survivor"
        assert not store.is_locked("slow")


# -- through the fault proxy ------------------------------------------------------------

FAULTS = ("reset_before", "reset_mid", "http_500", "http_503")


@pytest.fixture
def proxy(s3_server: SeaweedFS) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", s3_server.s3_port, kinds=FAULTS, seed=15) as p:
        yield p


def _store_through(scheme: str, proxy: FaultProxy, server: SeaweedFS, bucket: str) -> ResultStore:
    """A store whose S3 client reaches the server through ``proxy``, retrying once itself.

    The client's own retry resends a conditional PUT whose answer was lost: after a
    ``reset_mid`` the server says 412, and the lease logic must see its own write.
    """
    options = server.storage_options()
    options["client_kwargs"] = {**options["client_kwargs"], "endpoint_url": proxy.url}
    if scheme == "s3":
        options["config_kwargs"] = {
            **options["config_kwargs"],
            "connect_timeout": 2,
            "read_timeout": 2,
            "retries": {"max_attempts": 2, "mode": "standard"},
        }
    else:
        options["client_options"] = {"connect_timeout": "2s", "read_timeout": "2s"}
        options["retry_config"] = {"max_retries": 1}
    store = ResultStore(
        f"{scheme}://{bucket}/once-{uuid.uuid4().hex[:10]}",
        storage_options=options,
        retry=RetryPolicy(attempts=4, delay=0.02),
    )
    store.lock_clock_margin = 0.1
    return store


@pytest.mark.parametrize("scheme", ["s3", "s3+obstore"])
def test_under_network_faults_results_are_never_torn_or_lost(
    scheme: str, proxy: FaultProxy, s3_server: SeaweedFS, s3_bucket: str
) -> None:
    store = _store_through(scheme, proxy, s3_server, s3_bucket)
    keys = [f"f/{n}" for n in range(12)]
    runs: Counter[str] = Counter()
    returned: list[tuple[str, Any]] = []
    errors: list[StorageError] = []
    guard = threading.Lock()

    def compute(key: str) -> dict[str, Any]:
        with guard:
            runs[key] += 1
        time.sleep(0.01)
        return {"key": key, "payload": key.encode() * 200}

    def worker(order: list[str]) -> None:
        for key in order:
            try:
                value = store.get_or_compute(key, compute, key, hold_timeout=2.0)
            except StorageError as exc:  # one clear error, after its retries; never a bad value
                with guard:
                    errors.append(exc)
                continue
            with guard:
                returned.append((key, value))

    proxy.fault_rate = 0.15
    threads = [
        threading.Thread(target=worker, args=(keys[i:] + keys[:i],)) for i in range(0, 12, 3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive()
    faults = proxy.faults
    proxy.fault_rate = 0.0

    for key, value in returned:
        assert value == {"key": key, "payload": key.encode() * 200}
    for key in keys:
        if runs[key]:  # computed at least once: its value is stored, whole
            assert store.read(key).result == {"key": key, "payload": key.encode() * 200}
    assert faults > 10, (proxy.counts, len(errors), [str(e) for e in errors[:3]])
    assert len(returned) + len(errors) == 4 * len(keys)
    assert len(returned) >= len(keys)  # most calls succeed despite the faults
    twice = sorted(key for key, count in runs.items() if count > 1)
    print(f"{scheme}: {faults} faults, {len(errors)} errors, computed twice: {twice}")
    # What the faults left behind: nothing holds a lock longer than its lease.
    assert all(store.wait_for_lock(key, timeout=2.0 + 0.1 + 0.5) for key in keys)
    store.close()


def test_under_network_faults_a_lock_excludes(
    proxy: FaultProxy, s3_server: SeaweedFS, s3_bucket: str
) -> None:
    """Lease writes fail and land without answers; no two holders are ever inside at once."""
    store = _store_through("s3", proxy, s3_server, s3_bucket)
    inside: list[int] = []
    overlaps: list[int] = []
    entered: list[int] = []
    failures: list[BaseException] = []

    def worker() -> None:
        for _ in range(3):
            try:
                with store.lock("mutex", hold_timeout=10):
                    inside.append(1)
                    if len(inside) > 1:
                        overlaps.append(len(inside))
                    entered.append(1)
                    time.sleep(0.01)
                    inside.pop()
            except StorageError as exc:  # acquire or release failed for good: said so
                failures.append(exc)

    proxy.fault_rate = 0.2
    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    proxy.fault_rate = 0.0
    assert overlaps == []
    assert len(entered) >= 5, failures
    store.close()
