"""Registry manifest client: the compressed layer sizes of digest references.

The space check needs, for each image, the sizes of the layers the runtime will download.
`RegistryClient.layers(ref)` fetches the manifest by digest (Docker schema 2 or OCI),
verifies its sha256, resolves a manifest list / OCI index to the entry for the node's
platform the way CRI-O (containers/image) chooses it, and returns the layers.

Manifests are content addressed, so parsed manifests are cached by digest in memory and,
with a `cache_dir`, their verified bytes on disk (`sha256-<hex>.json`). Concurrent requests
for one manifest share one fetch; a semaphore bounds requests in flight; transient
failures are retried. Authentication: anonymous first, then the registry's challenge
(Bearer token from the realm, or Basic) with credentials from the pull secret; tokens are
cached per (host, scope) until they expire. Credentials never appear in errors or logs.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import json
import logging
import math
import os
import re
import ssl
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from platform import machine
from types import TracebackType
from typing import NamedTuple
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDictProxy

from pinsvc.adapters.pullsecret import Credentials
from pinsvc import tracing
from pinsvc.errors import ImageNotFound, PinsvcError, RegistryError, Unauthorized
from pinsvc.model import Layer
from pinsvc.refs import ImageRef

log = logging.getLogger(__name__)

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
ACCEPT = ", ".join((DOCKER_MANIFEST, OCI_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX))

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
"""Largest response body read (bytes); distribution refuses bigger manifests too."""
MAX_RETRY_DELAY = 10.0
"""Seconds: a `Retry-After` longer than this is reported instead of waited for."""
DEFAULT_TOKEN_LIFETIME = 60
"""Seconds a bearer token lives when the token server does not say (distribution spec)."""
TOKEN_EXPIRY_MARGIN = 10
"""Seconds before its expiry a cached token is no longer used."""
MEMORY_CACHE_ENTRIES = 4096
"""Parsed manifests kept in memory (least recently used are dropped)."""

_DIGEST = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_SHA256_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io"})
_DOCKER_HUB_ENDPOINT = "registry-1.docker.io"
# platform.machine() -> (GOARCH, variant as containers/image detects it)
_GOARCH = {
    "x86_64": ("amd64", ""), "amd64": ("amd64", ""), "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"), "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"),
    "i386": ("386", ""), "i686": ("386", ""), "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""), "riscv64": ("riscv64", ""),
}
# containers/image: variants an architecture can run, most capable first.
_VARIANT_COMPATIBILITY = {"arm": ("v7", "v6", "v5"), "arm64": ("v8",)}
_BASE_VARIANTS = {"arm64": "v8"}


class Platform(NamedTuple):
    """An OCI platform; `str()` gives `os/architecture[/variant]`."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(part for part in self if part)


def host_platform() -> Platform:
    """This machine's platform in GOARCH terms (variant as CRI-O detects it)."""
    name = machine().lower()
    architecture, variant = _GOARCH.get(name, (name, ""))
    return Platform("linux", architecture, variant)


DEFAULT_PLATFORM = host_platform()


@dataclass(frozen=True)
class ImageLayers:
    """What one image costs to download: the platform manifest actually used, its layers
    and its config blob (sizes in bytes, compressed as stored in the registry)."""

    manifest_digest: str
    layers: tuple[Layer, ...]
    config_size: int


@dataclass(frozen=True)
class PlatformManifest:
    """One entry of a manifest list / OCI index."""

    digest: str
    platform: Platform


@dataclass(frozen=True)
class ManifestIndex:
    """A parsed manifest list / OCI index (entries without a platform are left out)."""

    entries: tuple[PlatformManifest, ...]


Manifest = ImageLayers | ManifestIndex


def wanted_platforms(node: Platform) -> list[Platform]:
    """The platforms a node runs, preferred first, as containers/image (CRI-O) ranks them:
    `arm/v7` also takes v6, v5 and no variant; `arm64` with or without `v8` takes both."""
    if node.variant:
        order = _VARIANT_COMPATIBILITY.get(node.architecture, ())
        variants = list(order[order.index(node.variant):]) if node.variant in order else [node.variant]
        variants.append("")
    else:
        variants = [""]
        if node.architecture in _BASE_VARIANTS:
            variants.append(_BASE_VARIANTS[node.architecture])
    return [Platform(node.os, node.architecture, variant) for variant in variants]


