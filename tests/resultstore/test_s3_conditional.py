"""S3 on store interface 2, with both clients, against a real SeaweedFS (no mocks).

Conditional writes (create-only, compare-and-swap, multipart), the probe that checks an
endpoint honours them (and a proxy that strips the headers, playing a server that
ignores them), ranged reads, stat, one-request deletes, an endpoint that is not S3, a
scheme-less endpoint, and the one ``s3://`` scheme with its ``client`` option.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from faultproxy import FaultProxy
from resultstore import (
    ConfigurationError,
    ResultExistsError,
    ResultNotFoundError,
    ResultStore,
    RetryPolicy,
    StorageError,
    StorageUnavailableError,
    UnsupportedOperationError,
    VersionConflictError,
    resolve_store,
)
from resultstore.stores import _s3common
from resultstore.stores._s3common import PROBE_FOLDER, BaseS3Store
from resultstore.stores.base import Payload, Store
from resultstore.stores.obstore import ObstoreS3Store
from resultstore.stores.s3 import S3Store
from resultstore.testing import run
from seaweedfs import SeaweedFS

CLASSES = {"s3fs": S3Store, "obstore": ObstoreS3Store}


@pytest.fixture(params=["s3fs", "obstore"])
def client(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(autouse=True)
def fresh_probes() -> Iterator[None]:
    """Each test finds out afresh what its endpoint honours."""
    _s3common.PROBES.forget()
    yield
    _s3common.PROBES.forget()


def results(url: str, client: str, **options: Any) -> ResultStore:
    return ResultStore(
        url,
        storage_options={"client": client, **options},
        retry=RetryPolicy(attempts=2, delay=0.05),
    )


def through(proxy: FaultProxy, s3_server: SeaweedFS, client: str, **extra: Any) -> dict[str, Any]:
    """Storage options reaching the server through ``proxy``."""
    options = s3_server.storage_options()
    options["client_kwargs"] = {**options["client_kwargs"], "endpoint_url": proxy.url}
    return {**options, "client": client, **extra}


def objects(s3_server: SeaweedFS, url: str) -> list[str]:
    """Every object under the store's prefix, as the server lists it (bookkeeping too)."""
    bucket, prefix = url.removeprefix("s3://").split("/", 1)
    listed = s3_server.client().list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    return sorted(item["Key"][len(prefix) + 1 :] for item in listed.get("Contents", []))


