"""The public names of ``states`` and ``resultstore``: listed once, loaded on first use."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import resultstore
import states

PACKAGES = [states, resultstore]


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_every_public_name_resolves_to_the_object_of_its_module(package: ModuleType) -> None:
    exports: dict[str, tuple[str, ...]] = package._EXPORTS
    assert sorted(name for names in exports.values() for name in names) == sorted(package.__all__)
    for module, names in exports.items():
        for name in names:
            assert getattr(package, name) is getattr(importlib.import_module(module), name)
    assert set(package.__all__) <= set(dir(package))


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_the_names_type_checkers_see_are_the_names_loaded_at_run_time(package: ModuleType) -> None:
    tree = ast.parse(Path(str(package.__file__)).read_text())
    guarded = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    )
    seen = {
        node.module: tuple(alias.name for alias in node.names)
        for node in guarded.body
        if isinstance(node, ast.ImportFrom)
    }
    assert seen == package._EXPORTS


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_an_unknown_name_is_an_attribute_error_naming_it(package: ModuleType) -> None:
    with pytest.raises(
        AttributeError, match=f"module '{package.__name__}' has no attribute 'nope'"
    ):
        package.nope  # noqa: B018


def test_star_import_gives_every_public_name() -> None:
    namespace: dict[str, object] = {}
    exec("from states import *\nfrom resultstore import *", namespace)
    assert {*states.__all__, *resultstore.__all__} <= set(namespace)
    assert namespace["Completed"] is states.Completed
    assert namespace["ResultStore"] is resultstore.ResultStore


def test_a_bare_import_builds_no_pydantic_model_and_first_use_loads_what_it_needs() -> None:
    code = (
        "import sys, resultstore, states\n"
        "print('pydantic' in sys.modules)\n"
        "states.Completed(data=1)\n"
        "print('pydantic' in sys.modules, 'resultstore.result_store' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["False", "True", "False"], done.stderr


def test_locks_and_compute_once_are_public() -> None:
    """Prefect 3's lock names, with async twins, on ResultStore; their types at the top."""
    assert [level.value for level in resultstore.IsolationLevel] == [
        "READ_COMMITTED",
        "SERIALIZABLE",
    ]
    for name in ("LockHeldError", "LockNotHeldError", "LockTimeoutError"):
        assert issubclass(getattr(resultstore, name), resultstore.ConflictError)
    sync_and_async = [
        ("acquire_lock", "aacquire_lock"),
        ("release_lock", "arelease_lock"),
        ("is_locked", "ais_locked"),
        ("is_lock_holder", "ais_lock_holder"),
        ("wait_for_lock", "await_for_lock"),
        ("lock", "alock"),
        ("get_or_compute", "aget_or_compute"),
    ]
    for sync_name, async_name in sync_and_async:
        assert callable(getattr(resultstore.ResultStore, sync_name))
        assert callable(getattr(resultstore.ResultStore, async_name))
    assert callable(resultstore.ResultStore.supports_isolation_level)
