"""More attacks on resultstore's trust boundaries, each with the safe behaviour it must meet.

Every test plays someone who controls one untrusted input (a record's bytes, a State's
JSON, a file in a store's folder, a Prefect folder) and checks that the outcome is a
precise, one-line error from :mod:`resultstore.errors` naming what was refused, with
nothing decoded, nothing touched outside the root, and memory bounded where size is
the point. See docs/security.md for the trust model these check.
"""

from __future__ import annotations

import base64
import builtins
import json
import os
import resource
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from attacker import (
    Listener,
    PlantsAFile,
    header_fields,
    peak_allocation,
    plant,
    received,
    record_bytes,
)

from resultstore import (
    IntegrityError,
    ReferenceNotAllowedError,
    ResultStore,
    RetryPolicy,
    SerializationError,
    SerializerNotAllowedError,
    SignatureError,
    UnknownSerializerError,
)
from resultstore._loops import run_sync
from resultstore.prefect import PrefectRecordError, import_prefect
from resultstore.references import store_for_reference
from resultstore.signing import Signer
from states import get_state_result

KEY = "k" * 32
ONCE = RetryPolicy(attempts=1, delay=0)
MiB = 1 << 20


def one_line(error: BaseException, *names: str) -> str:
    message = str(error)
    assert "\n" not in message and len(message) < 1000, message
    for name in names:
        assert name in message, message
    return message


# -- a record's serializer name is data, never a configuration --------------------------


@pytest.mark.parametrize(
    "name",
    [
        '{"type": "pickle"}',  # a configuration of a code-running serializer
        '{"type": "compressed/json"}',  # a configuration a reader would have honoured
        '{"type": "bogus", "x": 1}',  # one that made a ConfigurationError without the key
        "{not json",
        '{"type":"compressed","serializer":' * 3000 + '"json"' + "}" * 3000,  # RecursionError
        "prefect:pickle",  # Prefect's names are for records read in place, not native ones
        "",
    ],
    ids=[
        "pickle config",
        "compressed config",
        "bogus config",
        "bad json",
        "deep",
        "prefect",
        "empty",
    ],
)
def test_a_record_names_its_serializer_by_name_only(memory_url: str, name: str) -> None:
    store = ResultStore(memory_url, serializer="json", retry=ONCE)
    plant(store, "k", record_bytes(header_fields(serializer=name)))
    with pytest.raises((UnknownSerializerError, IntegrityError)) as caught:
        store.read("k")
    assert type(caught.value) in (UnknownSerializerError, IntegrityError)
    one_line(caught.value, "'k'")


@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
def test_an_unknown_serializer_is_named_with_its_record_on_every_read_path(
    tmp_path: Path, mmap: bool
) -> None:
    store = ResultStore((tmp_path / "store").as_uri(), serializer="json", retry=ONCE)
    plant(store, "k", record_bytes(header_fields(serializer="nosuch")))
    with pytest.raises(UnknownSerializerError) as caught:
        store.read("k", mmap=mmap)
    one_line(caught.value, "record 'k' in file://", "'nosuch'")
    assert caught.value.key == "k"


@pytest.mark.parametrize(
    "name", ["json\nFAKE LINE", "\x1b[2J\x1b[31mjson", "json\x00", "j" * 100_000, "json\u0085"]
)
def test_serializer_names_with_control_characters_or_no_end_are_damage(
    memory_url: str, name: str
) -> None:
    """Names reach ls, inspect and messages: a newline or terminal escape there is damage."""
    store = ResultStore(memory_url, retry=ONCE)
    plant(store, "k", record_bytes(header_fields(serializer=name)))
    for read in (store.read_metadata, store.read):
        with pytest.raises(IntegrityError, match="unreadable header") as caught:
            read("k")
        one_line(caught.value, "'k'")


