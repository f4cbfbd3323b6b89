"""Find the store for a URL through the ``resultstore.stores`` entry points.

The entry point's name is the URL scheme. Built-in stores are registered
exactly as a third-party plugin is, and only the store a URL asks for is
imported, so ``import resultstore`` never pulls in s3fs or botocore. A scheme
no plugin claims, but that fsspec knows, is served by the generic fsspec store.
"""

from __future__ import annotations

import functools
import re
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
    Store,
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
        cls = ep.load()
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit or a BaseException of its own, too
        raise PluginError(
            f"store plugin {dist_name(ep)} for scheme {scheme!r} failed to import: "
            f"{_described(exc)}; fix or reinstall {dist_name(ep)}, or uninstall it"
        ) from exc
    checked = _check_store_class(cls, plugin)
    _PLUGINS[checked] = (dist_name(ep), ep.value, scheme)
    return checked


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
        raise _open_failed(cls, scheme, url, exc) from exc
    if not isinstance(getattr(store, "url", None), str):
        raise PluginError(
            f"{plugin_of(cls) or cls.__qualname__} made a store for {redact_url(url)!r} "
            "without a url; its __init__ must call super().__init__(canonical_url)",
            url=redact_url(url),
        )
    return current_interface(store)


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
        f"the {scheme!r} store failed to open {redact_url(url)!r}: {_described(exc)}{owner}",
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
    from ``list``) with a TypeError or AttributeError raised in the core's own code;
    one raised in the plugin's code is the plugin's own failure (None: the caller's
    safety net words it). Only called once an operation has failed.
    """
    if not isinstance(exc, (TypeError, AttributeError)):
        return None
    cls = type(getattr(store, "inner", store))  # a version-1 store: the plugin's class
    plugin = plugin_of(cls)
    package = cls.__module__.split(".")[0]
    if plugin is None or package == "resultstore":
        return None
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    raised_in = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    if str(raised_in).split(".")[0] == package:
        return None
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
