"""Benchmark rows of whole-store operations at 100,000 records (``run.py --only bulk``).

Each store gets ``records`` records of 1 KB. Measured, each against the raw
equivalent where there is one, in one run:

- ``resultstore ls`` (a child process): time to its first line, and its peak RSS;
- a keys-only listing against the raw listing (an ``os.scandir`` walk; raw
  ListObjectsV2 pages through obstore);
- a metadata scan (every header), in records per second (on S3 beside raw HEADs of
  the same objects, 32 at once, reading the header copy a ResultStore write leaves in
  the object's user metadata: what the server allows);
- ``gc`` of 1,000 expired records among the others against the raw listing of those
  1,000 plus their raw batched delete; and the peak RSS of ``resultstore gc``;
- a second ``copy_all`` of 10,000 unchanged records against the first.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from resultstore import ResultStore
from resultstore.records import encode_record
from resultstore.serializers import get_serializer
from resultstore.stores._s3common import HEAD_METADATA

Row = dict[str, Any]
RowFn = Callable[..., Row]
VALUE = b"x" * 1000  # 1 KB results
EXPIRED = 1000
COPIED = 10_000


def _record() -> tuple[bytes, dict[str, str]]:
    """One 1 KB record's bytes, as ResultStore writes it (unsigned, no expiration), and
    the S3 user metadata it writes with it: the header's copy that one HEAD reads back."""
    segments = encode_record(get_serializer("pickle").dumps(VALUE), serializer="pickle")
    head = base64.b64encode(bytes(segments[0])).decode("ascii")
    return b"".join(bytes(segment) for segment in segments), {HEAD_METADATA: head}


# Runs the CLI, then reports the process's peak RSS since exec (VmHWM): ru_maxrss would
# also count the parent's pages the child had before exec (Linux keeps the larger).
_REPORTING_CLI = """
import sys
from resultstore.cli import main
try:
    code = main(sys.argv[1:])
finally:
    peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")]
    sys.stderr.write("\\n" + peak[0])
sys.exit(code)
"""


def _child(argv: list[str], env: dict[str, str], bytecode: Path) -> tuple[float, float, int]:
    """Run the CLI with ``argv``: (seconds to its first stdout line, in all, peak RSS bytes).

    Its bytecode is cached under ``bytecode`` (``_env`` drops PYTHONDONTWRITEBYTECODE), as
    an installed package has it: the caller runs one untimed round first.
    """
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-X", f"pycache_prefix={bytecode}", "-c", _REPORTING_CLI, *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None and child.stderr is not None
    child.stdout.readline()
    first = time.perf_counter() - started
    for _ in iter(lambda: child.stdout.read(1 << 16), b""):  # type: ignore[union-attr]
        pass
    errors = child.stderr.read().decode()
    child.wait()
    total = time.perf_counter() - started
    if child.returncode != 0:
        raise RuntimeError(f"resultstore {argv} failed: {errors[-500:]}")
    kilobytes = int(errors.rsplit("VmHWM:", 1)[1].split()[0])
    return first, total, kilobytes * 1024


def _cli(url: str, *args: str) -> list[str]:
    return ["--storage", url, *args]


def _env(options: dict[str, Any]) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    for name, value in (
        ("AWS_ENDPOINT_URL", options.get("client_kwargs", {}).get("endpoint_url")),
        ("AWS_ACCESS_KEY_ID", options.get("key")),
        ("AWS_SECRET_ACCESS_KEY", options.get("secret")),
    ):
        if value:
            env[name] = str(value)
    env.setdefault("AWS_REGION", "us-east-1")
    if "client" in options:
        env["RESULTSTORE_S3_CLIENT"] = str(options["client"])
    return env


def _timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _copy_time(source: ResultStore, destination: ResultStore) -> float:
    """Seconds to copy_all the 10,000 records under bulk/00 (bulk/000 to bulk/009)."""
    return _timed(lambda: source.copy_all(destination, "bulk/00"))


