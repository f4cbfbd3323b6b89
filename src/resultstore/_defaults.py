"""Defaults that ResultStore's signatures share with the modules they load on first use.

``ResultStore.copy_all(concurrency=DEFAULT_CONCURRENCY)`` and
``ResultStore.lock(hold_timeout=DEFAULT_HOLD_TIMEOUT)`` need these values when
``resultstore.result_store`` is imported; defined here, they do not make that import
load :mod:`resultstore.bulk` and :mod:`resultstore.locks`, which a program reading one
record (``resultstore get KEY``) never uses. Those modules re-export them.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_COMPUTE_HOLD_TIMEOUT",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_HOLD_TIMEOUT",
    "DELETE_BATCH",
]

DEFAULT_CONCURRENCY = 32
"""Header reads (and deletes, copies, verifications) in flight at once."""
DELETE_BATCH = 1000  # keys per batched delete (S3 DeleteObjects takes up to 1,000)

DEFAULT_HOLD_TIMEOUT = 60.0
"""Seconds a lease taken by :meth:`ResultStore.lock` lasts unless renewed."""
DEFAULT_COMPUTE_HOLD_TIMEOUT = 30.0
"""Seconds a :meth:`ResultStore.get_or_compute` lease lasts; renewed every third of it."""
