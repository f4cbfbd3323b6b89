"""Attacks at the trust boundaries: what a reader decodes, where references lead, what travels.

Each test plays the attacker: someone who can write records into shared storage, or
write the State JSON a consumer reads, but holds no signing key. docs/security.md
states the trust model these tests check.
"""

from __future__ import annotations

import datetime
import json
import os
import pickle
from pathlib import Path
from typing import Any, ClassVar

import pytest
import zstandard
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
    ConfigurationError,
    IntegrityError,
    PersistedResult,
    ReferenceNotAllowedError,
    ResultStore,
    RetryPolicy,
    SerializerNotAllowedError,
    SignatureError,
    UnknownSerializerError,
)
from resultstore import references as references_module
from resultstore import serializers as serializers_module
from resultstore.records import encode_record
from resultstore.serializers import JSONSerializer, Serializer
from resultstore.stores.base import BytesReader, Payload, Reader, Store
from states import Completed, State, get_state_result

KEY = "a" * 32
OLD_KEY = "b" * 32
ONCE = RetryPolicy(attempts=1, delay=0)
MiB = 1 << 20


@pytest.fixture(params=["file", "memory"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path, memory_url: str) -> str:
    """A fresh storage URL, once per built-in local backend."""
    return (tmp_path / "store").as_uri() if request.param == "file" else memory_url


# -- 1. what a reader may decode -------------------------------------------------------------


def test_a_json_store_refuses_an_attackers_pickle_before_it_runs(
    store_url: str, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    ResultStore(store_url).write(PlantsAFile(marker), key="job/result")
    reader = ResultStore(store_url, serializer="json", retry=ONCE)

    with pytest.raises(SerializerNotAllowedError) as caught:
        reader.read("job/result")

    message = str(caught.value)
    assert "\n" not in message
    for fragment in ("'job/result'", "'pickle'", "allowed_serializers=", "RESULTSTORE_ALLOWED"):
        assert fragment in message
    assert isinstance(caught.value, IntegrityError)  # the CLI's exit 5
    assert not marker.exists()


def test_the_serializer_setting_decides_too(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "pwned"
    ResultStore(store_url).write(PlantsAFile(marker), key="k")
    monkeypatch.setenv("RESULTSTORE_SERIALIZER", "json")
    with pytest.raises(SerializerNotAllowedError):
        ResultStore(store_url, retry=ONCE).read("k")
    assert not marker.exists()

    monkeypatch.setenv("RESULTSTORE_ALLOWED_SERIALIZERS", "pickle, pickle+zstd")
    ResultStore(store_url).read("k")  # allowed on purpose: the pickle runs
    assert marker.read_text() == "pwned"


def test_allowed_serializers_in_code(store_url: str) -> None:
    ResultStore(store_url).write({"rows": 1}, key="pickled")
    assert ResultStore(store_url, serializer="json", allowed_serializers=["pickle"]).read(
        "pickled"
    ).result == {"rows": 1}


def test_code_free_serializers_are_always_readable(store_url: str) -> None:
    ResultStore(store_url, serializer="json").write({"rows": 1}, key="doc")
    ResultStore(store_url, serializer="pickle+zstd").write({"rows": 2}, key="zipped")
    default = ResultStore(store_url)  # pickle: reads json, and pickle+zstd (same decoder)
    assert default.read("doc").result == {"rows": 1}
    assert default.read("zipped").result == {"rows": 2}


def test_a_signed_pickle_is_still_refused_by_a_store_that_does_not_allow_pickle(
    store_url: str,
) -> None:
    ResultStore(store_url, signing_key=KEY).write([1, 2], key="signed")
    reader = ResultStore(store_url, serializer="json", signing_key=KEY, retry=ONCE)
    with pytest.raises(SerializerNotAllowedError):
        reader.read("signed")
    assert reader.verify("signed").signed  # verifying never decodes, so it is allowed


class CodeRunningPlugin(JSONSerializer):
    """A plugin serializer that does not say it is code-free: assumed to run code."""

    name: ClassVar[str] = "plugin-unsure"
    code_free: ClassVar[bool] = False


class CodeFreePlugin(JSONSerializer):
    name: ClassVar[str] = "plugin-safe"
    code_free: ClassVar[bool] = True


@pytest.fixture
def plugin_serializers(monkeypatch: pytest.MonkeyPatch) -> None:
    builtin = serializers_module._instance
    plugins: dict[str, Serializer] = {
        "plugin-unsure": CodeRunningPlugin(),
        "plugin-safe": CodeFreePlugin(),
    }
    monkeypatch.setattr(
        serializers_module, "_instance", lambda name: plugins.get(name) or builtin(name)
    )


@pytest.mark.usefixtures("plugin_serializers")
def test_plugin_serializers_run_code_unless_they_declare_otherwise(store_url: str) -> None:
    ResultStore(store_url, serializer="plugin-unsure").write({"a": 1}, key="unsure")
    ResultStore(store_url, serializer="plugin-safe").write({"a": 2}, key="safe")
    reader = ResultStore(store_url, serializer="json", retry=ONCE)
    with pytest.raises(SerializerNotAllowedError, match="'plugin-unsure'"):
        reader.read("unsure")
    assert reader.read("safe").result == {"a": 2}


def test_allowed_serializers_are_checked_when_the_store_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(UnknownSerializerError, match="allowed_serializers: unknown serializer"):
        ResultStore("memory://x", allowed_serializers=["pikle"])
    with pytest.raises(ConfigurationError, match="must be a list of serializer names, not str"):
        ResultStore("memory://x", allowed_serializers="pickle")  # type: ignore[arg-type]
    monkeypatch.setenv("RESULTSTORE_ALLOWED_SERIALIZERS", '["nope"]')
    with pytest.raises(UnknownSerializerError, match="RESULTSTORE_ALLOWED_SERIALIZERS"):
        ResultStore("memory://x")


def test_a_refused_record_is_refused_before_its_payload_is_read(memory_url: str) -> None:
    store = ResultStore(memory_url)
    store.write(os.urandom(64 * MiB), key="big")
    reader = ResultStore(memory_url, serializer="json", retry=ONCE)
    peak, error = peak_allocation(lambda: reader.read("big"))
    assert isinstance(error, SerializerNotAllowedError)
    assert peak < MiB


# -- 2. references from a State's JSON --------------------------------------------------------


def test_references_to_storage_nobody_allowed_are_refused_before_any_access(
    tmp_path: Path, listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    allowed = tmp_path / "results"
    monkeypatch.setenv("RESULTSTORE_STORAGE_URL", allowed.as_uri())
    elsewhere = tmp_path / "elsewhere"
    port = listener.port
    hostile = [
        f"http://127.0.0.1:{port}/results",
        f"ftp://127.0.0.1:{port}/results",
        f"sftp://127.0.0.1:{port}/results",
        "s3://someone-elses-bucket/results",
        "memory://other",
        elsewhere.as_uri(),
        f"{allowed.as_uri()}/../elsewhere",
        f"{allowed.as_uri()}/%2e%2e/elsewhere",
        f"{allowed.as_uri()}-evil",
        f"file://user:pw@{allowed}",
        f"{allowed.as_uri()}#x",
    ]
    for url in hostile:
        state = received(url)
        with pytest.raises(ReferenceNotAllowedError) as caught:
            get_state_result(state)
        message = str(caught.value)
        assert "\n" not in message and "RESULTSTORE_REFERENCE_URLS" in message, url
        assert "pw@" not in message
    assert listener.connections == 0
    assert not elsewhere.exists()


def test_the_default_storage_and_the_listed_prefixes_are_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default, listed, below = tmp_path / "default", tmp_path / "listed", tmp_path / "listed" / "team"
    for folder, value in ((default, "from default"), (below, "from listed")):
        ResultStore(folder.as_uri()).write(value, key="k")
    monkeypatch.setenv("RESULTSTORE_STORAGE_URL", str(default))  # a plain path works too
    monkeypatch.setenv("RESULTSTORE_REFERENCE_URLS", json.dumps([listed.as_uri()]))

    assert get_state_result(received(default.as_uri())) == "from default"
    assert get_state_result(received(below.as_uri())) == "from listed"

    monkeypatch.setenv("RESULTSTORE_REFERENCE_URLS", f"memory://nothing, {listed.as_uri()}")
    assert get_state_result(received(below.as_uri())) == "from listed"


def test_a_symlink_below_an_allowed_folder_does_not_lead_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "secret"
    ResultStore(secret.as_uri()).write("private", key="k")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "link").symlink_to(secret)
    monkeypatch.setenv("RESULTSTORE_REFERENCE_URLS", allowed.as_uri())
    with pytest.raises(ReferenceNotAllowedError, match="outside the allowed"):
        get_state_result(received((allowed / "link").as_uri()))


def test_a_registered_store_reads_its_references_with_its_own_policy(tmp_path: Path) -> None:
    url = (tmp_path / "shared").as_uri()
    trusted = ResultStore(url, signing_key=KEY).use_for_references()
    trusted.write({"model": 2}, key="good")
    ResultStore(f"{url}/team").write("planted without the key", key="bad")
    ResultStore(url).write("planted without the key", key="team/bad2")

    assert get_state_result(received(url, "good")) == {"model": 2}
    with pytest.raises(SignatureError):
        get_state_result(received(url, "team/bad2"))
    # A URL below the registered store is read with the same keys, not a fresh store.
    with pytest.raises(SignatureError):
        get_state_result(received(f"{url}/team", "bad"))


def test_the_serializer_a_reference_names_never_widens_what_is_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "pwned"
    url = (tmp_path / "results").as_uri()
    ResultStore(url).write(PlantsAFile(marker), key="k")
    monkeypatch.setenv("RESULTSTORE_STORAGE_URL", url)
    monkeypatch.setenv("RESULTSTORE_SERIALIZER", "json")
    with pytest.raises(SerializerNotAllowedError):
        get_state_result(received(url, serializer="pickle"), retry_result_failure=False)
    assert not marker.exists()


def test_the_cache_of_reference_stores_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESULTSTORE_REFERENCE_URLS", "memory://")
    limit = references_module.MAX_CACHED_STORES
    for n in range(limit * 3):
        ResultStore(f"memory://bounded-{n}").write(n, key="k")
    for n in range(limit * 3):
        assert get_state_result(received(f"memory://bounded-{n}")) == n
    assert len(references_module._cache) == limit


def test_a_query_is_part_of_the_location(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESULTSTORE_REFERENCE_URLS", "memory://q?prefix=team")
    with pytest.raises(ReferenceNotAllowedError):
        get_state_result(received("memory://q?prefix=other"))
    with pytest.raises(ReferenceNotAllowedError):
        get_state_result(received("memory://q"))


def test_memory_scheme_prefixes_match_whole_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESULTSTORE_REFERENCE_URLS", "memory://team")
    ResultStore("memory://team/a").write(1, key="k")
    assert get_state_result(received("memory://team/a")) == 1
    with pytest.raises(ReferenceNotAllowedError):
        get_state_result(received("memory://team-evil"))


# -- 3. secrets never travel ----------------------------------------------------------------


def test_pickles_of_stores_results_and_states_carry_no_secrets(tmp_path: Path) -> None:
    url = (tmp_path / "shared").as_uri()
    store = ResultStore(url, signing_key=KEY, old_signing_keys=[OLD_KEY]).use_for_references()
    result = store.create_result({"value": 1})
    result.write()
    state: State[Any] = Completed(data=result)

    for thing in (store, result, state):
        blob = pickle.dumps(thing)
        assert KEY.encode() not in blob and OLD_KEY.encode() not in blob, type(thing)

    # Unpickled in this process, the store is the one this process allows for the URL.
    assert pickle.loads(pickle.dumps(store)) is store
    assert get_state_result(pickle.loads(pickle.dumps(state))) == {"value": 1}

    # A State persisted through a signing store: its record holds no key either.
    store.write(state, key="state-record")
    stored = b"".join(p.read_bytes() for p in (tmp_path / "shared").rglob("*.rsr"))
    assert KEY.encode() not in stored and OLD_KEY.encode() not in stored
    assert store.read("state-record").result.data.key == result.key


def test_an_unpickled_store_for_storage_this_process_does_not_allow_is_refused(
    tmp_path: Path,
) -> None:
    blob = pickle.dumps(ResultStore((tmp_path / "x").as_uri(), signing_key=KEY))
    with pytest.raises(ReferenceNotAllowedError):
        pickle.loads(blob)


def test_storage_options_never_reach_a_pickle(memory_url: str) -> None:
    store = ResultStore(memory_url).use_for_references()
    store._given_options["secret"] = "hunter2-secret"  # as if passed as an option
    assert b"hunter2-secret" not in pickle.dumps(store)


@pytest.mark.parametrize("password", ["pa/ss", "pa?ss", "pa#ss", "p@ss", "wJal/rX?UtnF#EMI/K7MD"])
def test_passwords_with_url_delimiters_are_redacted(password: str) -> None:
    store = ResultStore(f"memory://admin:{password}@team")
    assert store.storage_url == "memory://team"
    for text in (repr(store), store.storage_url, json.dumps(store.create_result(1).to_reference())):
        assert password not in text and "admin" not in text


# -- 4. signing keys are validated -----------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"signing_key": 123}, "signing_key must be str or bytes, not int"),
        ({"signing_key": b"short"}, "signing_key is 5 bytes, shorter than the 16 required"),
        ({"signing_key": ""}, "signing_key is 0 bytes"),
        ({"signing_key": KEY, "old_signing_keys": OLD_KEY}, "must be a list or tuple of keys"),
        ({"signing_key": KEY, "old_signing_keys": [OLD_KEY, 7]}, "old_signing_keys[1] must be"),
        ({"signing_key": KEY, "old_signing_keys": ["e"]}, "old_signing_keys[0] is 1 bytes"),
        ({"old_signing_keys": [OLD_KEY]}, "without a signing_key"),
    ],
)
def test_bad_signing_keys_are_one_line_errors(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        ResultStore("memory://keys", **kwargs)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)
    assert KEY not in str(caught.value) and OLD_KEY not in str(caught.value)


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("RESULTSTORE_SIGNING_KEY", "tooshort", "RESULTSTORE_SIGNING_KEY is 8 bytes"),
        ("RESULTSTORE_SIGNING_KEYS_OLD", '"e"', "RESULTSTORE_SIGNING_KEYS_OLD"),
        ("RESULTSTORE_SIGNING_KEYS_OLD", '["e"]', "RESULTSTORE_SIGNING_KEYS_OLD[0] is 1 bytes"),
    ],
)
def test_bad_signing_keys_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv("RESULTSTORE_SIGNING_KEY", KEY)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=fragment.replace("[", r"\[")):
        ResultStore("memory://keys")


