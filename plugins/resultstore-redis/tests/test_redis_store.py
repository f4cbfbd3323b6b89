"""resultstore-redis against a real redis-server: the conformance kit, errors, URLs, loops."""

from __future__ import annotations

import gc
import importlib.metadata
import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from urllib.parse import quote

import anyio
import pytest
import redis
from resultstore import (
    ConfigurationError,
    PersistedResult,
    ResultNotFoundError,
    ResultStore,
    StorageError,
    StorageUnavailableError,
    available_stores,
    resolve_store,
)
from resultstore.stores.base import Payload, Store
from resultstore.testing import (
    DeniedConformance,
    MultiProcessConformance,
    SecretConformance,
    StoreConformance,
    UnreachableConformance,
    read_all,
)
from resultstore.testing import run as run_sync

from redis_testserver import PASSWORD, RedisServer, free_port
from resultstore_redis import DEFAULT_PREFIX, RedisStore, escape_glob


class TestRedisConformance(
    StoreConformance,
    UnreachableConformance,
    SecretConformance,
    DeniedConformance,
    MultiProcessConformance,
):
    """The core's checks, unchanged, on a store opened by URL through the entry point.

    With the opt-in checks: a server that is down, a password that must never show, a
    password the server refuses, and a second process (and a forked child) using the
    same server at once.
    """

    @pytest.fixture
    def secret(self) -> str:
        return PASSWORD  # the password the server of secret_store requires

    @pytest.fixture
    def store(self, redis_store: Store) -> Store:
        assert isinstance(redis_store, RedisStore)
        return redis_store

    @pytest.fixture
    def unreachable_store(self) -> Iterator[Store]:
        store = resolve_store(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
        yield store
        run_sync(store.aclose())

    @pytest.fixture
    def secret_store(self, redis_with_password: RedisServer) -> Iterator[Store]:
        store = resolve_store(redis_with_password.url(password=PASSWORD))
        yield store
        run_sync(store.aclose())

    @pytest.fixture
    def denied_store(self, redis_with_password: RedisServer) -> Iterator[Store]:
        store = resolve_store(redis_with_password.url(password="not-" + PASSWORD))
        yield store
        run_sync(store.aclose())


class TestRedisConformanceWithGlobCharactersInThePrefix(StoreConformance):
    """The same checks under a configured prefix full of glob characters."""

    @pytest.fixture
    def store(self, redis_server: RedisServer) -> Iterator[Store]:
        store = resolve_store(redis_server.url(prefix=f"g*?[{time.monotonic_ns()}]\\^-:"))
        assert isinstance(store, RedisStore) and "*" in store.prefix
        yield store
        run_sync(store.aclose())


async def _keys(store: Store, prefix: str = "") -> list[str]:
    return sorted([key async for key in store.list(prefix)])


def _raw(server: RedisServer, db: int = 0) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.port, db=db, password=server.password)


# -- listing ---------------------------------------------------------------------


def test_list_matches_glob_characters_in_key_prefixes_literally(redis_store: Store) -> None:
    keys = ["a*b/1", "a?c/2", "a[x]/3", "a]y/4", "a^z/5", "ab/6", "a/7", "axb/8", "a[-]/9"]
    for key in keys:
        run_sync(redis_store.write(key, Payload([key.encode()])))
    assert run_sync(_keys(redis_store, "a*")) == ["a*b/1"]
    assert run_sync(_keys(redis_store, "a?")) == ["a?c/2"]
    assert run_sync(_keys(redis_store, "a[")) == ["a[-]/9", "a[x]/3"]
    assert run_sync(_keys(redis_store, "a[x]")) == ["a[x]/3"]
    assert run_sync(_keys(redis_store, "a[x]/")) == ["a[x]/3"]
    assert run_sync(_keys(redis_store, "a]")) == ["a]y/4"]
    assert run_sync(_keys(redis_store, "a^")) == ["a^z/5"]
    assert run_sync(_keys(redis_store, "*")) == []
    assert run_sync(_keys(redis_store, "?")) == []
    assert run_sync(_keys(redis_store, "a")) == sorted(keys)
    with ResultStore(redis_store, retry=None) as results:
        assert results.keys("a[") == ["a[-]/9", "a[x]/3"]


def test_escape_glob_escapes_every_special_character() -> None:
    assert escape_glob("plain/key") == "plain/key"
    assert escape_glob("a*b?c[d]e\\f") == "a\\*b\\?c\\[d\\]e\\\\f"


