"""HMAC signing of records, so shared storage cannot feed us a hostile pickle.

Unpickling runs code chosen by whoever wrote the bytes. When a signing key is
configured, every record written carries an HMAC-SHA256 over the storage key it
is written under, its header and its payload, and every read checks it *before*
deserializing: a record written by anyone without the signing key, or moved to
another storage key, is refused. Former signing keys may be listed for rotation.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence

from resultstore.serializers import Buffer

__all__ = ["Signer"]

_ALGO = "hmac-sha256-v2"  # v2: the storage key is signed too


class Signer:
    """Signs with one key; verifies with it and any former keys."""

    def __init__(self, key: str | bytes, old_keys: Iterable[str | bytes] = ()) -> None:
        self._keys = [k.encode() if isinstance(k, str) else bytes(k) for k in (key, *old_keys)]
        if not all(self._keys):
            raise ValueError("signing keys may not be empty")

    def _digest(self, secret: bytes, key: str, header: bytes, segments: Sequence[Buffer]) -> str:
        mac = hmac.new(secret, digestmod=hashlib.sha256)
        for part in (key.encode(), header):  # length-prefixed: no two inputs sign alike
            mac.update(len(part).to_bytes(8, "little"))
            mac.update(part)
        for segment in segments:
            mac.update(segment)
        return f"{_ALGO}:{mac.hexdigest()}"

    def sign(self, key: str, header: bytes, segments: Sequence[Buffer]) -> str:
        """The signature of a record stored under ``key``: its header bytes and payload."""
        return self._digest(self._keys[0], key, header, segments)

    def verify(
        self, key: str, header: bytes, segments: Sequence[Buffer], signature: str | None
    ) -> bool:
        """True when ``signature`` was made for ``key`` by the current or a former key."""
        if not signature:
            return False
        return any(
            hmac.compare_digest(self._digest(secret, key, header, segments), signature)
            for secret in self._keys
        )

    def __repr__(self) -> str:
        return f"Signer(<{len(self._keys)} key(s) hidden>)"