def test_a_record_signed_with_a_one_letter_key_never_verifies(memory_url: str) -> None:
    # Before keys were checked, old_signing_keys="e..." became one-letter keys.
    with pytest.raises(ConfigurationError):
        ResultStore(memory_url, signing_key=KEY, old_signing_keys="ekey")  # type: ignore[arg-type]


# -- 5. bounded before trusted ----------------------------------------------------------------


@pytest.mark.parametrize(
    "segments",
    [[2**50], [10**30], [-1], [1.5], [True], ["3"], [0] * 100, "3", None, [[3]]],
    ids=repr,
)
def test_absurd_segment_lengths_are_integrity_errors(memory_url: str, segments: Any) -> None:
    store = ResultStore(memory_url, retry=ONCE)
    plant(store, "k", record_bytes(header_fields(segments=segments), b"abc"))
    peak, error = peak_allocation(lambda: store.read("k"))
    assert type(error) is IntegrityError, error
    assert "'k'" in str(error)
    assert peak < MiB


@pytest.mark.parametrize(
    "fields",
    [
        header_fields(created="9999-12-31T23:59:59-23:59"),
        header_fields(created="0001-01-01T00:00:00+23:59"),
        header_fields(expiration="9999-12-31T23:59:59-23:59"),
        header_fields(created=12),
        header_fields(serializer=["pickle"]),
        header_fields(checksum=None),
        [1, 2, 3],
    ],
    ids=lambda f: repr(f)[:60],
)
def test_hostile_header_fields_are_integrity_errors(memory_url: str, fields: Any) -> None:
    store = ResultStore(memory_url, retry=ONCE)
    plant(store, "k", record_bytes(fields, b"abc"))
    with pytest.raises(IntegrityError, match="unreadable header"):
        store.read_metadata("k")
    with pytest.raises(IntegrityError):
        store.read("k")