def test_keys_outside_the_prefix_are_invisible_and_untouched(
    redis_server: RedisServer,
) -> None:
    outer = resolve_store(redis_server.url(prefix="iso:"))
    inner = resolve_store(redis_server.url(prefix="iso:inner:"))
    raw = _raw(redis_server)
    try:
        raw.set("iso", b"not ours")
        raw.set(b"iso:\xff\xfe", b"not utf-8, not ours")
        run_sync(inner.write("k", Payload([b"inner"])))
        run_sync(outer.write("k", Payload([b"outer"])))
        assert run_sync(_keys(inner)) == ["k"]
        assert run_sync(_keys(outer)) == ["inner:k", "k"]
        assert run_sync(read_all(outer, "k")) == b"outer"
        assert raw.get("iso:inner:k") == b"inner"
        assert run_sync(outer.delete("k")) is True
        assert raw.get("iso") == b"not ours"
    finally:
        raw.delete("iso", b"iso:\xff\xfe", "iso:inner:k", b"\\version:iso:inner:k")
        raw.close()
        run_sync(outer.aclose())
        run_sync(inner.aclose())


def test_listing_many_keys_pages_through_scan_without_duplicates(
    redis_server: RedisServer,
) -> None:
    store = resolve_store(redis_server.url(), scan_count=7)
    names = [f"many/{i:04d}" for i in range(500)]

    async def fill() -> None:
        for name in names:
            await store.write(name, Payload([b"x"]))

    run_sync(fill())
    listed = run_sync(_list(store, "many/"))
    assert sorted(listed) == names
    assert len(listed) == len(set(listed))
    run_sync(store.aclose())


async def _list(store: Store, prefix: str = "") -> list[str]:
    return [key async for key in store.list(prefix)]


# -- errors ------------------------------------------------------------------------


def _assert_one_line_naming(error: BaseException, *parts: str) -> str:
    message = str(error)
    assert "\n" not in message
    assert "Traceback" not in message
    assert PASSWORD not in message and PASSWORD not in repr(error)
    for part in parts:
        assert part in message, (part, message)
    assert error.__cause__ is None and error.__suppress_context__
    return message


def test_connection_refused_is_a_one_line_unavailable_error_without_the_password() -> None:
    port = free_port()  # nothing listens there
    url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
    store = resolve_store(url)
    safe_url = f"redis://127.0.0.1:{port}/0"
    assert store.url == safe_url
    started = time.monotonic()
    for action, call in [
        ("write", lambda: store.write("k", Payload([b"x"]))),
        ("read", lambda: store.open("k")),
        ("check", lambda: store.exists("k")),
        ("delete", lambda: store.delete("k")),
        ("list", lambda: _keys(store, "p/")),
    ]:
        with pytest.raises(StorageUnavailableError) as caught:
            run_sync(call())
        message = _assert_one_line_naming(caught.value, safe_url, action, "unreachable")
        assert caught.value.url == safe_url
        assert "Connection refused" in message or "connect" in message.lower()
    assert time.monotonic() - started < 10  # a few short retries, not minutes

    with ResultStore(url) as results:
        assert results.storage_url == safe_url and PASSWORD not in repr(results)
        with pytest.raises(StorageUnavailableError) as through_core:
            results.read("etl/1", retry=False)
        _assert_one_line_naming(through_core.value, safe_url, "'etl/1'")
    run_sync(store.aclose())


def test_credentials_from_the_url_options_or_environment(
    redis_with_password: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = redis_with_password
    plain = server.url()
    with_password = f"redis://:{quote(PASSWORD)}@{plain.split('://', 1)[1]}"
    stores = [resolve_store(with_password), resolve_store(plain, password=PASSWORD)]
    monkeypatch.setenv("RESULTSTORE_REDIS_PASSWORD", PASSWORD)
    stores.append(resolve_store(plain))
    for i, store in enumerate(stores):
        assert PASSWORD not in store.url and PASSWORD not in repr(store)
        run_sync(store.write(f"k{i}", Payload([b"ok"])))
        assert run_sync(read_all(store, f"k{i}")) == b"ok"
        run_sync(store.aclose())

    # A persisted result records the URL without the password; the reader brings its own.
    with ResultStore(with_password) as results:
        reference = results.create_result({"v": 1}, key="persisted")
        reference.write()
        text = json.dumps(reference.to_reference())
        assert PASSWORD not in text
    again = PersistedResult.from_reference(json.loads(text))
    monkeypatch.setenv("RESULTSTORE_REFERENCE_URLS", again.storage_url)  # the reader allows it
    assert again.get() == {"v": 1}  # RESULTSTORE_REDIS_PASSWORD is set


def test_wrong_or_missing_password_is_a_one_line_storage_error(
    redis_with_password: RedisServer,
) -> None:
    server = redis_with_password
    for store in [resolve_store(server.url()), resolve_store(server.url(), password="wrong")]:
        with pytest.raises(StorageError) as caught:
            run_sync(store.write("k", Payload([b"x"])))
        assert not isinstance(caught.value, StorageUnavailableError)
        _assert_one_line_naming(caught.value, store.url, "'k'", "credentials")
        assert "wrong" not in str(caught.value)
        run_sync(store.aclose())


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("redis://localhost:notaport/0", "bad port"),
        ("redis://:pw@localhost:99999/0", "bad port"),
        ("redis://localhost/zero", "bad database number"),
        ("redis://localhost/0/extra", "bad database number"),
        ("redis://localhost/0?prefix=a&db=2", "takes only"),
        ("redis://localhost/0#frag", "takes only"),
    ],
)
def test_bad_urls_are_configuration_errors_without_the_password(url: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment) as caught:
        resolve_store(url)
    assert "\n" not in str(caught.value) and ":pw@" not in str(caught.value)


