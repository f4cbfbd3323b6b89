"""`ResultStore`: write values under keys, read them back, on any store chosen by URL.

Most tests run twice, on ``file://`` (a temporary folder) and ``memory://`` (a
fresh name), through the ``store`` fixture in ``conftest.py``.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from resultstore import (
    ConfigurationError,
    IntegrityError,
    InvalidKeyError,
    ResultMetadata,
    ResultNotFoundError,
    ResultRecord,
    ResultStore,
    SerializationError,
    SignatureError,
    UnknownSchemeError,
)
from resultstore._loops import run_sync
from resultstore.records import encode_record
from resultstore.stores.base import Payload
from resultstore.stores.file import FileStore
from resultstore.stores.memory import MemoryStore

UTC = datetime.timezone.utc


# -- the basics, on every built-in store ---------------------------------------------


def test_write_then_read(store: ResultStore) -> None:
    value = {"answer": 42, "items": [1, 2.5, "three", None], "nested": {"t": (1, 2)}}
    key = store.write(value, key="runs/1/result")
    assert key == "runs/1/result"

    record = store.read(key)
    assert isinstance(record, ResultRecord)
    assert record.result == value
    assert record.metadata.storage_key == key
    assert record.metadata.storage_url == store.storage_url
    assert record.metadata.serializer == "pickle"
    assert record.metadata.signed is False


def test_exists_delete_and_missing_keys(store: ResultStore) -> None:
    key = store.write("value", key="k")
    assert store.exists(key) is True
    assert store.delete(key) is True
    assert store.exists(key) is False
    assert store.delete(key) is False
    with pytest.raises(ResultNotFoundError) as caught:
        store.read(key, retry=False)
    assert str(caught.value) == f"no result under key 'k' in {store.storage_url}"
    assert (caught.value.key, caught.value.url) == ("k", store.storage_url)


def test_overwriting_a_key_replaces_the_value(store: ResultStore) -> None:
    store.write(list(range(10_000)), key="k")
    store.write("short", key="k")
    assert store.read("k").result == "short"
    assert store.keys() == ["k"]


def test_keys_and_list_with_prefixes(store: ResultStore) -> None:
    for key in ["a", "a/b", "a/b/c", "ab", "b/x"]:
        store.write(key.upper(), key=key)

    assert store.keys() == ["a", "a/b", "a/b/c", "ab", "b/x"]
    assert store.keys("a") == ["a", "a/b", "a/b/c", "ab"]
    assert store.keys("a/") == ["a/b", "a/b/c"]
    assert store.keys("nothing/") == []

    listed = list(store.list("a/"))
    assert all(isinstance(m, ResultMetadata) for m in listed)
    assert [m.storage_key for m in listed] == ["a/b", "a/b/c"]
    assert [m.size for m in listed] == [store.read_metadata(k).size for k in ("a/b", "a/b/c")]

    with pytest.raises(InvalidKeyError, match="invalid prefix '/a'"):
        store.keys("/a")


def test_read_metadata_describes_a_record_without_loading_it(store: ResultStore) -> None:
    payload = np.zeros(1_000_000, dtype=np.uint8)
    before = datetime.datetime.now(UTC)
    key = store.write(payload)
    metadata = store.read_metadata(key)
    assert metadata.storage_key == key
    assert metadata.size > payload.nbytes
    assert metadata.checksum.startswith("xxh3_128:")
    assert before - datetime.timedelta(seconds=1) <= metadata.created <= datetime.datetime.now(UTC)
    assert metadata.created.utcoffset() == datetime.timedelta(0)
    assert metadata == store.read(key).metadata


def test_generated_keys_are_unique_hex(store: ResultStore) -> None:
    keys = [store.write(i) for i in range(200)]
    assert len(set(keys)) == 200
    assert all(re.fullmatch(r"[0-9a-f]{32}", key) for key in keys)
    assert store.keys() == sorted(keys)
    assert [store.read(k).result for k in keys[:5]] == [0, 1, 2, 3, 4]


def test_a_custom_key_function(store_url: str) -> None:
    counter = iter(range(1, 1000))
    store = ResultStore(store_url, storage_key_fn=lambda: f"job/{next(counter):04d}")
    assert [store.write(x) for x in "abc"] == ["job/0001", "job/0002", "job/0003"]
    assert store.create_result("d").key == "job/0004"
    with pytest.raises(ConfigurationError, match=r"^storage_key_fn must be callable, not str$"):
        ResultStore(store_url, storage_key_fn="job/1")  # type: ignore[arg-type]


def test_expiration_is_stored_and_checked(store: ResultStore) -> None:
    now = datetime.datetime.now(UTC)
    past = store.write("old", key="past", expiration=now - datetime.timedelta(minutes=1))
    future = store.write("new", key="future", expiration=now + datetime.timedelta(days=1))
    forever = store.write("kept", key="forever")

    assert store.read_metadata(past).is_expired() is True
    assert store.read_metadata(future).is_expired() is False
    assert store.read_metadata(future).is_expired(now=now + datetime.timedelta(days=2)) is True
    assert store.read_metadata(forever).expiration is None
    assert store.read_metadata(forever).is_expired() is False
    # An expiration in another timezone is kept as the same instant, in UTC.
    tokyo = datetime.timezone(datetime.timedelta(hours=9))
    when = datetime.datetime(2031, 1, 1, 9, tzinfo=tokyo)
    key = store.write(1, expiration=when)
    assert store.read_metadata(key).expiration == datetime.datetime(2031, 1, 1, tzinfo=UTC)
    # Expiration is information: an expired record is still returned.
    assert store.read(past).result == "old"


def test_expiration_must_be_a_datetime(store: ResultStore) -> None:
    expected = r"^expiration must be a datetime, a timedelta or None, not str$"
    with pytest.raises(ConfigurationError, match=expected):
        store.write(1, expiration="tomorrow")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"^expiration must not be a negative timedelta"):
        store.write(1, expiration=datetime.timedelta(seconds=-1))
    assert store.keys() == []


def test_expiration_may_be_a_time_from_now(store: ResultStore) -> None:
    before = datetime.datetime.now(UTC)
    key = store.write(1, expiration=datetime.timedelta(hours=12))
    after = datetime.datetime.now(UTC)
    expiration = store.read_metadata(key).expiration
    assert expiration is not None
    assert (
        before + datetime.timedelta(hours=12) <= expiration <= after + datetime.timedelta(hours=12)
    )
    result = store.create_result(2, expiration=datetime.timedelta(days=7))
    assert result.expiration is not None and result.expiration > after + datetime.timedelta(days=6)


def test_a_store_instance_can_be_given_directly() -> None:
    backend = MemoryStore("memory://given-directly")
    backend.clear()
    with ResultStore(backend) as store:
        assert store.store is backend
        assert store.storage_url == "memory://given-directly"
        store.write("x", key="k")
    assert ResultStore("memory://given-directly").read("k").result == "x"


def test_memory_stores_of_one_name_share_records(memory_url: str) -> None:
    ResultStore(memory_url).write("shared", key="k")
    assert ResultStore(memory_url).read("k").result == "shared"
    assert ResultStore(memory_url + "-other").exists("k") is False


def test_repr_names_the_storage_and_serializer(tmp_path: Path) -> None:
    store = ResultStore(
        f"file://{tmp_path}", serializer="json", signing_key="s3cr3t-0123456789abcdef"
    )
    assert repr(store) == f"ResultStore({tmp_path.as_uri()!r}, serializer='json', signed)"
    assert "s3cr3t" not in repr(store) + repr(store._signer)


# -- async twins -----------------------------------------------------------------


@pytest.mark.anyio
async def test_async_twins(store_url: str) -> None:
    async with ResultStore(store_url) as store:
        key = await store.awrite({"async": True}, key="a/1")
        await store.awrite([1, 2, 3], key="a/2")
        assert (await store.aread(key)).result == {"async": True}
        assert await store.aexists(key) is True
        assert sorted([k async for k in store.akeys("a/")]) == ["a/1", "a/2"]
        assert sorted([m.storage_key async for m in store.alist()]) == ["a/1", "a/2"]
        assert (await store.aread_metadata("a/2")).size > 0
        assert await store.adelete(key) is True
        assert await store.aexists(key) is False
        with pytest.raises(ResultNotFoundError, match="'a/1'"):
            await store.aread(key, retry=False)

        # The sync twins still work when called from inside a running event loop.
        assert store.read("a/2").result == [1, 2, 3]


@pytest.mark.anyio
async def test_async_large_array_round_trip(store_url: str) -> None:
    store = ResultStore(store_url)
    array = np.random.default_rng(0).random((512, 1024))
    key = await store.awrite(array)
    back = (await store.aread(key)).result
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable


# -- configuration -------------------------------------------------------------------


def test_default_storage_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RESULTSTORE_STORAGE_URL", f"file://{tmp_path}/from-env")
    store = ResultStore()
    assert store.storage_url == (tmp_path / "from-env").as_uri()
    key = store.write("configured")
    assert (tmp_path / "from-env" / f"{key}.rsr").is_file()
    assert ResultStore().read(key).result == "configured"


def test_builtin_default_is_resultstore_storage_in_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    store = ResultStore()
    root = tmp_path / ".resultstore" / "storage"
    assert store.storage_url == root.as_uri()
    key = store.write("home")
    assert (root / f"{key}.rsr").is_file()
    # A blank setting means the default too.
    monkeypatch.setenv("RESULTSTORE_STORAGE_URL", "   ")
    assert ResultStore().storage_url == root.as_uri()


def test_storage_options_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RESULTSTORE_STORAGE_OPTIONS", '{"fsync": false}')
    store = ResultStore(f"file://{tmp_path}")
    assert isinstance(store.store, FileStore)
    assert store.store.fsync is False
    # Options given in code win over the environment.
    assert ResultStore(f"file://{tmp_path}", storage_options={"fsync": True}).store.fsync is True


def test_fsync_setting_reaches_the_file_store(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert ResultStore(f"file://{tmp_path}").store.fsync is True
    monkeypatch.setenv("RESULTSTORE_FSYNC", "false")
    assert ResultStore(f"file://{tmp_path}").store.fsync is False


def test_bad_storage_options_json_is_a_one_line_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RESULTSTORE_STORAGE_OPTIONS", "{not json")
    with pytest.raises(ConfigurationError) as caught:
        ResultStore("memory://x")
    message = str(caught.value)
    assert "RESULTSTORE_STORAGE_OPTIONS" in message
    assert "fix or unset" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("storage", "type_name"), [(123, "int"), (b"file:///tmp", "bytes"), (["memory://"], "list")]
)
def test_storage_of_the_wrong_type_is_refused_naming_the_type(storage: Any, type_name: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        ResultStore(storage)
    assert str(caught.value) == (
        f"result_storage must be a URL string, a Store or None, not {type_name}"
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "storage URL is empty; use e.g. file:///path or s3://bucket/prefix"),
        ("c:relative", "malformed storage URL 'c:relative'; expected SCHEME://LOCATION"),
        ("b@d://x", "malformed storage URL 'b@d://x': bad scheme 'b@d'"),
        ("file://", "file URL 'file://' has no path; use file:///absolute/path"),
    ],
)
def test_malformed_urls_are_configuration_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        ResultStore(url)
    assert str(caught.value).startswith(message)


def test_unknown_scheme_names_it_and_lists_installed_schemes() -> None:
    with pytest.raises(UnknownSchemeError) as caught:
        ResultStore("nosuchscheme://results/here")
    message = str(caught.value)
    assert message.startswith("no store handles the URL scheme 'nosuchscheme'; installed schemes: ")
    listed = re.search(r"installed schemes: ([\w.+-]+(?:, [\w.+-]+)*)", message)
    assert listed is not None
    assert {"file", "memory"} <= set(listed.group(1).split(", "))
    assert "\n" not in message
    assert isinstance(caught.value, ConfigurationError)


def test_a_plain_path_is_a_file_store(tmp_path: Path) -> None:
    store = ResultStore(str(tmp_path / "plain"))
    assert store.storage_url == (tmp_path / "plain").as_uri()
    assert isinstance(store.store, FileStore)


# -- serialization failures write nothing ---------------------------------------------


@pytest.mark.parametrize(
    ("serializer", "value", "type_name"),
    [("json", lambda: None, "function"), ("pickle", threading.Lock(), "lock")],
)
def test_a_value_that_cannot_be_encoded_writes_nothing(
    store_url: str, serializer: str, value: Any, type_name: str
) -> None:
    store = ResultStore(store_url, serializer=serializer)
    with pytest.raises(SerializationError) as caught:
        store.write(value, key="unencodable")
    assert str(caught.value).startswith(
        f"{serializer} serializer cannot encode object of type {type_name}"
    )
    assert store.exists("unencodable") is False
    assert store.keys() == []
    if isinstance(store.store, FileStore):
        assert not store.store.root.exists()  # not even the folder was created


def test_each_record_is_read_with_the_serializer_it_was_written_with(store_url: str) -> None:
    ResultStore(store_url, serializer="json").write({"from": "json"}, key="j")
    ResultStore(store_url, serializer="pickle+zstd").write({"from": "zstd"}, key="z")
    reader = ResultStore(store_url)  # pickle by default
    assert reader.read("j").result == {"from": "json"}
    assert reader.read("j").metadata.serializer == "json"
    assert reader.read("z").result == {"from": "zstd"}


def test_a_record_from_an_uninstalled_serializer_names_the_serializer(store_url: str) -> None:
    store = ResultStore(store_url)
    buffers = encode_record([b"{}"], serializer="msgpack")
    run_sync(store.store.write("from-elsewhere", Payload(buffers)))
    assert store.read_metadata("from-elsewhere").serializer == "msgpack"
    with pytest.raises(ConfigurationError, match="unknown serializer 'msgpack'"):
        store.read("from-elsewhere")


# -- large values ----------------------------------------------------------------------


def test_a_50_mb_array_round_trips_equal_and_writable(store: ResultStore) -> None:
    array = np.random.default_rng(1).random(50 * 1024 * 1024 // 8).reshape(-1, 1024)
    key = store.write(array)
    assert store.read_metadata(key).size >= array.nbytes
    back = store.read(key).result
    assert back.shape == array.shape
    assert np.array_equal(back, array)
    assert not np.shares_memory(back, array)
    back[0, 0] = -1.0  # writable: the read gave fresh memory
    assert array[0, 0] != -1.0


# -- damaged records fail fast -----------------------------------------------------------


def _flip_byte(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["payload", "header", "magic"])
@pytest.mark.serial
def test_a_corrupted_file_raises_integrity_error_without_retrying(
    tmp_path: Path, where: str
) -> None:
    store = ResultStore(f"file://{tmp_path}")  # default retry policy: 10 attempts, 0.25 s apart
    assert store.retry.attempts == 10
    key = store.write(list(range(1000)), key="runs/7/output")
    path = tmp_path / "runs" / "7" / "output.rsr"
    size = path.stat().st_size
    _flip_byte(path, {"payload": size - 10, "header": 30, "magic": 0}[where])

    started = time.monotonic()
    with pytest.raises(IntegrityError) as caught:
        store.read(key)
    assert time.monotonic() - started < 0.2
    message = str(caught.value)
    assert message.startswith(f"record 'runs/7/output' in {tmp_path.as_uri()} is damaged: ")
    assert message.endswith("; rewrite or delete it")
    assert "gave up" not in message
    assert caught.value.key == key

    # Rewriting the key repairs it.
    store.write("fixed", key=key)
    assert store.read(key).result == "fixed"


def test_a_truncated_file_raises_integrity_error(tmp_path: Path) -> None:
    store = ResultStore(f"file://{tmp_path}")
    key = store.write(np.arange(100_000))
    path = tmp_path / f"{key}.rsr"
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(IntegrityError, match=f"record '{key}' .* payload truncated"):
        store.read(key)
    # The file's size gives it away without reading the payload: metadata reads say so too.
    with pytest.raises(IntegrityError, match="payload truncated"):
        store.read_metadata(key)


def test_a_foreign_file_is_not_a_record(tmp_path: Path) -> None:
    (tmp_path / "notes.rsr").write_text("just some text someone left here")
    store = ResultStore(f"file://{tmp_path}")
    assert store.keys() == ["notes"]
    with pytest.raises(IntegrityError, match="bad magic bytes"):
        store.read("notes")
    with pytest.raises(IntegrityError, match="bad magic bytes"):
        store.read_metadata("notes")


# -- concurrent writers --------------------------------------------------------------------


def _value_for(writer: int) -> np.ndarray:
    return np.full(200_000, writer, dtype=np.int64)  # 1.6 MB: several OS writes each


def _assert_whole_value_of_one_writer(value: Any, writers: range) -> None:
    assert isinstance(value, np.ndarray)
    assert value.shape == (200_000,)
    assert value[0] in writers
    assert np.all(value == value[0])


def test_concurrent_writers_in_threads_leave_one_whole_value(store_url: str) -> None:
    store = ResultStore(store_url)
    writers = range(8)
    barrier = threading.Barrier(len(writers) + 1)
    writing = threading.Event()
    writing.set()
    seen: list[Any] = []
    errors: list[BaseException] = []

    def write(writer: int) -> None:
        barrier.wait()
        for _ in range(5):
            store.write(_value_for(writer), key="contended")

    def read_while_writing() -> None:
        barrier.wait()
        while True:
            last_round = not writing.is_set()
            try:
                seen.append(store.read("contended", retry=False).result)
            except ResultNotFoundError:
                pass  # not written yet
            except BaseException as exc:  # a torn record would land here
                errors.append(exc)
            if last_round:
                return

    writer_threads = [threading.Thread(target=write, args=(w,)) for w in writers]
    reader = threading.Thread(target=read_while_writing)
    for thread in [*writer_threads, reader]:
        thread.start()
    for thread in writer_threads:
        thread.join()
    writing.clear()
    reader.join()

    assert errors == []
    assert seen  # at least the read after the last write
    for value in seen:  # every read during the race saw one writer's value, whole
        _assert_whole_value_of_one_writer(value, writers)
    _assert_whole_value_of_one_writer(store.read("contended").result, writers)
    assert store.keys() == ["contended"]


def _write_from_another_process(url: str, writer: int, start: Any) -> None:
    start.wait()
    store = ResultStore(url)
    for _ in range(5):
        store.write(_value_for(writer), key="contended")


def test_concurrent_writers_in_processes_leave_one_whole_value(tmp_path: Path) -> None:
    url = f"file://{tmp_path}"
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    writers = range(4)
    processes = [
        context.Process(target=_write_from_another_process, args=(url, w, start)) for w in writers
    ]
    for process in processes:
        process.start()
    start.set()
    for process in processes:
        process.join(timeout=60)
    assert [p.exitcode for p in processes] == [0, 0, 0, 0]

    _assert_whole_value_of_one_writer(ResultStore(url).read("contended").result, writers)
    # No temporary files are left behind: the folder holds the one record.
    assert sorted(os.listdir(tmp_path)) == ["contended.rsr"]


# -- signing ---------------------------------------------------------------------------


def test_a_signing_store_reads_its_own_records(store_url: str) -> None:
    store = ResultStore(store_url, signing_key="k1-0123456789abcdef")
    key = store.write({"trusted": True})
    record = store.read(key)
    assert record.result == {"trusted": True}
    assert record.metadata.signed is True
    assert store.read_metadata(key).signed is True
    # A store without a key can still read signed records: the signature is extra.
    assert ResultStore(store_url).read(key).result == {"trusted": True}


@pytest.mark.serial
def test_a_signing_store_refuses_unsigned_records(store_url: str) -> None:
    ResultStore(store_url).write("unsigned", key="k")
    signed = ResultStore(store_url, signing_key="k1-0123456789abcdef")
    started = time.monotonic()
    with pytest.raises(SignatureError) as caught:
        signed.read("k")
    assert time.monotonic() - started < 0.2  # refused at once, not retried
    assert str(caught.value) == (
        f"record 'k' in {signed.storage_url} is not signed but a signing key is configured; "
        "refusing to deserialize it (rewrite it with signing enabled)"
    )
    assert caught.value.key == "k"


def test_rotated_keys_are_accepted_through_old_signing_keys(store_url: str) -> None:
    key = ResultStore(store_url, signing_key="k1-0123456789abcdef").write("signed with k1")
    rotated = ResultStore(
        store_url, signing_key="k2-0123456789abcdef", old_signing_keys=("k1-0123456789abcdef",)
    )
    assert rotated.read(key).result == "signed with k1"
    new_key = rotated.write("signed with k2")
    with pytest.raises(SignatureError, match=f"record '{key}' in .* has a signature that does not"):
        ResultStore(store_url, signing_key="k2-0123456789abcdef").read(key)
    with pytest.raises(SignatureError, match="does not verify"):
        ResultStore(store_url, signing_key="k1-0123456789abcdef").read(new_key)


def test_signing_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch, store_url: str) -> None:
    key = ResultStore(store_url, signing_key="k1-0123456789abcdef").write("value")
    monkeypatch.setenv("RESULTSTORE_SIGNING_KEY", "k2-0123456789abcdef")
    with pytest.raises(SignatureError):
        ResultStore(store_url).read(key)
    monkeypatch.setenv("RESULTSTORE_SIGNING_KEYS_OLD", '["k1-0123456789abcdef"]')
    store = ResultStore(store_url)
    assert store.read(key).result == "value"
    assert store.read(store.write("new")).metadata.signed is True


class CreatesAFile:
    """A hostile value: unpickling it creates a file (it could as well run any command)."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> Any:
        return (Path.touch, (self.target,))


