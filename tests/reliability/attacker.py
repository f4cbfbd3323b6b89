"""What an attacker can do in the trust-boundary tests (test_trust_boundaries.py and
test_attacks_more.py): forge a record's bytes, plant them in a store, hand over a State's
JSON, and run code if a pickle is ever decoded. With a listener that counts connections
and a measure of peak allocation, to show that nothing was contacted and memory stayed
bounded.

A plain module, imported by name like tests/faultproxy.py: helpers in a conftest.py
cannot be imported reliably (every conftest.py is a module named ``conftest``). The
fixtures built on these (``memory_url``, ``listener``) are in this folder's conftest.py.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import xxhash

from resultstore import ResultStore
from resultstore._loops import run_sync
from resultstore.records import FORMAT_VERSION, MAGIC
from resultstore.serializers import Buffer
from resultstore.stores.base import Payload
from states import State


class PlantsAFile:
    """A value whose unpickling creates a file: stands for any code an attacker runs."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[Path, str]]:
        return (Path.write_text, (Path(self.path), "pwned"))


def plant(store: ResultStore, key: str, *buffers: Buffer) -> None:
    """Write raw record bytes under ``key``, as anyone with write access to the storage can."""
    run_sync(store.store.write(key, Payload(list(buffers))))


def record_bytes(header: object, payload: bytes = b"abc") -> bytes:
    """A record with a correct header checksum around any header an attacker likes: the
    header's bytes as given, or anything else written as JSON."""
    if not isinstance(header, bytes):
        header = json.dumps(header).encode()
    prefix = struct.pack(
        "<4sHIQ", MAGIC, FORMAT_VERSION, len(header), xxhash.xxh3_64_intdigest(header)
    )
    return prefix + header + payload


def header_fields(payload: bytes = b"abc", **overrides: Any) -> dict[str, Any]:
    """The fields of a well-formed header for ``payload``, with any of them replaced."""
    fields: dict[str, Any] = {
        "serializer": "pickle",
        "created": "2026-01-01T00:00:00+00:00",
        "expiration": None,
        "segments": [len(payload)],
        "checksum": "xxh3_128:" + xxhash.xxh3_128_hexdigest(payload),
    }
    fields.update(overrides)
    return fields


def received(storage_url: str, key: str = "k", serializer: str = "pickle") -> State[Any]:
    """A State as a consumer receives it: parsed from JSON someone else wrote."""
    data = {
        "__result_ref__": "persisted",
        "storage_url": storage_url,
        "key": key,
        "serializer": serializer,
        "expiration": None,
    }
    text = json.dumps({"type": "COMPLETED", "name": "Completed", "data": data})
    return State.model_validate_json(text)


def peak_allocation(fn: Any) -> tuple[int, BaseException | None]:
    """Bytes allocated at the peak while ``fn()`` runs, and what it raised."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        error: BaseException | None = None
        try:
            fn()
        except BaseException as exc:
            error = exc
        return tracemalloc.get_traced_memory()[1] - base, error
    finally:
        tracemalloc.stop()


class Listener:
    """A loopback TCP server that only counts the connections it is sent: proof that
    nothing was contacted."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()
