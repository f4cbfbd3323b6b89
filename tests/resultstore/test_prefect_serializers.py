"""Prefect's serializer names and configurations work wherever a serializer is named.

``"pickle"``, ``"json"``, ``"compressed/pickle"``, ``"compressed/json"`` and dicts
such as ``{"type": "compressed/pickle", "compressionlib": "bz2"}`` (or their JSON
text, in ``RESULTSTORE_SERIALIZER`` and ``--serializer``). A record names how to
decode it (``pickle+bz2``), and readers keep refusing code-running records they
were not told to trust, compressed or not.
"""

from __future__ import annotations

import bz2
import lzma
import pickle
import struct
import sys
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from resultstore import (
    ConfigurationError,
    ResultStore,
    SerializationError,
    SerializerNotAllowedError,
    UnknownSerializerError,
    get_serializer,
)
from resultstore.serializers import (
    COMPRESSIONLIBS,
    CompressedJSONSerializer,
    CompressedPickleSerializer,
    JSONSerializer,
    PickleSerializer,
)

MiB = 1 << 20


def test_prefect_names_and_configurations_give_equal_serializers() -> None:
    lzma_pickle = CompressedPickleSerializer(compressionlib="lzma")
    assert get_serializer("compressed/pickle") == lzma_pickle  # lzma: Prefect's default
    assert get_serializer("pickle+lzma") == lzma_pickle
    assert get_serializer({"type": "compressed/pickle"}) == lzma_pickle
    assert get_serializer({"type": "compressed", "serializer": "pickle"}) == lzma_pickle
    assert get_serializer('{"type": "compressed/pickle", "compressionlib": "lzma"}') == lzma_pickle
    assert (
        len(
            {
                lzma_pickle,
                get_serializer("compressed/pickle"),
                CompressedPickleSerializer(compressionlib="lzma"),
            }
        )
        == 1
    )  # equal configurations hash alike
    assert get_serializer("compressed/json") == CompressedJSONSerializer(compressionlib="lzma")
    assert get_serializer({"type": "pickle", "picklelib": "pickle"}) == PickleSerializer("pickle")
    assert get_serializer({"type": "pickle"}) == get_serializer("pickle")
    assert get_serializer({"type": "json"}) == get_serializer("json") == JSONSerializer()


def test_different_configurations_differ() -> None:
    assert PickleSerializer("pickle") != PickleSerializer("cloudpickle")
    assert CompressedPickleSerializer(level=1) != CompressedPickleSerializer(level=2)
    assert get_serializer("pickle+bz2") != get_serializer("json+bz2")
    assert get_serializer("pickle") != get_serializer("json")


@pytest.mark.parametrize("lib", COMPRESSIONLIBS)
@pytest.mark.parametrize("base", ["pickle", "json"])
def test_every_compression_library_round_trips_through_a_store(
    base: str, lib: str, memory_url: str
) -> None:
    config = {"type": f"compressed/{base}", "compressionlib": lib}
    store = ResultStore(memory_url, serializer=config)
    value = {"rows": [{"id": i, "name": f"row {i}"} for i in range(500)], "pair": (1, 2)}
    key = store.write(value)
    record = ResultStore(memory_url, allowed_serializers=["pickle"]).read(key)
    assert record.result == value
    assert record.metadata.serializer == f"{base}+{lib}"
    assert record.metadata.size < len(pickle.dumps(value)) / 3  # it did compress


def test_record_names_are_what_readers_decode_by() -> None:
    assert get_serializer({"type": "pickle", "picklelib": "pickle"}).name == "pickle"
    assert get_serializer({"type": "json", "jsonlib": "orjson"}).name == "json"
    assert get_serializer({"type": "compressed/json", "compressionlib": "zlib"}).name == (
        "json+zlib"
    )
    for name in ("pickle+lzma", "json+bz2", "pickle+zstd", "json+zstd"):
        assert get_serializer(get_serializer(name).name) == get_serializer(name)
        assert get_serializer(get_serializer(name).configuration or {}) == get_serializer(name)


def test_the_standard_library_pickle_writes_records_anyone_reads(memory_url: str) -> None:
    store = ResultStore(memory_url, serializer={"type": "pickle", "picklelib": "pickle"})
    key = store.write({"a": bytearray(b"x" * 100_000)})
    assert ResultStore(memory_url).read(key).result == {"a": bytearray(b"x" * 100_000)}
    with pytest.raises(SerializationError, match="pickle serializer cannot encode"):
        store.write(lambda: 1)  # by reference only: a lambda needs cloudpickle


