"""A loopback HTTP/1.1 proxy that injects network faults between an S3 client and a server.

``FaultProxy`` listens on ``127.0.0.1`` (a free port) and forwards to one upstream
address, normally the test SeaweedFS server's S3 port. It runs an asyncio loop on its
own thread, so the code under test may be sync or async.

Faults are decided **per request**, not per connection: botocore/aiohttp reuse
keep-alive connections, so a per-connection decision would hit only the first request
on each. The proxy therefore parses HTTP/1.1 just enough to find where each request and
response ends (``Content-Length``, ``Transfer-Encoding: chunked``, ``Expect:
100-continue``, bodiless ``HEAD``/1xx/204/304 responses). Clients do not pipeline, so
a connection is handled one request/response exchange at a time.

For each request, with probability ``fault_rate`` one fault is drawn from ``kinds``
(uniformly) using a seeded :class:`random.Random`; ``methods`` (e.g. ``{"GET"}``)
limits the faults to requests of those HTTP methods:

``reset_before``
    The connection is reset (``SO_LINGER`` 0, so the kernel sends RST) as soon as the
    request head arrives; nothing reaches the server.
``reset_mid``
    The request is forwarded and the server acts on it, but only the first half of
    the response bytes reach the client before the reset: the client cannot tell
    whether a write happened.
``stall``
    The request is read and never forwarded or answered; after ``stall_seconds``
    (set it above the client's read timeout) the connection is reset.
``http_500`` / ``http_503``
    The request head and body are read in full (answering ``100 Continue`` first if
    the client asked for it), nothing is forwarded, and the client gets a minimal
    valid response with an S3 XML error body (``InternalError`` /
    ``ServiceUnavailable``); the connection stays usable.

``strip_headers`` (e.g. ``{"if-none-match", "if-match"}``) makes the proxy play an
S3-compatible server that accepts conditional headers and ignores them: it removes those
request headers before forwarding, and, since S3 clients sign every header (SigV4), signs
the request again with ``resign=(access_key, secret_key, region)``. ``counts["stripped"]``
tallies the requests it changed. Only requests with a ``Content-Length`` body are changed.

The seed fixes the sequence of decisions; which request gets which decision still
depends on the order in which concurrent requests arrive. ``counts`` tallies the
faults injected by kind (plus ``requests``); ``fault_rate`` may be changed at any time
(0 turns the faults off). The proxy only ever connects to the configured upstream
host, which must be a loopback address, and :meth:`FaultProxy.stop` closes every
connection and joins the thread.

:class:`HostileServer` is the proxy's simpler sibling for the timeout tests: a loopback
server with no upstream that accepts connections and then never answers (``silent``) or
answers one byte every ``interval`` seconds (``trickle``), optionally after scripted
replies to the first lines (an FTP greeting and login, say).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

__all__ = ["FAULT_KINDS", "FaultProxy", "HostileServer", "point_s3_at"]

FAULT_KINDS = ("reset_before", "reset_mid", "stall", "http_500", "http_503")

_MAX_HEAD = 64 * 1024
_ERRORS = {
    "http_500": (500, "Internal Server Error", "InternalError", "Internal error."),
    "http_503": (503, "Service Unavailable", "ServiceUnavailable", "Please reduce your rate."),
}


class _Closed(Exception):
    """The peer closed the connection (or sent something unparseable)."""


@dataclass
class _Head:
    raw: bytes
    start_line: str
    headers: dict[str, str]

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        return None if value is None else int(value)

    @property
    def chunked(self) -> bool:
        return "chunked" in self.headers.get("transfer-encoding", "").lower()

    @property
    def wants_close(self) -> bool:
        return self.headers.get("connection", "").lower() == "close"


async def _read_head(reader: asyncio.StreamReader) -> _Head:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as exc:
        raise _Closed from exc
    lines = raw.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return _Head(raw, lines[0], headers)


async def _read_exactly(reader: asyncio.StreamReader, n: int) -> bytes:
    try:
        return await reader.readexactly(n)
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise _Closed from exc


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    """A chunked body, raw (size lines, data and trailers included)."""
    parts: list[bytes] = []
    try:
        while True:
            line = await reader.readuntil(b"\r\n")
            parts.append(line)
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while True:  # trailers, up to the empty line
                    trailer = await reader.readuntil(b"\r\n")
                    parts.append(trailer)
                    if trailer == b"\r\n":
                        return b"".join(parts)
            parts.append(await reader.readexactly(size + 2))
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as exc:
        raise _Closed from exc
    except ValueError as exc:
        raise _Closed from exc


async def _read_body(reader: asyncio.StreamReader, head: _Head) -> bytes:
    if head.chunked:
        return await _read_chunked(reader)
    return await _read_exactly(reader, head.content_length or 0)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _flush(writer: asyncio.StreamWriter) -> None:
    """Wait until the kernel has taken everything written so far."""
    await writer.drain()
    for _ in range(200):
        if writer.transport.get_write_buffer_size() == 0:
            break
        await asyncio.sleep(0.005)


def _error_response(kind: str, head: _Head) -> bytes:
    status, reason, code, message = _ERRORS[kind]
    target = head.start_line.split(" ")[1] if " " in head.start_line else "/"
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>{target}</Resource><RequestId>faultproxy</RequestId></Error>"
    ).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\n"
        "x-amz-request-id: faultproxy\r\n"
        "\r\n"
    ).encode() + body


class _Upstream:
    """The server side of one client connection, (re)opened when needed."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if (
            self.reader is None
            or self.writer is None
            or self.writer.is_closing()
            or self.reader.at_eof()
        ):
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self.reader, self.writer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
        self.reader = self.writer = None