@pytest.mark.parametrize("signature", [12, ["hmac"], {"a": 1}, 1.5, True])
def test_a_signature_of_the_wrong_type_is_a_signature_error(
    memory_url: str, signature: Any
) -> None:
    store = ResultStore(memory_url, signing_key=KEY, retry=ONCE)
    plant(store, "k", record_bytes(header_fields(signature=signature), b"abc"))
    with pytest.raises(SignatureError, match="wrong type"):
        store.read("k")
    with pytest.raises(SignatureError):
        ResultStore(memory_url, retry=ONCE).read("k")  # without a key too


class UnsizedReader(Reader):
    """A backend that cannot tell a record's size: bytes arrive as they are read."""

    def __init__(self, data: bytes) -> None:
        self._inner = BytesReader(data)

    async def read(self, n: int = -1) -> bytes:
        return await self._inner.read(n)


class UnsizedStore(Store):
    interface_version = 1
    records: ClassVar[dict[str, bytes]] = {}

    async def write(self, key: str, payload: Payload) -> None:
        self.records[key] = payload.join()

    async def open(self, key: str) -> Reader:
        return UnsizedReader(self.records[key])

    async def exists(self, key: str) -> bool:
        return key in self.records

    async def delete(self, key: str) -> bool:
        return self.records.pop(key, None) is not None

    async def list(self, prefix: str = "") -> Any:
        for key in list(self.records):
            yield key


