"""HTTP exchanges with registries and their token servers: one aiohttp session, a bound on
requests in flight, bodies read up to a limit, transient failures (connection failures,
429, 5xx) retried on a Backoff, waiting at least a `Retry-After`, and every failure
converted once into pinsvc's error tree, without credentials.

Each request goes to a `Target`, one endpoint of an image, with the TLS the runtime uses
there (containers/image `docker.newDockerClient`): the CA and client certificates of its
`certs.d` directory, and for an `insecure` endpoint HTTPS without certificate verification
first, then plain HTTP when HTTPS fails (the scheme that worked is remembered per host).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import ssl
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDictProxy

from pinsvc import tracing
from pinsvc.adapters.registries_conf import DEFAULT_CERTS_DIRS, find_tls_files, ssl_context
from pinsvc.errors import RegistryError, StateError
from pinsvc.refs import ImageRef
from pinsvc.retry import Backoff, retry

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
"""Largest response body read (bytes); distribution refuses bigger manifests too."""
TLS_RECHECK_SECONDS = 10.0
"""How long an endpoint's certs.d TLS setup is used before its directory is looked at again."""
_DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io"})
_DOCKER_HUB_ENDPOINT = "registry-1.docker.io"


@dataclass(frozen=True)
class Target:
    """Where requests for an image go: its reference on one endpoint (`host` to contact,
    repository `path` there, digest), whether that endpoint is insecure, and the image as
    the node names it (None: `ref` itself), whose credentials for this endpoint answer its
    challenges."""

    ref: ImageRef
    insecure: bool = False
    image: ImageRef | None = None


