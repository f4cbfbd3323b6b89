"""Tests of the SeaweedFS test server itself, against the real ``weed`` binary.

They double as an executable record of the S3 semantics the stores can rely on.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from botocore.exceptions import ClientError  # type: ignore[import-untyped]
from s3fs import S3FileSystem

from seaweedfs import SeaweedFS, SeaweedFSError, _remove_stale_socket

MiB = 2**20
BUCKET = "resultstore-test"


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _weed_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-x", "weed"], capture_output=True, text=True, check=False)
    return {int(line) for line in out.stdout.split()}


def _grpc_socket_paths(ports: dict[str, int]) -> list[Path]:
    """weed's hard-coded gRPC Unix sockets for these ports, e.g. /tmp/seaweedfs-s3-grpc-N.sock."""
    return [
        Path(f"/tmp/seaweedfs-{name.removesuffix('_grpc')}-grpc-{port}.sock")
        for name, port in ports.items()
        if name.endswith("_grpc")
    ]


@pytest.fixture(scope="module")
def server() -> Iterator[SeaweedFS]:
    srv = SeaweedFS().start()
    srv.create_bucket(BUCKET)
    pid = srv.pid
    try:
        yield srv
    finally:
        srv.stop()
    assert not _pid_exists(pid), f"weed pid {pid} survived stop()"


@pytest.fixture
def fs(server: SeaweedFS) -> S3FileSystem:
    return S3FileSystem(**server.storage_options(), skip_instance_cache=True)


def _key(name: str) -> str:
    return f"{BUCKET}/{name}-{os.urandom(4).hex()}"


# ---------------------------------------------------------------------- the server


