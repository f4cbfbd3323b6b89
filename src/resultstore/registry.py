"""Find the store for a URL through the ``resultstore.stores`` entry points.

The entry point's name is the URL scheme. Built-in stores are registered
exactly as a third-party plugin is, and only the store a URL asks for is
imported, so ``import resultstore`` never pulls in s3fs or botocore. A scheme
no plugin claims, but that fsspec knows, is served by the generic fsspec store.
"""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from resultstore.errors import (
    ConfigurationError,
    PluginError,
    ResultStoreError,
    UnknownSchemeError,
)
from resultstore.plugins import discover, dist_name
from resultstore.stores.base import (
    INTERFACE_VERSION,
    OLDEST_INTERFACE_VERSION,
    DetailPage,
    Head,
    KeyPage,
    Listed,
    Payload,
    Reader,
    Stat,
    Store,
    _Version1,
    check_options,
    current_interface,
)

__all__ = [
    "STORE_GROUP",
    "available_stores",
    "has_userinfo",
    "redact_url",
    "resolve_store",
    "scheme_of",
]

STORE_GROUP = "resultstore.stores"


def scheme_of(url: str) -> str:
    """The scheme of a storage URL; a plain path means ``file``."""
    if not isinstance(url, str):
        raise ConfigurationError(f"storage URL must be a string, not {type(url).__name__}")
    if not url.strip():
        raise ConfigurationError(
            "storage URL is empty; use e.g. file:///path or s3://bucket/prefix"
        )
    if "://" not in url:
        if ":" in url.split("/", 1)[0]:
            raise ConfigurationError(
                f"malformed storage URL {url!r}; expected SCHEME://LOCATION, e.g. s3://bucket/prefix",
                url=url,
            )
        return "file"
    scheme = url.split("://", 1)[0].lower()
    if not scheme or not scheme.replace("+", "").replace("-", "").replace(".", "").isalnum():
        misnamed = _misnamed_claim(scheme)
        if misnamed is not None:
            raise misnamed
        raise ConfigurationError(f"malformed storage URL {url!r}: bad scheme {scheme!r}", url=url)
    return scheme


def _misnamed_claim(scheme: str) -> PluginError | None:
    """The error for a plugin whose entry-point name means ``scheme`` but no URL reaches.

    Entry-point names are matched exactly, URL schemes are lowercased, and a name such
    as ``MyScheme``, ``my_scheme`` or ``mine://`` is not a scheme any URL can name.
    """
    for name, claims in discover(STORE_GROUP).items():
        if _SCHEME.match(name) or _reachable(name) != scheme:
            continue
        ep = claims[0]
        return PluginError(
            f"store plugin {dist_name(ep)} registers its store ({ep.value}) under the "
            f"entry-point name {name!r}, which no storage URL can name: a URL scheme is "
            "lowercase, a letter then letters, digits, '+', '-' or '.'; the plugin must "
            f"rename it (e.g. {_suggested(name)!r}) in its resultstore.stores entry points"
        )
    return None


def _reachable(name: str) -> str:
    """What a URL written with entry-point name ``name`` as its scheme asks for."""
    return name.strip().removesuffix("://").removesuffix(":").lower()


def _suggested(name: str) -> str:
    return re.sub(r"[^a-z0-9+.-]", "-", _reachable(name)).strip("-") or "mine"


def available_stores() -> dict[str, str]:
    """Installed store schemes, each with the distribution providing it."""
    return {
        scheme: ", ".join(dist_name(ep) for ep in eps)
        for scheme, eps in discover(STORE_GROUP).items()
    }