@dataclass(frozen=True)
class Reply:
    """A finished HTTP exchange (body read up to MAX_MANIFEST_BYTES)."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: str = ""
    """Where the request went (scheme, host and path)."""


class _TransientReply(RegistryError):
    """A 429 or 5xx answer as an error the retry policy can see; `reply` is the answer."""

    def __init__(self, reply: Reply, peer: str):
        super().__init__(f"HTTP {reply.status} from {peer}")
        self.reply = reply
        self.retry_after_seconds = retry_after(reply.headers)


class Transport:
    """Requests to registries: `timeout` bounds each attempt (seconds, 0 = off),
    `max_concurrency` the requests in flight, `backoff` the attempts unless a request says
    otherwise; `insecure_hosts` are insecure whatever their Target says; `certs_dirs` are
    the runtime's certs.d directories."""

    def __init__(self, *, insecure_hosts: Collection[str], timeout: float, max_concurrency: int,
                 backoff: Backoff, certs_dirs: Sequence[Path] = DEFAULT_CERTS_DIRS) -> None:
        self.backoff = backoff
        self._insecure_hosts = frozenset(host.lower() for host in insecure_hosts)
        self._certs_dirs = tuple(certs_dirs)
        self._timeout = aiohttp.ClientTimeout(total=timeout or None)
        self._session: aiohttp.ClientSession | None = None  # made on first use, inside the loop
        self._slots = asyncio.Semaphore(max_concurrency)
        self._schemes: dict[str, str] = {}  # insecure host -> the scheme it answered
        self._first_contacts: dict[str, asyncio.Event] = {}  # insecure host -> set when its first request ends
        self._tls: dict[tuple[str, bool], tuple[float, tuple, ssl.SSLContext]] = {}

    def insecure(self, target: Target) -> bool:
        """Whether TLS may go unverified and plain HTTP be used for this endpoint."""
        return target.insecure or target.ref.host.lower() in self._insecure_hosts

    async def request(self, target: Target, method: str, url: str, *, backoff: Backoff | None = None,
                      **kwargs: object) -> Reply:
        """One HTTP exchange for `target`, to `url` or, when it starts with "/", to that
        path on the endpoint. Connection failures, 429 and 5xx are retried on `backoff`
        (None: the transport's). The answer of the last attempt comes back even when it is
        a 429 or 5xx (the caller names the error); a failed exchange raises RegistryError."""
        async def attempt(_: int) -> Reply:
            reply = await self._exchange(target, method, url, kwargs)
            if reply.status == 429 or reply.status >= 500:
                raise _TransientReply(reply, urlsplit(reply.url).netloc)
            return reply

        try:
            return await retry(attempt, backoff or self.backoff, what=f"image {target.ref}", logger=log)
        except _TransientReply as last:
            return last.reply

    async def _exchange(self, target: Target, method: str, url: str, kwargs: dict) -> Reply:
        """One exchange; to an insecure endpoint in the scheme that last worked there, or
        for a first contact HTTPS, then plain HTTP when HTTPS fails. Concurrent first
        requests to one host wait for the first one, so that a plain-HTTP registry costs one
        failed handshake, not one per request."""
        host = target.ref.host
        if not url.startswith("/"):
            return await self._send(target, method, url, kwargs)
        api = _DOCKER_HUB_ENDPOINT if host in _DOCKER_HUB_HOSTS else host
        if not self.insecure(target):
            return await self._send(target, method, f"https://{api}{url}", kwargs)
        if host not in self._schemes:
            first = self._first_contacts.get(host)
            if first is None:
                self._first_contacts[host] = first = asyncio.Event()
                try:
                    return await self._first_contact(target, method, f"{api}{url}", kwargs)
                finally:
                    first.set()
                    del self._first_contacts[host]
            await first.wait()
            if host not in self._schemes:  # the first contact failed: try on its own
                return await self._first_contact(target, method, f"{api}{url}", kwargs)
        try:
            return await self._send(target, method, f"{self._schemes[host]}://{api}{url}", kwargs)
        except RegistryError:
            self._schemes.pop(host, None)  # look for HTTPS again next time
            raise

    async def _first_contact(self, target: Target, method: str, location: str, kwargs: dict) -> Reply:
        """HTTPS without verification, then plain HTTP unless HTTPS timed out; the scheme
        that answered is remembered for the host."""
        host = target.ref.host
        try:
            reply = await self._send(target, method, f"https://{location}", kwargs)
            self._schemes[host] = "https"
            return reply
        except RegistryError as e:
            if isinstance(e.__cause__, asyncio.TimeoutError):
                raise
            log.debug("image %s: HTTPS to insecure %s failed (%s); trying plain HTTP", target.ref, host, e)
        reply = await self._send(target, method, f"http://{location}", kwargs)
        self._schemes[host] = "http"
        return reply

    async def _send(self, target: Target, method: str, url: str, kwargs: dict) -> Reply:
        """Sends one request (holding a concurrency slot) and reads the bounded body."""
        ref, peer = target.ref, urlsplit(url).netloc
        if self._session is None:
            # aiohttp, not httpx: a manifest GET costs ~0.25 ms of CPU instead of ~2 ms, and the
            # space check fetches one per image on the critical path of every Apply.
            # trust_env: honour HTTP(S)_PROXY / NO_PROXY like the runtime does.
            self._session = aiohttp.ClientSession(timeout=self._timeout, trust_env=True,
                                                  trace_configs=tracing.http_trace_configs())
        tls = self._ssl(target) if url.startswith("https:") else None
        async with self._slots:
            try:
                async with self._session.request(method, url, ssl=tls or True, **kwargs) as response:
                    body = bytearray()
                    async for chunk in response.content.iter_chunked(1 << 16):
                        body += chunk
                        if len(body) > MAX_MANIFEST_BYTES:
                            raise RegistryError(f"image {ref}: answer from {peer} is larger than "
                                                f"{MAX_MANIFEST_BYTES} bytes", retryable=False)
                    return Reply(response.status, response.headers, bytes(body), url)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
                raise _transport_error(ref, peer, e) from e

    def _ssl(self, target: Target) -> ssl.SSLContext:
        """The endpoint's TLS context (certs.d, verification off when insecure), made again
        when its certs.d files changed, looked at every TLS_RECHECK_SECONDS at most."""
        host, insecure = target.ref.host, self.insecure(target)
        now = time.monotonic()
        cached = self._tls.get((host, insecure))
        if cached is not None and now - cached[0] < TLS_RECHECK_SECONDS:
            return cached[2]
        try:
            files = find_tls_files(host, self._certs_dirs)
            key = _signature(files)
            context = cached[2] if cached is not None and cached[1] == key else ssl_context(files, insecure=insecure)
        except StateError as e:
            raise RegistryError(f"image {target.ref}: {e}", retryable=False) from e
        self._tls[(host, insecure)] = (now, key, context)
        return context

    async def aclose(self) -> None:
        """Closes the connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None


def http_error(ref: ImageRef, reply: Reply, peer: str) -> RegistryError:
    """Any status not handled more specifically: 429 and 5xx are retryable, others not."""
    if reply.status == 429:
        after = retry_after(reply.headers)
        hint = f", retry after {after:g} s" if after is not None else ""
        error = RegistryError(f"image {ref}: rate limited by {peer} (HTTP 429{hint})")
        error.retry_after_seconds = after
        return error
    if reply.status >= 500:
        return RegistryError(f"image {ref}: HTTP {reply.status} from {peer}")
    codes = ", ".join(sorted(error_codes(reply.body)))
    return RegistryError(f"image {ref}: HTTP {reply.status} from {peer}" + (f" ({codes})" if codes else ""),
                         retryable=False)


def error_codes(body: bytes) -> set[str]:
    """The `errors[].code` values of a registry error body (distribution spec)."""
    try:
        errors = json.loads(body).get("errors")
        return {str(error["code"]) for error in errors if isinstance(error, dict) and "code" in error}
    except (ValueError, AttributeError, TypeError):
        return set()


def retry_after(headers: CIMultiDictProxy[str]) -> float | None:
    """`Retry-After` in seconds (delta-seconds or an HTTP date), None when absent/bad."""
    value = headers.get("retry-after", "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _transport_error(ref: ImageRef, peer: str, error: Exception) -> RegistryError:
    """A short, credential-free cause for a failed exchange; TLS trouble is not retried."""
    if isinstance(error, asyncio.TimeoutError):
        return RegistryError(f"image {ref}: {peer} timed out")
    if _caused_by(error, ssl.SSLCertVerificationError) or isinstance(
            error, aiohttp.ClientConnectorCertificateError):
        return RegistryError(f"image {ref}: TLS certificate of {peer} is not trusted", retryable=False)
    if _caused_by(error, ssl.SSLError) or isinstance(error, aiohttp.ClientSSLError):
        return RegistryError(f"image {ref}: TLS handshake with {peer} failed (if it is a plain-http "
                             f"registry, mark it insecure = true in registries.conf or list it in the "
                             f"insecure hosts)", retryable=False)
    if _caused_by(error, ConnectionRefusedError):
        return RegistryError(f"image {ref}: cannot reach {peer}: connection refused")
    if isinstance(error, (aiohttp.InvalidURL, ValueError)):
        return RegistryError(f"image {ref}: request to {peer} failed ({type(error).__name__})", retryable=False)
    return RegistryError(f"image {ref}: connection to {peer} failed ({type(error).__name__}: {error})")


def _signature(files) -> tuple:
    """What identifies an endpoint's certs.d setup: its files and their modification times."""
    if files is None:
        return ()
    paths = [*files.ca_files, *(p for pair in files.client_pairs for p in pair)]
    stamps = []
    for path in paths:
        try:
            stamps.append((str(path), path.stat().st_mtime_ns))
        except OSError:
            stamps.append((str(path), None))
    return tuple(stamps)


def _caused_by(error: BaseException, kind: type[BaseException]) -> bool:
    """Whether `kind` is anywhere in the exception's cause/context chain."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
