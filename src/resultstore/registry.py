"""Find the store for a URL through the ``resultstore.stores`` entry points.

The entry point's name is the URL scheme. Built-in stores are registered
exactly as a third-party plugin is, and only the store a URL asks for is
imported, so ``import resultstore`` never pulls in s3fs or botocore. A scheme
no plugin claims, but that fsspec knows, is served by the generic fsspec store.
"""

from __future__ import annotations

import functools
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
        raise ConfigurationError(f"malformed storage URL {url!r}: bad scheme {scheme!r}", url=url)
    return scheme


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
        raise UnknownSchemeError(
            f"no store handles the URL scheme {scheme!r}; installed schemes: "
            f"{', '.join(sorted(discover(STORE_GROUP)))}; install a plugin that provides it"
        )
    if len(claims) > 1:
        owners = " and ".join(f"{dist_name(ep)} ({ep.value})" for ep in claims)
        raise PluginError(f"URL scheme {scheme!r} is claimed by {owners}; uninstall one of them")
    ep = claims[0]
    try:
        cls = ep.load()
    except Exception as exc:
        raise PluginError(
            f"store plugin {dist_name(ep)} for scheme {scheme!r} failed to import: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Store)):
        raise PluginError(
            f"store plugin {dist_name(ep)} for scheme {scheme!r} ({ep.value}) "
            "is not a resultstore.Store subclass"
        )
    version = getattr(cls, "interface_version", None)
    if version is None:
        raise PluginError(
            f"store plugin {dist_name(ep)} for scheme {scheme!r} ({ep.value}) declares no "
            f"interface_version; set `interface_version = {INTERFACE_VERSION}` on the class"
        )
    if not isinstance(version, int) or not (
        OLDEST_INTERFACE_VERSION <= version <= INTERFACE_VERSION
    ):
        newer = isinstance(version, int) and version > INTERFACE_VERSION
        raise PluginError(
            f"store plugin {dist_name(ep)} for scheme {scheme!r} implements store interface "
            f"version {version!r}, but this resultstore speaks versions "
            f"{OLDEST_INTERFACE_VERSION} to {INTERFACE_VERSION}; "
            + ("upgrade resultstore" if newer else "upgrade the plugin")
        )
    return cls


def resolve_store(url: str, **storage_options: Any) -> Store:
    """Open the store for ``url`` (``file:///tmp/r``, ``memory://x``, ``s3://bucket/prefix``)."""
    scheme = scheme_of(url)
    cls = _store_class(scheme)
    try:
        return current_interface(cls(url, **storage_options))
    except ResultStoreError:
        raise
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise _open_failed(scheme, url, exc) from exc
        check_options(redact_url(url), storage_options, _option_names(cls))
        raise ConfigurationError(
            f"bad storage options for {scheme!r} store {redact_url(url)!r}: {exc}",
            url=redact_url(url),
        ) from None
    except Exception as exc:
        raise _open_failed(scheme, url, exc) from exc


def _option_names(cls: type[Store]) -> list[str]:
    """The keyword options a store class's ``__init__`` names."""
    import inspect

    parameters = list(inspect.signature(cls.__init__).parameters.values())[2:]  # self, url
    return [p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _open_failed(scheme: str, url: str, exc: Exception) -> PluginError:
    return PluginError(
        f"the {scheme!r} store failed to open {redact_url(url)!r}: {type(exc).__name__}: {exc}",
        url=redact_url(url),
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