@functools.cache
def _store_class(scheme: str) -> type[Store]:
    claims = discover(STORE_GROUP).get(scheme)
    if not claims:
        from resultstore.stores.fsspec import fsspec_store_class

        generic = fsspec_store_class(scheme)
        if generic is not None:
            return generic
        misnamed = _misnamed_claim(scheme)
        if misnamed is not None:
            raise misnamed
        raise UnknownSchemeError(
            f"no store handles the URL scheme {scheme!r}; installed schemes: "
            f"{', '.join(sorted(discover(STORE_GROUP)))}; install a plugin that provides it"
        )
    if len(claims) > 1:
        owners = " and ".join(f"{dist_name(ep)} ({ep.value})" for ep in claims)
        raise PluginError(f"URL scheme {scheme!r} is claimed by {owners}; uninstall one of them")
    ep = claims[0]
    plugin = f"store plugin {dist_name(ep)} for scheme {scheme!r} ({ep.value})"
    try:
        cls = _load_bounded(ep, scheme)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit or a BaseException of its own, too
        if exc is _HUNG.get(_module_of(ep)):
            raise
        raise PluginError(
            f"store plugin {dist_name(ep)} for scheme {scheme!r} failed to import: "
            f"{_described(exc)}; fix or reinstall {dist_name(ep)}, or uninstall it"
        ) from exc
    checked = _check_store_class(cls, plugin)
    _PLUGINS[checked] = (dist_name(ep), ep.value, scheme)
    return checked


_HUNG: dict[str, PluginError] = {}
"""Each plugin module whose import overran its deadline (still importing in its thread)."""


def _load_bounded(ep: Any, scheme: str) -> Any:
    """``ep.load()``, in a daemon thread given ``RESULTSTORE_PLUGIN_IMPORT_TIMEOUT`` seconds.

    The thread's import is the one that fills ``sys.modules``, so a module imported in
    time is the one every later import sees. A module already imported, or whose
    package is being imported right now (a plugin resolving its own scheme while it is
    imported: the thread would wait on that package's import lock), loads inline. A
    module that overran stays importing in its thread, holding its import lock, so it is
    never imported again: every later resolution raises the same error at once.
    """
    import sys
    import threading

    module = _module_of(ep)
    hung = _HUNG.get(module)
    if hung is not None:
        raise hung
    parts = module.split(".")
    packages = [".".join(parts[:n]) for n in range(1, len(parts) + 1)]
    if module in sys.modules or any(_initializing(name) for name in packages):
        return ep.load()
    from resultstore.settings import get_settings

    timeout = get_settings().plugin_import_timeout
    outcome: list[Any] = []
    failure: list[BaseException] = []

    def load() -> None:
        try:
            outcome.append(ep.load())
        except BaseException as exc:  # handed to the resolving thread, which words it
            failure.append(exc)

    thread = threading.Thread(target=load, name=f"resultstore import {module}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        error = PluginError(
            f"store plugin {dist_name(ep)} for scheme {scheme!r} ({ep.value}) did not finish "
            f"importing within {timeout:g} s (RESULTSTORE_PLUGIN_IMPORT_TIMEOUT): its module "
            f"{module} blocks at import time (waiting on a network, a lock or a sleep); fix "
            f"or uninstall {dist_name(ep)}, or raise the timeout if its import is just slow"
        )
        _HUNG[module] = error
        raise error
    if failure:
        raise failure[0]
    return outcome[0]


def _module_of(ep: Any) -> str:
    return str(ep.value).split(":", 1)[0].split("[", 1)[0].strip()