def _expire_some(store: ResultStore, prefix: str, count: int) -> None:
    """``count`` records that expired a minute ago, written (and indexed) by ResultStore."""
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)

    async def write_all() -> None:
        semaphore = asyncio.Semaphore(32)

        async def one(i: int) -> None:
            async with semaphore:
                await store.awrite(VALUE, key=f"{prefix}{i}", expiration=past)

        await asyncio.gather(*(one(i) for i in range(count)))

    asyncio.run(write_all())


def _rows_for(
    label: str,
    url: str,
    options: dict[str, Any],
    row: RowFn,
    raw_keys: Callable[[], int],
    raw_gc: Callable[[], float],
    scan_target: float,
    scan_prefix: str,
    raw_scan: Callable[[list[str]], float] | None = None,
) -> list[Row]:
    """The rows of one store; ``ls`` and the metadata scan cover ``scan_prefix``.

    ``raw_scan(keys)`` (S3) times raw HEADs of those keys (the header copies), as
    many at once as the scan's default concurrency: what the server allows a scan.
    """
    rows: list[Row] = []
    env = _env(options)
    store = ResultStore(url, storage_options=options)
    what = f"{len(store.keys(scan_prefix)):,} records"

    bytecode = Path(tempfile.gettempdir()) / "resultstore-bench-bytecode"
    _child(_cli(url, "ls", "--limit", "1"), env, bytecode)  # untimed: caches the bytecode
    first, _, rss = _child(_cli(url, "ls", scan_prefix), env, bytecode)
    rows.append(row(f"{label}: ls {what}, first line", first, None, "s", None, max_value=0.3))
    rows.append(row(f"{label}: ls {what}, peak RSS", rss / 2**20, None, "MB", None, max_value=60))

    async def streamed() -> int:
        return sum([1 async for _ in store.akeys("bulk/")])

    count = raw_keys()
    ours_keys = min(_timed(lambda: asyncio.run(streamed())) for _ in range(2))
    raw_s = min(_timed(raw_keys) for _ in range(2))
    rows.append(
        row(f"{label}: keys-only listing", count / ours_keys, count / raw_s, "keys/s", 0.67)
    )

    started = time.perf_counter()
    scanned = sum(1 for _ in store.scan(scan_prefix))
    rate = scanned / (time.perf_counter() - started)
    raw_rate = None
    if raw_scan is not None:
        keys = store.keys(scan_prefix)
        raw_rate = len(keys) / raw_scan(keys)
    rows.append(
        row(f"{label}: metadata scan", rate, raw_rate, "records/s", None, min_value=scan_target)
    )

    _expire_some(store, "gone/", EXPIRED)
    store.delete_expired()  # the first collection lists the whole index once, then a watermark
    _expire_some(store, "gone/", EXPIRED)
    ours_gc = _timed(lambda: store.delete_expired())
    assert not store.keys("gone/"), "gc left expired records"
    raw_gc_s = raw_gc()
    rows.append(
        row(f"{label}: gc 1,000 expired", EXPIRED / ours_gc, EXPIRED / raw_gc_s, "records/s", 0.5)
    )
    _expire_some(store, "gone/", EXPIRED)
    _, _, gc_rss = _child(_cli(url, "gc"), env, bytecode)
    rows.append(row(f"{label}: gc, peak RSS", gc_rss / 2**20, None, "MB", None, max_value=60))
    store.close()
    return rows


@contextmanager
def _local_s3(s3_url: str | None) -> Iterator[tuple[str, dict[str, Any]]]:
    if s3_url:
        yield s3_url, {}
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from seaweedfs import SeaweedFS

    with SeaweedFS(volume_size_limit_mb=1024) as server:
        server.create_bucket("bulk")
        yield "s3://bulk/run", server.storage_options()


