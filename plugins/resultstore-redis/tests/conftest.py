"""Fixtures for the resultstore-redis tests: real redis-server processes, fresh stores."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from resultstore import resolve_store
from resultstore.stores.base import Store
from resultstore.testing import clean_resultstore_env  # noqa: F401 - autouse fixture
from resultstore.testing import run as run_sync

from redis_testserver import PASSWORD, RedisServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server without a password, for the whole session."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_with_password(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server that requires the password :data:`PASSWORD`."""
    server = RedisServer(tmp_path_factory.mktemp("redis-auth"), password=PASSWORD).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A URL of the session's server with a fresh, empty key prefix."""
    return redis_server.url()


@pytest.fixture
def redis_store(redis_url: str) -> Iterator[Store]:
    """A fresh store, opened through the entry point, closed on the loop it ran on."""
    store = resolve_store(redis_url)
    yield store
    run_sync(store.aclose())
