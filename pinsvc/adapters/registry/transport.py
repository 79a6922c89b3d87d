"""HTTP exchanges with registries and their token servers: one aiohttp session, a bound on
requests in flight, bodies read up to a limit, transient failures (connection failures,
429, 5xx) retried on the registry's Backoff, waiting at least a `Retry-After`, and every
failure converted once into pinsvc's error tree, without credentials.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import ssl
import time
from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDictProxy

from pinsvc import tracing
from pinsvc.errors import RegistryError
from pinsvc.refs import ImageRef
from pinsvc.retry import Backoff, retry

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
"""Largest response body read (bytes); distribution refuses bigger manifests too."""
_DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io"})
_DOCKER_HUB_ENDPOINT = "registry-1.docker.io"


@dataclass(frozen=True)
class Reply:
    """A finished HTTP exchange (body read up to MAX_MANIFEST_BYTES)."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class _TransientReply(RegistryError):
    """A 429 or 5xx answer as an error the retry policy can see; `reply` is the answer."""

    def __init__(self, reply: Reply, peer: str):
        super().__init__(f"HTTP {reply.status} from {peer}")
        self.reply = reply
        self.retry_after_seconds = retry_after(reply.headers)


class Transport:
    """Requests to registries: `timeout` bounds each attempt (seconds, 0 = off),
    `max_concurrency` the requests in flight, `backoff` the attempts."""

    def __init__(self, *, insecure_hosts: Collection[str], timeout: float, max_concurrency: int,
                 backoff: Backoff) -> None:
        self.backoff = backoff
        self._insecure_hosts = frozenset(host.lower() for host in insecure_hosts)
        self._timeout = aiohttp.ClientTimeout(total=timeout or None)
        self._session: aiohttp.ClientSession | None = None  # made on first use, inside the loop
        self._slots = asyncio.Semaphore(max_concurrency)

    def insecure(self, host: str) -> bool:
        """Whether `host` is reached over plain HTTP."""
        return host.lower() in self._insecure_hosts

    def base_url(self, host: str) -> str:
        scheme = "http" if self.insecure(host) else "https"
        return f"{scheme}://{_DOCKER_HUB_ENDPOINT if host in _DOCKER_HUB_HOSTS else host}"

    async def request(self, ref: ImageRef, method: str, url: str, **kwargs: object) -> Reply:
        """One HTTP exchange for `ref`; connection failures, 429 and 5xx are retried. The
        answer of the last attempt comes back even when it is a 429 or 5xx (the caller
        names the error); a failed exchange raises RegistryError."""
        async def attempt(_: int) -> Reply:
            reply = await self._exchange(ref, method, url, kwargs)
            if reply.status == 429 or reply.status >= 500:
                raise _TransientReply(reply, urlsplit(url).netloc)
            return reply

        try:
            return await retry(attempt, self.backoff, what=f"image {ref}", logger=log)
        except _TransientReply as last:
            return last.reply

    async def _exchange(self, ref: ImageRef, method: str, url: str, kwargs: dict) -> Reply:
        """Sends one request (holding a concurrency slot) and reads the bounded body."""
        peer = urlsplit(url).netloc
        if self._session is None:
            # aiohttp, not httpx: a manifest GET costs ~0.25 ms of CPU instead of ~2 ms, and the
            # space check fetches one per image on the critical path of every Apply.
            # trust_env: honour HTTP(S)_PROXY / NO_PROXY like the runtime does.
            self._session = aiohttp.ClientSession(timeout=self._timeout, trust_env=True,
                                                  trace_configs=tracing.http_trace_configs())
        async with self._slots:
            try:
                async with self._session.request(method, url, **kwargs) as response:
                    body = bytearray()
                    async for chunk in response.content.iter_chunked(1 << 16):
                        body += chunk
                        if len(body) > MAX_MANIFEST_BYTES:
                            raise RegistryError(f"image {ref}: answer from {peer} is larger than "
                                                f"{MAX_MANIFEST_BYTES} bytes", retryable=False)
                    return Reply(response.status, response.headers, bytes(body))
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
                raise _transport_error(ref, peer, e) from e

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
        return RegistryError(f"image {ref}: rate limited by {peer} (HTTP 429{hint})")
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
                             f"registry, list it in the insecure hosts)", retryable=False)
    if _caused_by(error, ConnectionRefusedError):
        return RegistryError(f"image {ref}: cannot reach {peer}: connection refused")
    if isinstance(error, (aiohttp.InvalidURL, ValueError)):
        return RegistryError(f"image {ref}: request to {peer} failed ({type(error).__name__})", retryable=False)
    return RegistryError(f"image {ref}: connection to {peer} failed ({type(error).__name__}: {error})")


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