def choose_platform(entries: Sequence[PlatformManifest], node: Platform) -> PlatformManifest | None:
    """The entry the node's runtime would pull: the first one of the most preferred
    platform, or None when the node runs none of them."""
    for wanted in wanted_platforms(node):
        for entry in entries:
            if entry.platform == wanted:
                return entry
    return None


def parse_manifest(body: bytes, digest: str) -> Manifest:
    """Parses a Docker schema 2 / OCI manifest or a manifest list / OCI index.

    Raises ValueError saying what is wrong (unsupported media type, missing sizes...).
    """
    try:
        document = json.loads(body)
    except ValueError as e:
        raise ValueError(f"not JSON ({e})") from e
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    if document.get("schemaVersion") == 1:
        raise ValueError("Docker schema 1 manifests are not supported")
    media_type = document.get("mediaType")
    if media_type in (DOCKER_MANIFEST_LIST, OCI_INDEX) or (media_type is None and "manifests" in document):
        return ManifestIndex(tuple(_parse_index_entries(document.get("manifests"))))
    if media_type in (DOCKER_MANIFEST, OCI_MANIFEST) or (media_type is None and "layers" in document):
        return _parse_image_manifest(document, digest)
    raise ValueError(f"unsupported media type {media_type!r}")


@dataclass(frozen=True)
class Challenge:
    """One `WWW-Authenticate` challenge: scheme (lowercase) and parameters."""

    scheme: str
    params: dict[str, str]


_CHALLENGE_TOKEN = re.compile(
    r"""\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)(?:\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*))?\s*,?""")


def parse_challenges(headers: Iterable[str]) -> list[Challenge]:
    """Parses `WWW-Authenticate` values (RFC 7235: a scheme, then `key=value` or
    `key="quoted"` parameters; one header may hold several challenges)."""
    parsed: list[tuple[str, dict[str, str]]] = []
    for header in headers:
        for match in _CHALLENGE_TOKEN.finditer(header):
            name, value = match[1], match[2]
            if value is None:
                parsed.append((name.lower(), {}))
            elif parsed:
                if value.startswith('"'):
                    value = re.sub(r"\\(.)", r"\1", value[1:-1])
                parsed[-1][1][name.lower()] = value
    return [Challenge(scheme, params) for scheme, params in parsed]