def test_a_forged_pickle_is_refused_before_it_can_run(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/shared"
    victim = ResultStore(url, signing_key="k1-0123456789abcdef")
    victim.write("legitimate", key="job/result")
    marker = tmp_path / "pwned"

    # Someone with write access to the storage, but not the key, replaces the record.
    ResultStore(url).write(CreatesAFile(marker), key="job/result")
    with pytest.raises(SignatureError, match=r"'job/result' in .* is not signed"):
        victim.read("job/result")
    assert not marker.exists()

    # Signing it with a guessed key does not help.
    ResultStore(url, signing_key="guess-0123456789abcdef").write(
        CreatesAFile(marker), key="job/result"
    )
    with pytest.raises(SignatureError, match="does not verify"):
        victim.read("job/result")
    assert not marker.exists()

    # The payload is real: a store without signing runs it on read.
    ResultStore(url).read("job/result")
    assert marker.exists()


def test_a_signed_record_copied_to_another_key_is_refused(tmp_path: Path) -> None:
    # Write access to the storage is enough to copy files; it must not move a value.
    store = ResultStore(f"file://{tmp_path}", signing_key="k1-0123456789abcdef")
    store.write({"role": "guest"}, key="users/guest")
    store.write({"role": "admin"}, key="users/admin")
    (tmp_path / "users" / "guest.rsr").write_bytes((tmp_path / "users" / "admin.rsr").read_bytes())

    with pytest.raises(SignatureError, match=r"'users/guest'.*signed for another key"):
        store.read("users/guest")
    assert store.read("users/admin").result == {"role": "admin"}


def test_a_tampered_signed_record_is_refused(tmp_path: Path) -> None:
    store = ResultStore(f"file://{tmp_path}", signing_key="k1-0123456789abcdef")
    key = store.write(list(range(100)))
    _flip_byte(tmp_path / f"{key}.rsr", -5)
    with pytest.raises(SignatureError, match="does not verify"):
        store.read(key)


def test_env_storage_options_apply_only_to_the_configured_scheme(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RESULTSTORE_STORAGE_OPTIONS", '{"fsync": false}')

    monkeypatch.setenv("RESULTSTORE_STORAGE_URL", f"file://{tmp_path}/configured")
    configured = ResultStore()
    assert isinstance(configured.store, FileStore) and configured.store.fsync is False

    monkeypatch.setenv("RESULTSTORE_STORAGE_URL", "s3://bucket/prefix")
    other_scheme = ResultStore(f"file://{tmp_path}/other")
    assert isinstance(other_scheme.store, FileStore) and other_scheme.store.fsync is True

    monkeypatch.delenv("RESULTSTORE_STORAGE_URL")
    unconfigured = ResultStore(f"file://{tmp_path}/any")
    assert isinstance(unconfigured.store, FileStore) and unconfigured.store.fsync is False


class _CreatesAFile:
    """Unpickling this runs code: it creates the file named in its argument."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


def test_verify_checks_a_record_without_unpickling_it(tmp_path: Path) -> None:
    store = ResultStore(f"file://{tmp_path}/store")
    marker = tmp_path / "was-unpickled"
    store.write(_CreatesAFile(str(marker)), key="suspicious")

    metadata = store.verify("suspicious")

    assert metadata.storage_key == "suspicious"
    assert not marker.exists()


def test_verify_reports_damage(tmp_path: Path) -> None:
    store = ResultStore(f"file://{tmp_path}/store")
    store.write(list(range(100)), key="k")
    record = tmp_path / "store" / "k.rsr"
    data = bytearray(record.read_bytes())
    data[-3] ^= 0xFF
    record.write_bytes(bytes(data))

    with pytest.raises(IntegrityError, match=r"'k'.*payload checksum mismatch"):
        store.verify("k")


def test_copy_to_moves_the_record_byte_for_byte(tmp_path: Path) -> None:
    source = ResultStore(f"file://{tmp_path}/source", signing_key="shared-0123456789abcdef")
    target = ResultStore(f"file://{tmp_path}/target", signing_key="shared-0123456789abcdef")
    source.write({"big": b"x" * 9_000_000}, key="runs/1")

    copied = source.copy_to("runs/1", target)

    assert copied == target.read_metadata("runs/1")
    assert (tmp_path / "source" / "runs" / "1.rsr").read_bytes() == (
        tmp_path / "target" / "runs" / "1.rsr"
    ).read_bytes()
    assert target.read("runs/1").result == {"big": b"x" * 9_000_000}


def test_copy_to_never_copies_a_damaged_record(tmp_path: Path) -> None:
    source = ResultStore(f"file://{tmp_path}/source")
    target = ResultStore(f"memory://copy-target-{tmp_path.name}")
    source.write("fine", key="k")
    record = tmp_path / "source" / "k.rsr"
    record.write_bytes(record.read_bytes()[:-1])

    with pytest.raises(IntegrityError, match="'k'"):
        source.copy_to("k", target)
    assert not target.exists("k")


def test_clean_abandoned_removes_only_old_temporary_files(tmp_path: Path) -> None:
    store = ResultStore(f"file://{tmp_path}/store")
    store.write("kept", key="a/b")
    old = tmp_path / "store" / "a" / ".c.rsr.00112233aabbccdd.tmp"
    old.write_bytes(b"z" * 500)
    os.utime(old, (0, 0))
    recent = tmp_path / "store" / "a" / ".d.rsr.00112233aabbccdd.tmp"
    recent.write_bytes(b"z")
    lookalike = tmp_path / "store" / "a" / "notes.tmp"
    lookalike.write_bytes(b"mine")
    os.utime(lookalike, (0, 0))

    assert store.clean_abandoned(dry_run=True) == (1, 500)
    assert old.exists()
    assert store.clean_abandoned() == (1, 500)
    assert not old.exists() and recent.exists() and lookalike.exists()
    assert store.read("a/b").result == "kept"
    assert ResultStore("memory://nothing-left-behind").clean_abandoned() == (0, 0)


def test_require_container_names_a_missing_folder(tmp_path: Path) -> None:
    from resultstore.errors import ContainerMissingError, Reason

    store = ResultStore((tmp_path / "never-written").as_uri())
    assert store.keys() == []  # a fresh store lists nothing...
    with pytest.raises(ContainerMissingError, match="never-written does not exist") as caught:
        store.require_container()  # ...but a command reporting on it can tell it is not there
    assert caught.value.reason is Reason.CONTAINER_MISSING
    store.write(1, key="k")
    store.require_container()
    ResultStore("memory://require-container").require_container()  # nothing to check
