"""The header copy S3 writes keep in the object's user metadata, against a real S3 server.

Both clients of ``s3://`` put each record's header (base64) in ``x-amz-meta-resultstore-head``
in the same request as the object, and ``read_metadata`` reads it with one HEAD. The copy
is as untrusted as the object: a garbled, forged, oversized or stale-looking copy is
never believed, the object's own header is read instead (SeaweedFS, no mocks; metadata
written with a raw botocore client).
"""

from __future__ import annotations

import base64
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from faultproxy import FaultProxy
from resultstore import (
    IntegrityError,
    ResultNotFoundError,
    ResultStore,
    RetryPolicy,
    StorageUnavailableError,
)
from resultstore.records import ResultMetadata, record_head
from resultstore.stores._s3common import HEAD_LIMIT, HEAD_METADATA
from resultstore.testing import run
from seaweedfs import SeaweedFS

PART = 5 * 1024 * 1024  # the smallest part size, so a 6 MB record is a multipart upload


@pytest.fixture(params=["s3fs", "obstore"])
def client(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def results(url: str, client: str, **settings: Any) -> ResultStore:
    return ResultStore(url, storage_options={"client": client, "part_size": PART}, **settings)


def location(url: str, key: str) -> tuple[str, str]:
    bucket, prefix = url.removeprefix("s3://").split("/", 1)
    return bucket, f"{prefix}/{key}"


def raw_object(s3_server: SeaweedFS, url: str, key: str) -> tuple[bytes, dict[str, str]]:
    """The object's bytes and user metadata, as a raw client sees them."""
    bucket, name = location(url, key)
    got = s3_server.client().get_object(Bucket=bucket, Key=name)
    return got["Body"].read(), dict(got.get("Metadata") or {})


def raw_put(
    s3_server: SeaweedFS, url: str, key: str, body: bytes, metadata: dict[str, str] | None = None
) -> None:
    """A PUT by another tool (or an older release): ``body`` with exactly ``metadata``."""
    bucket, name = location(url, key)
    s3_server.client().put_object(Bucket=bucket, Key=name, Body=body, Metadata=metadata or {})


def kept(s3_server: SeaweedFS, url: str, key: str) -> bytes | None:
    """The header copy the object's metadata holds, decoded (None without one)."""
    _, metadata = raw_object(s3_server, url, key)
    value = metadata.get(HEAD_METADATA)
    return None if value is None else base64.b64decode(value)


def header_of(s3_server: SeaweedFS, url: str, key: str) -> bytes:
    head = record_head(raw_object(s3_server, url, key)[0])
    assert head is not None
    return head


def without_version(metadata: ResultMetadata) -> ResultMetadata:
    return metadata._replace(version=None)


# -- what writes keep ----------------------------------------------------------------------


def test_every_kind_of_write_keeps_the_exact_header(
    s3_server: SeaweedFS, s3_url: str, client: str
) -> None:
    store = results(s3_url, client)
    store.write({"small": 1}, key="plain")
    store.write(b"x" * (6 * 1024 * 1024), key="multipart")  # above part_size
    store.write("created", key="created", if_absent=True)
    version = store.read_metadata("created").version
    assert version is not None
    store.write("swapped", key="created", if_version=version)
    store.write(os.urandom(6 * 1024 * 1024), key="big-created", if_absent=True)

    for key in ("plain", "multipart", "created", "big-created"):
        header = header_of(s3_server, s3_url, key)
        assert kept(s3_server, s3_url, key) == header, key
        head = run(store.store.read_head(key))
        assert head is not None and head.data == header, key
        assert head.size == len(raw_object(s3_server, s3_url, key)[0])
        assert head.version == run(store.store.stat(key)).version
    assert store.read("created").result == "swapped"


def test_an_overwrite_replaces_the_copy(s3_server: SeaweedFS, s3_url: str, client: str) -> None:
    store = results(s3_url, client)
    store.write("first", key="k")
    first = kept(s3_server, s3_url, "k")
    store.write("second, longer", key="k", expiration=None)
    assert kept(s3_server, s3_url, "k") == header_of(s3_server, s3_url, "k") != first
    assert store.read_metadata("k") == store.read("k").metadata


def test_a_header_too_large_to_keep_is_not_copied(
    s3_server: SeaweedFS, s3_url: str, client: str
) -> None:
    # One segment length per array in the header: 600 of them make a header over 1.1 KB.
    import numpy as np

    store = results(s3_url, client)
    value = [np.full(2, i) for i in range(600)]
    store.write(value, key="many")
    assert len(base64.b64encode(header_of(s3_server, s3_url, "many"))) > HEAD_LIMIT
    assert kept(s3_server, s3_url, "many") is None
    assert run(store.store.read_head("many")) is None
    assert store.read_metadata("many") == store.read("many").metadata


def test_copy_to_and_copy_all_write_the_copy(
    s3_server: SeaweedFS, s3_url: str, client: str, tmp_path: Path
) -> None:
    source = ResultStore(f"file://{tmp_path}/source")
    for i in range(5):
        source.write({"i": i}, key=f"r/{i}")
    source.write(b"y" * (6 * 1024 * 1024), key="r/large")
    destination = results(s3_url, client)
    summary = source.copy_all(destination)
    assert summary.copied == 6
    for key in [*(f"r/{i}" for i in range(5)), "r/large"]:
        assert kept(s3_server, s3_url, key) == header_of(s3_server, s3_url, key), key
        assert destination.read_metadata(key) == destination.read(key).metadata
    source.write("again", key="single")
    source.copy_to("single", destination)
    assert kept(s3_server, s3_url, "single") == header_of(s3_server, s3_url, "single")


# -- what read_metadata does with it -------------------------------------------------------


def test_read_metadata_is_one_head(s3_server: SeaweedFS, s3_url: str, client: str) -> None:
    writer = results(s3_url, client)
    writer.write(os.urandom(1 << 20), key="big")
    expected = writer.read("big").metadata
    # Every GET through this proxy fails: only the HEAD gets through.
    with FaultProxy(
        "127.0.0.1", s3_server.s3_port, fault_rate=1.0, methods={"GET"}, kinds=("http_503",)
    ) as proxy:
        options = s3_server.storage_options()
        options["client_kwargs"] = {**options["client_kwargs"], "endpoint_url": proxy.url}
        reader = ResultStore(
            s3_url, storage_options={**options, "client": client}, retry=RetryPolicy(attempts=1)
        )
        before = proxy.counts["requests"]
        assert reader.read_metadata("big") == expected
        assert proxy.counts["requests"] - before == 1
        assert proxy.faults == 0
        # A record without a copy needs a ranged GET, which this proxy refuses.
        raw_put(s3_server, s3_url, "old", raw_object(s3_server, s3_url, "big")[0])
        with pytest.raises(StorageUnavailableError, match="'old'"):
            reader.read_metadata("old")


def test_a_record_written_without_a_copy_is_read(
    s3_server: SeaweedFS, s3_url: str, client: str
) -> None:
    store = results(s3_url, client)
    store.write({"a": 1}, key="k")
    body, _ = raw_object(s3_server, s3_url, "k")
    raw_put(s3_server, s3_url, "older", body)  # as an older release wrote it
    assert kept(s3_server, s3_url, "older") is None
    metadata = store.read_metadata("older")
    assert without_version(metadata) == without_version(
        store.read_metadata("k")._replace(storage_key="older")
    )
    assert metadata.version == run(store.store.stat("older")).version


def forgeries(header: bytes, other: bytes) -> dict[str, str]:
    """Metadata values that must never be believed over the object's own header."""
    flipped = bytearray(header)
    flipped[-5] ^= 0x01  # inside the JSON: the header's checksum no longer matches
    b64 = base64.b64encode
    return {
        "not base64": "!!not base64!!",
        "base64 with junk": b64(header).decode() + "*",
        "random bytes": b64(os.urandom(200)).decode(),
        "empty": "",
        "truncated": b64(header[:-10]).decode(),
        "flipped byte": b64(bytes(flipped)).decode(),
        "trailing bytes": b64(header + b"extra").decode(),
        "another record's header": b64(other).decode(),  # its size is not this object's
        "oversized": b64(header * 8).decode(),  # over 2 KB: never decoded
    }


def test_garbled_or_forged_copies_fall_back_to_the_object(
    s3_server: SeaweedFS, s3_url: str, client: str
) -> None:
    store = results(s3_url, client)
    store.write({"value": list(range(100))}, key="good")
    store.write("a shorter one", key="other")
    body, _ = raw_object(s3_server, s3_url, "good")
    expected = without_version(store.read("good").metadata)
    cases = forgeries(header_of(s3_server, s3_url, "good"), header_of(s3_server, s3_url, "other"))
    for name, value in cases.items():
        key = f"forged/{uuid.uuid4().hex[:8]}"
        raw_put(s3_server, s3_url, key, body, {HEAD_METADATA: value})
        got = store.read_metadata(key)
        assert without_version(got) == expected._replace(storage_key=key), name
        assert got.version == run(store.store.stat(key)).version, name
        assert store.read(key).result == {"value": list(range(100))}, name


def test_a_copy_is_never_trusted_over_a_signing_key(
    s3_server: SeaweedFS, s3_url: str, client: str
) -> None:
    signed = results(s3_url, client, signing_key="k" * 32)
    signed.write("signed", key="s")
    unsigned = results(s3_url, client)
    unsigned.write("forged", key="u", expiration=None)
    body, _ = raw_object(s3_server, s3_url, "s")
    # The object is the signed record; the copy an unsigned header of the same size, and a
    # copy signed for another key: both verify their checksums, neither its signature.
    signed.write("signed", key="elsewhere")
    for copy_of in ("u", "elsewhere"):
        raw_put(
            s3_server,
            s3_url,
            "s",
            body,
            {HEAD_METADATA: base64.b64encode(header_of(s3_server, s3_url, copy_of)).decode()},
        )
        got = signed.read_metadata("s")
        assert got.signed, copy_of
        assert without_version(got) == without_version(signed.read("s").metadata), copy_of
    # Its own copy verifies, and is used.
    signed.write("signed again", key="s")
    assert signed.read_metadata("s") == signed.read("s").metadata


def test_a_damaged_copy_of_a_damaged_object_reports_the_object(
    s3_server: SeaweedFS, s3_url: str, client: str
) -> None:
    raw_put(s3_server, s3_url, "bad", b"RSTR" + os.urandom(100), {HEAD_METADATA: "AAAA"})
    with pytest.raises(IntegrityError, match=r"record 'bad'.* is damaged"):
        results(s3_url, client).read_metadata("bad")


def test_a_missing_key_is_not_found(s3_url: str, client: str) -> None:
    store = results(s3_url, client, retry=RetryPolicy(attempts=1))
    store.write(1, key="there")
    with pytest.raises(ResultNotFoundError, match="no result under key 'missing'"):
        store.read_metadata("missing")
    assert run(store.store.read_head("there")) is not None
    with pytest.raises(ResultNotFoundError, match="no result under key 'missing'"):
        run(store.store.read_head("missing"))
