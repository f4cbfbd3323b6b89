"""A broken store plugin fails at load or use with one line naming it and what to change.

Every plugin here is really installed: a distribution folder with ``entry_points.txt``
on ``sys.path``, found by URL scheme the way ``pip install`` makes it found. Each is
tried through ``ResultStore(url)`` in this process and through the ``resultstore`` CLI
in a fresh one: a ``PluginError`` (or, for a missing option, a ``ConfigurationError``),
exit code 3 and exactly one ``error:`` line on stderr, never a traceback or a silent exit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from resultstore import (
    ConfigurationError,
    PluginError,
    ResultStore,
    StorageError,
    UnsupportedOperationError,
    plugins,
    registry,
    resolve_store,
)
from resultstore.errors import Reason

HEADER = """
from resultstore.stores.base import BytesReader, Store
from resultstore.stores.file import FileStore
from resultstore.stores.memory import MemoryStore


class OnDisk(FileStore):
    '''A file store reached as SCHEME:///path, so the CLI's processes share records.'''

    def __init__(self, url, **options):
        super().__init__("file://" + url.split("://", 1)[1], **options)
"""

V1_STORE = (
    HEADER
    + '''
import os


class OldStore(Store):
    """Written for interface version 1: write/open/exists/delete/list, no capabilities."""

    interface_version = 1

    def __init__(self, url):
        super().__init__(url)
        self.root = url.split("://", 1)[1]

    def _path(self, key):
        return os.path.join(self.root, key.replace("/", "\\\\"))

    async def write(self, key, payload):
        os.makedirs(self.root, exist_ok=True)
        with open(self._path(key) + ".tmp", "wb") as handle:
            handle.write(payload.join())
        os.replace(self._path(key) + ".tmp", self._path(key))

    async def open(self, key):
        try:
            with open(self._path(key), "rb") as handle:
                return BytesReader(handle.read())
        except FileNotFoundError:
            raise self.not_found(key) from None

    async def exists(self, key):
        return os.path.exists(self._path(key))

    async def delete(self, key):
        try:
            os.remove(self._path(key))
        except FileNotFoundError:
            return False
        return True

    async def list(self, prefix=""):
        for name in sorted(os.listdir(self.root)) if os.path.isdir(self.root) else []:
            key = name.replace("\\\\", "/")
            if key.startswith(prefix) and not name.endswith(".tmp"):
                yield key
'''
)

# scheme: (entry point value, module source or None for no module at all)
PLUGINS: dict[str, tuple[str, str | None]] = {
    "nomodule": ("bp_not_there:Store", None),
    "importerror": ("bp_importerror:S", "import a_dependency_nobody_installed\n"),
    "syntaxerror": ("bp_syntaxerror:S", "def broken(:\n"),
    "runtimeerror": ("bp_runtimeerror:S", "raise RuntimeError('no config file found')\n"),
    "systemexit": ("bp_systemexit:S", "raise SystemExit(3)\n"),
    "baseexc": (
        "bp_baseexc:S",
        "class Abort(BaseException):\n    pass\n\nraise Abort('aborted at import')\n",
    ),
    "noattr": ("bp_noattr:Missing", HEADER),
    "malformed": ("bp_malformed:A:B", HEADER),
    "function": ("bp_function:make", "def make(url):\n    return None\n"),
    "instance": ("bp_instance:store", HEADER + "store = MemoryStore('memory://x')\n"),
    "plainclass": (
        "bp_plainclass:Plain",
        "class Plain:\n    interface_version = 2\n    async def write(self, key, payload): pass\n",
    ),
    "abstract": (
        "bp_abstract:Half",
        HEADER
        + "class Half(Store):\n    interface_version = 2\n"
        + "    async def write(self, key, payload, *, if_absent=False, if_version=None): pass\n",
    ),
    "noversion": (
        "bp_noversion:S",
        HEADER + "class S(MemoryStore):\n    interface_version = None\n",
    ),
    "noversionv1": ("bp_noversionv1:OldStore", V1_STORE.replace("interface_version = 1", "")),
    "version0": ("bp_version0:S", HEADER + "class S(MemoryStore):\n    interface_version = 0\n"),
    "version99": ("bp_version99:S", HEADER + "class S(MemoryStore):\n    interface_version = 99\n"),
    "versionstr": (
        "bp_versionstr:S",
        HEADER + "class S(MemoryStore):\n    interface_version = '2'\n",
    ),
    "versionbool": (
        "bp_versionbool:S",
        HEADER + "class S(MemoryStore):\n    interface_version = True\n",
    ),
    "capyes": (
        "bp_capyes:S",
        HEADER + "class S(MemoryStore):\n    supports_conditional_write = 'yes'\n",
    ),
    "syncmethods": (
        "bp_syncmethods:OldStore",
        V1_STORE.replace("async def", "def").replace(
            "interface_version = 1", "interface_version = 2"
        ),
    ),
    "listcoroutine": (
        "bp_listcoroutine:S",
        HEADER + "class S(MemoryStore):\n    async def list(self, prefix=''):\n        return []\n",
    ),
    "v1signatures": (
        "bp_v1signatures:OldStore",
        V1_STORE.replace("interface_version = 1", "interface_version = 2"),
    ),
    "initnourl": (
        "bp_initnourl:S",
        HEADER + "class S(MemoryStore):\n    def __init__(self):\n        super().__init__('x')\n",
    ),
    "v1": ("bp_v1:OldStore", V1_STORE),
    # made, then broken when made or used
    "initraise": (
        "bp_initraise:S",
        HEADER
        + "class S(MemoryStore):\n    def __init__(self, url):\n"
        + "        raise ValueError(f'cannot parse {url}')\n",
    ),
    "initexit": (
        "bp_initexit:S",
        HEADER
        + "class S(MemoryStore):\n    def __init__(self, url):\n        raise SystemExit('bye')\n",
    ),
    "inittypeerror": (
        "bp_inittypeerror:S",
        HEADER + "class S(MemoryStore):\n    def __init__(self, url):\n        len(5)\n",
    ),
    "needsregion": (
        "bp_needsregion:S",
        HEADER
        + "class S(MemoryStore):\n    def __init__(self, url, *, region):\n"
        + "        super().__init__(url)\n",
    ),
    "nosuper": (
        "bp_nosuper:S",
        HEADER + "class S(MemoryStore):\n    def __init__(self, url):\n        pass\n",
    ),
    "openbytes": (
        "bp_openbytes:S",
        HEADER
        + "class S(OnDisk):\n    async def open(self, key, *, start=0, end=None):\n"
        + "        reader = await super().open(key, start=start, end=end)\n"
        + "        try:\n            return await reader.read()\n"
        + "        finally:\n            await reader.aclose()\n",
    ),
    "listlist": (
        "bp_listlist:S",
        HEADER
        + "class S(OnDisk):\n    def list(self, prefix=''):\n        return ['a']\n"
        + "    list_pages = Store.list_pages\n    list_details = Store.list_details\n",
    ),
    "ownbug": (
        "bp_ownbug:S",
        HEADER
        + "class S(OnDisk):\n    async def open(self, key, *, start=0, end=None):\n"
        + "        return None + 1\n",
    ),
    "jsonbug": (  # its bug raises inside the standard library, not in its own frame
        "bp_jsonbug:S",
        HEADER
        + "import json\n"
        + "class S(OnDisk):\n    async def open(self, key, *, start=0, end=None):\n"
        + "        return json.loads(None)\n",
    ),
    "leaky": (  # repeats the URL it was given, password and all, in its error
        "bp_leaky:S",
        HEADER
        + "from urllib.parse import unquote, urlsplit\n"
        + "class S(MemoryStore):\n    def __init__(self, url):\n"
        + "        secret = unquote(urlsplit(url).password)\n"
        + "        raise ConnectionError(f'cannot connect to {url}: password {secret} refused')\n",
    ),
}

WRONG = (
    HEADER
    + '''
from resultstore.stores.base import Head, Reader, Stat


class Given(Reader):
    """A reader that hands back what it was given, bytes or not."""

    def __init__(self, value):
        self.value = value

    async def read(self, n=-1):
        return self.value


class ListsByOwnKeys(OnDisk):
    """Lists through list() only: the defaults group it into pages."""

    list_pages = Store.list_pages
    list_details = Store.list_details
'''
)
# Stores that do not crash but return what the interface does not allow: scheme: class S.
WRONG_RETURNS: dict[str, str] = {
    "existsyes": "class S(OnDisk):\n    async def exists(self, key):\n        return 'yes'\n",
    "existsnone": "class S(OnDisk):\n    async def exists(self, key):\n        return None\n",
    "existsint": "class S(OnDisk):\n    async def exists(self, key):\n        return 1\n",
    "readstr": "class S(OnDisk):\n    async def open(self, key, *, start=0, end=None):\n"
    "        return Given('{\"a\": 1}')\n",
    "readlist": "class S(OnDisk):\n    async def open(self, key, *, start=0, end=None):\n"
    "        return Given([1, 2])\n",
    "listbytes": "class S(ListsByOwnKeys):\n    async def list(self, prefix=''):\n"
    "        yield b'runs/1'\n",
    "listint": "class S(ListsByOwnKeys):\n    async def list(self, prefix=''):\n        yield 7\n",
    "listoutside": "class S(ListsByOwnKeys):\n    async def list(self, prefix=''):\n"
    "        yield 'other/1'\n",
    "pagestuple": "class S(OnDisk):\n    async def list_pages(self, prefix=''):\n"
    "        yield ('runs/1',)\n",
    "headtuple": "class S(OnDisk):\n    supports_read_head = True\n"
    "    async def read_head(self, key):\n        return (b'', 10)\n",
    "headnegative": "class S(OnDisk):\n    supports_read_head = True\n"
    "    async def read_head(self, key):\n        return Head(b'', -1)\n",
    "writeint": "class S(OnDisk):\n"
    "    async def write(self, key, payload, *, if_absent=False, if_version=None):\n"
    "        await super().write(key, payload, if_absent=if_absent, if_version=if_version)\n"
    "        return 42\n",
    "deletestr": "class S(OnDisk):\n    async def delete(self, key):\n        return 'done'\n",
    "statnegative": "class S(OnDisk):\n    async def stat(self, key):\n        return Stat(-5)\n",
    "cleanlist": "class S(OnDisk):\n"
    "    async def clean_abandoned(self, older_than, *, dry_run=False):\n"
    "        return [0, 0]\n",
}
for _scheme, _source in WRONG_RETURNS.items():
    PLUGINS[_scheme] = (f"bp_{_scheme}:S", WRONG + _source)
# Entry-point names that no storage URL can reach.
MISNAMED = {"MyScheme": "bp_upper:S", "my_scheme": "bp_underscore:S", "mine://": "bp_colon:S"}


def _distribution(site: Path, dist: str, entry_points: str) -> None:
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[resultstore.stores]\n{entry_points}\n")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where every plugin above is installed, each as its own distribution."""
    site = tmp_path_factory.mktemp("site")
    for scheme, (value, source) in PLUGINS.items():
        _distribution(site, f"bp-{scheme}", f"{scheme} = {value}")
        if source is not None:
            (site / f"{value.split(':')[0]}.py").write_text(textwrap.dedent(source))
    for name, value in MISNAMED.items():
        _distribution(site, f"bp-{value.split('_')[1][:-2]}", f"{name} = {value}")
        (site / f"{value.split(':')[0]}.py").write_text(HEADER + "class S(MemoryStore): pass\n")
    for n in (1, 2):  # two distributions claiming one scheme
        _distribution(site, f"bp-twin{n}", "twin = bp_v1:OldStore")
    return site


