"""A fault-injecting HTTP/1.1 proxy in front of a registry (tests of retries and timeouts).

`FaultProxy(upstream)` listens on 127.0.0.1 on a free port (kept across `stop()`/`start()`,
so a test can take "the registry" down and bring it back at the same address) and forwards
every request to `upstream` (`host:port`), one upstream connection per client connection,
keep-alive and message framing (Content-Length, chunked, HEAD, 1xx/204/304) understood, so
faults apply per request, not per connection. It runs its own asyncio loop in a background
thread: synchronous tests, async tests and other processes (CRI-O, the agent) can all use it.

Faults are chosen per request by regex on the path (and optionally the method); the first
matching fault with hits left applies:

    proxy = FaultProxy(registry.host); proxy.start()
    proxy.set_fault("status", match=BLOBS, status=500, count=2)     # 2 x HTTP 500 on blob GETs
    proxy.set_fault("status", match=MANIFESTS, status=429, retry_after=1, count=5)
    proxy.set_fault("reset", match=BLOBS, count=1)                  # RST before any answer
    proxy.set_fault("reset", match=BLOBS, after_bytes=64 << 10)     # RST after 64 KiB of body
    proxy.set_fault("stall", match=BLOBS, seconds=30)               # hold, then pass through
    proxy.set_fault("slow", match=BLOBS, bytes_per_second=256 << 10)  # trickle the body
    proxy.count(BLOBS, method="GET")                                # requests seen so far

Kinds: `pass` (forward as is; useful to shield some paths from a broader fault), `reset`
(close with SO_LINGER 0 -> TCP RST; with `after_bytes`, after that many body bytes),
`stall` (hold the request `seconds`, then forward it, or with `then="reset"` reset it),
`status` (answer `status` itself with a registry-style JSON error body, `Retry-After` when
`retry_after` is given, `WWW-Authenticate` for 401), `slow` (forward, the response body at
`bytes_per_second` in `chunk_bytes` pieces). `count=None` means every matching request.

When the upstream cannot be reached the client connection is reset (as a dead registry
behind a load balancer looks). Nothing listens beyond 127.0.0.1; every wait is bounded.

`FaultProxy(upstream, link=Link(rate))` makes the proxy a slow site link (devenv/link.py):
every response body crosses the link's shared rate cap and byte counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from devenv.link import Link

log = logging.getLogger(__name__)

BLOBS = r"^/v2/.+/blobs/sha256:[0-9a-f]{64}$"
"""Path pattern of blob requests (layers and configs)."""
MANIFESTS = r"^/v2/.+/manifests/[^/]+$"
"""Path pattern of manifest requests."""

KINDS = ("pass", "reset", "stall", "status", "slow")
HEAD_LIMIT = 64 * 1024
"""Largest request or response head (bytes) accepted."""
IO_TIMEOUT = 60.0
"""Seconds any single read or write may take before the exchange is dropped."""
IDLE_TIMEOUT = 120.0
"""Seconds a client connection may sit idle between requests before the proxy closes it."""
START_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0
_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable", 504: "Gateway Timeout"}
_ERROR_CODES = {401: ("UNAUTHORIZED", "authentication required"), 403: ("DENIED", "requested access to the resource is denied"),
                404: ("MANIFEST_UNKNOWN", "manifest unknown"), 429: ("TOOMANYREQUESTS", "too many requests")}


class FaultProxyError(RuntimeError):
    """The proxy could not start or is used in the wrong state."""


@dataclass
class Fault:
    """One switchable fault; `hits` counts the requests it applied to."""

    kind: str
    match: re.Pattern[str]
    method: str | None = None
    count: int | None = None
    seconds: float = 0.0
    then: str = "pass"
    status: int = 500
    retry_after: float | str | None = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    bytes_per_second: float = 64 * 1024
    chunk_bytes: int = 4096
    after_bytes: int | None = None
    hits: int = 0

    def applies(self, method: str, path: str) -> bool:
        if self.count is not None and self.hits >= self.count:
            return False
        if self.method is not None and self.method.upper() != method:
            return False
        return bool(self.match.search(path))

    @property
    def exhausted(self) -> bool:
        return self.count is not None and self.hits >= self.count


@dataclass
class Request:
    """One request the proxy saw: what it did with it and how it ended."""

    method: str
    path: str
    fault: str
    """The fault kind applied, `pass` for none."""
    started: float
    """time.monotonic() when the request head arrived."""
    range: str | None = None
    """The request's Range header (a client resuming a body)."""
    finished: float | None = None
    status: int | None = None
    """Status sent to the client (None: reset or dropped before an answer)."""
    body_bytes: int = 0
    """Response body bytes sent to the client."""
    outcome: str = "open"
    """`done`, `reset`, `client gone`, `upstream error: ...` or `open` (in flight)."""


