"""The obstore client of ``s3://`` against a real S3 server (SeaweedFS on loopback): no mocks.

The error and configuration checks it shares with the s3fs client are in test_s3_store.py;
``s3+obstore://``, the alias that selects it, is checked here and in test_s3_conditional.py.
"""

from __future__ import annotations

import sys

import pytest
from s3_conformance import S3ClientConformance

from resultstore import (
    ConfigurationError,
    ResultStore,
    resolve_store,
)
from resultstore.stores.obstore import ObstoreS3Store


@pytest.fixture
def obstore_url(s3_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh prefix in the test bucket, opened with the obstore client."""
    monkeypatch.setenv("RESULTSTORE_S3_CLIENT", "obstore")
    return s3_url


class TestObstoreS3Store(S3ClientConformance):
    """The same conformance checks as every other store, unchanged."""

    client = "obstore"


def test_either_s3_store_reads_what_the_other_wrote(s3_url: str, obstore_url: str) -> None:
    via_s3fs = ResultStore(s3_url, storage_options={"client": "s3fs"})
    via_obstore = ResultStore(obstore_url)
    assert isinstance(via_obstore.store, ObstoreS3Store)
    large = bytes(range(256)) * (100 * 1024)  # 25 MB: a multipart upload on both sides

    via_s3fs.write({"from": "s3fs"}, key="a")
    via_obstore.write({"from": "obstore"}, key="b")
    via_obstore.write(large, key="large")

    assert via_obstore.read("a").result == {"from": "s3fs"}
    assert via_s3fs.read("b").result == {"from": "obstore"}
    assert via_s3fs.read("large").result == large
    assert via_s3fs.keys() == via_obstore.keys() == ["a", "b", "large"]


@pytest.mark.parametrize(
    ("url", "options", "fragment"),
    [
        ("s3+obstore://Bad_Bucket/p", {}, "invalid S3 bucket name 'Bad_Bucket'"),
        ("s3+obstore://bucket/p", {"part_size": 1024}, "part_size must be at least"),
        (
            "s3+obstore://bucket/p",
            {"no_such_setting": 1},
            "unknown storage option 'no_such_setting' for s3://bucket/p; valid options: ",
        ),
        (
            "s3+obstore://bucket/p",
            {"retry_config": {"max_retry": 1}},
            "unknown storage option 'max_retry' for s3://bucket/p (retry_config); "
            "valid options: backoff, max_retries, retry_timeout",
        ),
        ("s3+obstore://bucket/p", {"client_options": {"nope": 1}}, "Invalid key: nope"),
        ("s3+obstore://bucket/p", {"client_kwargs": {"verify": False}}, "client_kwargs['verify']"),
        ("s3+obstore://bucket/p", {"config_kwargs": {"retries": {}}}, "config_kwargs['retries']"),
    ],
)
def test_bad_configuration_is_one_line_naming_it(
    url: str, options: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        resolve_store(url, **options)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_options_from_json_need_no_python_types() -> None:
    # RESULTSTORE_STORAGE_OPTIONS is JSON: durations come as strings or seconds.
    store = resolve_store(
        "s3+obstore://bucket/p",
        client_options={"connect_timeout": "2s"},
        retry_config={"max_retries": 1, "retry_timeout": 5},
    )
    assert isinstance(store, ObstoreS3Store)


def test_without_obstore_installed_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "obstore.store", None)  # as if it were not installed

    with pytest.raises(ConfigurationError, match=r"pip install 'resultstore\[obstore\]'"):
        resolve_store("s3+obstore://bucket/p")


def test_obstore_retries_nothing_and_times_out_as_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # ResultStore's retry policy is the one retry loop; the stall timeout is obstore's
    # read timeout, and a connection attempt gives up within RESULTSTORE_TIMEOUT.
    monkeypatch.setenv("RESULTSTORE_STALL_TIMEOUT", "7")
    monkeypatch.setenv("RESULTSTORE_TIMEOUT", "3")
    store = resolve_store("s3+obstore://bucket/p")
    assert isinstance(store, ObstoreS3Store)
    client = store._client
    assert client.retry_config is not None and client.retry_config["max_retries"] == 0
    assert client.client_options is not None
    assert client.client_options["read_timeout"] == "7s"
    assert client.client_options["connect_timeout"] == "3s"


def test_obstore_setting_names_are_taken_in_any_spelling() -> None:
    store = resolve_store("s3+obstore://bucket/p", AWS_REGION="eu-west-1", aws_skip_signature=True)
    assert isinstance(store, ObstoreS3Store)
    assert store._client.config["region"] == "eu-west-1"


@pytest.mark.serial
def test_exit_waits_while_a_thread_is_handing_a_result_to_a_loop() -> None:
    # What obstore's Rust threads do when a call completes: loop.call_soon_threadsafe. The
    # exit hook (registered by the first store) waits, bounded, until none is inside it.
    import threading
    import time

    from resultstore.stores import obstore as module

    resolve_store("s3://bucket/p", client="obstore")
    inside, release = threading.Event(), threading.Event()

    def call_soon_threadsafe() -> None:  # the frame the hook looks for
        inside.set()
        release.wait(10)

    thread = threading.Thread(target=call_soon_threadsafe)
    thread.start()
    inside.wait(10)
    try:
        assert module._in_hand_off()
        threading.Timer(0.2, release.set).start()
        started = time.monotonic()
        module._settle_hand_offs()
        assert 0.15 < time.monotonic() - started < module._EXIT_WAIT
    finally:
        release.set()
        thread.join(10)
    assert not module._in_hand_off()
    assert module._guarded


def test_a_small_object_is_read_from_one_buffer_in_pieces(obstore_url: str) -> None:
    import asyncio

    from resultstore.stores.base import Payload

    store = resolve_store(obstore_url)
    data = bytes(range(256)) * 40  # 10 KiB: fetched whole, in one hand-off

    async def pieces() -> tuple[bytes, bytes, bytes, int | None, str | None, str | None]:
        version = await store.write("small", Payload([data]))
        reader = await store.open("small")
        try:
            head = await reader.read(100)
            buffer = bytearray(5000)
            got = await reader.readinto(memoryview(buffer))
            rest = await reader.read()
            assert got == 5000
            assert await reader.read(10) == b""  # at the end: nothing more, no error
            assert await reader.readinto(memoryview(bytearray(4))) == 0
        finally:
            await reader.aclose()
        return head, bytes(buffer), rest, reader.size, reader.version, version

    head, middle, rest, size, version, written = asyncio.run(pieces())
    assert head + middle + rest == data
    assert size == len(data) and version == written
