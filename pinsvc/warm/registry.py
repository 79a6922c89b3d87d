"""The site cache over the registry HTTP API, as the warm stage uses it (aiohttp).

- `manifest(ref)`: GET through the cache (which fetches and stores it when it lacks it),
  sha256 verified.
- `probe(blob)`: does the cache hold the blob in its own storage? `GET` with
  `Range: bytes=0-0`: a cache serving from its storage answers 206 with one byte. A blob it
  lacks it fetches from upstream as soon as it is asked for (distribution 2.8 starts a copy
  into its storage in the background and streams a second copy to the client, even for a
  HEAD): the connection is closed as soon as the answer's head arrives, which stops the
  second copy after its first few KiB, and the cache goes on fetching one copy. So the
  probe of a missing blob is also its fetch, and starts upstream traffic: only the warm
  stage's pacer and window decide when it happens.
- `verify(blob)`: reads a blob the cache holds (LAN traffic only) and checks its sha256
  and size.

Authentication as the runtime does it for a mirror: anonymous first, then the challenge of
a 401 answered with the pull secret's entry for the cache (`lookup_endpoint`): Basic, or a
bearer token from the realm. Transient failures (connection errors, 429, 5xx) are retried
on a Backoff. Every error is a `CacheError` naming the cache; credentials never appear.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from collections.abc import Callable, Collection

import aiohttp

from pinsvc.adapters.registry.auth import parse_challenges
from pinsvc.adapters.registry.manifest import ACCEPT, sha256_digest
from pinsvc.errors import RegistryError
from pinsvc.model import Credentials
from pinsvc.refs import ImageRef
from pinsvc.retry import Backoff, retry
from pinsvc.warm.plan import Blob

log = logging.getLogger("pinsvc.warm")

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
CHUNK = 1 << 16
TOKEN_MARGIN_SECONDS = 10

# What went wrong with the cache: the reason a rollout reports.
CACHE_UNAVAILABLE, CACHE_REFUSED, NOT_IN_CACHE, CACHE_CORRUPT = (
    "CacheUnavailable", "CacheRefused", "NotInCache", "CacheCorrupt")


class CacheError(RegistryError):
    """The cache `cache` failed: `reason` is one of the four above."""

    def __init__(self, cache: str, reason: str, message: str, *, retryable: bool = False):
        super().__init__(f"cache {cache}: {message}", retryable=retryable)
        self.cache = cache
        self.reason = reason


class CacheClient:
    """Requests to site caches. `credentials(host, path)`: the pull secret's entry for an
    endpoint; `insecure_hosts`: caches reached over plain HTTP; `timeout`: seconds a
    connection or any read may take (0 = none); `backoff`: attempts of transient failures."""

    def __init__(self, *, credentials: Callable[[str, str], Credentials | None] = lambda host, path: None,
                 insecure_hosts: Collection[str] = (), timeout: float = 30.0,
                 backoff: Backoff = Backoff(initial_seconds=0.5, factor=2.0, max_seconds=5.0, attempts=3)):
        self.credentials = credentials
        self.insecure_hosts = {h.lower() for h in insecure_hosts}
        self.backoff = backoff
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout or None, sock_read=timeout or None)
        self._session: aiohttp.ClientSession | None = None
        self._auth: dict[tuple[str, str], tuple[str, float]] = {}  # (host, path) -> (header, expiry)

    async def manifest(self, ref: ImageRef) -> bytes:
        """The manifest of `ref` through the cache, verified."""
        async def attempt(_: int) -> bytes:
            async with self._get(ref.host, ref.path, f"manifests/{ref.digest}", {"Accept": ACCEPT}) as response:
                self._check(response, ref.host, f"manifest {ref}")
                body = await response.content.read(MAX_MANIFEST_BYTES + 1)
            if len(body) > MAX_MANIFEST_BYTES or sha256_digest(body) != ref.digest:
                raise CacheError(ref.host, CACHE_CORRUPT, f"served for manifest {ref} bytes whose digest is "
                                 f"{sha256_digest(body)}; refusing them")
            return body
        return await self._retried(attempt, ref.host, f"manifest {ref}")

    async def probe(self, blob: Blob) -> bool:
        """True: the cache holds `blob` in its storage; False: it did not and is fetching it
        now (see the module doc)."""
        host, path = _split(blob.repository)

        async def attempt(_: int) -> bool:
            async with self._get(host, path, f"blobs/{blob.digest}", {"Range": "bytes=0-0"}) as response:
                self._check(response, host, f"blob {blob.key}")
                if response.status == 206:
                    total = response.headers.get("Content-Range", "").rpartition("/")[2]
                    if total.isdigit() and int(total) != blob.size:
                        raise CacheError(host, CACHE_CORRUPT, f"holds blob {blob.key} with {total} bytes, "
                                                              f"not the {blob.size} its manifest says")
                    return True
                response.close()  # stops the copy streamed to us; the cache keeps fetching its own
                return False
        return await self._retried(attempt, host, f"blob {blob.key}")

    async def verify(self, blob: Blob) -> None:
        """Reads the blob from the cache and checks its digest and size."""
        host, path = _split(blob.repository)

        async def attempt(_: int) -> None:
            digest, size = hashlib.sha256(), 0
            async with self._get(host, path, f"blobs/{blob.digest}", {}) as response:
                self._check(response, host, f"blob {blob.key}")
                async for chunk in response.content.iter_chunked(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
            actual = f"sha256:{digest.hexdigest()}"
            if actual != blob.digest or size != blob.size:
                raise CacheError(host, CACHE_CORRUPT, f"served {size} bytes with digest {actual} for blob "
                                                      f"{blob.key} ({blob.size} bytes); the cache's copy is corrupt")
        await self._retried(attempt, host, f"blob {blob.key}")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- requests -------------------------------------------------------------------------

    def _url(self, host: str, path: str, tail: str) -> str:
        scheme = "http" if host.lower() in self.insecure_hosts else "https"
        return f"{scheme}://{host}/v2/{path}/{tail}"

    def _get(self, host: str, path: str, tail: str, headers: dict[str, str]):
        return _Exchange(self, host, path, self._url(host, path, tail), headers)

    async def _retried(self, attempt, host: str, what: str):
        async def converted(n: int):
            try:
                return await attempt(n)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                raise CacheError(host, CACHE_UNAVAILABLE, f"{what}: {_cause(e)}", retryable=True) from e
        return await retry(converted, self.backoff, what=f"cache {host}", logger=log)

    def _check(self, response: aiohttp.ClientResponse, host: str, what: str) -> None:
        status = response.status
        if status in (200, 206):
            return
        if status in (401, 403):
            secret = "credentials refused" if self.credentials(host, "") or status == 403 else \
                "access denied and the pull secret has no credentials for it"
            raise CacheError(host, CACHE_REFUSED, f"{what}: HTTP {status}: {secret}")
        if status == 404:
            raise CacheError(host, NOT_IN_CACHE, f"{what}: unknown (HTTP 404): the upstream does not have it, "
                                                 f"or {host} is not a pull-through cache for this repository")
        raise CacheError(host, CACHE_UNAVAILABLE, f"{what}: HTTP {status}", retryable=status == 429 or status >= 500)

    async def _authorization(self, host: str, path: str, challenge_headers: list[str]) -> str:
        """Answers a 401's challenge with the pull secret's entry for the cache."""
        challenges = {c.scheme: c for c in parse_challenges(challenge_headers)}
        credentials = self.credentials(host, path)
        basic = None
        if credentials is not None and credentials.username:
            pair = f"{credentials.username}:{credentials.password}".encode()
            basic = "Basic " + base64.b64encode(pair).decode("ascii")
        if "bearer" in challenges:
            if credentials is not None and credentials.registry_token:
                return f"Bearer {credentials.registry_token}"
            params = {k: v for k, v in (("service", challenges["bearer"].params.get("service", "")),
                                        ("scope", f"repository:{path}:pull")) if v}
            realm = challenges["bearer"].params.get("realm", "")
            async with self._session.get(realm, params=params, headers={"Authorization": basic} if basic else {}) as r:
                if r.status != 200:
                    raise CacheError(host, CACHE_REFUSED, f"token server {realm} answered HTTP {r.status}")
                document = await r.json(content_type=None)
            token = document.get("token") or document.get("access_token") if isinstance(document, dict) else None
            if not token:
                raise CacheError(host, CACHE_REFUSED, f"token server {realm} answered without a token")
            lifetime = document.get("expires_in") if isinstance(document.get("expires_in"), (int, float)) else 60
            self._auth[(host, path)] = (f"Bearer {token}", time.monotonic() + max(lifetime - TOKEN_MARGIN_SECONDS, 0))
            return f"Bearer {token}"
        if "basic" in challenges and basic:
            self._auth[(host, path)] = (basic, float("inf"))
            return basic
        raise CacheError(host, CACHE_REFUSED, "asks for credentials and the pull secret has none usable for it "
                                              f"(schemes: {', '.join(sorted(challenges)) or 'none'})")


class _Exchange:
    """One GET with the cached authorization; a 401 answered once with a new one."""

    def __init__(self, client: CacheClient, host: str, path: str, url: str, headers: dict[str, str]):
        self.client, self.host, self.path, self.url, self.headers = client, host, path, url, headers
        self.response: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        client = self.client
        if client._session is None:
            client._session = aiohttp.ClientSession(timeout=client._timeout, trust_env=True,
                                                    auto_decompress=False)
        header, expiry = client._auth.get((self.host, self.path), ("", 0.0))
        headers = dict(self.headers, **({"Authorization": header} if header and time.monotonic() < expiry else {}))
        self.response = await client._session.get(self.url, headers=headers)
        if self.response.status == 401:
            challenge = self.response.headers.getall("WWW-Authenticate", [])
            self.response.release()
            authorization = await client._authorization(self.host, self.path, challenge)
            self.response = await client._session.get(self.url, headers=dict(self.headers, Authorization=authorization))
        return self.response

    async def __aexit__(self, *exc) -> None:
        if self.response is not None:
            self.response.release()


def _split(repository: str) -> tuple[str, str]:
    host, _, path = repository.partition("/")
    return host, path


def _cause(error: BaseException) -> str:
    if isinstance(error, asyncio.TimeoutError):
        return "timed out"
    if isinstance(error, aiohttp.ClientConnectorError):
        return f"cannot connect: {error.os_error.strerror or error.os_error}"
    return f"{type(error).__name__}: {error}"
