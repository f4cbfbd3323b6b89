"""Every operation ends in bounded time, against hostile loopback servers the tests start.

- an endpoint that accepts TCP connections and never answers (``HostileServer("silent")``),
- one that answers a byte every 0.3 s, so no idle timeout ever fires (``"trickle"``),
- a closed port: connection refused.

``RESULTSTORE_TIMEOUT`` (``ResultStore(timeout=...)``) bounds each operation, retries
included; ``RESULTSTORE_STALL_TIMEOUT`` fails a request that receives nothing for that
long. Both S3 stores and the generic fsspec store (FTP) are checked.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import anyio
import obstore  # noqa: F401 - imported up front: an import is not what these tests time
import pytest
import s3fs  # noqa: F401

from faultproxy import FaultProxy, HostileServer, point_s3_at
from ports import free_port
from resultstore import ResultStore, RetryPolicy, StorageUnavailableError
from resultstore.stores.memory import MemoryStore
from seaweedfs import SeaweedFS

# Deadlines and leases measured in elapsed time: run alone (scripts/check.sh), not
# beside parallel workers that share the machine's cores.
pytestmark = pytest.mark.serial

TIMEOUT = 2.0
BOUND = TIMEOUT * 1.1  # the target: the configured timeout + 10%
SCHEMES = ("s3", "s3+obstore")
OPERATIONS: dict[str, Callable[[ResultStore], object]] = {
    "exists": lambda store: store.exists("k"),
    "read": lambda store: store.read("k"),
    "write": lambda store: store.write({"some": "value"}, key="k"),
    "list": lambda store: store.keys(),
    "read_metadata": lambda store: store.read_metadata("k"),
}
ACTIONS = {
    "exists": "check",
    "read": "read",
    "write": "write",
    "list": "list",
    "read_metadata": "inspect",
}


def timed(action: Callable[[], object]) -> tuple[float, BaseException]:
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError) as caught:
        action()
    return time.monotonic() - started, caught.value


@pytest.fixture(params=["silent", "trickle"])
def hostile(request: pytest.FixtureRequest) -> Iterator[HostileServer]:
    with HostileServer(request.param) as server:
        yield server


@pytest.mark.parametrize("operation", list(OPERATIONS))
@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_server_that_never_answers_or_trickles_fails_within_the_timeout(
    scheme: str, operation: str, hostile: HostileServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    point_s3_at(monkeypatch, hostile.url)
    store = ResultStore(f"{scheme}://hostile-bucket/p", timeout=TIMEOUT)

    elapsed, error = timed(lambda: OPERATIONS[operation](store))

    assert elapsed <= BOUND, f"{operation} took {elapsed:.2f}s (bound {BOUND:.1f}s)"
    key = "*" if operation == "list" else "k"
    assert str(error) == (
        f"cannot {ACTIONS[operation]} key {key!r} in s3://hostile-bucket/p: no answer "
        "within 2 s (RESULTSTORE_TIMEOUT); check the endpoint and the network"
    )
    assert hostile.connections >= 1
    if hostile.mode == "trickle":
        assert hostile.sent > 0  # the client kept receiving: only the timeout could stop it


@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_timeout_comes_from_the_environment(
    scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESULTSTORE_TIMEOUT", "1.5")
    with HostileServer("silent") as server:
        point_s3_at(monkeypatch, server.url)
        store = ResultStore(f"{scheme}://hostile-bucket/p")
        elapsed, error = timed(lambda: store.exists("k"))
    assert store.timeout == 1.5
    assert elapsed <= 1.5 * 1.1
    assert "no answer within 1.5 s (RESULTSTORE_TIMEOUT)" in str(error)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_stalled_request_fails_after_the_stall_timeout_and_is_retried(
    scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # RESULTSTORE_STALL_TIMEOUT is the clients' read timeout: a silent server fails each
    # attempt after 1 s, well before the overall timeout, and the retry policy gives up.
    monkeypatch.setenv("RESULTSTORE_STALL_TIMEOUT", "1")
    with HostileServer("silent") as server:
        point_s3_at(monkeypatch, server.url)
        store = ResultStore(
            f"{scheme}://hostile-bucket/p", timeout=30, retry=RetryPolicy(attempts=2, delay=0.1)
        )
        elapsed, error = timed(lambda: store.exists("k"))
    assert 2.0 <= elapsed < 4.0
    message = str(error)
    assert message.startswith("cannot check key 'k' in s3://hostile-bucket/p: ")
    assert "unavailable" in message and "gave up after 2 attempts" in message
    assert "\n" not in message
    assert server.connections == 2


HEAD_ONLY = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\nContent-Type: binary/octet-stream\r\n\r\n"
)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_body_that_stops_arriving_fails_after_the_stall_timeout(
    scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The response head arrives at once, then not a byte of the body: the stream read stalls.
    monkeypatch.setenv("RESULTSTORE_STALL_TIMEOUT", "1")
    with HostileServer("silent", replies={b"GET ": HEAD_ONLY}) as server:
        point_s3_at(monkeypatch, server.url)
        store = ResultStore(f"{scheme}://hostile-bucket/p", timeout=30)
        elapsed, error = timed(lambda: store.read("k", retry=False))
    # Cut off by the 1 s stall timeout, far before the 30 s one (the slack is for the
    # client's first connection on a loaded machine: the suite runs in parallel).
    assert 0.9 <= elapsed < 5.0
    assert str(error).startswith("cannot read key 'k' in s3://hostile-bucket/p: ")
    assert "unavailable" in str(error)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_refused_connection_fails_in_under_five_seconds_with_default_settings(
    scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    point_s3_at(monkeypatch, f"http://127.0.0.1:{free_port()}")  # nobody listens there
    store = ResultStore(f"{scheme}://hostile-bucket/p")  # default timeout and retry policy

    elapsed, error = timed(lambda: store.read("some/key"))

    assert elapsed < 5.0
    message = str(error)
    assert "'some/key'" in message and "unavailable" in message and "\n" not in message
    assert "gave up after 10 attempts" in message  # every retry ran, none of the clients'


def test_a_multipart_write_cut_off_by_the_timeout_is_aborted(
    s3_server: SeaweedFS, s3_bucket: str
) -> None:
    # The upload begins, then every part PUT stalls: at the timeout the write fails, its
    # upload is aborted (shielded, at most 5 s), and the store goes on working.
    with FaultProxy(
        "127.0.0.1", s3_server.s3_port, kinds=("stall",), methods={"PUT"}, stall_seconds=10
    ) as proxy:
        options = s3_server.storage_options()
        options["client_kwargs"] = {**options["client_kwargs"], "endpoint_url": proxy.url}
        prefix = f"cut-{uuid.uuid4().hex[:8]}"
        store = ResultStore(
            f"s3://{s3_bucket}/{prefix}",
            storage_options={**options, "part_size": 5 * 1024 * 1024},
            timeout=TIMEOUT,
        )
        proxy.fault_rate = 1.0
        elapsed, error = timed(lambda: store.write(b"x" * (12 * 1024 * 1024), key="big"))
        proxy.fault_rate = 0.0
        store.write("small", key="after")
        assert store.read("after").result == "small"
    assert elapsed <= BOUND
    assert "no answer within 2 s" in str(error)
    uploads = s3_server.client().list_multipart_uploads(Bucket=s3_bucket, Prefix=prefix + "/")
    assert uploads.get("Uploads", []) == []


# -- the generic fsspec store: FTP --------------------------------------------------------

FTP_LOGIN = {b"USER": b"331 password please\r\n", b"PASS": b"230 logged in\r\n"}


def test_an_ftp_server_that_never_greets_fails_within_the_stall_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RESULTSTORE_STALL_TIMEOUT", "1")
    with HostileServer("silent") as server:
        elapsed, error = timed(lambda: ResultStore(f"ftp://alice:pw@127.0.0.1:{server.port}/r"))
    assert elapsed < 1.5
    message = str(error)
    assert message.startswith(f"cannot connect to ftp://127.0.0.1:{server.port}/r: ")
    assert "pw" not in message and "\n" not in message


@pytest.mark.parametrize("operation", ["exists", "read", "write", "list"])
def test_an_ftp_server_that_stops_answering_fails_within_the_timeout(operation: str) -> None:
    # Logged in, then silent: each call is left to its socket timeout (the stall timeout,
    # 30 s) in its worker thread, and the operation gives up at its own timeout.
    with HostileServer("silent", greeting=b"220 hostile\r\n", replies=FTP_LOGIN) as server:
        store = ResultStore(f"ftp://alice:pw@127.0.0.1:{server.port}/r", timeout=TIMEOUT)
        elapsed, error = timed(lambda: OPERATIONS[operation](store))
    assert elapsed <= BOUND, f"{operation} took {elapsed:.2f}s (bound {BOUND:.1f}s)"
    assert "no answer within 2 s (RESULTSTORE_TIMEOUT)" in str(error)


# -- the timeout itself, on a store that hangs ----------------------------------------------


class HangingStore(MemoryStore):
    """A memory store whose ``exists`` waits ``hang`` seconds first."""

    def __init__(self, url: str, hang: float = 3600.0) -> None:
        super().__init__(url)
        self.hang = hang

    async def exists(self, key: str) -> bool:
        await anyio.sleep(self.hang)
        return await super().exists(key)


def hanging(timeout: float, hang: float = 3600.0) -> ResultStore:
    return ResultStore(HangingStore(f"memory://hang-{uuid.uuid4().hex}", hang), timeout=timeout)


def test_a_hanging_store_fails_at_the_timeout_with_one_line() -> None:
    store = hanging(0.3)
    elapsed, error = timed(lambda: store.exists("a/b"))
    assert 0.3 <= elapsed < 0.45
    assert str(error) == (
        f"cannot check key 'a/b' in {store.storage_url}: no answer within 0.3 s "
        "(RESULTSTORE_TIMEOUT); check the endpoint and the network"
    )
    assert (getattr(error, "key", None), getattr(error, "url", None)) == ("a/b", store.storage_url)


def test_a_timed_out_task_carries_on_as_usual() -> None:
    # The timeout cancels the task and takes the cancellation back: the next awaits of the
    # same task, and later operations, are not cancelled.
    store = hanging(0.2)
    fast = ResultStore(f"memory://fast-{uuid.uuid4().hex}", timeout=0.2)

    async def scenario() -> list[object]:
        seen: list[object] = []
        for _ in range(3):
            with pytest.raises(StorageUnavailableError):
                await store.aexists("k")
            await anyio.sleep(0.01)
            seen.append(await fast.awrite(1, key="k"))
        await anyio.sleep(0.5)  # past every deadline armed above: nothing fires late
        seen.append((await fast.aread("k")).result)
        return seen

    assert anyio.run(scenario) == ["k", "k", "k", 1]


def test_an_outer_cancellation_is_not_turned_into_a_timeout() -> None:
    store = hanging(5.0)

    async def scenario() -> bool:
        with anyio.move_on_after(0.2) as scope:
            await store.aexists("k")
        return scope.cancelled_caught

    started = time.monotonic()
    assert anyio.run(scenario) is True
    assert time.monotonic() - started < 1.0


def test_concurrent_operations_each_get_their_own_deadline() -> None:
    slow_bounded, quick_bounded = hanging(0.3, hang=0.5), hanging(5.0, hang=0.05)

    async def scenario() -> tuple[list[str], float]:
        outcomes: list[str] = []
        started = time.monotonic()

        async def one(store: ResultStore) -> None:
            try:
                await store.aexists("k")
                outcomes.append("ok")
            except StorageUnavailableError:
                outcomes.append("timed out")

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(one, slow_bounded)
                tg.start_soon(one, quick_bounded)
        return sorted(outcomes), time.monotonic() - started

    outcomes, elapsed = anyio.run(scenario)
    assert outcomes == ["ok"] * 5 + ["timed out"] * 5
    assert elapsed < 0.5


def test_on_trio_the_timeout_is_anyio_s() -> None:
    pytest.importorskip("trio")
    store = hanging(0.3)

    async def scenario() -> tuple[float, str, bool]:
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError) as caught:
            await store.aexists("k")
        elapsed = time.monotonic() - started
        return elapsed, str(caught.value), await hanging(5.0, hang=0.05).aexists("k")

    elapsed, message, answered = anyio.run(scenario, backend="trio")
    assert 0.3 <= elapsed < 0.45
    assert "no answer within 0.3 s (RESULTSTORE_TIMEOUT)" in message
    assert answered is False