@pytest.mark.parametrize("sized", [True, False], ids=["size known", "size unknown"])
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned reader", "signing reader"])
def test_a_200_byte_record_claiming_a_gigabyte_allocates_almost_nothing(
    memory_url: str, sized: bool, signed: bool
) -> None:
    fields = header_fields(segments=[20, 1 << 30])
    data = record_bytes(fields, b"x" * 20)
    assert len(data) < 300
    backend: Store = ResultStore(memory_url).store if sized else UnsizedStore("unsized://")
    store = ResultStore(backend, retry=ONCE, signing_key=KEY if signed else None)
    plant(store, "k", data)
    peak, error = peak_allocation(lambda: store.read("k"))
    assert isinstance(error, IntegrityError), error
    assert peak < MiB


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned reader", "signing reader"])
def test_a_zstd_bomb_allocates_almost_nothing(memory_url: str, signed: bool) -> None:
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (1 << 30))
    assert len(bomb) < 64 * 1024
    store = ResultStore(memory_url, serializer="pickle+zstd", retry=ONCE)
    plant(store, "bomb", *encode_record([bomb], serializer="pickle+zstd", key="bomb"))
    reader = ResultStore(
        memory_url, serializer="pickle+zstd", retry=ONCE, signing_key=KEY if signed else None
    )
    peak, error = peak_allocation(lambda: reader.read("bomb"))
    assert isinstance(error, SignatureError if signed else Exception), error
    assert peak < MiB