class _Reset(Exception):
    """Reset the client connection now."""


class FaultProxy:
    """See the module docstring."""

    def __init__(self, upstream: str, *, port: int | None = None, link: Link | None = None) -> None:
        host, _, port_text = upstream.rpartition(":")
        if not host or not port_text.isdigit():
            raise FaultProxyError(f"upstream must be host:port, got {upstream!r}")
        self.upstream = upstream
        self.link = link
        self._upstream_addr = (host, int(port_text))
        self._port = port
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._requests: list[Request] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task] = set()

    # -- address ----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise FaultProxyError("the proxy was never started; no port yet")
        return self._port

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`, the registry part of image references pulled through the proxy."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def ref(self, reference: str) -> str:
        """`reference` (`host:port/repo@digest` of the upstream) with the proxy as its host."""
        host, sep, rest = reference.partition("/")
        if not sep or host != self.upstream:
            raise FaultProxyError(f"{reference!r} does not name upstream {self.upstream}")
        return f"{self.host}/{rest}"

    @property
    def running(self) -> bool:
        return self._server is not None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Listen on 127.0.0.1 (the same port as before after a `stop()`)."""
        if self.running:
            raise FaultProxyError(f"proxy at {self.host} is already running")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=f"faultproxy->{self.upstream}", daemon=True)
        thread.start()
        try:
            future = asyncio.run_coroutine_threadsafe(self._listen(), loop)
            self._server = future.result(START_TIMEOUT)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(STOP_TIMEOUT)
            loop.close()
            raise
        self._loop, self._thread = loop, thread
        log.info("fault proxy %s -> %s", self.host, self.upstream)

    async def _listen(self) -> asyncio.AbstractServer:
        server = await asyncio.start_server(self._handle, "127.0.0.1", self._port or 0,
                                            reuse_address=True, limit=HEAD_LIMIT)
        self._port = server.sockets[0].getsockname()[1]
        return server

    def stop(self) -> None:
        """Stop listening and drop every connection (clients see resets). Idempotent."""
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(server), loop).result(STOP_TIMEOUT)
        except Exception:  # noqa: BLE001 - stopping must not fail a test's cleanup
            log.exception("fault proxy %s: unclean shutdown", self.host)
        loop.call_soon_threadsafe(loop.stop)
        assert self._thread is not None
        self._thread.join(STOP_TIMEOUT)
        if not self._thread.is_alive():
            loop.close()
        self._loop = self._server = self._thread = None

    async def _shutdown(self, server: asyncio.AbstractServer) -> None:
        server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=STOP_TIMEOUT)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), STOP_TIMEOUT)

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults and counters -------------------------------------------------------------------

    def set_fault(self, kind: str, *, match: str = "", count: int | None = None,
                  method: str | None = None, **params: object) -> Fault:
        """Adds a fault (after those already set) and returns it; see the module docstring."""
        if kind not in KINDS:
            raise ValueError(f"fault kind {kind!r} is not one of {', '.join(KINDS)}")
        if count is not None and count < 1:
            raise ValueError(f"count must be >= 1 or None, got {count}")
        fault = Fault(kind, re.compile(match), method=method, count=count, **params)  # type: ignore[arg-type]
        if fault.kind == "slow" and fault.bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be > 0")
        if fault.then not in ("pass", "reset"):
            raise ValueError(f"then must be pass or reset, got {fault.then!r}")
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset_counters(self) -> None:
        with self._lock:
            self._requests.clear()

    @property
    def requests(self) -> list[Request]:
        """A copy of every request seen since the last `reset_counters()`."""
        with self._lock:
            return [Request(**r.__dict__) for r in self._requests]

    def count(self, match: str = "", *, method: str | None = None, fault: str | None = None) -> int:
        """Requests seen whose path matches `match` (and method, and fault kind applied)."""
        pattern = re.compile(match)
        return sum(1 for r in self.requests if pattern.search(r.path)
                   and (method is None or r.method == method.upper())
                   and (fault is None or r.fault == fault))

    def wait_for(self, predicate: Callable[[list[Request]], bool], timeout: float) -> bool:
        """Polls the request log until `predicate(requests)` holds; False after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self.requests):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def _pick(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.applies(method, path):
                    fault.hits += 1
                    return fault
        return None

    def _record(self, method: str, path: str, fault: str, range_: str | None) -> Request:
        record = Request(method, path, fault, time.monotonic(), range=range_)
        with self._lock:
            self._requests.append(record)
        return record

    def _update(self, record: Request, **changes: object) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(record, key, value)

    # -- one client connection ------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        record: Request | None = None
        try:
            while True:
                try:
                    first = await asyncio.wait_for(reader.readexactly(1), IDLE_TIMEOUT)
                except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
                    return
                if not first.isalpha():
                    # Not HTTP: a TLS ClientHello (0x16) from a client that tries https first
                    # on an insecure registry. Answer at once as Go's http server does, so it
                    # falls back to plain HTTP instead of waiting for its handshake timeout.
                    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    with contextlib.suppress(ConnectionError):
                        await _drain(writer)
                    return
                try:
                    head = first + await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, TimeoutError):
                    return
                method, target, version, headers = _parse_head(head, request=True)
                path = target.split("?", 1)[0]
                body = await _read_body(reader, headers, method=method, request=True)
                fault = self._pick(method, path)
                record = self._record(method, path, fault.kind if fault else "pass", _header(headers, "range"))
                keep = _keep_alive(version, headers)
                if fault is not None and fault.kind == "reset" and fault.after_bytes is None:
                    raise _Reset()
                if fault is not None and fault.kind == "stall":
                    await asyncio.sleep(fault.seconds)
                    if fault.then == "reset":
                        raise _Reset()
                if fault is not None and fault.kind == "status":
                    await self._answer(writer, record, fault, method, keep)
                else:
                    upstream, keep = await self._forward(reader, writer, upstream, record, fault,
                                                         head, method, headers, body, keep)
                self._update(record, finished=time.monotonic(), outcome="done")
                record = None
                if not keep:
                    return
        except _Reset:
            if record is not None:
                self._update(record, finished=time.monotonic(), outcome="reset")
            _reset(writer)
        except _UpstreamError as e:
            if record is not None:
                self._update(record, finished=time.monotonic(), outcome=f"upstream error: {e}")
            _reset(writer)
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            if record is not None:
                self._update(record, finished=time.monotonic(), outcome=f"client gone: {type(e).__name__}")
        except asyncio.CancelledError:
            if record is not None:
                self._update(record, finished=time.monotonic(), outcome="proxy stopped")
            _reset(writer)
            # Not re-raised: only stop() cancels handlers, and asyncio's stream callback
            # would log a cancelled handler task as an error.
        except Exception as e:  # noqa: BLE001 - one bad exchange must not stop the proxy
            log.exception("fault proxy %s: exchange failed", self._port)
            if record is not None:
                self._update(record, finished=time.monotonic(), outcome=f"proxy error: {e!r}")
            _reset(writer)
        finally:
            if upstream is not None:
                upstream[1].close()
            if not writer.is_closing():
                writer.close()
            self._handlers.discard(task)

    async def _answer(self, writer: asyncio.StreamWriter, record: Request, fault: Fault,
                      method: str, keep: bool) -> None:
        status = fault.status
        body = fault.body
        if body is None:
            code, message = _ERROR_CODES.get(status, ("UNKNOWN", _REASONS.get(status, "error").lower()))
            body = json.dumps({"errors": [{"code": code, "message": f"{message} (fault proxy)",
                                           "detail": None}]}).encode()
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
                 "Content-Type: application/json; charset=utf-8",
                 f"Content-Length: {len(body)}",
                 "Docker-Distribution-Api-Version: registry/2.0"]
        if fault.retry_after is not None:
            value = fault.retry_after
            lines.append(f"Retry-After: {value:g}" if isinstance(value, (int, float)) else f"Retry-After: {value}")
        if status == 401 and not any(k.lower() == "www-authenticate" for k in fault.headers):
            lines.append('WWW-Authenticate: Basic realm="faultproxy"')
        lines += [f"{k}: {v}" for k, v in fault.headers.items()]
        if not keep:
            lines.append("Connection: close")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if method != "HEAD":
            writer.write(body)
        await _drain(writer)
        self._update(record, status=status, body_bytes=0 if method == "HEAD" else len(body))

    async def _forward(self, reader, writer, upstream, record: Request, fault: Fault | None,
                       head: bytes, method: str, headers: list[tuple[str, str]], body: bytes,
                       keep: bool):
        """Forwards one request and streams the answer back; returns (upstream, keep)."""
        for attempt in (1, 2):
            if upstream is None:
                upstream = await self._connect()
            up_reader, up_writer = upstream
            try:
                up_writer.write(head + body)
                await _drain(up_writer)
                response_head = await asyncio.wait_for(up_reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
                break
            except (ConnectionError, asyncio.IncompleteReadError) as e:
                # A kept-alive upstream connection the registry closed meanwhile: one new try.
                up_writer.close()
                upstream = None
                if attempt == 2:
                    raise _UpstreamError(f"{type(e).__name__}: {e}") from e
            except (TimeoutError, asyncio.LimitOverrunError) as e:
                up_writer.close()
                raise _UpstreamError(f"{type(e).__name__}: {e}") from e
        while True:
            version, status, _, response_headers = _parse_head(response_head, request=False)
            writer.write(response_head)
            await _drain(writer)
            if not 100 <= int(status) < 200 or int(status) == 101:
                break
            response_head = await asyncio.wait_for(up_reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
        status_code = int(status)
        self._update(record, status=status_code)
        sent = 0
        async for piece in _body_pieces(up_reader, response_headers, method=method, status=status_code):
            pieces = [piece]
            if fault is not None and fault.kind == "slow":
                pieces = [piece[i:i + fault.chunk_bytes] for i in range(0, len(piece), fault.chunk_bytes)]
            if self.link is not None:
                pieces = [small for part in pieces for small in self.link.pieces(part)]
            for part in pieces:
                if fault is not None and fault.kind == "reset" and fault.after_bytes is not None:
                    room = fault.after_bytes - sent
                    if room <= 0:
                        raise _Reset()
                    part = part[:room]
                if self.link is not None:
                    await self.link.send(len(part))
                writer.write(part)
                await _drain(writer)
                sent += len(part)
                self._update(record, body_bytes=sent)
                if fault is not None and fault.kind == "slow":
                    await asyncio.sleep(len(part) / fault.bytes_per_second)
        if fault is not None and fault.kind == "reset" and fault.after_bytes is not None:
            raise _Reset()  # the whole body was shorter than after_bytes: reset at its end
        framed = _has_framing(response_headers, method=method, status=status_code)
        keep = keep and framed and _keep_alive(version, response_headers)
        if not keep:
            upstream[1].close()
            upstream = None
        return upstream, keep

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = self._upstream_addr
        try:
            return await asyncio.wait_for(asyncio.open_connection(host, port, limit=HEAD_LIMIT), IO_TIMEOUT)
        except (OSError, TimeoutError) as e:
            raise _UpstreamError(f"cannot connect to {self.upstream}: {e}") from e

    def __repr__(self) -> str:
        where = self.host if self._port is not None else "not started"
        return f"FaultProxy({where} -> {self.upstream}, {'running' if self.running else 'stopped'})"


class _UpstreamError(Exception):
    """The upstream registry could not be reached or broke off."""


# ---- HTTP/1.1 framing -----------------------------------------------------------------------

def _parse_head(head: bytes, *, request: bool) -> tuple[str, str, str, list[tuple[str, str]]]:
    """(method, target, version, headers) of a request or (version, status, reason, headers)
    of a response."""
    lines = head.decode("latin-1").split("\r\n")
    first = lines[0].split(" ", 2)
    if len(first) < 2 or (request and len(first) != 3):
        raise _Reset()
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _Reset()
        headers.append((name.strip().lower(), value.strip()))
    if request:
        return first[0].upper(), first[1], first[2], headers
    return first[0], first[1], first[2] if len(first) > 2 else "", headers


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def _keep_alive(version: str, headers: list[tuple[str, str]]) -> bool:
    tokens = {t.strip().lower() for t in (_header(headers, "connection") or "").split(",")}
    if version.upper() == "HTTP/1.0":
        return "keep-alive" in tokens
    return "close" not in tokens


def _chunked(headers: list[tuple[str, str]]) -> bool:
    return "chunked" in (_header(headers, "transfer-encoding") or "").lower()


def _has_framing(headers: list[tuple[str, str]], *, method: str, status: int) -> bool:
    """Whether the response's end is known without closing the connection."""
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return True
    return _chunked(headers) or _header(headers, "content-length") is not None


async def _read_body(reader: asyncio.StreamReader, headers, *, method: str, request: bool) -> bytes:
    """A request body, raw (as framed on the wire)."""
    pieces = [p async for p in _body_pieces(reader, headers, method=method, status=0, request=request)]
    return b"".join(pieces)


async def _body_pieces(reader: asyncio.StreamReader, headers, *, method: str, status: int,
                       request: bool = False, size: int = 64 * 1024):
    """The raw bytes of one message body (chunk framing included), in pieces."""
    if not request and (method == "HEAD" or status in (204, 304) or 100 <= status < 200):
        return
    if _chunked(headers):
        while True:
            line = await asyncio.wait_for(reader.readuntil(b"\r\n"), IO_TIMEOUT)
            yield line
            length = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if length == 0:
                while True:  # trailers, up to the empty line
                    trailer = await asyncio.wait_for(reader.readuntil(b"\r\n"), IO_TIMEOUT)
                    yield trailer
                    if trailer == b"\r\n":
                        return
            remaining = length + 2  # data and its CRLF
            while remaining:
                data = await asyncio.wait_for(reader.read(min(size, remaining)), IO_TIMEOUT)
                if not data:
                    raise asyncio.IncompleteReadError(b"", remaining)
                remaining -= len(data)
                yield data
        return
    length_text = _header(headers, "content-length")
    if length_text is not None:
        remaining = int(length_text)
        while remaining:
            data = await asyncio.wait_for(reader.read(min(size, remaining)), IO_TIMEOUT)
            if not data:
                raise asyncio.IncompleteReadError(b"", remaining)
            remaining -= len(data)
            yield data
        return
    if request:
        return  # a request without framing has no body
    while data := await asyncio.wait_for(reader.read(size), IO_TIMEOUT):  # until the upstream closes
        yield data


async def _drain(writer: asyncio.StreamWriter) -> None:
    """Waits until the peer took what was written; a peer that stops reading for
    IO_TIMEOUT seconds ends the exchange."""
    try:
        await asyncio.wait_for(writer.drain(), IO_TIMEOUT)
    except TimeoutError as e:
        raise ConnectionResetError(f"peer did not read for {IO_TIMEOUT:g} s") from e


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