def _forget_plugins() -> None:
    plugins._installed_entry_points.cache_clear()
    plugins.discover.cache_clear()
    registry._store_class.cache_clear()


@pytest.fixture
def installed(site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The plugins visible to this process, as if pip had installed them."""
    monkeypatch.setattr(sys, "path", [str(site), *sys.path])
    _forget_plugins()
    yield site
    _forget_plugins()


def cli(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESULTSTORE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), *sys.path])
    return subprocess.run(
        [sys.executable, "-m", "resultstore.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def one_error_line(done: subprocess.CompletedProcess[str], code: int = 3) -> str:
    """The single ``error:`` line a failed command printed, checking nothing else came out."""
    assert done.returncode == code, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


REFUSED_AT_LOAD = [
    ("nomodule", ["bp-nomodule", "failed to import", "No module named 'bp_not_there'"]),
    ("importerror", ["bp-importerror", "No module named 'a_dependency_nobody_installed'"]),
    ("syntaxerror", ["bp-syntaxerror", "SyntaxError", "bp_syntaxerror.py, line 1"]),
    ("runtimeerror", ["bp-runtimeerror", "RuntimeError: no config file found"]),
    ("systemexit", ["bp-systemexit", "failed to import: SystemExit: 3"]),
    ("baseexc", ["bp-baseexc", "Abort: aborted at import"]),
    ("noattr", ["bp-noattr", "has no attribute 'Missing'"]),
    ("malformed", ["bp-malformed", "malformed value 'bp_malformed:A:B'"]),
    ("function", ["bp-function", "is the function make, not a resultstore.Store subclass"]),
    ("instance", ["bp-instance", "is an instance of MemoryStore", "module:Class"]),
    ("plainclass", ["bp-plainclass", "is the class Plain, not a resultstore.Store subclass"]),
    ("abstract", ["bp-abstract", "does not implement delete, list, open"]),
    ("noversion", ["bp-noversion", "declares no interface_version", "interface_version = 2"]),
    ("noversionv1", ["version 1's parameters", "set `interface_version = 1`"]),
    ("version0", ["bp-version0", "version 0", "speaks versions 1 to 2", "upgrade the plugin"]),
    ("version99", ["bp-version99", "version 99", "upgrade resultstore"]),
    ("versionstr", ["bp-versionstr", "interface_version = '2' (str)", "int literal"]),
    ("versionbool", ["bp-versionbool", "interface_version = True (bool)", "int literal"]),
    ("capyes", ["bp-capyes", "supports_conditional_write = 'yes'", "True or False"]),
    ("syncmethods", ["write(), open(), exists(), delete() with a plain `def`", "async def"]),
    ("listcoroutine", ["bp-listcoroutine", "list() as a coroutine", "async generator"]),
    ("v1signatures", ["interface_version = 2 but its write() takes no 'if_absent'"]),
    ("initnourl", ["bp-initnourl", "its __init__ takes no URL", "super().__init__(url)"]),
    ("twin", ["'twin' is claimed by bp-twin1", "bp-twin2", "uninstall one"]),
    ("nosuper", ["bp-nosuper", "without a url", "super().__init__(canonical_url)"]),
    ("initexit", ["failed to open 'initexit://somewhere/p': SystemExit: bye", "bp-initexit"]),
    ("initraise", ["ValueError: cannot parse initraise://somewhere/p", "bp-initraise"]),
    ("inittypeerror", ["failed to open", "TypeError: object of type 'int' has no len()"]),
    ("myscheme", ["bp-upper", "'MyScheme'", "rename it (e.g. 'myscheme')"]),
    ("my_scheme", ["bp-underscore", "'my_scheme'", "rename it (e.g. 'my-scheme')"]),
    ("mine", ["bp-colon", "'mine://'", "rename it (e.g. 'mine')"]),
]


@pytest.mark.parametrize(("scheme", "says"), REFUSED_AT_LOAD, ids=[c[0] for c in REFUSED_AT_LOAD])
def test_a_broken_plugin_is_one_plugin_error_in_code_and_on_the_command_line(
    installed: Path, scheme: str, says: list[str]
) -> None:
    url = f"{scheme}://somewhere/p"
    with pytest.raises(PluginError) as caught:
        ResultStore(url)
    message = str(caught.value)
    assert caught.value.reason is Reason.BAD_INPUT
    assert "\n" not in message
    for fragment in says:
        assert fragment in message

    line = one_error_line(cli(installed, "--storage", url, "ls"))
    assert line == f"error: {message}"


def test_a_missing_required_option_is_a_configuration_error_naming_it(installed: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        resolve_store("needsregion://somewhere/p")
    assert not isinstance(caught.value, PluginError)
    assert "'region'" in str(caught.value) and "RESULTSTORE_STORAGE_OPTIONS" in str(caught.value)
    assert resolve_store("needsregion://somewhere/p", region="eu").url == "memory://somewhere/p"

    with pytest.raises(ConfigurationError, match="unknown storage option 'regoin'"):
        resolve_store("needsregion://somewhere/p", regoin="eu")


def test_a_store_returning_bytes_from_open_names_the_plugin_and_the_contract(
    installed: Path, tmp_path: Path
) -> None:
    results = ResultStore(f"openbytes://{tmp_path}")
    results.write({"a": 1}, key="k")  # writing never looks at what open returns

    with pytest.raises(PluginError) as caught:
        results.read("k")
    message = str(caught.value)
    assert "\n" not in message and caught.value.key == "k"
    assert "store plugin bp-openbytes for scheme 'openbytes'" in message
    assert "returned bytes from open()" in message and "open() must return" in message
    assert "Reader" in message

    line = one_error_line(cli(installed, "--storage", f"openbytes://{tmp_path}", "get", "k"))
    assert "bp-openbytes" in line and "open() must return" in line


def test_a_listing_that_is_a_plain_list_names_the_plugin_and_the_contract(
    installed: Path, tmp_path: Path
) -> None:
    with pytest.raises(PluginError, match=r"bp-listlist .*list\(\) must return an async gen"):
        list(ResultStore(f"listlist://{tmp_path}").list())

    line = one_error_line(cli(installed, "--storage", f"listlist://{tmp_path}", "ls"))
    assert "returned list from list()" in line and "async generator" in line


def test_a_plugins_own_exception_stays_a_storage_error(installed: Path, tmp_path: Path) -> None:
    results = ResultStore(f"ownbug://{tmp_path}")
    results.write({"a": 1}, key="k")

    with pytest.raises(StorageError) as caught:  # the safety net: raised in the plugin's code
        results.read("k")
    assert "cannot read key 'k'" in str(caught.value) and "TypeError" in str(caught.value)

    line = one_error_line(cli(installed, "--storage", f"ownbug://{tmp_path}", "get", "k"), 4)
    assert "unsupported operand" in line


def test_a_plugin_bug_inside_a_library_it_calls_stays_its_own_storage_error(
    installed: Path, tmp_path: Path
) -> None:
    results = ResultStore(f"jsonbug://{tmp_path}")
    results.write({"a": 1}, key="k")
    with pytest.raises(StorageError) as caught:  # not "returned what the interface..."
        results.read("k")
    assert not isinstance(caught.value, PluginError)
    assert "cannot read key 'k'" in str(caught.value) and "JSON object must be" in str(caught.value)


def test_a_plugins_error_carries_no_password_of_the_url_it_was_given(installed: Path) -> None:
    url = "leaky://alice:S3CRET-pa%2Fss@db.example/x"
    with pytest.raises(PluginError) as caught:
        ResultStore(url)
    message = str(caught.value)
    assert "S3CRET" not in message and "pa/ss" not in message and "alice" not in message
    assert "cannot connect to leaky://db.example/x: password *** refused" in message
    assert caught.value.__cause__ is None  # the plugin's own exception holds the password
    line = one_error_line(cli(installed, "--storage", url, "ls"))
    assert "S3CRET" not in line and "leaky://db.example/x" in line


def test_a_version_1_plugin_still_works_through_the_adapter(
    installed: Path, tmp_path: Path
) -> None:
    results = ResultStore(f"v1://{tmp_path}")
    results.write({"rows": 3}, key="runs/1")

    assert results.read("runs/1").result == {"rows": 3}
    assert results.read_metadata("runs/1").size > 0  # a ranged read, from the start
    assert results.exists("runs/1")
    assert [m.storage_key for m in results.list("runs/")] == ["runs/1"]
    with pytest.raises(UnsupportedOperationError, match="implements store interface 1"):
        results.write({"rows": 4}, key="runs/1", if_absent=True)
    assert results.delete("runs/1") is True and not results.exists("runs/1")


def test_a_version_1_plugin_works_from_the_command_line(installed: Path, tmp_path: Path) -> None:
    url = f"v1://{tmp_path}"

    assert cli(installed, "--storage", url, "put", "k", "--json", '{"a": 1}').returncode == 0
    got = cli(installed, "--storage", url, "get", "k")
    assert (got.returncode, got.stdout.split()) == (0, ["{", '"a":', "1", "}"])
    line = one_error_line(
        cli(installed, "--storage", url, "put", "k", "--json", "2", "--if-absent")
    )
    assert "implements store interface 1; upgrade the plugin" in line


def _status(results: ResultStore, key: str) -> object:
    import asyncio

    return asyncio.run(results.store.stat(key))


# scheme: (what is done with the store, what the one line says)
WRONG_RETURN_CASES: list[tuple[str, Callable[[ResultStore], object], list[str]]] = [
    ("existsyes", lambda r: r.exists("k"), ["the str 'yes' from exists()", "a bool"]),
    (
        "existsnone",
        lambda r: r.exists("k"),
        ["returned None from exists()", "a bool (True or False)"],
    ),
    ("existsint", lambda r: r.exists("k"), ["the int 1 from exists()", "a bool"]),
    ("readstr", lambda r: r.read("k"), ["the str '{\"a\": 1}' from Reader.read()", "bytes"]),
    ("readlist", lambda r: r.read("k"), ["list from Reader.read() for key 'k'", "bytes"]),
    ("listbytes", lambda r: r.keys("runs/"), ["bytes from list() for prefix 'runs/'", "str"]),
    ("listint", lambda r: r.keys(), ["the int 7 from list()", "keys as str"]),
    ("listoutside", lambda r: r.keys("runs/"), ["'other/1' from list()", "under the prefix"]),
    ("pagestuple", lambda r: r.keys(), ["tuple from list_pages()", "non-empty lists"]),
    ("headtuple", lambda r: r.read_metadata("k"), ["tuple from read_head()", "a Head("]),
    ("headnegative", lambda r: r.read_metadata("k"), ["the int -1 from read_head()", ">= 0"]),
    ("writeint", lambda r: r.write(1, key="k"), ["the int 42 from write()", "a str, or None"]),
    ("deletestr", lambda r: r.delete("k"), ["'done' from delete()", "True, False or None"]),
    ("statnegative", lambda r: _status(r, "k"), ["the int -5 from stat()", "an int >= 0"]),
    ("cleanlist", lambda r: r.clean_abandoned(), ["list from clean_abandoned()", "(items, bytes)"]),
]


@pytest.mark.parametrize(
    ("scheme", "use", "says"), WRONG_RETURN_CASES, ids=[c[0] for c in WRONG_RETURN_CASES]
)
def test_a_store_returning_the_wrong_type_is_one_plugin_error_naming_it(
    installed: Path,
    tmp_path: Path,
    scheme: str,
    use: Callable[[ResultStore], object],
    says: list[str],
) -> None:
    ResultStore(str(tmp_path)).write(
        {"a": 1}, key="k"
    )  # a good record for the broken store to misread
    results = ResultStore(f"{scheme}://{tmp_path}")

    with pytest.raises(PluginError) as caught:
        use(results)
    message = str(caught.value)
    assert "\n" not in message and caught.value.reason is Reason.BAD_INPUT
    assert f"store plugin bp-{scheme} for scheme {scheme!r} (bp_{scheme}:S) returned" in message
    assert message.endswith("; fix the plugin")
    for fragment in says:
        assert fragment in message


def test_a_wrong_type_is_one_error_line_on_the_command_line(
    installed: Path, tmp_path: Path
) -> None:
    ResultStore(str(tmp_path)).write({"a": 1}, key="runs/1")

    line = one_error_line(cli(installed, "--storage", f"readstr://{tmp_path}", "get", "runs/1"))
    assert "bp-readstr" in line and "from Reader.read() for key 'runs/1'" in line
    line = one_error_line(cli(installed, "--storage", f"listbytes://{tmp_path}", "ls"))
    assert "returned bytes from list()" in line and "keys as str" in line


def test_a_checked_plugin_store_stays_the_plugins_own_object(
    installed: Path, tmp_path: Path
) -> None:
    import importlib

    store = resolve_store(f"existsyes://{tmp_path}")
    assert isinstance(store, importlib.import_module("bp_existsyes").S)
    assert store.root == tmp_path  # its own attributes, as the plugin set them
    assert repr(store) == f"S('file://{tmp_path}')"