def test_the_cli_never_prints_a_hostile_serializer_name(tmp_path: Path) -> None:
    url = (tmp_path / "store").as_uri()
    store = ResultStore(url)
    plant(store, "k", record_bytes(header_fields(serializer="\x1b]0;owned\x07json")))
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("RESULTSTORE_", "AWS_"))
    }
    for command in (["inspect", "k"], ["ls"]):
        done = subprocess.run(
            [sys.executable, "-m", "resultstore", *command, "--storage", url],
            env={**env, "HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert "\x1b" not in done.stdout + done.stderr, command
        assert "owned" not in done.stdout + done.stderr, command


@pytest.mark.parametrize(
    "header",
    [
        b'"segments":[NaN]',
        b'"segments":[1e400]',
        b'"segments":[' + b"9" * 100_000 + b"]",
        b'"segments":[3],"z":' + b"[" * 100_000 + b"]" * 100_000,
        b'"segments":[3],"serializer":"\\ud800"',
        b'"segments":[3],"serializer":"\xff\xfe"',
        b'"segments":[-3]',
        b'"segments":[3,0],"segments":[' + b"0," * 100 + b"3]",
    ],
    ids=["NaN", "inf", "100k digits", "deep", "lone surrogate", "not utf-8", "negative", "dup"],
)
def test_odd_header_json_is_an_integrity_error(memory_url: str, header: bytes) -> None:
    text = (
        b'{"checksum":"xxh3_128:00","created":"2026-01-01T00:00:00+00:00","expiration":null,'
        b'"serializer":"json",' + header + b"}"
    )
    store = ResultStore(memory_url, retry=ONCE)
    plant(store, "k", record_bytes(text))
    peak, error = peak_allocation(lambda: store.read("k"))
    assert type(error) is IntegrityError, error
    one_line(error, "'k'")
    assert peak < 4 * MiB


def test_with_duplicate_keys_the_serializer_checked_is_the_one_used(
    memory_url: str, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    import pickle

    payload = pickle.dumps(PlantsAFile(marker))
    body = json.dumps(header_fields(payload, serializer="json"))[:-1]
    text = (body + ', "serializer": "pickle"}').encode()  # the last one wins in the parser
    store = ResultStore(memory_url, serializer="json", retry=ONCE)
    plant(store, "k", record_bytes(text, payload))
    with pytest.raises(SerializerNotAllowedError) as caught:
        store.read("k")
    one_line(caught.value, "'k'", "'pickle'")
    assert not marker.exists()


# -- references from a State's JSON ----------------------------------------------------------


def hostile_references(allowed: Path) -> list[str]:
    base = allowed.as_uri()
    return [
        f"{base}/%00x",  # a NUL the file store would hand to open()
        f"{base}%00",
        f" {base}",  # not a valid URL: refused as a reference, not as a setting
        f"file:{allowed}",
        "http://[::1/results",  # urlsplit's ValueError
        f"{base}\n",
        f"{base}/\t",
        "s3://bucket/%61llowed",  # decoded 'allowed'; an S3 store reads the prefix '%61llowed'
        "s3://bucket/allowed%2Fx",  # decoded 'allowed/x'; S3 reads 'allowed%2Fx', a sibling
        "s3://user:pa/ss@bucket/allowed",  # user info whose password holds a '/'
        "s3://bucket/allowed?endpoint_url=http://127.0.0.1:1",  # options in the query
        "s3://bucket-evil/allowed",
        "s3://bucket/allowed-evil",
        "s3://bucket/allowed/%2e%2e/other",
        "s3://bucket/allowed/..%2fother",
        "s3://bucket/allowed/%5c..%5cother",
        "memory://team/%61",  # memory names are not decoded either
        "memory://team//a",
        "memory://team/a?x=1",
    ]


def test_hostile_reference_urls_are_refused_before_anything_is_contacted(
    tmp_path: Path, listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    allowed = tmp_path / "allowed"
    ResultStore(allowed.as_uri()).write("ok", key="k")
    monkeypatch.setenv("RESULTSTORE_STORAGE_URL", allowed.as_uri())
    monkeypatch.setenv("RESULTSTORE_REFERENCE_URLS", "s3://bucket/allowed, memory://team/a")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{listener.port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "attacker")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "attacker")
    for url in hostile_references(allowed):
        with pytest.raises(ReferenceNotAllowedError) as caught:
            get_state_result(received(url), retry_result_failure=False)
        message = one_line(caught.value, "RESULTSTORE_REFERENCE_URLS")
        assert "pa/ss" not in message, url
    assert listener.connections == 0
    assert get_state_result(received(allowed.as_uri())) == "ok"


def test_percent_encoded_paths_that_mean_the_same_folder_still_resolve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "my results"  # as_uri() writes 'my%20results'
    ResultStore(folder.as_uri()).write("spaced", key="k")
    monkeypatch.setenv("RESULTSTORE_REFERENCE_URLS", folder.as_uri())
    assert get_state_result(received(folder.as_uri())) == "spaced"
    monkeypatch.setenv("RESULTSTORE_REFERENCE_URLS", "memory://team%20x/a")
    ResultStore("memory://team%20x/a").write("named", key="k")
    assert get_state_result(received("memory://team%20x/a")) == "named"


def test_a_registered_store_derives_no_store_for_an_encoded_sibling(memory_url: str) -> None:
    registered = ResultStore(f"{memory_url}/a", signing_key=KEY).use_for_references()
    registered.derive(f"{memory_url}/a/b").write("below", key="k")
    assert get_state_result(received(f"{memory_url}/a/b")) == "below"
    for url in (f"{memory_url}/%61/b", f"{memory_url}//a/b", f"{memory_url}/a%2Fb"):
        with pytest.raises(ReferenceNotAllowedError) as caught:
            get_state_result(received(url), retry_result_failure=False)
        one_line(caught.value)


def test_an_encoded_prefix_allows_no_reference_that_only_its_decoded_form_contains(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Allowed: S3 prefixes 'a/' and (written encoded) '%2561/'. 's3://bucket/%61/x' decodes
    # to 'a/x' and is written as '%61/x'; an S3 store reads '%61/x', under neither prefix.
    monkeypatch.setenv("RESULTSTORE_REFERENCE_URLS", "s3://bucket/a, s3://bucket/%2561/")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{listener.port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "attacker")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "attacker")
    for url in ("s3://bucket/%61/x", "s3://bucket/%2561x"):
        with pytest.raises(ReferenceNotAllowedError) as caught:
            get_state_result(received(url), retry_result_failure=False)
        one_line(caught.value, "RESULTSTORE_REFERENCE_URLS")
    assert listener.connections == 0
    # as written and decoded alike under an allowed prefix: resolved (to a store)
    for url in ("s3://bucket/a/x", "s3://bucket/%2561/x"):
        assert store_for_reference(url).storage_url == url


def test_memory_names_differing_in_case_are_other_stores(memory_url: str) -> None:
    registered = ResultStore(f"{memory_url}/a").use_for_references()
    registered.write("mine", key="k")
    assert get_state_result(received(f"{memory_url}/a")) == "mine"
    other = memory_url.replace("memory://", "memory://X")
    ResultStore(f"{other}/a").write("another store", key="k")
    shouted = memory_url.replace("memory://reliability", "memory://RELIABILITY")
    for url in (f"{shouted}/a", f"{other}/a"):  # the same name but for its case; another
        with pytest.raises(ReferenceNotAllowedError):
            get_state_result(received(url), retry_result_failure=False)


@pytest.mark.parametrize("prefix", ["file:///a", "s3://bucket", "s3://bucket/p"])
def test_prefixes_match_whole_names_only(monkeypatch: pytest.MonkeyPatch, prefix: str) -> None:
    monkeypatch.setenv("RESULTSTORE_REFERENCE_URLS", prefix)
    sibling = prefix + "b" if prefix.startswith("file") else prefix + "-evil"
    with pytest.raises(ReferenceNotAllowedError):
        get_state_result(received(sibling), retry_result_failure=False)


# -- signatures ----------------------------------------------------------------------------


def test_signature_downgrades_and_tampering_are_refused_before_decoding(
    memory_url: str, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    writer = ResultStore(memory_url, signing_key=KEY)
    writer.write(PlantsAFile(marker), key="k")
    signed = run_sync(writer.store.open("k"))
    data = run_sync(signed.read())
    reader = ResultStore(memory_url, signing_key=KEY, retry=ONCE)
    assert not marker.exists()

    cases: dict[str, tuple[bytes, type[Exception]]] = {}
    cases["trailing bytes"] = (data + b"x", IntegrityError)
    cases["truncated"] = (data[:-1], IntegrityError)
    header_len = struct.unpack_from("<I", data, 6)[0]
    header = json.loads(data[18 : 18 + header_len])
    payload = data[18 + header_len :]

    def rebuilt(**changes: Any) -> bytes:
        changed = {**header, **changes}
        changed = {name: value for name, value in changed.items() if name not in changes or value}
        text = json.dumps(changed, separators=(",", ":"), sort_keys=True).encode()
        return record_bytes(text, payload)

    cases["unsigned, digest kept"] = (rebuilt(signature=None), SignatureError)
    cases["empty signature"] = (rebuilt(signature="-"), SignatureError)
    cases["v2 label on a v3 mac"] = (
        rebuilt(signature="hmac-sha256-v2:" + header["signature"].split(":", 1)[1]),
        SignatureError,
    )
    cases["other algorithm"] = (
        rebuilt(signature="hmac-sha1:" + header["signature"].split(":", 1)[1]),
        SignatureError,
    )
    cases["relabelled"] = (rebuilt(serializer="pickle+zstd"), SignatureError)
    cases["segment appended"] = (
        rebuilt(segments=[*header["segments"], 1]) + b"x",
        SignatureError,
    )
    for name, (forged, error) in cases.items():
        plant(reader, "k", forged)
        with pytest.raises(error) as caught:
            reader.read("k")
        assert isinstance(caught.value, IntegrityError), name
        one_line(caught.value, "'k'")
        assert not marker.exists(), name


def test_a_record_signed_with_a_dropped_old_key_is_refused(memory_url: str) -> None:
    old, new = "o" * 32, "n" * 32
    ResultStore(memory_url, signing_key=old).write("from before", key="k")
    rotated = ResultStore(memory_url, signing_key=new, old_signing_keys=[old], retry=ONCE)
    assert rotated.read("k").result == "from before"
    dropped = ResultStore(memory_url, signing_key=new, retry=ONCE)
    with pytest.raises(SignatureError) as caught:
        dropped.read("k")
    one_line(caught.value, "'k'")


def test_a_v2_signature_by_someone_without_the_key_never_verifies(
    memory_url: str, tmp_path: Path
) -> None:
    """v2 records are verified after their payload is read: still never unpickled unsigned."""
    import pickle

    marker = tmp_path / "pwned"
    payload = pickle.dumps(PlantsAFile(marker))
    attacker = Signer("someone-elses-key-00")
    fields = header_fields(payload, serializer="pickle")
    core = json.dumps(fields, separators=(",", ":"), sort_keys=True)
    mac = attacker._mac(attacker._keys[0], "k", core.encode())
    mac.update(payload)
    text = json.dumps({**fields, "signature": "hmac-sha256-v2:" + mac.hexdigest()}).encode()
    store = ResultStore(memory_url, signing_key=KEY, retry=ONCE)
    plant(store, "k", record_bytes(text, payload))
    with pytest.raises(SignatureError):
        store.read("k")
    assert not marker.exists()


# -- hostile files in a file store's folder ----------------------------------------------------


@pytest.fixture
def address_space_limit() -> Iterator[None]:
    """Cap this process's address space (2 GiB above its use), so no allocation of a
    claimed size can succeed whatever the machine's overcommit policy: the test then
    sees what happens when it fails, instead of the machine running out of memory."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as statm:
        used = int(statm.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + (2 << 30), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_a_sparse_file_claiming_terabytes_is_an_integrity_error(
    tmp_path: Path, address_space_limit: None
) -> None:
    """A sparse file "holds" every byte its header claims; allocating them must fail
    as one line naming the key, never MemoryError or a StorageError that is retried."""
    root = tmp_path / "store"
    store = ResultStore(root.as_uri(), retry=ONCE)
    size = 4 << 40
    head = record_bytes(header_fields(serializer="pickle", segments=[size]), b"")
    path = root / "sparse.rsr"
    root.mkdir()
    with open(path, "wb") as handle:
        handle.write(head)
        handle.truncate(len(head) + size)
    assert store.read_metadata("sparse").size == size  # the header is honest about it
    peak, error = peak_allocation(lambda: store.read("sparse"))
    assert type(error) is IntegrityError, error
    one_line(error, "'sparse'")
    assert peak < MiB


def test_links_and_odd_files_in_resultstores_own_folders_are_never_followed(
    tmp_path: Path,
) -> None:
    import datetime

    root, outside = tmp_path / "store", tmp_path / "outside"
    outside.mkdir()
    store = ResultStore(root.as_uri(), retry=ONCE)
    store.write(1, key="a")
    (root / ".resultstore").mkdir(exist_ok=True)
    for name in ("expiry", "locks"):
        target = outside / name
        target.mkdir()
        os.symlink(target, root / ".resultstore" / name)
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    with pytest.raises(Exception) as caught:
        store.write(2, key="b", expiration=soon)
    one_line(caught.value)
    with pytest.raises(Exception) as caught:
        store.acquire_lock("b", acquire_timeout=0)
    one_line(caught.value)
    store.delete_expired(full=True)
    assert [p for p in outside.rglob("*") if p.is_file()] == []
    assert store.read("a").result == 1


def test_hard_links_and_temp_named_links_leave_their_targets_alone(tmp_path: Path) -> None:
    root, outside = tmp_path / "store", tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_bytes(b"untouched")
    store = ResultStore(root.as_uri(), retry=ONCE)
    store.write(0, key="a")
    os.link(victim, root / "h.rsr")
    os.symlink(victim, root / ".h.rsr.0123456789abcdef.tmp")  # named like a temporary file
    with pytest.raises(IntegrityError) as caught:
        store.read("h")
    one_line(caught.value, "'h'")
    store.write(1, key="h")  # replaces the name, never writes through the link
    store.delete("h")
    store.clean_abandoned(0)
    assert victim.read_bytes() == b"untouched"
    assert os.path.lexists(root / ".h.rsr.0123456789abcdef.tmp")  # a link is not ours to remove


@pytest.mark.parametrize("name", ["SystemExit", "KeyboardInterrupt", "GeneratorExit"])
def test_json_decodes_no_exception_that_would_end_the_reader(memory_url: str, name: str) -> None:
    # A Failed state raises the exception it holds: a SystemExit from storage would end
    # the consumer with the writer's exit code. Built-in Exception subclasses decode.
    store = ResultStore(memory_url, serializer="json", retry=ONCE)
    for key, cls in (("ok", "ValueError"), ("k", name)):
        payload = json.dumps({"$type": "exception", "class": f"builtins:{cls}", "args": ["3"]})
        fields = header_fields(payload.encode(), serializer="json")
        plant(store, key, record_bytes(fields, payload.encode()))
    assert isinstance(store.read("ok").result, ValueError)
    with pytest.raises(SerializationError) as caught:
        store.read("k")
    one_line(caught.value, "'k'", name)
    with pytest.raises(SerializationError):  # nor written, to be lost on the way back
        store.write(getattr(builtins, name)("3"), key="w")


# -- Prefect records: another tool's format ---------------------------------------------------


def prefect_record(result: str, serializer: dict[str, Any] | None = None) -> bytes:
    metadata = {"serializer": serializer or {"type": "json"}, "expiration": None}
    return json.dumps({"metadata": metadata, "result": result}).encode()


@pytest.mark.parametrize(
    "value",
    [
        {"__exc_type__": "builtins.UnicodeDecodeError", "message": "x"},  # needs 5 arguments
        {"__exc_type__": "builtins.BaseExceptionGroup", "message": "x"},  # needs 2
        {"__exc_type__": "builtins.print", "message": "x"},
        # raised by a Failed state's result(), these would end the reader's program
        {"__exc_type__": "builtins.SystemExit", "message": "3"},
        {"__exc_type__": "builtins.KeyboardInterrupt", "message": "x"},
        {"__exc_type__": "builtins.GeneratorExit", "message": "x"},
        {"__class__": "os.system", "data": "true"},
        {"__class__": "uuid.UUID", "data": "not a uuid"},
    ],
    ids=lambda v: str(next(iter(v.values()))),
)
def test_hostile_prefect_json_is_a_prefect_record_error(
    memory_url: str, value: dict[str, Any]
) -> None:
    store = ResultStore(memory_url, serializer="json", retry=ONCE)
    plant(store, "k", prefect_record(json.dumps(value)))
    with pytest.raises(PrefectRecordError) as caught:
        store.read("k")
    one_line(caught.value, "'k'")


def test_a_prefect_pickle_is_never_unpickled_unless_allowed(
    memory_url: str, tmp_path: Path
) -> None:
    import pickle

    marker = tmp_path / "pwned"
    blob = base64.b64encode(pickle.dumps(PlantsAFile(marker))).decode()
    store = ResultStore(memory_url, serializer="json", retry=ONCE)
    for config in (
        {"type": "pickle"},
        {"type": "pickle", "picklelib": "os"},
        {"type": "compressed", "serializer": "pickle"},
        {"type": "compressed", "serializer": {"type": "pickle"}, "compressionlib": "os"},
    ):
        plant(store, "k", prefect_record(blob, config))
        with pytest.raises(SerializerNotAllowedError) as caught:
            store.read("k")
        one_line(caught.value, "'k'")
    summary = import_prefect(memory_url, ResultStore(f"{memory_url}-dest", serializer="json"))
    assert not summary.ok and not summary.imported
    assert not marker.exists()


def test_importing_a_prefect_folder_follows_no_link_and_waits_on_no_fifo(tmp_path: Path) -> None:
    source, outside = tmp_path / "prefect", tmp_path / "outside"
    source.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(prefect_record(json.dumps("SECRET")))
    (source / "ok").write_bytes(prefect_record(json.dumps("fine")))
    os.symlink(outside / "secret", source / "link")
    os.mkfifo(source / "fifo")
    dest = ResultStore((tmp_path / "dest").as_uri(), serializer="json")
    outcome: list[Any] = []
    worker = threading.Thread(
        target=lambda: outcome.append(import_prefect(str(source), dest)), daemon=True
    )
    worker.start()
    worker.join(60)  # a guard against a hang (opening the FIFO blocked forever), not a timing
    assert not worker.is_alive(), "import-prefect blocked opening a FIFO"
    summary = outcome[0]
    assert summary.imported == 1 and sorted(summary.skipped) == ["fifo", "link"]
    assert dest.keys() == ["ok"] and dest.read("ok").result == "fine"