def test_server_is_running_on_loopback(server: SeaweedFS) -> None:
    assert server.running
    assert _pid_exists(server.pid)
    assert server.pid in _weed_pids()
    assert server.endpoint_url == f"http://127.0.0.1:{server.s3_port}"
    assert len(set(server.ports.values())) == len(server.ports)
    assert server.log_path.is_file()
    assert server.startup_seconds is not None and server.startup_seconds < 60
    assert server.command[1:3] == ["-logtostderr", "mini"]

    opts = server.storage_options()
    assert opts["key"] == server.access_key
    assert opts["secret"] == server.secret_key
    assert opts["client_kwargs"] == {
        "endpoint_url": server.endpoint_url,
        "region_name": "us-east-1",
    }
    assert server.env() == {
        "AWS_ENDPOINT_URL": server.endpoint_url,
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    buckets = [b["Name"] for b in server.client().list_buckets()["Buckets"]]
    assert BUCKET in buckets


def test_credentials_are_checked(server: SeaweedFS) -> None:
    bad = S3FileSystem(
        key=server.access_key,
        secret="not-the-secret",
        client_kwargs={"endpoint_url": server.endpoint_url, "region_name": server.region},
        skip_instance_cache=True,
    )
    with pytest.raises(PermissionError):
        bad.ls(BUCKET)


def test_env_configures_plain_clients(server: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    fs = S3FileSystem(skip_instance_cache=True)  # endpoint and keys from the environment
    path = _key("env")
    fs.pipe(path, b"via env")
    response = server.client().get_object(Bucket=BUCKET, Key=path.split("/", 1)[1])
    assert response["Body"].read() == b"via env"


def test_create_bucket_is_immediately_usable(server: SeaweedFS, fs: S3FileSystem) -> None:
    name = f"fresh-{os.urandom(4).hex()}"
    server.create_bucket(name)
    fs.pipe(f"{name}/x", b"1")
    assert fs.cat(f"{name}/x") == b"1"
    assert name in [p.rstrip("/") for p in fs.ls("", detail=False, refresh=True)]
    with pytest.raises(ClientError) as excinfo:
        server.create_bucket(name)
    assert excinfo.value.response["Error"]["Code"] == "BucketAlreadyOwnedByYou"


# ---------------------------------------------------------------------- s3fs (sync)


def test_put_get_ls_rm(fs: S3FileSystem) -> None:
    prefix = _key("dir")
    fs.pipe(f"{prefix}/a", b"alpha")
    fs.pipe(f"{prefix}/b", b"beta")
    assert fs.cat(f"{prefix}/a") == b"alpha"
    assert fs.info(f"{prefix}/b")["size"] == 4
    assert sorted(fs.ls(prefix, detail=False)) == [f"{prefix}/a", f"{prefix}/b"]
    assert fs.find(prefix) == [f"{prefix}/a", f"{prefix}/b"]  # listing is immediate

    fs.pipe(f"{prefix}/a", b"alpha-2")  # overwrite
    assert fs.cat(f"{prefix}/a") == b"alpha-2"

    fs.rm(f"{prefix}/a")
    assert not fs.exists(f"{prefix}/a")
    with pytest.raises(FileNotFoundError):
        fs.cat(f"{prefix}/a")
    assert fs.find(prefix) == [f"{prefix}/b"]


def test_20mb_object_round_trip(fs: S3FileSystem) -> None:
    path = _key("big")
    data = os.urandom(20 * MiB)
    fs.pipe(path, data)  # one PutObject
    assert fs.info(path)["size"] == len(data)
    assert fs.cat(path) == data
    with fs.open(path, "rb", block_size=4 * MiB) as f:
        f.seek(15 * MiB)
        assert f.read(MiB) == data[15 * MiB : 16 * MiB]
    assert fs.cat_file(path, start=len(data) - 10) == data[-10:]


def test_multipart_upload(server: SeaweedFS, fs: S3FileSystem) -> None:
    path = _key("multipart")
    data = os.urandom(12 * MiB + 123)
    with fs.open(path, "wb", block_size=5 * MiB) as f:
        # s3fs flushes one part each time the buffer reaches block_size.
        for start in range(0, len(data), 5 * MiB):
            f.write(data[start : start + 5 * MiB])
    assert fs.cat(path) == data
    key = path.split("/", 1)[1]
    head = server.client().head_object(Bucket=BUCKET, Key=key)
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")  # 5 MiB + 5 MiB + 2 MiB parts
    uploads = server.client().list_multipart_uploads(Bucket=BUCKET, Prefix=key)
    assert not uploads.get("Uploads")


def test_multipart_rules(server: SeaweedFS) -> None:
    client = server.client()
    key = _key("parts").split("/", 1)[1]
    upload_id = client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    try:
        etags = [
            client.upload_part(
                Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=n, Body=b"x" * 100
            )["ETag"]
            for n in (1, 2)
        ]
        # Parts are invisible until completed.
        with pytest.raises(ClientError) as excinfo:
            client.head_object(Bucket=BUCKET, Key=key)
        assert excinfo.value.response["Error"]["Code"] == "404"
        # Every part but the last must be >= 5 MiB, as on AWS.
        parts = [{"PartNumber": n, "ETag": e} for n, e in zip((1, 2), etags, strict=True)]
        with pytest.raises(ClientError) as excinfo:
            client.complete_multipart_upload(
                Bucket=BUCKET, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        assert excinfo.value.response["Error"]["Code"] == "EntityTooSmall"
    finally:
        client.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload_id)
    assert not client.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads")


def test_missing_bucket_and_key_raise(server: SeaweedFS, fs: S3FileSystem) -> None:
    with pytest.raises(FileNotFoundError):
        fs.cat("no-such-bucket-here/x")
    with pytest.raises(FileNotFoundError):
        fs.ls("no-such-bucket-here", refresh=True)
    # -s3.autoCreateBucket=false: writing into a missing bucket fails, as on AWS.
    with pytest.raises(FileNotFoundError):
        fs.pipe("no-such-bucket-here/x", b"1")
    with pytest.raises(FileNotFoundError):
        fs.cat(f"{BUCKET}/no-such-key")
    with pytest.raises(ClientError) as excinfo:
        server.client().get_object(Bucket="no-such-bucket-here", Key="x")
    assert excinfo.value.response["Error"]["Code"] == "NoSuchBucket"


def test_conditional_writes(server: SeaweedFS, fs: S3FileSystem) -> None:
    client = server.client()
    key = _key("cond").split("/", 1)[1]
    client.put_object(Bucket=BUCKET, Key=key, Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as excinfo:
        client.put_object(Bucket=BUCKET, Key=key, Body=b"second", IfNoneMatch="*")
    assert excinfo.value.response["Error"]["Code"] == "PreconditionFailed"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412

    etag = client.head_object(Bucket=BUCKET, Key=key)["ETag"]
    with pytest.raises(ClientError) as excinfo:
        client.put_object(Bucket=BUCKET, Key=key, Body=b"third", IfMatch='"0000"')
    assert excinfo.value.response["Error"]["Code"] == "PreconditionFailed"
    client.put_object(Bucket=BUCKET, Key=key, Body=b"fourth", IfMatch=etag)
    assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"fourth"

    # The same through s3fs: mode="create" / "xb" send If-None-Match: *.
    path = f"{BUCKET}/{key}"
    with pytest.raises(OSError):
        fs.pipe(path, b"fifth", mode="create")
    with pytest.raises(OSError), fs.open(path, "xb") as f:
        f.write(b"sixth")
    assert fs.cat(path) == b"fourth"


def test_conditional_create_has_one_winner(server: SeaweedFS) -> None:
    key = _key("race").split("/", 1)[1]
    results: list[str] = []

    def attempt(i: int) -> None:
        client = server.new_client(max_attempts=1)
        try:
            client.put_object(Bucket=BUCKET, Key=key, Body=str(i).encode(), IfNoneMatch="*")
            results.append("ok")
        except ClientError as exc:
            results.append(exc.response["Error"]["Code"])
        finally:
            client.close()

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["PreconditionFailed"] * 7 + ["ok"]


def test_conditional_complete_multipart(server: SeaweedFS) -> None:
    client = server.client()
    key = _key("cond-mpu").split("/", 1)[1]
    client.put_object(Bucket=BUCKET, Key=key, Body=b"old")
    upload_id = client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    etag = client.upload_part(
        Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=1, Body=b"new"
    )["ETag"]
    with pytest.raises(ClientError) as excinfo:
        client.complete_multipart_upload(
            Bucket=BUCKET,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
            IfNoneMatch="*",
        )
    assert excinfo.value.response["Error"]["Code"] == "PreconditionFailed"
    assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b"old"
    client.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload_id)


@dataclass
class _Read:
    outcome: str  # "missing", "old", "new" or "torn:<size>"/"error:<exc>"
    finished: float


def _upload_while_reading(
    server: SeaweedFS, fs: S3FileSystem, path: str, old: bytes | None, new: bytes
) -> tuple[list[_Read], float]:
    """Multipart-upload ``new`` over ``old`` while two threads GET the key in a loop.

    Returns every read and the monotonic time at which the upload's commit began.
    """
    key = path.split("/", 1)[1]
    if old is not None:
        fs.pipe(path, old)
    digests = {hashlib.sha256(new).digest(): "new"}
    if old is not None:
        digests[hashlib.sha256(old).digest()] = "old"
    reads: list[_Read] = []
    stop = threading.Event()

    def reader() -> None:
        client = server.new_client(max_attempts=1)
        try:
            while not stop.is_set():
                try:
                    body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
                    outcome = digests.get(hashlib.sha256(body).digest(), f"torn:{len(body)}")
                except ClientError as exc:
                    code = exc.response["Error"]["Code"]
                    outcome = "missing" if code == "NoSuchKey" else f"error:{code}"
                except Exception as exc:
                    outcome = f"error:{exc!r}"
                reads.append(_Read(outcome, time.monotonic()))
        finally:
            client.close()

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        f = fs.open(path, "wb", block_size=5 * MiB)
        for start in range(0, len(new), 5 * MiB):
            f.write(new[start : start + 5 * MiB])
            time.sleep(0.05)  # let readers in between parts
        commit_started = time.monotonic()
        f.close()  # CompleteMultipartUpload
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    return reads, commit_started


@pytest.mark.parametrize("old_size", [None, 3 * MiB], ids=["absent", "overwrite"])
def test_multipart_upload_is_atomic_for_readers(
    server: SeaweedFS, fs: S3FileSystem, old_size: int | None
) -> None:
    path = _key("atomic")
    old = None if old_size is None else os.urandom(old_size)
    new = os.urandom(50 * MiB)
    reads, commit_started = _upload_while_reading(server, fs, path, old, new)

    before = "missing" if old is None else "old"
    counts = Counter(r.outcome for r in reads)
    assert set(counts) <= {before, "new"}, counts
    during_upload = [r for r in reads if r.finished < commit_started]
    assert len(during_upload) >= 5, counts  # the readers really overlapped the parts
    assert {r.outcome for r in during_upload} == {before}
    assert reads[-1].outcome == "new"
    assert fs.cat(path) == new


# ---------------------------------------------------------------------- s3fs (async)


def test_async_api(server: SeaweedFS) -> None:
    async def main() -> None:
        fs = S3FileSystem(asynchronous=True, skip_instance_cache=True, **server.storage_options())
        session = await fs.set_session()
        try:
            prefix = _key("async")
            await fs._pipe_file(f"{prefix}/one", b"1")
            assert await fs._cat_file(f"{prefix}/one") == b"1"

            payload = os.urandom(6 * MiB)
            await asyncio.gather(*(fs._pipe_file(f"{prefix}/{i}", payload) for i in range(5)))
            blobs = await asyncio.gather(*(fs._cat_file(f"{prefix}/{i}") for i in range(5)))
            assert all(blob == payload for blob in blobs)
            assert len(await fs._ls(prefix, refresh=True)) == 6

            big = os.urandom(11 * MiB)  # > 2 * chunksize: multipart via _pipe_file
            await fs._pipe_file(f"{prefix}/big", big, chunksize=5 * MiB)
            assert (await fs._info(f"{prefix}/big"))["size"] == len(big)
            assert await fs._cat_file(f"{prefix}/big") == big

            await fs._pipe_file(f"{prefix}/new", b"x", mode="create")
            with pytest.raises(OSError):
                await fs._pipe_file(f"{prefix}/new", b"y", mode="create")

            await fs._rm_file(f"{prefix}/one")
            with pytest.raises(FileNotFoundError):
                await fs._cat_file(f"{prefix}/one")
            with pytest.raises(FileNotFoundError):
                await fs._cat_file("no-such-bucket-here/x")
        finally:
            await session.close()

    asyncio.run(main())


# ---------------------------------------------------------------------- lifecycle


def test_second_server_then_stop_leaves_nothing(server: SeaweedFS) -> None:
    with SeaweedFS() as other:
        assert other.running
        assert set(other.ports.values()).isdisjoint(server.ports.values())
        other.create_bucket("other")
        other.client().put_object(Bucket="other", Key="k", Body=b"v")
        pid, workdir = other.pid, other.workdir
        assert pid in _weed_pids()
        fs = S3FileSystem(**other.storage_options(), skip_instance_cache=True)
        assert fs.cat("other/k") == b"v"
        with pytest.raises(FileNotFoundError):  # servers are isolated
            fs.ls(BUCKET, refresh=True)

    assert not other.running
    assert not _pid_exists(pid)
    assert pid not in _weed_pids()
    assert not workdir.exists()
    assert not [p for p in _grpc_socket_paths(other.ports) if p.exists()]
    other.stop()  # idempotent
    assert other.pid == pid  # still readable after stop
    assert server.running  # the module server is untouched


def test_weed_dies_with_a_killed_test_process() -> None:
    """A hard-killed pytest (SIGKILL, os._exit) does not leave weed running."""
    script = (
        "import json, sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from seaweedfs import SeaweedFS\n"
        "srv = SeaweedFS().start()\n"
        "print(json.dumps([srv.pid, str(srv.workdir), srv.ports]), flush=True)\n"
        "time.sleep(120)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        pid, workdir, ports = json.loads(child.stdout.readline())
        assert _pid_exists(pid)
    finally:
        child.kill()
        child.wait()
    deadline = time.monotonic() + 10
    while _pid_exists(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pid_exists(pid)
    # A SIGKILLed weed leaves its files behind; tidy up for the test's sake.
    shutil.rmtree(workdir, ignore_errors=True)
    for path in _grpc_socket_paths(ports):
        _remove_stale_socket(path)


def test_startup_failure_reports_the_log() -> None:
    srv = SeaweedFS(extra_args=["-no-such-flag"], startup_timeout=20)
    with pytest.raises(SeaweedFSError, match="exited with code") as excinfo:
        srv.start()
    assert "no-such-flag" in str(excinfo.value)  # weed's own complaint, from the log
    assert not srv.running
    assert not _pid_exists(srv.pid)


def test_stop_escalates_to_sigkill() -> None:
    srv = SeaweedFS(stop_timeout=0.0).start()
    pid, ports = srv.pid, dict(srv.ports)
    srv.stop()  # SIGTERM, no grace period, then SIGKILL
    assert not _pid_exists(pid)
    assert pid not in _weed_pids()
    # weed's hard-coded gRPC Unix sockets are cleaned up even after a SIGKILL.
    paths = _grpc_socket_paths(ports)
    assert len(paths) == 5
    assert not [p for p in paths if p.exists()]


def test_start_retries_when_a_port_was_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    import seaweedfs

    real_free_ports = seaweedfs._free_ports
    picks: list[dict[str, int]] = []
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()

        def free_ports(names: list[str]) -> dict[str, int]:
            ports = real_free_ports(names)
            if not picks:  # first pick: someone grabbed the master port meanwhile
                ports["master"] = squatter.getsockname()[1]
            picks.append(ports)
            return ports

        monkeypatch.setattr(seaweedfs, "_free_ports", free_ports)
        with SeaweedFS() as srv:
            assert len(picks) == 2
            assert srv.ports == picks[1]
            srv.create_bucket("retried")