def _initializing(name: str) -> bool:
    import sys

    spec = getattr(sys.modules.get(name), "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


_PLUGINS: dict[type, tuple[str, str, str]] = {}
"""Each store class loaded from an entry point: its distribution, entry point and scheme."""

_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*\Z")
"""What an entry-point name must be to be reachable: a lowercase RFC 3986 URL scheme."""

_FLAGS = ("supports_ranged_read", "supports_conditional_write", "supports_read_head")
_ASYNC = (
    "write",
    "open",
    "stat",
    "read_head",
    "exists",
    "delete",
    "delete_many",
    "aclose",
    "clean_abandoned",
)
_LISTINGS = ("list", "list_pages", "list_details")
_V2_PARAMETERS = {"write": ("if_absent", "if_version"), "open": ("start", "end")}


def plugin_of(cls: type) -> str | None:
    """How errors name the plugin whose entry point gave store class ``cls``, if one did."""
    found = _PLUGINS.get(cls)
    if found is None:
        return None
    dist, value, scheme = found
    return f"store plugin {dist} for scheme {scheme!r} ({value})"


def _described(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _kind(obj: object) -> str:
    if isinstance(obj, type):
        return f"the class {obj.__qualname__}"
    if callable(obj) and hasattr(obj, "__qualname__"):
        return f"the {type(obj).__name__} {obj.__qualname__}"
    return f"an instance of {type(obj).__qualname__}"


def _check_store_class(cls: Any, plugin: str) -> type[Store]:
    """Refuse, in one line, a class that could only fail later, once per process.

    Everything here is read from the class, never by making a store: whether it is
    a concrete Store subclass, its interface version and capability flags, and that
    its methods are coroutines (listings: async generators) with the parameters of
    the version it declares.
    """
    import inspect

    if not (isinstance(cls, type) and issubclass(cls, Store)):
        raise PluginError(
            f"{plugin} is {_kind(cls)}, not a resultstore.Store subclass; point the entry "
            "point at the store class (module:Class) and derive it from resultstore.Store"
        )
    version = getattr(cls, "interface_version", None)
    if version is None:
        shape = 1 if _missing_v2_parameters(cls) else INTERFACE_VERSION
        hint = (
            "its write()/open() take version 1's parameters, so set `interface_version = 1` "
            "on the class (or port it to version 2)"
            if shape == 1
            else f"set `interface_version = {INTERFACE_VERSION}` on the class"
        )
        raise PluginError(f"{plugin} declares no interface_version; {hint}")
    if type(version) is not int:
        raise PluginError(
            f"{plugin} sets interface_version = {version!r} ({type(version).__name__}); it "
            f"must be an int literal from {OLDEST_INTERFACE_VERSION} to {INTERFACE_VERSION}: "
            f"the version the plugin was written against"
        )
    if not OLDEST_INTERFACE_VERSION <= version <= INTERFACE_VERSION:
        newer = version > INTERFACE_VERSION
        raise PluginError(
            f"{plugin} implements store interface version {version!r}, but this resultstore "
            f"speaks versions {OLDEST_INTERFACE_VERSION} to {INTERFACE_VERSION}; "
            + ("upgrade resultstore" if newer else "upgrade the plugin")
        )
    for flag in _FLAGS:
        value = getattr(cls, flag, False)
        if type(value) is not bool:
            raise PluginError(
                f"{plugin} sets {flag} = {value!r} ({type(value).__name__}); capability "
                "flags must be True or False"
            )
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing and cls.__new__ is object.__new__:  # not a factory making concrete subclasses
        raise PluginError(
            f"{plugin} does not implement {', '.join(missing)}; a store defines "
            "write, open, delete and list (see docs/plugins.md, section 3)"
        )
    sync = [name for name in _ASYNC if _plain_function(getattr(cls, name, None))]
    if sync:
        raise PluginError(
            f"{plugin} defines {', '.join(f'{name}()' for name in sync)} with a plain `def`; "
            "store methods are coroutines: write `async def`"
        )
    for name in _LISTINGS:
        method = _unwrapped(getattr(cls, name, None))
        if inspect.iscoroutinefunction(method) or inspect.isgeneratorfunction(method):
            raise PluginError(
                f"{plugin} defines {name}() as "
                + ("a coroutine" if inspect.iscoroutinefunction(method) else "a sync generator")
                + "; it must be an async generator (`async def` with `yield`)"
            )
    if version >= 2:
        for method, names in _missing_v2_parameters(cls):
            raise PluginError(
                f"{plugin} declares interface_version = {version} but its {method}() takes "
                f"no {' or '.join(repr(n) for n in names)}; give it version 2's signature "
                "(docs/plugins.md, section 3) or declare `interface_version = 1`"
            )
    if _takes_no_url(cls):
        raise PluginError(
            f"{plugin} cannot be made for a URL: its __init__ takes no URL; define "
            "`__init__(self, url, *, option=default, ...)` and call super().__init__(url)"
        )
    return cls


def _unwrapped(obj: Any) -> Any:
    import inspect

    try:
        return inspect.unwrap(obj) if callable(obj) else obj
    except ValueError:  # a cycle of __wrapped__
        return obj


def _plain_function(obj: Any) -> bool:
    """A Python ``def`` that is not ``async def`` (decorated ones are looked through)."""
    import inspect

    method = _unwrapped(obj)
    return inspect.isfunction(method) and not (
        inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method)
    )


def _missing_v2_parameters(cls: type) -> list[tuple[str, list[str]]]:
    """The version-2 keyword parameters that ``cls``'s write() and open() do not take."""
    import inspect

    missing = []
    for method, names in _V2_PARAMETERS.items():
        try:
            parameters = inspect.signature(getattr(cls, method)).parameters
        except (TypeError, ValueError):  # not introspectable: left to the calls
            continue
        if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            continue
        absent = [name for name in names if name not in parameters]
        if absent:
            missing.append((method, absent))
    return missing


def _takes_no_url(cls: type) -> bool:
    import inspect

    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return False
    parameters = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    return not parameters


def resolve_store(url: str, **storage_options: Any) -> Store:
    """Open the store for ``url`` (``file:///tmp/r``, ``memory://x``, ``s3://bucket/prefix``)."""
    scheme = scheme_of(url)
    cls = _store_class(scheme)
    try:
        store = cls(url, **storage_options)
    except ResultStoreError:
        raise
    except TypeError as exc:
        raise _refused_call(cls, scheme, url, storage_options, exc) from None
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit from a plugin's __init__ is no way to fail
        # The plugin's exception stays chained unless it may repeat the URL's password.
        raise _open_failed(cls, scheme, url, exc) from (None if has_userinfo(url) else exc)
    if not isinstance(getattr(store, "url", None), str):
        raise PluginError(
            f"{plugin_of(cls) or cls.__qualname__} made a store for {redact_url(url)!r} "
            "without a url; its __init__ must call super().__init__(canonical_url)",
            url=redact_url(url),
        )
    return checked_store(current_interface(store))


def _refused_call(
    cls: type[Store], scheme: str, url: str, options: dict[str, Any], exc: TypeError
) -> ResultStoreError:
    """What a TypeError from ``cls(url, **options)`` means: the options, or a failure inside."""
    import inspect

    shown = redact_url(url)
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):  # no signature to bind: judge by the message
        if "unexpected keyword argument" not in str(exc):
            return _open_failed(cls, scheme, url, exc)
        check_options(shown, options, _option_names(cls))
        return ConfigurationError(
            f"bad storage options for {scheme!r} store {shown!r}: {exc}", url=shown
        )
    try:
        signature.bind(url, **options)
    except TypeError as refused:
        if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
            check_options(shown, options, _option_names(cls))  # a misspelled one, named
        if "missing" in str(refused):
            return ConfigurationError(
                f"the {scheme!r} store {shown!r} needs a storage option it was not given "
                f"({refused}); pass it in storage_options or RESULTSTORE_STORAGE_OPTIONS",
                url=shown,
            )
        return ConfigurationError(
            f"bad storage options for {scheme!r} store {shown!r}: {refused}", url=shown
        )
    return _open_failed(cls, scheme, url, exc)  # the call fits: raised inside __init__


