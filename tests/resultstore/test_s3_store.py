"""The S3 stores against a real S3 server (SeaweedFS on loopback): no mocks.

Most checks are for the s3fs client of ``s3://``; those taking the ``client`` fixture run
with each client (``RESULTSTORE_S3_CLIENT``). Conditional writes, ranges, the probe and the
one-scheme rules are in test_s3_conditional.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid

import anyio
import pytest
from s3_conformance import S3ClientConformance

from ports import free_port
from resultstore import (
    AccessDeniedError,
    ConfigurationError,
    ContainerMissingError,
    ResultStore,
    RetryPolicy,
    StorageError,
    StorageUnavailableError,
    resolve_store,
)
from resultstore._loops import each
from resultstore.stores.s3 import S3Store
from seaweedfs import SeaweedFS
from states import return_value_to_state


class TestS3Store(S3ClientConformance):
    """The same conformance checks as the file and memory stores, unchanged."""

    client = "s3fs"


def test_records_live_under_the_prefix(s3_url: str, s3_server: SeaweedFS) -> None:
    store = ResultStore(s3_url)
    store.write({"a": 1}, key="daily/2026-11-28")

    bucket, prefix = s3_url.removeprefix("s3://").split("/", 1)
    listed = s3_server.client().list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    assert [item["Key"] for item in listed["Contents"]] == [f"{prefix}/daily/2026-11-28"]
    assert store.keys() == ["daily/2026-11-28"]


@pytest.fixture(params=["s3fs", "obstore"])
def client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The checks taking this fixture hold for both clients of s3://: s3fs and obstore."""
    monkeypatch.setenv("RESULTSTORE_S3_CLIENT", request.param)
    return str(request.param)


def test_a_listing_in_folder_order_is_taken_whole(s3_url: str, client: str) -> None:
    """SeaweedFS lists folder by folder (``a/b/c`` before ``a b/c``), not in the byte
    order AWS uses; the check that each listed key moves the listing on (against an
    endpoint repeating pages, ``tests/reliability/test_hostile_listings.py``) takes both."""
    store = ResultStore(s3_url)
    # No key is also a folder of another ("a/b" beside "a/b/c"): SeaweedFS may lose one
    # of the two when both are written at once.
    keys = ["a-c", "a0", "a/b/c", "a.x/y", "ab", "é/x", "e/x", "A", "a b/c", "z" * 200]
    keys += [f"m/{i}" for i in range(1100)]  # more than one page
    anyio.run(lambda: each(keys, lambda key: store.awrite(1, key=key), 32))
    assert sorted(store.keys()) == sorted(keys)
    assert store.keys("a") == sorted(key for key in keys if key.startswith("a"))
    assert len(store.keys("m/")) == 1100


