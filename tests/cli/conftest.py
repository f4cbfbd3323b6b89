"""Fixtures for driving the ``resultstore`` command line in subprocesses.

Every command runs as ``python -m resultstore ...`` with ``HOME`` set to a temporary
folder (nothing touches the real home) and a clean environment: no ``RESULTSTORE_*``,
``AWS_*`` or colour-forcing variable from the developer's shell leaks in.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_harness import Cli, clean_env


@pytest.fixture
def home(tmp_path: Path) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    return folder


@pytest.fixture
def file_cli(tmp_path: Path, home: Path) -> Cli:
    """The CLI on a file store under tmp_path (RESULTSTORE_STORAGE_URL)."""
    url = (tmp_path / "store").as_uri()
    env = {**clean_env(home), "RESULTSTORE_STORAGE_URL": url}
    return Cli(env=env, cwd=tmp_path, url=url)


@pytest.fixture(params=["file", "s3"])
def cli(request: pytest.FixtureRequest, file_cli: Cli) -> Cli:
    """The CLI on a file store, then on a fresh prefix of the test S3 server."""
    if request.param == "file":
        return file_cli
    s3_env: dict[str, str] = request.getfixturevalue("s3_env")
    s3_url: str = request.getfixturevalue("s3_url")
    env = {**file_cli.env, **s3_env, "RESULTSTORE_STORAGE_URL": s3_url}
    return Cli(env=env, cwd=file_cli.cwd, url=s3_url)