def test_bad_options_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="retries"):
        resolve_store("redis://localhost", retries=-1)
    store = resolve_store("redis://127.0.0.1:1", client_kwargs={"no_such_option": 1})
    with pytest.raises(ConfigurationError, match="client_kwargs"):
        run_sync(store.exists("k"))


# -- URLs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "canonical", "prefix"),
    [
        ("redis://localhost", "redis://localhost:6379/0", DEFAULT_PREFIX),
        ("redis://localhost/", "redis://localhost:6379/0", DEFAULT_PREFIX),
        ("REDIS://Cache.Internal:6380/2", "redis://cache.internal:6380/2", DEFAULT_PREFIX),
        ("redis://u:p@h:1/3?prefix=etl:", "redis://h:1/3?prefix=etl%3A", "etl:"),
        ("redis://h?prefix=", "redis://h:6379/0?prefix=", ""),
        ("redis://h?prefix=a%2Fb%3Fc", "redis://h:6379/0?prefix=a%2Fb%3Fc", "a/b?c"),
        ("rediss://h:6390/1", "rediss://h:6390/1", DEFAULT_PREFIX),
        ("redis://[::1]:6380/2", "redis://[::1]:6380/2", DEFAULT_PREFIX),
    ],
)
def test_urls_are_parsed_and_recorded_without_credentials(
    url: str, canonical: str, prefix: str
) -> None:
    store = resolve_store(url)
    assert isinstance(store, RedisStore)
    assert store.url == canonical and store.prefix == prefix
    again = resolve_store(store.url)
    assert isinstance(again, RedisStore) and again.url == canonical and again.prefix == prefix


def test_the_default_prefix_is_resultstore_colon(redis_server: RedisServer) -> None:
    store = resolve_store(f"redis://127.0.0.1:{redis_server.port}/3")
    raw = _raw(redis_server, db=3)
    try:
        run_sync(store.write("k", Payload([b"v"])))
        assert raw.get("resultstore:k") == b"v"
    finally:
        raw.flushdb()
        raw.close()
        run_sync(store.aclose())


# -- found through the entry point only -----------------------------------------------


def test_the_redis_schemes_are_registered_by_this_distribution() -> None:
    stores = available_stores()
    assert stores["redis"] == stores["rediss"] == "resultstore-redis"
    (ep,) = importlib.metadata.entry_points(group="resultstore.stores", name="redis")
    assert ep.value == "resultstore_redis:RedisStore"


def test_resolve_store_and_result_store_find_the_plugin_by_url(redis_url: str) -> None:
    assert isinstance(resolve_store(redis_url), RedisStore)
    with ResultStore(redis_url) as results:
        assert isinstance(results.store, RedisStore)
        key = results.write({"rows": 1200}, key="etl/2026-11-28")
        assert results.read(key).result == {"rows": 1200}
        assert [m.storage_key for m in results.list("etl/")] == ["etl/2026-11-28"]
        assert results.delete(key) is True
        with pytest.raises(ResultNotFoundError):
            results.read(key, retry=False)


def test_another_interpreter_reads_what_this_one_wrote(redis_url: str) -> None:
    with ResultStore(redis_url) as results:
        results.write({"from": "parent"}, key="cross/process")
    code = textwrap.dedent(
        f"""
        import sys
        from resultstore import ResultStore
        assert "resultstore_redis" not in sys.modules
        with ResultStore({redis_url!r}) as results:
            print(results.read("cross/process").result)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "{'from': 'parent'}"


# -- event loops ---------------------------------------------------------------------


def test_one_client_per_event_loop(redis_store: Store) -> None:
    assert isinstance(redis_store, RedisStore)
    run_sync(redis_store.write("loop/sync", Payload([b"1"])))  # this thread's private loop
    assert len(redis_store._connections) == 1

    async def on_a_fresh_loop() -> bytes:
        await redis_store.write("loop/anyio", Payload([b"2"]))
        assert len(redis_store._connections) == 2  # a client of its own
        return await read_all(redis_store, "loop/sync")

    assert anyio.run(on_a_fresh_loop) == b"1"
    assert len(redis_store._connections) == 1  # closed as anyio.run shut its loop down

    seen: list[bytes] = []

    def in_a_thread() -> None:  # a thread has its own private loop, hence its own client
        seen.append(run_sync(read_all(redis_store, "loop/anyio")))

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    gc.collect()
    assert seen == [b"2"]
    assert len(redis_store._connections) == 1  # closed with the ended thread's loop
    assert run_sync(_keys(redis_store, "loop/")) == ["loop/anyio", "loop/sync"]
    run_sync(redis_store.aclose())
    assert len(redis_store._connections) == 0  # aclose() closes every loop's client
