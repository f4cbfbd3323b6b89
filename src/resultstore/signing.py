"""HMAC signing of records, so shared storage cannot feed us a hostile pickle.

Unpickling runs code chosen by whoever wrote the bytes. When a signing key is
configured, every record written carries an HMAC-SHA256 over the storage key it
is written under and its header, and the header holds a SHA-256 digest of the
payload. A read checks the signature *before it reads the payload*: a record
written by anyone without the signing key, or moved to another storage key, is
refused before a single payload byte is fetched or a buffer sized by its header
is allocated; the payload is then checked against the signed digest before it
is deserialized. Former signing keys may be listed for rotation.

Records signed by earlier releases (``hmac-sha256-v2``, whose MAC covers the
payload itself) are still verified, after their payload is read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from resultstore.errors import ConfigurationError
from resultstore.serializers import Buffer

if TYPE_CHECKING:  # hashlib and hmac (3 ms) are imported by the first signed record only
    import hmac

__all__ = ["MIN_KEY_BYTES", "Signer", "check_signing_key", "check_old_signing_keys"]

ALGORITHM = "hmac-sha256-v3"  # v3: the header is signed, and it holds the payload's SHA-256
_V2 = "hmac-sha256-v2:"  # v2: the payload is signed directly (verified after reading it)
DIGEST_PREFIX = "sha256:"
MIN_KEY_BYTES = 16
"""The shortest signing key accepted: shorter keys can be guessed."""


def check_signing_key(key: object, what: str = "signing_key") -> bytes:
    """``key`` as bytes, or a one-line :class:`ConfigurationError` saying what is wrong.

    Only ``str`` (UTF-8 encoded) and ``bytes`` of at least :data:`MIN_KEY_BYTES`
    bytes are keys: an ``int`` or a short password is a mistake, not a key.
    """
    if isinstance(key, str):
        secret = key.encode()
    elif isinstance(key, (bytes, bytearray)):
        secret = bytes(key)
    else:
        raise ConfigurationError(
            f"{what} must be str or bytes, not {type(key).__name__}; "
            "generate one with: python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    if len(secret) < MIN_KEY_BYTES:
        raise ConfigurationError(
            f"{what} is {len(secret)} bytes, shorter than the {MIN_KEY_BYTES} required; "
            "generate one with: python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    return secret


def check_old_signing_keys(keys: object, what: str = "old_signing_keys") -> list[bytes]:
    """Former keys as a list of bytes; a bare string is refused, not split into letters."""
    if isinstance(keys, (str, bytes, bytearray)) or not isinstance(keys, Iterable):
        raise ConfigurationError(
            f"{what} must be a list or tuple of keys, not {type(keys).__name__}; "
            f"write [key] for one key"
        )
    return [check_signing_key(key, f"{what}[{i}]") for i, key in enumerate(keys)]


def payload_digest(segments: Sequence[Buffer]) -> str:
    """The SHA-256 of the payload, as the header of a signed record records it."""
    import hashlib

    digest = hashlib.sha256()
    for segment in segments:
        digest.update(segment)
    return DIGEST_PREFIX + digest.hexdigest()


class Signer:
    """Signs with one key; verifies with it and any former keys."""

    __slots__ = ("_keys",)

    def __init__(self, key: str | bytes, old_keys: Iterable[str | bytes] = ()) -> None:
        self._keys = [check_signing_key(key), *check_old_signing_keys(old_keys)]

    @staticmethod
    def _mac(secret: bytes, key: str, header: bytes) -> hmac.HMAC:
        import hashlib
        import hmac

        mac = hmac.new(secret, digestmod=hashlib.sha256)
        for part in (key.encode(), header):  # length-prefixed: no two inputs sign alike
            mac.update(len(part).to_bytes(8, "little"))
            mac.update(part)
        return mac

    def sign(self, key: str, header: bytes) -> str:
        """The signature of a record stored under ``key`` whose header is ``header``.

        The header carries the payload's SHA-256 (:func:`payload_digest`), so
        the signature covers the payload too.
        """
        return f"{ALGORITHM}:{self._mac(self._keys[0], key, header).hexdigest()}"

    def verify_header(self, key: str, header: bytes, signature: str) -> bool:
        """True when ``signature`` (v3) was made for ``key`` and ``header`` by a known key."""
        import hmac

        return any(
            hmac.compare_digest(f"{ALGORITHM}:{self._mac(s, key, header).hexdigest()}", signature)
            for s in self._keys
        )

    def verify_v2(
        self, key: str, header: bytes, segments: Sequence[Buffer], signature: str
    ) -> bool:
        """True when a record signed by an earlier release (v2) verifies."""
        import hmac

        for secret in self._keys:
            mac = self._mac(secret, key, header)
            for segment in segments:
                mac.update(segment)
            if hmac.compare_digest(_V2 + mac.hexdigest(), signature):
                return True
        return False

    @staticmethod
    def is_v2(signature: str) -> bool:
        """True for a signature made by an earlier release, which covers the payload."""
        return signature.startswith(_V2)

    def __repr__(self) -> str:
        return f"Signer(<{len(self._keys)} key(s) hidden>)"

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise TypeError("a Signer holds secret keys and cannot be pickled")
