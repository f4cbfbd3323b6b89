"""Policies of the whole test suite (tests/ and the plugins' tests).

- ``serial``: a test that measures elapsed time (deadlines, leases, a terminal's redraw)
  or needs the machine's cores to itself. ``scripts/check.sh`` runs the other tests on
  parallel workers, then these alone, so load from the workers never moves a deadline.
- ``RESULTSTORE_TESTS_SKIP_NOTHING=1`` (set by ``scripts/check.sh``): a test that would
  be skipped fails instead, naming what it lacked. The project's test command installs
  everything its tests need, so a skip there means a check silently did not run.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

# Read once, at start-up: the tests hide RESULTSTORE_* variables from themselves.
_SKIP_NOTHING = os.environ.get("RESULTSTORE_TESTS_SKIP_NOTHING") == "1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "serial: measures elapsed time; scripts/check.sh runs it alone, after the parallel pass",
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[Any]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    if not _SKIP_NOTHING:
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (
        f"{item.nodeid} would be skipped ({reason}), and this run must skip nothing: "
        "install what it needs (scripts/check.sh installs the test prerequisites)"
    )