def _option_names(cls: type[Store]) -> list[str]:
    """The keyword options a store class's ``__init__`` names."""
    import inspect

    parameters = list(inspect.signature(cls.__init__).parameters.values())[2:]  # self, url
    return [p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _open_failed(cls: type, scheme: str, url: str, exc: BaseException) -> PluginError:
    found = _PLUGINS.get(cls)
    third_party = found is not None and cls.__module__.split(".")[0] != "resultstore"
    owner = f" (raised by {found[1]} of the plugin {found[0]})" if found and third_party else ""
    return PluginError(
        f"the {scheme!r} store failed to open {redact_url(url)!r}: "
        f"{scrub_url(_described(exc), url)}{owner}",
        url=redact_url(url),
    )


_RETURNS = {
    "write": "write() returns the new version (a str) or None",
    "check": "exists() returns a bool",
    "delete": "delete() returns True, False or None",
    "list": "list() is an async generator of keys (`async def` with `yield`), "
    "list_pages() and list_details() async generators of non-empty lists",
    "clean": "clean_abandoned() returns (items, bytes)",
}
_READ_RETURN = (
    "open() returns a resultstore.stores.base.Reader (BytesReader(data) for bytes in "
    "memory), stat() a Stat, read_head() a Head or None"
)


def broken_contract(
    store: Store, action: str, key: str, url: str, exc: BaseException
) -> PluginError | None:
    """The error for ``exc`` when it says a plugin's store returned the wrong thing.

    The core trips over a wrong return value (``bytes`` from ``open``, a ``list``
    from ``list``) with a TypeError or AttributeError once the plugin's call returned;
    one raised while the plugin's code runs (in it, or in anything it calls) is the
    plugin's own failure (None: the caller's safety net words it). Only called once
    an operation has failed.
    """
    if not isinstance(exc, (TypeError, AttributeError)):
        return None
    cls = type(_own(store))
    plugin = plugin_of(cls)
    package = cls.__module__.split(".")[0]
    if plugin is None or package == "resultstore":
        return None
    # Raised while the plugin's code ran (its frame is on the way from the raise to
    # here, whatever it called: json, a client library): the plugin's own failure.
    tb = exc.__traceback__
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0] == package:
            return None
        tb = tb.tb_next
    hint = _RETURNS.get(action, _READ_RETURN)
    return PluginError(
        f"cannot {action} key {key!r} in {url}: {plugin} returned what the store "
        f"interface does not allow ({_described(exc)}); {hint}",
        key=key,
        url=url,
    )


