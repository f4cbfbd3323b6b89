"""resultstore._json: pydantic_core's compiled parser, loaded alone, is the one pydantic uses."""

from __future__ import annotations

import subprocess
import sys

_CHILD = """
import sys
from resultstore import ResultStore

store = ResultStore("memory://json-module")
store.write({"a": [1, 2.5, "x"]}, key="k")
assert store.read("k").result == {"a": [1, 2.5, "x"]}
assert "pydantic_core._pydantic_core" in sys.modules
assert "pydantic_core" not in sys.modules, "the package was imported: nothing was saved"
compiled = sys.modules["pydantic_core._pydantic_core"]

import pydantic
import pydantic_core
from states import Completed, State

assert pydantic_core.from_json is compiled.from_json  # one module, initialised once
state = Completed(data=1)
assert State.model_validate_json(state.model_dump_json()).is_completed()
assert pydantic.TypeAdapter(list[int]).validate_json("[1, 2]") == [1, 2]
print("ok")
"""


def test_the_compiled_module_loaded_alone_serves_pydantic_too() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok\n"


def test_json_functions_are_pydantic_cores() -> None:
    import pydantic_core

    from resultstore import _json

    assert _json.from_json is pydantic_core.from_json
    assert _json.to_json is pydantic_core.to_json
    assert _json.from_json(b'{"k": [1, null]}') == {"k": [1, None]}


_RACE = """
import threading
import importlib

barrier = threading.Barrier(8)
failures = []

def load(name):
    barrier.wait()
    try:
        importlib.import_module(name)
    except BaseException as exc:
        failures.append(repr(exc))

names = ["resultstore.records", "pydantic_core"] * 4
threads = [threading.Thread(target=load, args=(name,)) for name in names]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
assert not failures, failures
import pydantic_core, sys
from resultstore import _json
assert _json.from_json is pydantic_core.from_json
print("ok")
"""


def test_threads_importing_resultstore_and_pydantic_core_at_once_share_one_module() -> None:
    for _ in range(5):  # the compiled module may be initialised once: a race must not do it twice
        done = subprocess.run(
            [sys.executable, "-c", _RACE], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == "ok\n"
