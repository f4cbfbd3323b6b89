"""pydantic_core's compiled JSON parser and writer, loaded without the rest of its package.

Every record header is parsed by pydantic_core's ``from_json`` (0.4 us for a header,
against 2.7 us for ``json.loads``). ``import pydantic_core`` also imports its
``core_schema`` module and typing_extensions, about 10 ms of a ~115 ms
``resultstore get``, for schema helpers resultstore never uses. Both functions live in
the compiled module ``pydantic_core._pydantic_core``. This module loads that alone,
under its own name in ``sys.modules``, so a later ``import pydantic_core`` (pydantic's)
finds it there and reuses it: one module, initialised once. Anything unexpected (another
layout, an install that is not plain files) falls back to importing the package.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["from_json", "to_json"]

_NAME = "pydantic_core._pydantic_core"


def _load_alone() -> ModuleType | None:
    """The compiled module, loaded from its file next to the package; None if not found."""
    import importlib._bootstrap
    import importlib.machinery
    import importlib.util
    import os

    # The import system's own lock for the name: a thread importing pydantic_core
    # meanwhile waits for it, then finds the module in sys.modules (the module may be
    # initialised only once). Private to importlib since Python 3.3; without it, no shortcut.
    lock = getattr(importlib._bootstrap, "_ModuleLockManager", None)
    package = importlib.util.find_spec("pydantic_core")  # a top-level name: imports nothing
    if lock is None or package is None or not package.submodule_search_locations:
        return None
    for folder in package.submodule_search_locations:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, f"_pydantic_core{suffix}")
            if not os.path.isfile(path):
                continue
            loader = importlib.machinery.ExtensionFileLoader(_NAME, path)
            spec = importlib.util.spec_from_file_location(_NAME, path, loader=loader)
            if spec is None:
                return None
            with lock(_NAME):
                if _NAME in sys.modules:  # imported by another thread meanwhile, whole
                    return None
                module = importlib.util.module_from_spec(spec)
                # As the import system marks a module it runs: another thread's import
                # that finds it in sys.modules then waits for the lock, so for its end.
                spec._initializing = True  # type: ignore[attr-defined]
                sys.modules[_NAME] = module
                try:
                    loader.exec_module(module)
                except BaseException:
                    del sys.modules[_NAME]
                    raise
                finally:
                    spec._initializing = False  # type: ignore[attr-defined]
            return module
    return None


def _compiled() -> ModuleType:
    # Already imported (or being imported, by another thread): the import system's own
    # import of the package waits for it and returns it whole.
    if _NAME not in sys.modules and "pydantic_core" not in sys.modules:
        try:
            alone = _load_alone()
        except Exception:
            alone = None
        if alone is not None:
            return alone
    import pydantic_core

    return pydantic_core


_module = _compiled()
from_json: Callable[..., Any] = _module.from_json
"""``pydantic_core.from_json``."""
to_json: Callable[..., bytes] = _module.to_json
"""``pydantic_core.to_json``."""