def _userinfo_end(url: str) -> int:
    """Where the ``user:password@`` part of ``url`` ends (index after the ``@``), or -1.

    RFC 3986 ends the authority at the first ``/``, ``?`` or ``#``, but passwords
    often hold those characters unescaped (AWS secret keys contain ``/``), and
    then a plain parser takes the secret for a path. So a ``user:...@`` that
    precedes the first ``@``-free host is taken as user info whatever it holds.
    """
    _, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return -1
    start = len(url) - len(rest)
    first_at = rest.index("@")
    authority_end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    if first_at < authority_end:  # the plain case: user info inside the authority
        return start + rest.rindex("@", 0, authority_end) + 1
    head = rest[:first_at]
    user, colon, after = head.partition(":")
    if not colon or "/" in user or after.split("/", 1)[0].isdigit():
        return -1  # no password before the "@" ("host:8080/a@b" is a port and a path)
    host_end = min(
        (i for i in (rest.find(c, first_at) for c in "/?#") if i >= 0), default=len(rest)
    )
    return start + rest.rindex("@", 0, host_end) + 1


def redact_url(url: str) -> str:
    """``url`` without any ``user:password@`` part: safe for messages, reprs and JSON."""
    end = _userinfo_end(url)
    if end < 0:
        return url
    scheme_end = url.index("://") + 3
    return url[:scheme_end] + url[end:]


def has_userinfo(url: str) -> bool:
    """True when ``url`` carries a ``user[:password]@`` part (see :func:`redact_url`)."""
    return _userinfo_end(url) >= 0


