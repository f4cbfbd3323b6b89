"""Shared fixtures: a real S3 server (SeaweedFS) for the whole session, and fresh S3 URLs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from resultstore.testing import clean_resultstore_env  # noqa: F401 - autouse: no stray RESULTSTORE_*
from seaweedfs import SeaweedFS

S3_BUCKET = "resultstore-tests"


@pytest.fixture(autouse=True)
def fresh_reference_stores(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no store registered for references (use_for_references)."""
    from collections import OrderedDict

    from resultstore import references

    monkeypatch.setattr(references, "_registered", {})
    monkeypatch.setattr(references, "_cache", OrderedDict())


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedFS]:
    """One SeaweedFS server on free loopback ports, stopped by its pid after the session."""
    with SeaweedFS() as server:
        server.create_bucket(S3_BUCKET)
        yield server


@pytest.fixture
def s3_bucket(s3_server: SeaweedFS) -> str:
    """The name of the bucket the test server was started with."""
    return S3_BUCKET


@pytest.fixture
def s3_env(s3_server: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The standard AWS variables pointing at the test server, set for this test."""
    env = s3_server.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def s3_url(s3_env: dict[str, str]) -> str:
    """A fresh, empty prefix in the test bucket, reachable with credentials from the env."""
    return f"s3://{S3_BUCKET}/t-{uuid.uuid4().hex[:12]}"