def test_compressed_json_stays_code_free_and_compressed_pickle_does_not(memory_url: str) -> None:
    ResultStore(memory_url, serializer="compressed/json").write({"n": 1}, key="doc")
    ResultStore(memory_url, serializer="compressed/pickle").write({"n": 2}, key="blob")
    json_reader = ResultStore(memory_url, serializer="json")
    assert json_reader.read("doc").result == {"n": 1}
    with pytest.raises(SerializerNotAllowedError, match="pickle\\+lzma"):
        json_reader.read("blob")
    assert get_serializer("json+lzma").code_free and not get_serializer("pickle+bz2").code_free
    # A pickle store reads every compressed pickle: same decoder, no more risk.
    assert ResultStore(memory_url, serializer="pickle+zlib").read("blob").result == {"n": 2}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"type": "pickle", "protocol": 4},
            "unknown key(s) 'protocol' in the 'pickle' serializer configuration; "
            "valid keys: picklelib, picklelib_version, type",
        ),
        (
            {"type": "compressed/pickle", "compressionlib": "gzip"},
            "compressionlib must be one of 'zstd', 'lzma', 'bz2', 'zlib', not 'gzip'",
        ),
        ({"type": "pickle", "picklelib": "dill"}, "picklelib must be one of"),
        ({"type": "json", "jsonlib": "simplejson"}, "jsonlib must be one of 'json', 'orjson'"),
        ({"type": "json", "object_encoder": "my.encode"}, "never imports code"),
        ({"type": "json", "dumps_kwargs": {"indent": 2}}, "dumps_kwargs is not supported"),
        ({"type": "compressed"}, "needs 'serializer': pickle or json"),
        ({"type": "compressed/json", "serializer": "pickle"}, "compresses json, not 'pickle'"),
        ({"type": "compressed/pickle", "level": 99}, "level for compressionlib 'lzma'"),
        ({"type": "msgpack"}, "unknown serializer 'msgpack'"),
        ({"compressionlib": "lzma"}, "needs a 'type'"),
        ("{not json", "is not valid JSON"),
    ],
)
def test_bad_configurations_are_one_line_errors_naming_the_key(config: Any, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        get_serializer(config)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_prefect_s_own_defaults_are_accepted() -> None:
    dumped_by_prefect = {
        "type": "json",
        "jsonlib": "json",
        "object_encoder": "prefect.serializers.prefect_json_object_encoder",
        "object_decoder": "prefect.serializers.prefect_json_object_decoder",
        "dumps_kwargs": {},
        "loads_kwargs": {},
    }
    assert get_serializer(dumped_by_prefect) == JSONSerializer()
    assert (
        get_serializer({"type": "pickle", "picklelib": "cloudpickle", "picklelib_version": None})
        == PickleSerializer()
    )
    assert get_serializer(
        {"type": "compressed", "serializer": {"type": "pickle"}, "compressionlib": "zstandard"}
    ) == CompressedPickleSerializer(compressionlib="zstd")


def test_orjson_needs_orjson(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "orjson", None)  # as if it were not installed
    with pytest.raises(ConfigurationError, match="needs the orjson package: pip install orjson"):
        get_serializer({"type": "json", "jsonlib": "orjson"})


def test_the_setting_takes_a_name_or_a_configuration(
    memory_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESULTSTORE_SERIALIZER", "compressed/json")
    assert ResultStore(memory_url).serializer == CompressedJSONSerializer(compressionlib="lzma")
    monkeypatch.setenv(
        "RESULTSTORE_SERIALIZER", '{"type": "compressed/pickle", "compressionlib": "bz2"}'
    )
    store = ResultStore(memory_url)
    assert store.read(store.write([1])).metadata.serializer == "pickle+bz2"
    monkeypatch.setenv("RESULTSTORE_SERIALIZER", "compresed/pickle")
    with pytest.raises(ConfigurationError) as caught:
        ResultStore(memory_url)
    assert str(caught.value).startswith(
        "invalid setting RESULTSTORE_SERIALIZER: Value error, unknown serializer "
        "'compresed/pickle'; installed serializers: arrow, auto, auto-json, auto-strict, "
        "compressed/json, compressed/pickle,"
    )


def test_the_cli_takes_prefect_names(tmp_path: Path) -> None:
    import subprocess

    url = (tmp_path / "store").as_uri()
    env = {"RESULTSTORE_STORAGE_URL": url, "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for serializer, key in (("compressed/json", "a"), ('{"type": "compressed/pickle"}', "b")):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "resultstore",
                "put",
                key,
                "--json",
                '{"n": 1}',
                "--serializer",
                serializer,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
    metadata = {k: ResultStore(url).read_metadata(k).serializer for k in ("a", "b")}
    assert metadata == {"a": "json+lzma", "b": "pickle+lzma"}


# -- bounded decompression -------------------------------------------------------------

STREAMS: dict[str, Callable[[bytes], bytes]] = {
    "lzma": lambda data: lzma.compress(data, format=lzma.FORMAT_XZ, preset=6),
    "bz2": lambda data: bz2.compress(data, 9),
    "zlib": lambda data: zlib.compress(data, 9),
}


def peak_allocation(action: Callable[[], object]) -> tuple[int, BaseException | None]:
    tracemalloc.start()
    try:
        action()
        error = None
    except BaseException as exc:
        error = exc
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, error


@pytest.mark.parametrize("base", ["pickle", "json"])
@pytest.mark.parametrize("lib", list(STREAMS))
def test_a_decompression_bomb_allocates_almost_nothing(base: str, lib: str) -> None:
    bomb = STREAMS[lib](b"\0" * (64 * MiB))
    assert len(bomb) < 2 * MiB
    serializer = get_serializer(f"{base}+{lib}")
    # Honest about its length: a pickle fails at its first byte, JSON at the declared size.
    for declared in (16, 64 * MiB):
        payload = struct.pack("<Q", declared) + bomb
        peak, error = peak_allocation(lambda payload=payload: serializer.loads([payload]))
        assert isinstance(error, SerializationError), error
        if base == "pickle" or declared == 16:
            # lzma allocates the dictionary the stream asks for (8 MiB at preset 6; at most
            # 72 MiB, the decoder's memlimit); the others a few hundred KiB.
            assert peak < (12 if lib == "lzma" else 4) * MiB, (declared, peak)


@pytest.mark.parametrize("lib", list(STREAMS))
def test_a_stream_longer_or_shorter_than_declared_is_refused(lib: str) -> None:
    text = b'{"n": 1}'
    for declared, why in ((3, "inflates past"), (100, "shorter than")):
        payload = struct.pack("<Q", declared) + STREAMS[lib](text)
        with pytest.raises(SerializationError, match=why):
            get_serializer(f"json+{lib}").loads([payload])
    with pytest.raises(SerializationError, match="shorter than its length prefix"):
        get_serializer(f"json+{lib}").loads([b"\1"])


def test_unknown_names_still_list_what_is_installed() -> None:
    with pytest.raises(UnknownSerializerError, match=r"pickle\+lzma.*compressionlib"):
        get_serializer("pickle+brotli")


@pytest.mark.parametrize(
    "config",
    [
        {"type": "compressed/json", "compressionlib": "zlib"},
        {"type": "pickle", "picklelib": "pickle"},
        {"type": "compressed/pickle", "compressionlib": "bz2", "level": 3},
        {"type": "json"},
        "json+zstd",
        "npy",
        "auto-json",
    ],
)
def test_a_pickled_store_keeps_its_serializer_configuration(config: Any, memory_url: str) -> None:
    key = "signing-key-0123456789abcdef"
    # The receiving process's store for this URL: default serializer, a signing key.
    registered = ResultStore(memory_url, signing_key=key).use_for_references()
    sender = ResultStore(memory_url, serializer=config)
    wanted = get_serializer(config)
    assert sender.serializer == wanted and hash(sender.serializer) == hash(wanted)

    back = pickle.loads(pickle.dumps(sender))

    assert back.serializer == sender.serializer and back.serializer is not None
    assert back.serializer.configuration == sender.serializer.configuration
    assert type(back.serializer) is type(sender.serializer)
    assert back.signed and back.timeout == registered.timeout  # the receiver's own settings
    assert key.encode() not in pickle.dumps(back)
    value: Any = [1, 2, 3]
    if wanted.name == "npy":
        import numpy as np

        value = np.arange(1, 4)
    written = back.write(value, key="k")
    assert back.read_metadata(written).serializer == sender.serializer.encode(value)[0]
    assert list(back.read(written).result) == [1, 2, 3]
    assert list(registered.read(written).result) == [1, 2, 3]  # signed with the receiver's key


def test_a_pickled_store_with_the_receivers_serializer_is_that_store(memory_url: str) -> None:
    registered = ResultStore(
        memory_url, serializer={"type": "compressed/json", "compressionlib": "zlib"}
    ).use_for_references()
    sender = ResultStore(memory_url, serializer="json+zlib")
    assert pickle.loads(pickle.dumps(sender)) is registered
    other = pickle.loads(pickle.dumps(ResultStore(memory_url, serializer="json+bz2")))
    assert other is not registered and other.serializer == get_serializer("json+bz2")


def test_equal_configurations_give_equal_serializer_instances() -> None:
    made = [
        get_serializer({"type": "compressed/json", "compressionlib": "zlib"}),
        get_serializer('{"type": "compressed/json", "compressionlib": "zlib", "level": 6}'),
        get_serializer("json+zlib"),
        CompressedJSONSerializer(compressionlib="zlib"),
        CompressedJSONSerializer(6, "zlib", "json"),
    ]
    assert all(s == made[0] for s in made) and len(set(made)) == 1
    assert CompressedJSONSerializer(5, "zlib") != made[0]
    assert PickleSerializer("pickle") == PickleSerializer("pickle") != PickleSerializer()
    assert len({PickleSerializer("pickle"), PickleSerializer("pickle"), PickleSerializer()}) == 2
    for serializer in (*made, PickleSerializer("pickle"), get_serializer("auto-strict")):
        copy = pickle.loads(pickle.dumps(get_serializer(serializer.configuration or {})))
        assert copy == serializer and hash(copy) == hash(serializer)