def test_with_signing_on_a_forged_record_is_refused_before_its_payload_is_read(
    memory_url: str,
) -> None:
    ResultStore(memory_url, signing_key="someone-elses-key-000").write(
        os.urandom(64 * MiB), key="forged"
    )
    store = ResultStore(memory_url, signing_key=KEY, retry=ONCE)
    peak, error = peak_allocation(lambda: store.read("forged"))
    assert isinstance(error, SignatureError)
    assert peak < MiB


def test_records_signed_by_the_previous_release_still_verify(memory_url: str) -> None:
    import hashlib
    import hmac

    store = ResultStore(memory_url, signing_key=KEY)
    fields = header_fields()
    core = json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()
    mac = hmac.new(KEY.encode(), digestmod=hashlib.sha256)
    for part in (b"k", core):
        mac.update(len(part).to_bytes(8, "little"))
        mac.update(part)
    mac.update(b"abc")
    fields["signature"] = "hmac-sha256-v2:" + mac.hexdigest()
    header = json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()
    plant(store, "k", record_bytes(header, b"abc"))
    assert store.verify("k").signed
    plant(store, "k", record_bytes(header, b"abd"))
    with pytest.raises(IntegrityError):
        store.verify("k")


def test_expiration_dates_at_the_edges_stay_comparable(memory_url: str) -> None:
    store = ResultStore(memory_url)
    far = datetime.datetime(9999, 12, 31, tzinfo=datetime.timezone.utc)
    store.write(1, key="k", expiration=far)
    assert store.read_metadata("k").is_expired() is False


def test_old_s3_obstore_references_resolve_under_an_allowed_s3_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RESULTSTORE_REFERENCE_URLS", "s3://team-bucket/results")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # made, never contacted
    store = references_module.store_for_reference("s3+obstore://team-bucket/results/run1")
    assert store.storage_url == "s3://team-bucket/results/run1"
    with pytest.raises(ReferenceNotAllowedError):
        references_module.store_for_reference("s3+obstore://other-bucket/results")


def test_copies_within_the_process_keep_their_store(memory_url: str) -> None:
    import copy

    store = ResultStore(memory_url, signing_key=KEY)  # not registered for references
    result = store.create_result([1, 2], key="kept")
    result.write()
    state: State[Any] = Completed(data=result)
    for copied in (copy.copy(result), copy.deepcopy(result), state.model_copy(deep=True).data):
        assert isinstance(copied, PersistedResult)
        assert copied.get() == [1, 2]
    fetched = copy.deepcopy(PersistedResult(store.storage_url, "kept", result_store=store))
    assert fetched.get() == [1, 2]  # read through the same (signing) store