@dataclass(frozen=True)
class _Reply:
    """A finished HTTP exchange (body read up to MAX_MANIFEST_BYTES)."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


@dataclass(frozen=True)
class _Authorization:
    """An `Authorization` header value and when it stops being usable (monotonic s)."""

    header: str
    expires_at: float = math.inf

    @property
    def valid(self) -> bool:
        return time.monotonic() < self.expires_at


class RegistryClient:
    """Fetches manifests from OCI registries and reports their layers (see module doc).

    `timeout` bounds each HTTP attempt (seconds, 0 = off); a transient failure is tried
    `retry_attempts` times in all, waiting `retry_backoff` seconds, doubled each time.
    """

    def __init__(
        self,
        *,
        insecure_hosts: Collection[str] = (),
        credentials: Callable[[ImageRef], Credentials | None] = lambda ref: None,
        platform: tuple[str, str, str] = DEFAULT_PLATFORM,
        timeout: float = 30,
        max_concurrency: int = 16,
        cache_dir: Path | None = None,
        retry_attempts: int = 3,
        retry_backoff: float = 0.5,
    ) -> None:
        if max_concurrency < 1 or retry_attempts < 1:
            raise ValueError("max_concurrency and retry_attempts must be at least 1")
        self.platform = Platform(*platform)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._insecure_hosts = frozenset(host.lower() for host in insecure_hosts)
        self._credentials = credentials
        self._retry_attempts = retry_attempts
        self._retry_backoff = retry_backoff
        self._timeout = aiohttp.ClientTimeout(total=timeout or None)
        self._session: aiohttp.ClientSession | None = None  # made on first use, inside the loop
        self._slots = asyncio.Semaphore(max_concurrency)
        self._memory: OrderedDict[str, Manifest] = OrderedDict()
        self._inflight: dict[tuple[str, str, str], asyncio.Task[Manifest]] = {}
        self._auth: dict[tuple[str, str], _Authorization] = {}

    async def layers(self, ref: ImageRef) -> ImageLayers:
        """The layers of `ref` for the node's platform.

        Raises ImageNotFound, Unauthorized or RegistryError (`retryable` says whether
        trying again later can help), each naming the image.
        """
        manifest = await self._manifest(ref, ref.digest)
        if isinstance(manifest, ImageLayers):
            return manifest
        entry = choose_platform(manifest.entries, self.platform)
        if entry is None:
            available = ", ".join(sorted({str(e.platform) for e in manifest.entries})) or "none"
            raise ImageNotFound(f"image {ref}: no manifest for platform {self.platform} in its "
                                f"index (available: {available})")
        if not _SHA256_DIGEST.match(entry.digest):
            raise RegistryError(f"image {ref}: the {self.platform} manifest {entry.digest} does "
                                f"not use a sha256 digest", retryable=False)
        child = await self._manifest(ref, entry.digest)
        if not isinstance(child, ImageLayers):
            raise RegistryError(f"image {ref}: the {self.platform} entry {entry.digest} is itself "
                                f"an index (nested indexes are not supported)", retryable=False)
        return child

    async def many(self, refs: Iterable[ImageRef]) -> dict[ImageRef, ImageLayers | PinsvcError]:
        """`layers()` of every ref, fetched concurrently; a failure is returned as the
        error for its ref (in input order, duplicates collapsed)."""
        async with asyncio.TaskGroup() as group:
            tasks = {ref: group.create_task(self._layers_or_error(ref)) for ref in dict.fromkeys(refs)}
        return {ref: task.result() for ref, task in tasks.items()}

    async def aclose(self) -> None:
        """Cancels fetches still running and closes the connections."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _layers_or_error(self, ref: ImageRef) -> ImageLayers | PinsvcError:
        try:
            return await self.layers(ref)
        except PinsvcError as e:
            return e

    # -- cache and single flight ------------------------------------------------------

    async def _manifest(self, ref: ImageRef, digest: str) -> Manifest:
        """Manifest `digest` of ref's repository: from memory, else one shared load."""
        cached = self._memory.get(digest)
        if cached is not None:
            self._memory.move_to_end(digest)
            return cached
        key = (ref.host, ref.path, digest)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._load(ref, digest), name=f"manifest {digest}")
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(task)

    def _forget(self, key: tuple[str, str, str], task: asyncio.Task[Manifest]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: a load every waiter gave up on is not logged as lost

    async def _load(self, ref: ImageRef, digest: str) -> Manifest:
        """Reads the manifest from the disk cache or the registry, parses and remembers it."""
        path = self._cache_path(digest)
        body = await asyncio.to_thread(_read_cached, path, digest) if path else None
        fetched = body is None
        if body is None:
            body = await self._fetch(ref, digest)
        try:
            manifest = parse_manifest(body, digest)
        except ValueError as e:
            raise RegistryError(f"image {ref}: manifest {digest} from {ref.host} is unusable: {e}",
                                retryable=False) from e
        if fetched and path:
            await asyncio.to_thread(_write_cached, path, body)
        self._memory[digest] = manifest
        while len(self._memory) > MEMORY_CACHE_ENTRIES:
            self._memory.popitem(last=False)
        return manifest

    def _cache_path(self, digest: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{digest.replace(':', '-', 1)}.json"

    # -- fetching -----------------------------------------------------------------------

    async def _fetch(self, ref: ImageRef, digest: str) -> bytes:
        """GET the manifest, map failures to the error tree, verify the digest."""
        url = f"{self._base_url(ref.host)}/v2/{ref.path}/manifests/{digest}"
        with tracing.span("GET manifest", {"image": str(ref), "registry": ref.host, "manifest.digest": digest}):
            reply = await self._get_authorized(ref, url)
            tracing.set_attributes(**{"http.response.status_code": reply.status})
            if reply.status != 200:
                tracing.set_error(f"HTTP {reply.status}")
        if reply.status != 200:
            raise self._manifest_error(ref, digest, reply)
        actual = _sha256(reply.body)
        if actual != digest:
            raise RegistryError(f"image {ref}: {ref.host} served a manifest whose digest is "
                                f"{actual}, not {digest}; refusing it", retryable=False)
        log.debug("image %s: fetched manifest %s (%d bytes)", ref, digest, len(reply.body))
        return reply.body

    async def _get_authorized(self, ref: ImageRef, url: str) -> _Reply:
        """GET with the cached authorization (or none); on 401 answer the challenge once."""
        key = (ref.host, f"repository:{ref.path}:pull")
        cached = self._auth.get(key)
        header = cached.header if cached is not None and cached.valid else None
        reply = await self._request(ref, "GET", url, headers=_headers(header))
        if reply.status != 401:
            return reply
        self._auth.pop(key, None)
        authorization = await self._authorize(ref, reply, scope=key[1])
        reply = await self._request(ref, "GET", url, headers=_headers(authorization.header))
        if reply.status in (401, 403):
            raise self._unauthorized(ref)
        self._auth[key] = authorization
        return reply

    async def _authorize(self, ref: ImageRef, reply: _Reply, *, scope: str) -> _Authorization:
        """Answers a 401: a bearer token (from the realm, or the secret's registry token)
        or Basic auth, with the pull secret's credentials for the image."""
        challenges = {c.scheme: c for c in parse_challenges(reply.headers.getall("www-authenticate", []))}
        credentials = self._credentials(ref)
        if "bearer" in challenges:
            if credentials is not None and credentials.registry_token:
                return _Authorization(f"Bearer {credentials.registry_token}")
            return await self._fetch_token(ref, challenges["bearer"], credentials, scope)
        if "basic" in challenges:
            if credentials is None:
                raise self._unauthorized(ref)
            if not credentials.username:
                raise Unauthorized(f"image {ref}: {ref.host} wants a username and password; the "
                                   f"pull secret has only a token for it")
            return _Authorization(_basic(credentials))
        schemes = ", ".join(sorted(challenges)) or "no challenge"
        raise Unauthorized(f"image {ref}: {ref.host} wants an authentication scheme pinsvc does "
                           f"not support ({schemes})")

    async def _fetch_token(self, ref: ImageRef, challenge: Challenge, credentials: Credentials | None,
                           scope: str) -> _Authorization:
        """A bearer token from the challenge's realm (docker token / OAuth2 refresh flow)."""
        realm = self._checked_realm(ref, challenge)
        params = {"service": challenge.params.get("service", ""),
                  "scope": challenge.params.get("scope") or scope}
        params = {name: value for name, value in params.items() if value}
        if credentials is not None and credentials.identity_token:
            form = {**params, "grant_type": "refresh_token", "client_id": "pinsvc",
                    "refresh_token": credentials.identity_token}
            reply = await self._request(ref, "POST", realm, data=form)
        else:
            basic = _basic(credentials) if credentials is not None and credentials.username else None
            reply = await self._request(ref, "GET", realm, params=params, headers=_headers(basic))
        peer = f"token server {urlsplit(realm).netloc}"
        if reply.status in (401, 403):
            raise self._unauthorized(ref)
        if reply.status != 200:
            raise _http_error(ref, reply, peer)
        return _parse_token(ref, reply.body, peer)

    def _checked_realm(self, ref: ImageRef, challenge: Challenge) -> str:
        """The token realm URL; plain http only when the registry itself is insecure."""
        realm = challenge.params.get("realm", "")
        scheme = urlsplit(realm).scheme
        if scheme == "https" or (scheme == "http" and ref.host.lower() in self._insecure_hosts):
            return realm
        raise RegistryError(f"image {ref}: {ref.host} names an unusable token realm {realm!r} "
                            f"(want an https URL)", retryable=False)

    async def _request(self, ref: ImageRef, method: str, url: str, **kwargs: object) -> _Reply:
        """One HTTP exchange; connection failures, 429 and 5xx are retried with backoff."""
        attempt = 0
        while True:
            attempt += 1
            delay = self._retry_backoff * 2 ** (attempt - 1)
            try:
                reply = await self._exchange(ref, method, url, kwargs)
            except RegistryError as error:
                if not error.retryable or attempt == self._retry_attempts:
                    raise
                cause = str(error)
            else:
                if not _transient(reply.status) or attempt == self._retry_attempts:
                    return reply
                retry_after = _retry_after(reply.headers)
                if retry_after is not None and retry_after > MAX_RETRY_DELAY:
                    return reply
                delay = max(delay, retry_after or 0)
                cause = f"HTTP {reply.status} from {urlsplit(url).netloc}"
            log.warning("image %s: attempt %d/%d failed (%s); will retry in %.1f s",
                        ref, attempt, self._retry_attempts, cause, delay)
            await asyncio.sleep(delay)

    async def _exchange(self, ref: ImageRef, method: str, url: str, kwargs: dict) -> _Reply:
        """Sends one request (holding a concurrency slot) and reads the bounded body."""
        peer = urlsplit(url).netloc
        if self._session is None:
            # aiohttp, not httpx: a manifest GET costs ~0.25 ms of CPU instead of ~2 ms, and the
            # space check fetches one per image on the critical path of every Apply.
            # trust_env: honour HTTP(S)_PROXY / NO_PROXY like the runtime does.
            self._session = aiohttp.ClientSession(timeout=self._timeout, trust_env=True)
        async with self._slots:
            try:
                async with self._session.request(method, url, **kwargs) as response:
                    body = bytearray()
                    async for chunk in response.content.iter_chunked(1 << 16):
                        body += chunk
                        if len(body) > MAX_MANIFEST_BYTES:
                            raise RegistryError(f"image {ref}: answer from {peer} is larger than "
                                                f"{MAX_MANIFEST_BYTES} bytes", retryable=False)
                    return _Reply(response.status, response.headers, bytes(body))
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
                raise _transport_error(ref, peer, e) from e

    def _base_url(self, host: str) -> str:
        scheme = "http" if host.lower() in self._insecure_hosts else "https"
        return f"{scheme}://{_DOCKER_HUB_ENDPOINT if host in _DOCKER_HUB_HOSTS else host}"

    # -- errors -------------------------------------------------------------------------

    def _manifest_error(self, ref: ImageRef, digest: str, reply: _Reply) -> PinsvcError:
        """The error for a manifest GET that did not answer 200."""
        codes = _error_codes(reply.body)
        if reply.status == 404 or {"MANIFEST_UNKNOWN", "NAME_UNKNOWN"} & codes:
            if "NAME_UNKNOWN" in codes:
                what = f"repository {ref.path}"
            else:
                what = "manifest" if digest == ref.digest else f"platform manifest {digest}"
            return ImageNotFound(f"image {ref}: {what} unknown on {ref.host}")
        if reply.status in (401, 403):
            return self._unauthorized(ref)
        return _http_error(ref, reply, ref.host)

    def _unauthorized(self, ref: ImageRef) -> Unauthorized:
        if self._credentials(ref) is None:
            return Unauthorized(f"image {ref}: access denied and no credentials for {ref.host} "
                                f"in the pull secret")
        return Unauthorized(f"image {ref}: credentials for {ref.host} refused")


def _parse_image_manifest(document: dict, digest: str) -> ImageLayers:
    config, layers = document.get("config"), document.get("layers")
    if not isinstance(config, dict) or not isinstance(layers, list):
        raise ValueError("no 'config' object or no 'layers' list")
    return ImageLayers(manifest_digest=digest,
                       layers=tuple(Layer(*_descriptor(layer, "layer")) for layer in layers),
                       config_size=_descriptor(config, "config")[1])


def _parse_index_entries(manifests: object) -> Iterable[PlatformManifest]:
    if not isinstance(manifests, list):
        raise ValueError("no 'manifests' list")
    for item in manifests:
        digest, _ = _descriptor(item, "index entry")
        platform = item.get("platform")
        if isinstance(platform, dict):
            yield PlatformManifest(digest, Platform(str(platform.get("os", "")),
                                                    str(platform.get("architecture", "")),
                                                    str(platform.get("variant", ""))))


def _descriptor(item: object, what: str) -> tuple[str, int]:
    """(digest, size) of an OCI descriptor, validated."""
    if not isinstance(item, dict):
        raise ValueError(f"a {what} is not a JSON object")
    digest, size = item.get("digest"), item.get("size")
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ValueError(f"a {what} has a malformed digest")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"{what} {digest} has no valid size")
    return digest, size


def _parse_token(ref: ImageRef, body: bytes, peer: str) -> _Authorization:
    """The bearer authorization from a token server's JSON answer."""
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        document = {}
    token = document.get("token") or document.get("access_token")
    if not isinstance(token, str) or not token:
        raise RegistryError(f"image {ref}: {peer} answered without a token", retryable=False)
    lifetime = document.get("expires_in")
    if not isinstance(lifetime, (int, float)) or lifetime <= 0:
        lifetime = DEFAULT_TOKEN_LIFETIME
    return _Authorization(f"Bearer {token}", time.monotonic() + max(lifetime - TOKEN_EXPIRY_MARGIN, 0))


def _http_error(ref: ImageRef, reply: _Reply, peer: str) -> RegistryError:
    """Any status not handled more specifically: 429 and 5xx are retryable, others not."""
    if reply.status == 429:
        retry_after = _retry_after(reply.headers)
        hint = f", retry after {retry_after:g} s" if retry_after is not None else ""
        return RegistryError(f"image {ref}: rate limited by {peer} (HTTP 429{hint})")
    if reply.status >= 500:
        return RegistryError(f"image {ref}: HTTP {reply.status} from {peer}")
    codes = ", ".join(sorted(_error_codes(reply.body)))
    return RegistryError(f"image {ref}: HTTP {reply.status} from {peer}" + (f" ({codes})" if codes else ""),
                         retryable=False)


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


def _transient(status: int) -> bool:
    return status == 429 or status >= 500


def _retry_after(headers: CIMultiDictProxy[str]) -> float | None:
    """`Retry-After` in seconds (delta-seconds or an HTTP date), None when absent/bad."""
    value = headers.get("retry-after", "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _error_codes(body: bytes) -> set[str]:
    """The `errors[].code` values of a registry error body (distribution spec)."""
    try:
        errors = json.loads(body).get("errors")
        return {str(error["code"]) for error in errors if isinstance(error, dict) and "code" in error}
    except (ValueError, AttributeError, TypeError):
        return set()


def _headers(authorization: str | None) -> dict[str, str]:
    headers = {"Accept": ACCEPT}
    if authorization:
        headers["Authorization"] = authorization
    return headers


def _basic(credentials: Credentials) -> str:
    pair = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def _sha256(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _read_cached(path: Path, digest: str) -> bytes | None:
    """The cached manifest bytes if present and intact; a corrupt file is removed."""
    try:
        body = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("manifest cache %s unreadable (%s); fetching from the registry", path, e.strerror)
        return None
    if _sha256(body) != digest:
        log.warning("manifest cache %s does not match its digest; discarding it", path)
        path.unlink(missing_ok=True)
        return None
    return body


def _write_cached(path: Path, body: bytes) -> None:
    """Stores verified manifest bytes atomically (temp file in the same dir + rename).
    A failure only costs a refetch later, so it is logged, not raised."""
    temp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "wb") as file:
            file.write(body)
        os.replace(temp, path)
    except OSError as e:
        log.warning("cannot write manifest cache %s (%s)", path, e.strerror or e)
        if temp is not None:
            Path(temp).unlink(missing_ok=True)