def bench_bulk(
    folder: Path, s3_url: str | None, skip_s3: bool, records: int, row: RowFn
) -> list[Row]:
    """The rows of this module's docstring, on the file store and (unless skipped) S3."""
    data, attributes = _record()
    rows: list[Row] = []

    # -- the file store ---------------------------------------------------------------
    root = folder / "store"
    for i in range(records):  # raw writes of real records: what ResultStore would leave
        path = root / "bulk" / f"{i // 1000:03d}" / f"{i}.rsr"
        if i % 1000 == 0:
            path.parent.mkdir(parents=True)
        path.write_bytes(data)
    raw_root = folder / "raw"
    raw_root.mkdir()
    for i in range(EXPIRED):
        (raw_root / str(i)).write_bytes(data)

    def walk() -> int:
        """The raw listing: the keys of a tree walk with os.scandir (names less .rsr)."""
        keys, pending = [], ["bulk/"]
        while pending:
            folder = pending.pop()
            with os.scandir(root / folder) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(f"{folder}{entry.name}/")
                    else:
                        keys.append(folder + entry.name[:-4])
        return len(keys)

    def file_gc() -> float:
        for i in range(EXPIRED):
            (raw_root / str(i)).write_bytes(data)
        started = time.perf_counter()
        for entry in os.scandir(raw_root):
            os.unlink(entry.path)
        return time.perf_counter() - started

    url = root.as_uri()
    rows += _rows_for("file", url, {"fsync": False}, row, walk, file_gc, 5000, "")

    source = ResultStore(url)
    destination = ResultStore((folder / "copy").as_uri())
    first = _copy_time(source, destination)  # 10,000 records
    second = _copy_time(source, destination)
    rows.append(
        row("file: second copy_all of 10,000", second / first, None, "x first", None, max_value=0.2)
    )

    if skip_s3:
        return rows

    # -- S3 (SeaweedFS on loopback) ----------------------------------------------------
    import obstore
    from obstore.store import S3Store

    with _local_s3(s3_url) as (base, options):
        bucket, _, prefix = base.removeprefix("s3://").partition("/")
        endpoint = options.get("client_kwargs", {}).get("endpoint_url") or os.environ.get(
            "AWS_ENDPOINT_URL", ""
        )
        raw = S3Store(
            bucket,
            endpoint=endpoint,
            access_key_id=options.get("key"),
            secret_access_key=options.get("secret"),
            region="us-east-1",
            client_options={"allow_http": True},
        )

        async def fill(keys: list[str]) -> None:
            semaphore = asyncio.Semaphore(64)

            async def put(key: str) -> None:
                async with semaphore:
                    await obstore.put_async(raw, key, data, attributes=attributes)

            await asyncio.gather(*(put(key) for key in keys))

        asyncio.run(fill([f"{prefix}/bulk/{i // 1000:03d}/{i}" for i in range(records)]))

        def raw_list() -> int:
            return sum(len(page) for page in obstore.list(raw, f"{prefix}/bulk/"))

        def raw_gc() -> float:
            keys = [f"{prefix}/raw-gc/{i}" for i in range(EXPIRED)]
            asyncio.run(fill(keys))
            started = time.perf_counter()
            listed = [
                item["path"] for page in obstore.list(raw, f"{prefix}/raw-gc/") for item in page
            ]
            obstore.delete(raw, listed)
            return time.perf_counter() - started

        def raw_scan(keys: list[str]) -> float:
            """Seconds for raw HEADs of ``keys`` with their user metadata, 32 at a time
            (a get with ``head=True``: obstore's ``head`` drops the metadata)."""

            async def read_all() -> None:
                semaphore = asyncio.Semaphore(32)

                async def head(key: str) -> None:
                    async with semaphore:
                        got = await obstore.get_async(
                            raw, f"{prefix}/{key}", options={"head": True}
                        )
                        assert got.attributes.get(HEAD_METADATA), key

                await asyncio.gather(*(head(key) for key in keys))

            return _timed(lambda: asyncio.run(read_all()))

        for client, scan_prefix in (("obstore", ""), ("s3fs", "bulk/00")):
            # s3fs reads headers at a few hundred a second here: its rows cover 10,000.
            s3_options = {**options, "client": client}
            label = f"s3 ({client})"
            rows += _rows_for(
                label, base, s3_options, row, raw_list, raw_gc, 2000, scan_prefix, raw_scan
            )

            source = ResultStore(base, storage_options=s3_options)
            destination = ResultStore(f"{base}-copy-{client}", storage_options=s3_options)
            first = _copy_time(source, destination)
            second = _copy_time(source, destination)
            rows.append(
                row(
                    f"{label}: second copy_all of 10,000",
                    second / first,
                    None,
                    "x first",
                    None,
                    max_value=0.2,
                )
            )
    return rows