def in_threads(count: int, target: Any) -> list[Any]:
    """Run ``target(i)`` in ``count`` threads released at once; their outcomes in order."""
    barrier = threading.Barrier(count)
    outcomes: list[Any] = [None] * count

    def body(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = target(i)
        except Exception as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return outcomes


# -- create-only and compare-and-swap ------------------------------------------------------


def test_32_concurrent_create_only_writers_exactly_one_wins(s3_url: str, client: str) -> None:
    store = results(s3_url, client)

    outcomes = in_threads(32, lambda i: store.write(f"writer {i}", key="race", if_absent=True))

    winners = [i for i, outcome in enumerate(outcomes) if outcome == "race"]
    losers = [outcome for outcome in outcomes if isinstance(outcome, ResultExistsError)]
    assert len(winners) == 1 and len(losers) == 31, outcomes
    assert store.read("race").result == f"writer {winners[0]}"
    assert "\n" not in str(losers[0]) and "'race'" in str(losers[0])


def test_20_concurrent_compare_and_swap_incrementers_lose_no_update(
    s3_url: str, client: str
) -> None:
    store = results(s3_url, client)
    store.write(0, key="counter", if_absent=True)
    rounds = 5

    def increment(_: int) -> int:
        conflicts = 0
        for _ in range(rounds):
            while True:
                record = store.read("counter")
                version = record.metadata.version
                assert version is not None
                try:
                    store.write(record.result + 1, key="counter", if_version=version)
                    break
                except VersionConflictError:
                    conflicts += 1
        return conflicts

    outcomes = in_threads(20, increment)

    assert all(isinstance(outcome, int) for outcome in outcomes), outcomes
    assert store.read("counter").result == 20 * rounds
    assert sum(outcomes) > 0  # they did race


def test_versions_are_the_etag_from_write_stat_and_reader(s3_url: str, client: str) -> None:
    store = resolve_store(s3_url, client=client)
    version = run(store.write("k", Payload([b"one"])))
    assert version is not None and version.startswith('"') and version.endswith('"')

    async def opened() -> tuple[str | None, int | None]:
        reader = await store.open("k", start=1, end=2)
        try:
            return reader.version, reader.size
        finally:
            await reader.aclose()

    assert run(store.stat("k")) == (3, version)
    assert run(opened()) == (version, 3)
    newer = run(store.write("k", Payload([b"two!"]), if_version=version))
    assert newer != version
    with pytest.raises(VersionConflictError, match="no longer at version"):
        run(store.write("k", Payload([b"three"]), if_version=version))
    with pytest.raises(ResultExistsError):
        run(store.write("k", Payload([b"again"]), if_absent=True))
    run(store.delete("k"))
    with pytest.raises(VersionConflictError):  # deleted meanwhile
        run(store.write("k", Payload([b"back"]), if_version=newer))
    assert run(store.write("k", Payload([b"created"]), if_absent=True)) is not None


def test_create_only_and_compare_and_swap_of_multipart_records(s3_url: str, client: str) -> None:
    # 12 MiB in 5 MiB parts: s3fs completes a multipart upload with the condition; obstore
    # sends a conditional write as one PUT.
    store = results(s3_url, client, part_size=5 * 1024 * 1024)
    first, second = os.urandom(12 * 1024 * 1024), os.urandom(12 * 1024 * 1024)

    store.write(first, key="big", if_absent=True)
    with pytest.raises(ResultExistsError):
        store.write(second, key="big", if_absent=True)
    version = store.read_metadata("big").version
    assert version is not None
    store.write(second, key="big", if_version=version)
    with pytest.raises(VersionConflictError):
        store.write(first, key="big", if_version=version)

    assert store.read("big").result == second
    assert objects_left_unfinished(store) == 0


def objects_left_unfinished(store: ResultStore) -> int:
    return store.clean_abandoned(older_than=0, dry_run=True)[0]


# -- the probe ---------------------------------------------------------------------------


def test_the_probe_runs_once_per_endpoint_and_leaves_nothing(
    s3_server: SeaweedFS, s3_bucket: str, client: str
) -> None:
    url = f"s3://{s3_bucket}/probe-{uuid.uuid4().hex[:8]}"
    with FaultProxy("127.0.0.1", s3_server.s3_port) as proxy:
        store = ResultStore(url, storage_options=through(proxy, s3_server, client))
        store.write(1, key="a", if_absent=True)
        first = proxy.counts["requests"]
        store.write(2, key="b", if_absent=True)
        again = proxy.counts["requests"] - first
        other = ResultStore(f"{url}/other", storage_options=through(proxy, s3_server, client))
        other.write(3, key="c", if_absent=True)  # same endpoint and bucket: no new probe
        third = proxy.counts["requests"] - first - again
        assert store.keys() == ["a", "b", "other/c"]

    assert first >= 4 and again == 1 and third == 1
    assert objects(s3_server, url) == ["a", "b", "other/c"]  # the probe object is gone


def test_concurrent_first_conditional_writes_share_one_probe(
    s3_server: SeaweedFS, s3_bucket: str, client: str
) -> None:
    url = f"s3://{s3_bucket}/probe-{uuid.uuid4().hex[:8]}"
    with FaultProxy("127.0.0.1", s3_server.s3_port) as proxy:
        store = ResultStore(url, storage_options=through(proxy, s3_server, client))
        outcomes = in_threads(16, lambda i: store.write(i, key=f"k{i}", if_absent=True))
        requests = proxy.counts["requests"]
    assert outcomes == [f"k{i}" for i in range(16)]
    assert requests <= 16 + 6  # the writes and one probe (SeaweedFS honours the conditions)


def test_the_probe_never_shows_in_listings(s3_server: SeaweedFS, s3_url: str, client: str) -> None:
    # What a writer killed mid-probe would leave: a probe object under the probe folder.
    bucket, prefix = s3_url.removeprefix("s3://").split("/", 1)
    s3_server.client().put_object(Bucket=bucket, Key=f"{prefix}/{PROBE_FOLDER}/left", Body=b"x")
    store = results(s3_url, client)
    store.write(1, key="kept")
    assert store.keys() == ["kept"]
    assert run(_keys(store.store, ".")) == []


def test_a_failed_probe_says_what_it_was_doing(
    s3_url: str, client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "definitely-wrong-secret")
    store = results(s3_url, client)
    with pytest.raises(StorageError) as caught:
        store.write(1, key="k", if_absent=True)
    message = str(caught.value)
    assert message.startswith(f"cannot write key 'k' in {s3_url}: access denied")
    assert "while checking that http://127.0.0.1:" in message
    assert f"honours conditional writes with probe object '{s3_url.split('/', 3)[3]}/" in message
    assert "\n" not in message and "definitely-wrong-secret" not in message


class _LosesTheFirstPutsAnswer(FaultProxy):
    """Forwards the first PUT, then resets the connection halfway through its answer."""

    lost = False

    def _decide(self, method: str) -> str | None:
        if method == "PUT" and not self.lost:
            self.lost = True
            return "reset_mid"
        return None


def test_a_probe_whose_first_answer_was_lost_still_finds_the_conditions_honoured(
    s3_server: SeaweedFS, s3_bucket: str
) -> None:
    # The client's own retry re-sends the probe's create, which landed: the server answers
    # 412 for a new, randomly named object. That is the condition being honoured, not a
    # server that refuses it (the verdict is kept for the whole process).
    with _LosesTheFirstPutsAnswer("127.0.0.1", s3_server.s3_port, kinds=("reset_mid",)) as proxy:
        options = through(proxy, s3_server, "s3fs")
        options["config_kwargs"] = {
            **options["config_kwargs"],
            "retries": {"max_attempts": 2, "mode": "standard"},
        }
        store = ResultStore(
            f"s3://{s3_bucket}/lost-{uuid.uuid4().hex[:8]}", storage_options=options
        )
        store.write(1, key="k", if_absent=True)
        assert proxy.lost  # the probe's create lost its answer
        with pytest.raises(ResultExistsError):
            store.write(2, key="k", if_absent=True)
        assert store.read("k").result == 1
        store.close()


@pytest.fixture
def stripping_proxy(s3_server: SeaweedFS) -> Iterator[FaultProxy]:
    """An S3 server that accepts If-None-Match / If-Match and ignores them."""
    options = s3_server.storage_options()
    with FaultProxy(
        "127.0.0.1",
        s3_server.s3_port,
        strip_headers={"if-none-match", "if-match"},
        resign=(options["key"], options["secret"], "us-east-1"),
    ) as proxy:
        yield proxy


@pytest.mark.parametrize("size", [1000, 12 * 1024 * 1024], ids=["put", "multipart"])
def test_a_server_that_ignores_conditions_gets_no_conditional_write(
    stripping_proxy: FaultProxy, s3_server: SeaweedFS, s3_bucket: str, client: str, size: int
) -> None:
    url = f"s3://{s3_bucket}/ignored-{uuid.uuid4().hex[:8]}"
    options = through(stripping_proxy, s3_server, client, part_size=5 * 1024 * 1024)
    store = ResultStore(url, storage_options=options)
    original = b"o" * size
    store.write(original, key="k")  # plain writes still work
    version = store.read_metadata("k").version
    assert version is not None

    with pytest.raises(UnsupportedOperationError) as created:
        store.write(b"c" * size, key="k", if_absent=True)
    with pytest.raises(UnsupportedOperationError) as swapped:
        store.write(b"s" * size, key="k", if_version='"not-the-version"')
    with pytest.raises(UnsupportedOperationError):
        store.write(b"n" * size, key="new", if_absent=True)

    assert store.read("k").result == original  # never overwritten
    assert not store.exists("new")
    endpoint = stripping_proxy.url
    assert str(created.value) == (
        f"cannot write key 'k' in {url}: the S3 endpoint {endpoint} ignores If-None-Match "
        + (
            "(a second create-only PUT of a probe object succeeded)"
            if client == "obstore" or size == 1000
            else "(a create-only CompleteMultipartUpload of a probe object succeeded)"
        )
        + ", so a create-only write could silently overwrite; conditional writes are refused "
        "there; use a server that honours If-None-Match and If-Match (AWS S3, SeaweedFS)"
    )
    assert "ignores If-" in str(swapped.value) and "compare-and-swap" in str(swapped.value)
    assert stripping_proxy.counts["stripped"] >= 1
    assert objects(s3_server, url) == ["k"]


def test_seaweedfs_honours_every_condition_the_stores_send(s3_url: str) -> None:
    # What the probe found on this server: If-None-Match and If-Match, on PUT and on
    # CompleteMultipartUpload.
    store = resolve_store(s3_url, client="s3fs")
    assert isinstance(store, BaseS3Store)
    for multipart in (False, True):
        verdict = run(
            _s3common.PROBES.get(
                (store.endpoint, store.bucket, "multipart" if multipart else "put"),
                lambda multipart=multipart: store._run_probe("k", multipart),  # type: ignore[misc]
            )
        )
        assert verdict == _s3common.Verdict(create=None, replace=None)


# -- ranges, stat, delete ----------------------------------------------------------------


def test_ranged_reads_fetch_the_range_and_report_the_whole_size(s3_url: str, client: str) -> None:
    store = resolve_store(s3_url, client=client)
    version = run(store.write("k", Payload([b"0123456789"])))
    run(store.write("empty", Payload([])))

    async def read(key: str, start: int, end: int | None) -> tuple[bytes, int | None, str | None]:
        reader = await store.open(key, start=start, end=end)
        try:
            return await reader.read(), reader.size, reader.version
        finally:
            await reader.aclose()

    cases = {
        (0, None): b"0123456789",
        (2, 5): b"234",
        (4, None): b"456789",
        (8, 20): b"89",  # cut at the end
        (10, 20): b"",  # starts at the end: S3 answers 416
        (50, None): b"",
        (3, 3): b"",  # empty: no Range header at all
        (0, 0): b"",
    }
    for (start, end), expected in cases.items():
        assert run(read("k", start, end)) == (expected, 10, version), (start, end)
    assert run(read("empty", 0, 65536))[:2] == (b"", 0)
    with pytest.raises(ResultNotFoundError):
        run(read("missing", 0, 10))
    with pytest.raises(ResultNotFoundError):
        run(read("missing", 5, 5))


def test_delete_is_one_request_and_idempotent(
    s3_server: SeaweedFS, s3_bucket: str, client: str
) -> None:
    url = f"s3://{s3_bucket}/del-{uuid.uuid4().hex[:8]}"
    with FaultProxy("127.0.0.1", s3_server.s3_port) as proxy:
        store = ResultStore(url, storage_options=through(proxy, s3_server, client))
        store.write(1, key="k")
        store.exists("nothing")  # the bucket check is done once, here
        before = proxy.counts["requests"]
        assert store.delete("k") is None
        assert store.delete("k") is None  # nothing there: no error either
        assert proxy.counts["requests"] - before == 2
        assert not store.exists("k")


def _fill(store: Store, keys: list[str]) -> None:
    async def fill() -> None:
        import anyio

        async with anyio.create_task_group() as tg:
            for key in keys:
                tg.start_soon(store.write, key, Payload([b"x"]))

    run(fill())


def test_delete_many_sends_concurrent_requests_of_at_most_125_keys(
    s3_server: SeaweedFS, s3_bucket: str, client: str
) -> None:
    url = f"s3://{s3_bucket}/many-{uuid.uuid4().hex[:8]}"
    keys = [f"many/{i:04d}" for i in range(1100)]
    with FaultProxy("127.0.0.1", s3_server.s3_port) as proxy:
        store = resolve_store(url, **through(proxy, s3_server, client))
        _fill(store, keys)
        before = proxy.counts["requests"]
        run(store.delete_many([*keys, "never/written"]))
        assert proxy.counts["requests"] - before == 9  # 1,101 keys: 8 parts of 125, then 76
        assert run(_keys(store)) == []


def test_a_failed_part_of_a_delete_many_is_one_error_and_a_retry_finishes_it(
    s3_server: SeaweedFS, s3_bucket: str, client: str
) -> None:
    url = f"s3://{s3_bucket}/fail-{uuid.uuid4().hex[:8]}"
    keys = [f"many/{i:04d}" for i in range(600)]
    with FaultProxy("127.0.0.1", s3_server.s3_port, kinds=["http_503"], methods={"POST"}) as proxy:
        store = resolve_store(url, **through(proxy, s3_server, client))
        _fill(store, keys)
        proxy.fault_rate = 0.5
        with pytest.raises(StorageUnavailableError) as failed:
            for _ in range(20):  # the seeded proxy fails some parts of every try
                run(store.delete_many(keys))
        assert "many/" in str(failed.value) and "\n" not in str(failed.value)
        proxy.fault_rate = 0.0
        run(store.delete_many(keys))  # deleting again is harmless: idempotent
        assert run(_keys(store)) == []


async def _keys(store: Store, prefix: str = "") -> list[str]:
    return [key async for key in store.list(prefix)]


def test_a_delete_many_error_is_one_line_naming_the_key() -> None:
    store = resolve_store("s3://bucket/p", client="s3fs")
    assert isinstance(store, S3Store)
    error = store._batch_error(
        [
            {"Key": "p/a/b", "Code": "AccessDenied", "Message": "Access Denied"},
            {"Key": "p/c", "Code": "AccessDenied", "Message": "Access Denied"},
        ],
        5,
    )
    assert str(error) == (
        "cannot delete key 'a/b' in s3://bucket/p: AccessDenied: Access Denied; "
        "1 more of the 5 keys failed too"
    )
    assert error.reason.value == "denied"


# -- endpoints ---------------------------------------------------------------------------


class _NotFound(http.server.BaseHTTPRequestHandler):
    """A plain web server: 404 for everything, in HTML."""

    protocol_version = "HTTP/1.1"  # answers "Expect: 100-continue" as web servers do

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = b"" if self.command == "HEAD" else b"<html><h1>404 Not Found</h1></html>"
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.mark.parametrize("operation", ["read", "read_metadata", "exists", "write", "list"])
def test_a_404_from_a_server_that_is_not_s3_is_not_a_missing_key(
    web_server: str, client: str, operation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", web_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    store = results("s3://bucket/p", client)
    calls = {
        "read": lambda: store.read("k", retry=False),
        "read_metadata": lambda: store.read_metadata("k"),
        "exists": lambda: store.exists("k"),
        "write": lambda: store.write(1, key="k"),
        "list": lambda: store.keys(),
    }
    with pytest.raises(StorageError) as caught:
        calls[operation]()
    assert not isinstance(caught.value, ResultNotFoundError)
    message = str(caught.value)
    assert f"{web_server} is not an S3 endpoint (it answered HTTP 404 without an S3" in message
    assert "check the endpoint URL" in message and "\n" not in message


def test_an_endpoint_without_a_scheme_is_one_line(
    client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "127.0.0.1:8333")
    with pytest.raises(ConfigurationError) as caught:
        resolve_store("s3://bucket/p", client=client)
    assert str(caught.value) == (
        "invalid S3 endpoint '127.0.0.1:8333' in AWS_ENDPOINT_URL: it needs a scheme and a host, "
        "e.g. 'http://127.0.0.1:8333' (or https://...)"
    )
    with pytest.raises(ConfigurationError, match="in storage option endpoint_url"):
        resolve_store("s3://bucket/p", client=client, endpoint_url="localhost:9000")


def test_the_cli_with_a_scheme_less_endpoint_prints_one_line(client: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RESULTSTORE_", "AWS_"))}
    env.update(AWS_ENDPOINT_URL="127.0.0.1:8333", RESULTSTORE_S3_CLIENT=client)
    done = subprocess.run(
        [sys.executable, "-m", "resultstore", "--storage", "s3://bucket/p", "get", "k"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "invalid S3 endpoint '127.0.0.1:8333' in AWS_ENDPOINT_URL" in done.stderr
    assert "panicked" not in done.stderr


# -- one scheme --------------------------------------------------------------------------


def test_the_client_is_an_option_and_the_url_stays_s3(monkeypatch: pytest.MonkeyPatch) -> None:
    default = resolve_store("s3://bucket/p")
    assert type(default) is CLASSES[_s3common.DEFAULT_CLIENT]
    for name, cls in CLASSES.items():
        store = resolve_store("s3://bucket/p", client=name)
        assert type(store) is cls and store.url == "s3://bucket/p"
        monkeypatch.setenv("RESULTSTORE_S3_CLIENT", name)
        assert type(resolve_store("s3://bucket/p")) is cls
    monkeypatch.setenv("RESULTSTORE_S3_CLIENT", "boto")
    with pytest.raises(ConfigurationError) as caught:
        resolve_store("s3://bucket/p")
    assert str(caught.value) == (
        "invalid RESULTSTORE_S3_CLIENT 'boto' for s3://: use one of s3fs, obstore"
    )
    with pytest.raises(ConfigurationError, match="invalid storage option client 'x'"):
        resolve_store("s3://bucket/p", client="x")


def test_s3_obstore_urls_are_an_alias_recording_s3(s3_url: str) -> None:
    alias = s3_url.replace("s3://", "s3+obstore://", 1)
    store = ResultStore(alias)
    assert isinstance(store.store, ObstoreS3Store)
    assert store.storage_url == s3_url
    result = store.create_result({"rows": 1}, key="k")
    assert result.to_reference()["storage_url"] == s3_url
    store.write({"rows": 1}, key="k")
    assert ResultStore(s3_url, storage_options={"client": "s3fs"}).read("k").result == {"rows": 1}
    with pytest.raises(ConfigurationError, match=r"s3\+obstore:// always uses the obstore client"):
        resolve_store(alias, client="s3fs")


def test_without_obstore_the_obstore_client_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "obstore.store", None)  # as if it were not installed
    with pytest.raises(ConfigurationError, match=r"pip install 'resultstore\[obstore\]'"):
        resolve_store("s3://bucket/p", client="obstore")
