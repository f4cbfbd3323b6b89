"""An S3 endpoint's listing answers are untrusted: pages must move the listing on.

A scripted loopback endpoint (:class:`ScriptedListings`) answers every ListObjectsV2
and ListMultipartUploads request from a script, the way a broken or hostile server
might: the same page for ever under fresh tokens, the same token again, a truncated
page with no token, names outside the prefix asked for. Each listing must fail at once
with one line naming the store, the endpoint and what was wrong, never loop until the
timeout (or for ever), and never hand back keys that are not the store's.
The real-server side (SeaweedFS lists folder by folder, not in byte order, and that is
accepted) is in ``tests/resultstore/test_s3_store.py``.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from faultproxy import point_s3_at
from resultstore import ResultStore, StorageError

SCHEMES = ("s3", "s3+obstore")
TIMEOUT = 20.0  # each check must fail long before this
Page = tuple[list[str], str | None]  # the keys of a page, and its continuation token


class ScriptedListings:
    """A loopback "S3 endpoint" whose listing pages come from ``script(n, query)``.

    ``script`` gets the request's number (from 0) and its query, and returns the page's
    object names and its next token (None: the last page). Every other request gets 404.
    """

    def __init__(self, script: Callable[[int, dict[str, str]], Page], uploads: bool = False):
        self.requests = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query, True).items()}
                if "list-type" not in query and "uploads" not in query:
                    self._send(404, b"")
                    return
                names, token = script(owner.requests, query)
                owner.requests += 1
                self._send(
                    200, (owner._uploads if "uploads" in query else owner._objects)(names, token)
                )

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_HEAD = do_GET

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @staticmethod
    def _objects(names: list[str], token: str | None) -> bytes:
        contents = "".join(
            f"<Contents><Key>{name}</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified>"
            f'<ETag>"d41d8cd98f00b204e9800998ecf8427e"</ETag><Size>0</Size></Contents>'
            for name in names
        )
        more = f"<NextContinuationToken>{token}</NextContinuationToken>" if token else ""
        return (
            '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult '
            'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>bkt</Name>'
            f"<KeyCount>{len(names)}</KeyCount><MaxKeys>1000</MaxKeys>"
            f"<IsTruncated>{'true' if token is not None else 'false'}</IsTruncated>"
            f"{contents}{more}</ListBucketResult>"
        ).encode()

    @staticmethod
    def _uploads(names: list[str], token: str | None) -> bytes:
        uploads = "".join(
            f"<Upload><Key>{name}</Key><UploadId>u-{name}</UploadId>"
            "<Initiated>2099-01-01T00:00:00.000Z</Initiated></Upload>"
            for name in names
        )
        more = (
            f"<NextKeyMarker>{token}</NextKeyMarker><NextUploadIdMarker>u</NextUploadIdMarker>"
            if token
            else ""
        )
        return (
            '<?xml version="1.0" encoding="UTF-8"?><ListMultipartUploadsResult '
            'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Bucket>bkt</Bucket>'
            f"<IsTruncated>{'true' if token is not None else 'false'}</IsTruncated>"
            f"{more}{uploads}</ListMultipartUploadsResult>"
        ).encode()

    def __enter__(self) -> ScriptedListings:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., ScriptedListings]]:
    servers: list[ScriptedListings] = []

    def start(script: Callable[[int, dict[str, str]], Page]) -> ScriptedListings:
        server = ScriptedListings(script).__enter__()
        servers.append(server)
        point_s3_at(monkeypatch, server.url)
        return server

    yield start
    for server in servers:
        server.__exit__()


def _refused(action: Callable[[], object], store: ResultStore, *says: str) -> str:
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        action()
    assert time.monotonic() - started < TIMEOUT / 2  # refused, not timed out
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("cannot list key ") and store.storage_url in message
    assert "answered a listing wrongly" in message
    for words in says:
        assert words in message
    return message


# 1,000 names a page: obstore hands a listing to Python 1,000 objects at a time.
PAGE = [f"p/runs/{i:04d}" for i in range(1000)]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_same_page_again_under_a_fresh_token_is_refused(
    scheme: str, scripted: Callable[..., ScriptedListings]
) -> None:
    server = scripted(lambda n, query: (PAGE, f"token-{n}"))
    store = ResultStore(f"{scheme}://bkt/p", timeout=TIMEOUT)
    _refused(store.keys, store, "'runs/0000'" if scheme == "s3+obstore" else "'p/runs/0000'")
    assert server.requests == 2  # the second page gave it away


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_page_that_goes_back_is_refused(
    scheme: str, scripted: Callable[..., ScriptedListings]
) -> None:
    pages = [PAGE[500:] + [f"p/runs/x{i:04d}" for i in range(500)], PAGE[:1000]]
    scripted(lambda n, query: (pages[n % 2], f"token-{n}"))
    store = ResultStore(f"{scheme}://bkt/p", timeout=TIMEOUT)
    _refused(lambda: store.keys("runs/"), store, "again or out of order")


def test_the_same_token_twice_is_refused(scripted: Callable[..., ScriptedListings]) -> None:
    # Empty pages, so no key repeats: only the token shows the listing is not moving.
    server = scripted(lambda n, query: ([], "always-the-same"))
    store = ResultStore("s3://bkt/p", timeout=TIMEOUT)
    _refused(store.keys, store, "the same page marker twice")
    assert server.requests == 2


def test_a_truncated_page_without_a_token_is_refused_not_taken_as_the_end(
    scripted: Callable[..., ScriptedListings],
) -> None:
    scripted(lambda n, query: (["p/a"], ""))
    store = ResultStore("s3://bkt/p", timeout=TIMEOUT)
    _refused(store.keys, store, "without the marker to go on from")


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("name", ["other/secret", "p/elsewhere/x", "p/runsx"])
def test_a_name_outside_the_prefix_asked_for_is_refused(
    scheme: str, name: str, scripted: Callable[..., ScriptedListings]
) -> None:
    scripted(lambda n, query: (["p/runs/a", name], None))
    store = ResultStore(f"{scheme}://bkt/p", timeout=TIMEOUT)
    message = _refused(lambda: store.keys("runs/"), store, "outside the prefix")
    assert name.removeprefix("p/") in message


def test_gc_of_a_repeating_upload_listing_is_refused(
    scripted: Callable[..., ScriptedListings],
) -> None:
    server = scripted(lambda n, query: (["p/a"], "p/a"))
    store = ResultStore("s3://bkt/p", timeout=TIMEOUT)
    message = _refused(store.clean_abandoned, store, "the same page marker twice")
    assert message.startswith("cannot list key '*'")
    assert server.requests == 2


def test_an_honest_scripted_listing_is_taken_whole(
    scripted: Callable[..., ScriptedListings],
) -> None:
    """The control: three pages in folder order (as SeaweedFS lists) are all listed."""
    pages = [(["p/a/b/c", "p/a b/c"], "t1"), (["p/a-c", "p/a.x/y"], "t2"), (["p/b"], None)]
    server = scripted(lambda n, query: pages[n])
    store = ResultStore("s3://bkt/p", timeout=TIMEOUT)
    assert store.keys() == sorted(["a/b/c", "a b/c", "a-c", "a.x/y", "b"])
    assert server.requests == 3


class _Store:
    """What :class:`ListingProgress` reads of its store: the URL and endpoint it names."""

    url = "s3://bkt/p"
    endpoint = "http://127.0.0.1:1"


_NAMES = st.lists(
    st.text(alphabet="ab/ -.é", min_size=1, max_size=8).filter(lambda k: "//" not in k),
    min_size=1,
    max_size=40,
    unique=True,
)


@settings(max_examples=300, deadline=None)
@given(names=_NAMES, folder_order=st.booleans(), page=st.integers(1, 7))
def test_any_honest_order_is_taken_and_a_page_repeated_for_ever_is_not(
    names: list[str], folder_order: bool, page: int
) -> None:
    from resultstore.stores._s3common import ListingProgress

    names = sorted(names, key=(lambda n: n.split("/")) if folder_order else None)
    pages = [[f"p/{n}" for n in names[i : i + page]] for i in range(0, len(names), page)]
    progress = ListingProgress(_Store(), "p/", "", None)  # type: ignore[arg-type]
    assert [key for part in pages for key in progress.keys(part)] == names
    with pytest.raises(StorageError, match="again or out of order"):
        for _ in range(3):  # the last page again: refused at once, or on its next repeat
            progress.keys(pages[-1])


def test_an_object_listed_without_a_name_is_refused() -> None:
    from resultstore.stores._s3common import ListingProgress

    progress = ListingProgress(_Store(), "p/", "", None)  # type: ignore[arg-type]
    with pytest.raises(StorageError, match="it listed an object named by a NoneType"):
        progress.keys(["p/a", None])
