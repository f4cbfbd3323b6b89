"""Fresh storage URLs on every backend with conditional writes, for the lock tests.

``lock_url`` (a fixture, parametrized) yields a fresh, empty URL of the file store,
the memory store, S3 on the session's SeaweedFS server, and the sqlite and redis
plugins. Import the fixtures into a test module to use them::

    from lockstores import lock_url, locks_redis  # noqa: F401 - fixtures
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from seaweedfs import SeaweedFS

BACKENDS = ["file", "memory", "s3", "sqlite", "redis"]
_REDIS_TESTS = Path(__file__).resolve().parents[1] / "plugins" / "resultstore-redis" / "tests"


def _redis_testserver() -> ModuleType:
    """The redis plugin's test server helper (plugins/resultstore-redis/tests)."""
    spec = importlib.util.spec_from_file_location(
        "locks_redis_testserver", _REDIS_TESTS / "redis_testserver.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def locks_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A redis-server for the lock tests, for the whole session, stopped by its pid."""
    server = _redis_testserver().RedisServer(tmp_path_factory.mktemp("locks-redis")).start()
    try:
        yield server
    finally:
        server.stop()


def url_for(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty URL of ``backend``; S3 and redis servers come from session fixtures."""
    tag = uuid.uuid4().hex[:10]
    if backend == "file":
        return f"file://{tmp_path}/results"
    if backend == "memory":
        return f"memory://locks-{tag}"
    if backend == "sqlite":
        return f"sqlite://{tmp_path}/locks.db"
    if backend == "redis":
        return str(request.getfixturevalue("locks_redis").url())
    request.getfixturevalue("s3_env")  # AWS_* for this test: child processes inherit them
    server: SeaweedFS = request.getfixturevalue("s3_server")
    assert server.s3_port
    return f"s3://{request.getfixturevalue('s3_bucket')}/locks-{tag}"


@pytest.fixture(params=BACKENDS)
def lock_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty URL on each backend with conditional writes."""
    return url_for(str(request.param), request, tmp_path)  # (or parametrize it indirectly)