def scrub_url(text: str, url: str) -> str:
    """``text`` (a plugin's own error message) without ``url``'s user info or password.

    A plugin may well put the URL it was given into its exception; the message built
    from that exception must not carry the password on (to a terminal, a log, CI).
    """
    end = _userinfo_end(url)
    if end < 0:
        return text
    from urllib.parse import unquote

    text = text.replace(url, redact_url(url))
    userinfo = url[url.index("://") + 3 : end - 1]
    secrets = {userinfo, *userinfo.split(":", 1)[1:]}
    for secret in sorted({*secrets, *map(unquote, secrets)} - {""}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


# -- what a plugin's store returns ---------------------------------------------------


def checked_store(store: Store) -> Store:
    """``store``, with what its methods return checked when a third-party plugin made it.

    Every call the core makes on a plugin's store goes through the store
    :func:`resolve_store` returns, so this is the one place a wrong return value
    (``"yes"`` from ``exists``, ``str`` from a read, a key outside the prefix) becomes
    a :class:`PluginError` naming the plugin, the method, the type it returned and the
    type it must return, instead of passing or failing later in the core. Each check
    is an ``isinstance`` of the value returned (per key in listings, never per byte).

    The checks are put on the instance itself (bound methods in its ``__dict__``
    calling the class's own), so the store stays what the plugin made: the same
    object, ``isinstance`` of its class, with its attributes. Built-in stores, and a
    store whose class has ``__slots__`` and no ``__dict__``, are returned unchanged.
    """
    cls = type(_own(store))
    plugin = plugin_of(cls)
    if plugin is None or cls.__module__.split(".")[0] == "resultstore":
        return store
    attributes = getattr(store, "__dict__", None)
    if not isinstance(attributes, dict) or "_resultstore_checks" in attributes:
        return store
    checks = _Checks(store, plugin)
    attributes["_resultstore_checks"] = checks
    for name in _CHECKED:
        attributes[name] = getattr(checks, name)
    return store


_CHECKED = (
    "write",
    "open",
    "stat",
    "read_head",
    "exists",
    "delete",
    "list",
    "list_pages",
    "list_details",
    "listed_md5",
    "clean_abandoned",
)
"""The store methods whose results :func:`checked_store` checks."""


def _own(store: Store) -> Store:
    """The plugin's own store inside the version-1 adapter."""
    while isinstance(store, _Version1):
        store = store.inner
    return store


def _shown(value: object) -> str:
    """How a wrong value is named: its type (None, a str or a small int: shortened, itself)."""
    if value is None:
        return "None"
    if isinstance(value, str):
        text = repr(value if len(value) <= 60 else value[:60] + "...")
        return f"the str {text}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**12:
        return f"the int {value}"
    return type(value).__name__


async def _closed(items: AsyncIterator[Any]) -> None:
    close = getattr(items, "aclose", None)
    if close is not None:
        await close()


def _size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class _Checks:
    """The checking methods :func:`checked_store` puts on one plugin store."""

    def __init__(self, store: Store, plugin: str) -> None:
        self.store = store
        self.plugin = plugin
        self.inner: Any = SimpleNamespace(**{name: getattr(store, name) for name in _CHECKED})

    def wrong(
        self, method: str, key: str, got: object, must: str, *, where: str = "key"
    ) -> PluginError:
        """The error of ``method`` (called for ``key``) that returned ``got``, not ``must``."""
        shown = redact_url(self.store.url)
        target = f" for {where} {key!r}" if key != "*" else ""
        return PluginError(
            f"{self.plugin} returned {_shown(got)} from {method}{target} in {shown}; "
            f"{method} must return {must}; fix the plugin",
            key=key if where == "key" and key != "*" else None,
            url=shown,
        )

    async def write(
        self, key: str, payload: Payload, *, if_absent: bool = False, if_version: str | None = None
    ) -> str | None:
        version = await self.inner.write(key, payload, if_absent=if_absent, if_version=if_version)
        if version is not None and not isinstance(version, str):
            raise self.wrong("write()", key, version, "the new version as a str, or None")
        return version

    async def open(self, key: str, *, start: int = 0, end: int | None = None) -> Reader:
        reader = await self.inner.open(key, start=start, end=end)
        if not isinstance(reader, Reader):
            raise self.wrong(
                "open()", key, reader, "a resultstore.stores.base.Reader (BytesReader(data))"
            )
        if reader.size is not None and not _size(reader.size):
            raise self.wrong("open()", key, reader.size, "a Reader whose size is an int >= 0")
        if reader.version is not None and not isinstance(reader.version, str):
            raise self.wrong("open()", key, reader.version, "a Reader whose version is a str")
        attributes = getattr(reader, "__dict__", None)
        if isinstance(attributes, dict) and "read" not in attributes:
            checks = _ReaderChecks(reader, self, key)
            attributes["read"], attributes["readinto"] = checks.read, checks.readinto
        return reader

    async def stat(self, key: str) -> Stat:
        stat = await self.inner.stat(key)
        if not isinstance(stat, Stat):
            raise self.wrong("stat()", key, stat, "a Stat(size, version)")
        if not _size(stat.size):
            raise self.wrong("stat()", key, stat.size, "a Stat whose size is an int >= 0")
        if stat.version is not None and not isinstance(stat.version, str):
            raise self.wrong("stat()", key, stat.version, "a Stat whose version is a str or None")
        return stat

    async def read_head(self, key: str) -> Head | None:
        head = await self.inner.read_head(key)
        if head is None:
            return None
        must = "a Head(data, size, version) or None"
        if not isinstance(head, Head):
            raise self.wrong("read_head()", key, head, must)
        if not isinstance(head.data, (bytes, bytearray, memoryview)):
            raise self.wrong("read_head()", key, head.data, "a Head whose data is bytes")
        if not _size(head.size):
            raise self.wrong("read_head()", key, head.size, "a Head whose size is an int >= 0")
        if head.version is not None and not isinstance(head.version, str):
            raise self.wrong("read_head()", key, head.version, "a Head whose version is a str")
        return head

    async def exists(self, key: str) -> bool:
        found = await self.inner.exists(key)
        if type(found) is not bool:  # strict: not 0/1, not "yes", not None
            raise self.wrong("exists()", key, found, "a bool (True or False)")
        return found

    async def delete(self, key: str) -> bool | None:
        deleted = await self.inner.delete(key)
        if deleted is not None and type(deleted) is not bool:
            raise self.wrong("delete()", key, deleted, "True, False or None")
        return deleted

    def _listing(self, method: str, prefix: str, items: object) -> AsyncIterator[Any]:
        if not hasattr(items, "__anext__"):
            raise self.wrong(
                method,
                prefix,
                items,
                "an async generator (`async def` with `yield`)",
                where="prefix",
            )
        return items  # type: ignore[return-value]

    def _key(self, method: str, prefix: str, key: object) -> None:
        if type(key) is not str:
            raise self.wrong(method, prefix, key, "keys as str", where="prefix")
        if not key.startswith(prefix):
            raise self.wrong(method, prefix, key, "only keys under the prefix", where="prefix")

    async def list(self, prefix: str = "") -> AsyncIterator[str]:
        keys = self._listing("list()", prefix, self.inner.list(prefix))
        try:
            async for key in keys:
                self._key("list()", prefix, key)
                yield key
        finally:
            await _closed(keys)

    async def list_pages(self, prefix: str = "") -> AsyncIterator[KeyPage]:
        pages = self._listing("list_pages()", prefix, self.inner.list_pages(prefix))
        try:
            async for page in pages:
                if type(page) is not list or not page:
                    must = "pages as non-empty lists of keys"
                    raise self.wrong("list_pages()", prefix, page, must, where="prefix")
                for key in page:
                    self._key("list_pages()", prefix, key)
                yield page
        finally:
            await _closed(pages)

    async def list_details(
        self, prefix: str = "", *, start_after: str | None = None
    ) -> AsyncIterator[DetailPage]:
        method = "list_details()"
        listed = self.inner.list_details(prefix, start_after=start_after)
        pages = self._listing(method, prefix, listed)
        try:
            async for page in pages:
                if type(page) is not list or not page:
                    must = "pages as non-empty lists of Listed"
                    raise self.wrong(method, prefix, page, must, where="prefix")
                for item in page:
                    if not isinstance(item, Listed):
                        raise self.wrong(method, prefix, item, "pages of Listed", where="prefix")
                    self._key(method, prefix, item.key)
                    if item.size is not None and not _size(item.size):
                        raise self.wrong(method, item.key, item.size, "sizes as ints >= 0 or None")
                    if item.md5 is not None and not isinstance(item.md5, str):
                        raise self.wrong(method, item.key, item.md5, "md5s as str or None")
                yield page
        finally:
            await _closed(pages)

    def listed_md5(self, payload: Payload) -> str | None:
        md5 = self.inner.listed_md5(payload)
        if md5 is not None and not isinstance(md5, str):
            raise self.wrong("listed_md5()", "*", md5, "a hex MD5 as str, or None")
        return md5

    async def clean_abandoned(self, older_than: float, *, dry_run: bool = False) -> tuple[int, int]:
        cleaned = await self.inner.clean_abandoned(older_than, dry_run=dry_run)
        if not (isinstance(cleaned, tuple) and len(cleaned) == 2 and all(map(_size, cleaned))):
            raise self.wrong("clean_abandoned()", "*", cleaned, "(items, bytes): two ints >= 0")
        return cleaned


class _ReaderChecks:
    """The checking ``read`` and ``readinto`` :func:`checked_store` puts on a plugin's reader."""

    __slots__ = ("checks", "key", "own_read", "own_readinto")

    def __init__(self, reader: Reader, checks: _Checks, key: str) -> None:
        self.checks, self.key = checks, key
        self.own_read, self.own_readinto = reader.read, reader.readinto

    async def read(self, n: int = -1) -> bytes:
        data = await self.own_read(n)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise self.checks.wrong("Reader.read()", self.key, data, "bytes")
        if 0 <= n < len(data):
            raise self.checks.wrong("Reader.read()", self.key, len(data), f"at most {n} bytes")
        return data

    async def readinto(self, buffer: memoryview) -> int:
        got = await self.own_readinto(buffer)
        if not (type(got) is int and 0 <= got <= len(buffer)):
            raise self.checks.wrong(
                "Reader.readinto()", self.key, got, f"the count of bytes read (0 to {len(buffer)})"
            )
        return got