def _child(
    code: str, s3_url: str, s3_env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with ``s3_url`` as its argument and S3 credentials."""
    return subprocess.run(
        [sys.executable, "-c", code, s3_url],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **s3_env},
        check=False,
    )


def test_storage_options_from_code_need_no_environment(
    client: str, s3_server: SeaweedFS, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in s3_server.env():
        monkeypatch.delenv(name, raising=False)
    url = f"s3://{s3_bucket}/from-code-{uuid.uuid4().hex[:8]}"
    store = ResultStore(url, storage_options=s3_server.storage_options())  # s3fs's names

    key = store.write([1, 2, 3])

    assert store.read(key).result == [1, 2, 3]
    secret = s3_server.storage_options()["secret"]
    assert secret not in repr(store) and secret not in repr(store.store)


def test_storage_options_from_the_environment(
    s3_server: SeaweedFS, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in s3_server.env():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RESULTSTORE_STORAGE_OPTIONS", json.dumps(s3_server.storage_options()))
    monkeypatch.setenv("RESULTSTORE_STORAGE_URL", f"s3://{s3_bucket}/from-env")

    store = ResultStore()
    key = store.write("configured by env")

    assert store.storage_url == f"s3://{s3_bucket}/from-env"
    assert store.read(key).result == "configured by env"


def test_missing_bucket_is_one_clear_line(client: str, s3_env: dict[str, str]) -> None:
    store = ResultStore("s3://no-such-bucket-here/p")

    with pytest.raises(StorageError) as caught:
        store.write(1, key="k")

    message = str(caught.value)
    assert "\n" not in message
    assert "bucket 'no-such-bucket-here' does not exist" in message
    assert "'k'" in message


def test_exists_on_a_missing_bucket_raises_instead_of_answering_false(
    client: str, s3_env: dict[str, str], s3_bucket: str
) -> None:
    # A HEAD's 404 has no body: no such key and no such bucket look alike until checked.
    missing = ResultStore("s3://no-such-bucket-here/p")
    with pytest.raises(ContainerMissingError) as caught:
        missing.exists("k")
    assert str(caught.value).startswith("cannot check key 'k' in s3://no-such-bucket-here/p")
    assert "bucket 'no-such-bucket-here' does not exist" in str(caught.value)
    with pytest.raises(ContainerMissingError):
        missing.delete("k")  # not "nothing to delete"
    present = ResultStore(f"s3://{s3_bucket}/exists-{uuid.uuid4().hex[:8]}")
    assert present.exists("nothing/here") is False
    assert present.exists("nothing/here/either") is False  # the bucket check is remembered


def test_exists_with_wrong_credentials_raises_access_denied(
    client: str, s3_env: dict[str, str], s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "definitely-wrong-secret")
    store = ResultStore(f"s3://{s3_bucket}/denied")
    with pytest.raises(AccessDeniedError, match="access denied") as caught:
        store.exists("k")
    assert "\n" not in str(caught.value)


def test_unknown_storage_options_are_refused_naming_the_valid_ones(client: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        resolve_store("s3://bucket/p", fsnyc=False)
    message = str(caught.value)
    assert message.startswith("unknown storage option 'fsnyc' for s3://bucket/p; ")
    assert "valid options: " in message and "part_size" in message and "\n" not in message


def test_the_s3fs_options_are_accepted() -> None:
    store = resolve_store(
        "s3://bucket/p",
        anon=False,
        requester_pays=False,
        s3_additional_kwargs={"ServerSideEncryption": "AES256"},
        profile=None,
        use_listings_cache=False,
        max_concurrency=2,
    )
    assert isinstance(store, S3Store)


def test_botocore_and_s3fs_retry_nothing_and_time_out_as_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RESULTSTORE_STALL_TIMEOUT", "7")
    monkeypatch.setenv("RESULTSTORE_TIMEOUT", "3")
    store = resolve_store("s3://bucket/p")
    assert isinstance(store, S3Store)
    config = store._options["config_kwargs"]
    assert config["retries"] == {"total_max_attempts": 1, "mode": "standard"}
    assert (config["read_timeout"], config["connect_timeout"]) == (7.0, 3.0)

    async def client_settings() -> tuple[int, int]:
        fs = await store._fs()
        try:
            return fs.retries, fs._s3.meta.config.retries["total_max_attempts"]
        finally:
            await store.aclose()

    assert anyio.run(client_settings) == (1, 1)


def test_unreachable_endpoint_fails_within_bounded_time(
    client: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()  # nobody listens on it
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    store = ResultStore(f"s3://{s3_bucket}/p", retry=RetryPolicy(attempts=2, delay=0.1))

    started = time.monotonic()
    with pytest.raises(StorageUnavailableError) as caught:
        store.read("some/key")

    assert time.monotonic() - started < 30
    message = str(caught.value)
    assert "\n" not in message
    assert "'some/key'" in message and "unavailable" in message


def test_wrong_credentials_are_reported_as_access_denied(
    client: str, s3_env: dict[str, str], s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "definitely-wrong-secret")
    store = ResultStore(f"s3://{s3_bucket}/denied")

    with pytest.raises(StorageError, match="access denied") as caught:
        store.write(1, key="k")

    assert "\n" not in str(caught.value)
    assert "definitely-wrong-secret" not in str(caught.value)
    assert "definitely-wrong-secret" not in repr(store)


def test_credentials_never_appear_in_reprs_or_state_json(
    s3_server: SeaweedFS, s3_bucket: str
) -> None:
    options = s3_server.storage_options()
    store = ResultStore(f"s3://{s3_bucket}/secret-check", storage_options=options)
    result = store.create_result("x")

    shown = " ".join(
        [repr(store), repr(store.store), repr(result), json.dumps(result.to_reference())]
    )
    assert options["secret"] not in shown
    assert options["key"] not in shown


def test_credentials_in_the_url_are_refused(client: str) -> None:
    with pytest.raises(ConfigurationError, match="never in the URL"):
        resolve_store("s3://AKIA:secret@bucket/prefix")


def test_two_hundred_concurrent_writes_all_land(s3_url: str) -> None:
    store = ResultStore(s3_url)

    async def write_all() -> None:
        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(store.awrite, {"i": i}, f"many/{i:03d}")

    anyio.run(write_all)

    assert store.keys("many/") == [f"many/{i:03d}" for i in range(200)]
    assert store.read("many/123").result == {"i": 123}


LARGE_READER = textwrap.dedent(
    """
    import sys, hashlib
    from resultstore import ResultStore
    value = ResultStore(sys.argv[1]).read("big", retry=False).result
    print(len(value), hashlib.sha256(value).hexdigest())
    """
)


def test_a_100_mb_result_written_here_is_read_by_another_process(
    s3_url: str, s3_env: dict[str, str]
) -> None:
    value = os.urandom(1024 * 1024) * 105
    ResultStore(s3_url).write(value, key="big")

    done = _child(LARGE_READER, s3_url, s3_env, timeout=120)

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(len(value)), hashlib.sha256(value).hexdigest()]


def test_a_sync_user_exits_without_unclosed_session_warnings(
    s3_url: str, s3_env: dict[str, str]
) -> None:
    code = (
        "import sys; from resultstore import ResultStore; s = ResultStore(sys.argv[1]); "
        "print(s.read(s.write([1, 2])).result)"
    )
    done = _child(code, s3_url, s3_env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[1, 2]"
    assert done.stderr == ""


DROPS_ITS_STORES = textwrap.dedent(
    """
    import asyncio, gc, sys, time
    from resultstore import ResultStore

    def sync_use():
        store = ResultStore(sys.argv[1])
        store.write("sync", key="a")

    async def async_use():
        store = ResultStore(sys.argv[1])
        await store.awrite("async", key="b")
        del store
        gc.collect()  # dropped while its loop runs
        await asyncio.sleep(0.2)

    async def drop_inside_another_loop(holder):
        holder.clear()
        gc.collect()  # its loop is idle, but another loop runs in this thread

    sync_use()
    gc.collect()  # dropped while its loop is idle
    asyncio.run(async_use())
    holder = [ResultStore(sys.argv[1])]
    holder[0].write("kept", key="c")
    asyncio.run(drop_inside_another_loop(holder))
    print(ResultStore(sys.argv[1]).keys())
    """
)


def test_a_store_dropped_without_close_releases_its_connections(
    s3_url: str, s3_env: dict[str, str]
) -> None:
    done = _child(DROPS_ITS_STORES, s3_url, s3_env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['a', 'b', 'c']"
    assert done.stderr == ""


STATE_READER = textwrap.dedent(
    """
    import sys
    from states import State, get_state_result
    print(get_state_result(State.model_validate_json(sys.stdin.read())))
    """
)


def test_another_process_fetches_an_s3_result_from_the_state_json_alone(
    s3_url: str, s3_env: dict[str, str]
) -> None:
    store = ResultStore(s3_url)
    state = anyio.run(lambda: return_value_to_state({"rows": 42}, store, write_result=True))

    env = {k: v for k, v in os.environ.items() if not k.startswith("RESULTSTORE_")}
    done = subprocess.run(
        [sys.executable, "-c", STATE_READER],
        input=state.model_dump_json(),
        capture_output=True,
        text=True,
        timeout=60,
        # Credentials, and the storage it may read references into: no storage URL or options.
        env={**env, **s3_env, "RESULTSTORE_REFERENCE_URLS": s3_url},
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "{'rows': 42}"


def test_gc_aborts_multipart_uploads_abandoned_under_the_prefix(
    s3_url: str, s3_server: SeaweedFS
) -> None:
    # What a writer killed mid-upload leaves: an upload begun, some parts sent, never completed.
    bucket, prefix = s3_url.removeprefix("s3://").split("/", 1)
    client = s3_server.client()

    def begin(name: str, parts: int) -> None:
        upload = client.create_multipart_upload(Bucket=bucket, Key=name)["UploadId"]
        for number in range(1, parts + 1):
            client.upload_part(
                Bucket=bucket, Key=name, UploadId=upload, PartNumber=number, Body=b"x" * 1000
            )

    def unfinished(under: str) -> list[str]:
        found = client.list_multipart_uploads(Bucket=bucket, Prefix=under).get("Uploads", [])
        return sorted(upload["Key"] for upload in found)

    begin(f"{prefix}/a/killed", 2)
    begin(f"{prefix}/b/killed", 1)
    begin(f"{prefix}-neighbour/killed", 1)  # another store's prefix: never touched
    store = ResultStore(s3_url)
    store.write({"kept": True}, key="a/record")

    assert store.clean_abandoned(older_than=3600) == (0, 0)  # too recent: maybe in progress
    assert store.clean_abandoned(older_than=0, dry_run=True) == (2, 3000)
    assert len(unfinished(f"{prefix}/")) == 2
    assert store.clean_abandoned(older_than=0) == (2, 3000)

    assert unfinished(f"{prefix}/") == []
    assert unfinished(f"{prefix}-neighbour/") == [f"{prefix}-neighbour/killed"]
    assert store.read("a/record").result == {"kept": True}