class FaultProxy:
    """See the module docstring. Use as a context manager, or call start() and stop()."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        fault_rate: float = 0.0,
        kinds: Sequence[str] = FAULT_KINDS,
        stall_seconds: float = 3.0,
        methods: Collection[str] = (),
        seed: int = 0,
        strip_headers: Collection[str] = (),
        resign: tuple[str, str, str] | None = None,
    ) -> None:
        if not ipaddress.ip_address(socket.gethostbyname(upstream_host)).is_loopback:
            raise ValueError(f"FaultProxy only forwards to loopback, not {upstream_host!r}")
        unknown = set(kinds) - set(FAULT_KINDS)
        if unknown or not kinds:
            raise ValueError(f"unknown or no fault kinds: {sorted(unknown)}")
        self.upstream = (upstream_host, upstream_port)
        self.fault_rate = fault_rate
        self.kinds = tuple(kinds)
        self.stall_seconds = stall_seconds
        self.methods = frozenset(methods)
        self.strip_headers = frozenset(name.lower() for name in strip_headers)
        if self.strip_headers and resign is None:
            raise ValueError("strip_headers needs resign=(access_key, secret_key, region)")
        self.resign = resign
        self._rng = random.Random(seed)
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def counts(self) -> dict[str, int]:
        """Faults injected so far by kind (every kind listed), and ``requests`` seen."""
        with self._lock:
            return {kind: self._counts[kind] for kind in (*FAULT_KINDS, "requests", "stripped")}

    @property
    def faults(self) -> int:
        """The number of faults injected so far."""
        counts = self.counts
        return sum(counts[kind] for kind in FAULT_KINDS)

    def _decide(self, method: str) -> str | None:
        with self._lock:
            self._counts["requests"] += 1
            if self.methods and method not in self.methods:
                return None
            if self._rng.random() >= self.fault_rate:
                return None
            kind = self._rng.choice(self.kinds)
            self._counts[kind] += 1
            return kind

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> FaultProxy:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._serve, "127.0.0.1", 0, limit=_MAX_HEAD)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._shutdown())
                loop.close()

        self._thread = threading.Thread(target=run, name="faultproxy", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    async def _shutdown(self) -> None:
        """End every connection's task before the loop closes, those not started yet too.

        A connection accepted just before the listener closed has a task that has not
        run yet, so it is in no set to cancel: it runs, sees ``_closing`` and ends. A
        task left pending would be destroyed with the loop, raising in its ``finally``.
        """
        self._closing = True
        if self._server is not None:
            self._server.close()
        current = asyncio.current_task()
        while others := [task for task in asyncio.all_tasks() if task is not current]:
            for task in others:
                if task in self._tasks:  # started: may wait forever on its client
                    task.cancel()
            await asyncio.wait(others)
        if self._server is not None:
            await self._server.wait_closed()

    def stop(self) -> None:
        """Close the listener and every connection, and join the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join(15)
        self._loop = self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- one client connection -------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing:  # accepted as stop() began: see _shutdown
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream = _Upstream(*self.upstream)
        try:
            while await self._exchange(reader, writer, upstream):
                pass
        except (_Closed, ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            pass  # stop(): end quietly (a cancelled server task is logged as an error)
        finally:
            self._tasks.discard(task)
            upstream.close()
            writer.transport.abort()

    async def _exchange(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: _Upstream,
    ) -> bool:
        """Handle one request; False when the client connection is done."""
        request = await _read_head(reader)
        expects_continue = request.headers.get("expect", "").lower() == "100-continue"
        fault = self._decide(request.start_line.split(" ", 1)[0])

        if fault == "reset_before":
            _reset(writer)
            return False
        if fault == "stall":
            await asyncio.sleep(self.stall_seconds)
            _reset(writer)
            return False
        if fault in _ERRORS:
            if expects_continue:
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await _read_body(reader, request)
            writer.write(_error_response(fault, request))
            await writer.drain()
            return not request.wants_close

        if self.strip_headers.intersection(request.headers) and not request.chunked:
            if expects_continue:  # answered here: the changed request goes whole
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await _read_body(reader, request)
            request = self._stripped(request, body)
            with self._lock:
                self._counts["stripped"] += 1
            up_reader, up_writer = await upstream.connect()
            up_writer.write(request.raw + body)
            await up_writer.drain()
            response = await _read_head(up_reader)
            keep = await self._relay_response(request, response, up_reader, writer, fault)
            if not keep:
                upstream.close()
            return keep and not request.wants_close

        up_reader, up_writer = await upstream.connect()
        up_writer.write(request.raw)
        if expects_continue:
            interim = await _read_head(up_reader)
            if interim.start_line.split(" ")[1:2] != ["100"]:
                # A final answer instead of 100 Continue: relay it; the body is never sent.
                await self._relay_response(request, interim, up_reader, writer, fault)
                return False
            writer.write(interim.raw)
        up_writer.write(await _read_body(reader, request))
        await up_writer.drain()
        response = await _read_head(up_reader)
        keep = await self._relay_response(request, response, up_reader, writer, fault)
        if not keep:
            upstream.close()
        return keep and not request.wants_close

    def _stripped(self, request: _Head, body: bytes) -> _Head:
        """``request`` without the headers to strip (and ``Expect``), signed again."""
        assert self.resign is not None
        from botocore.auth import S3SigV4Auth  # type: ignore[import-untyped]
        from botocore.awsrequest import AWSRequest  # type: ignore[import-untyped]
        from botocore.credentials import Credentials  # type: ignore[import-untyped]

        class _KeepPayloadHash(S3SigV4Auth):  # type: ignore[misc]
            def payload(self, req: Any) -> str:
                return str(request.headers.get("x-amz-content-sha256") or super().payload(req))

        method, target, version = request.start_line.split(" ", 2)
        dropped = self.strip_headers | {"expect", "authorization", "x-amz-date"}
        headers = {k: v for k, v in request.headers.items() if k not in dropped}
        signed = AWSRequest(
            method=method, url=f"http://{headers['host']}{target}", data=body, headers=headers
        )
        access_key, secret_key, region = self.resign
        _KeepPayloadHash(Credentials(access_key, secret_key), "s3", region).add_auth(signed)
        lines = [f"{method} {target} {version}"]
        lines += [f"{name}: {value}" for name, value in signed.headers.items()]
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return _Head(raw, lines[0], {k.lower(): v for k, v in signed.headers.items()})

    async def _relay_response(
        self,
        request: _Head,
        response: _Head,
        up_reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        fault: str | None,
    ) -> bool:
        """Send the response to the client (half of it under ``reset_mid``)."""
        status = response.start_line.split(" ")[1:2]
        bodiless = request.start_line.startswith("HEAD ") or status in (["204"], ["304"])
        until_close = False
        if bodiless:
            body = b""
        elif response.chunked or response.content_length is not None:
            body = await _read_body(up_reader, response)
        else:  # delimited by the server closing the connection
            body = await up_reader.read()
            until_close = True
        data = response.raw + body
        if fault == "reset_mid":
            writer.write(data[: len(data) // 2])
            await _flush(writer)
            await asyncio.sleep(0.01)
            _reset(writer)
            return False
        writer.write(data)
        await writer.drain()
        return not (until_close or response.wants_close)


class HostileServer:
    """A loopback server that accepts connections, then stalls or trickles (module docstring).

    ``silent``: reads whatever arrives and never sends a byte. ``trickle``: sends
    ``trickle`` (by default the start of an HTTP response whose header never ends), then
    ``b"a"``, one byte every ``interval`` seconds, so a client's idle timeout never fires.
    ``greeting`` is sent on accept; a line starting with a key of ``replies`` is answered
    with its value, and the first other line starts the misbehaviour. Every connection
    ends after ``max_seconds`` or at :meth:`stop`.
    """

    def __init__(
        self,
        mode: str = "silent",
        *,
        interval: float = 0.3,
        greeting: bytes = b"",
        replies: Mapping[bytes, bytes] | None = None,
        trickle: bytes = b"HTTP/1.1 200 OK\r\nX-Trickle: ",
        max_seconds: float = 300.0,
    ) -> None:
        if mode not in ("silent", "trickle"):
            raise ValueError(f"mode must be 'silent' or 'trickle', not {mode!r}")
        self.mode = mode
        self.interval = interval
        self.greeting = greeting
        self.replies = dict(replies or {})
        self.trickle = trickle
        self.max_seconds = max_seconds
        self.connections = 0
        self.sent = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HostileServer:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(
                asyncio.start_server(self._serve, "127.0.0.1", 0, limit=_MAX_HEAD)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._shutdown())
                loop.close()

        self._thread = threading.Thread(target=run, name="hostileserver", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the hostile server did not start")
        return self

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def stop(self) -> None:
        """Close the listener and every connection, and join the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
        thread.join(15)
        self._loop = self._thread = None

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            await asyncio.wait_for(self._misbehave(reader, writer), self.max_seconds)
        except (asyncio.TimeoutError, asyncio.CancelledError, ConnectionError, OSError):
            pass
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def _misbehave(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.greeting:
            writer.write(self.greeting)
            await writer.drain()
        while True:  # scripted replies, up to the first line without one
            line = await reader.readline()
            if not line:
                return
            reply = next((r for p, r in self.replies.items() if line.startswith(p)), None)
            if reply is None:
                break
            writer.write(reply)
            await writer.drain()
        drain = asyncio.ensure_future(_discard(reader))
        try:
            if self.mode == "silent":
                await drain
                return
            payload = self.trickle
            while not drain.done():
                writer.write(payload[:1] or b"a")
                payload = payload[1:]
                self.sent += 1
                await writer.drain()
                await asyncio.sleep(self.interval)
        finally:
            drain.cancel()


async def _discard(reader: asyncio.StreamReader) -> None:
    """Read and drop everything until the peer closes."""
    while await reader.read(65536):
        pass


def point_s3_at(monkeypatch: Any, endpoint: str) -> None:
    """The AWS environment of both S3 stores (``monkeypatch``: pytest's), aimed at
    ``endpoint``: a hostile server's URL, say."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "hostile-test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hostile-test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
