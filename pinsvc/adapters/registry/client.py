"""Registry manifest client: the compressed layer sizes of digest references, read from the
endpoint the runtime pulls them from.

The space check needs, for each image, the sizes of the layers the runtime will download.
`RegistryClient.sized(image, endpoints)` tries the image's endpoints (registries.conf
mirrors, then its own registry) in the runtime's order (`endpoints.py`), fetches the
manifest by digest (Docker schema 2 or OCI), verifies its sha256, resolves a manifest list /
OCI index to the entry for the node's platform (`manifest.py`) and returns the layers with
the endpoint that served them; with `diff_ids`, also the layers' uncompressed digests from
the image config (same endpoints).

Each endpoint is asked with its own credentials (`credentials(image, endpoint)`: the pull
secret as the runtime reads it there, so the image's own registry's credentials never go to
a mirror on another host) and its own TLS (`transport.py`). An image's own registry alone is
asked with per-request retries; a chain of endpoints is asked once per endpoint, moving on
at the first failure as the runtime does, and the whole chain is tried again when every
endpoint failed in a way a retry may cure.

Manifests and configs are content addressed, so they are cached by digest in memory and,
with a `cache_dir`, their verified bytes on disk (`sha256-<hex>.json`): a cached one is not
fetched again, from any endpoint. `cached_layers` reads that cache only, never a registry.
Concurrent requests for one document at one endpoint share one fetch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import tempfile
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from pinsvc import tracing
from pinsvc.adapters.registries_conf import DEFAULT_CERTS_DIRS
from pinsvc.adapters.registry.auth import Authenticator
from pinsvc.adapters.registry.endpoints import Trail, deadline_passed, is_own, none_served, own_endpoint
from pinsvc.adapters.registry.manifest import (DEFAULT_PLATFORM, ImageLayers, Manifest, ManifestIndex, Platform,
                                               choose_platform, parse_config_diff_ids, parse_manifest,
                                               platform_entry, sha256_digest)
from pinsvc.adapters.registry.transport import Reply, Target, Transport, error_codes, http_error
from pinsvc.config import RegistrySettings
from pinsvc.errors import ImageNotFound, PinsvcError, RegistryError
from pinsvc.mirrors.resolve import Endpoint
from pinsvc.model import Credentials, Layer, SizedImage
from pinsvc.refs import ImageRef
from pinsvc.retry import Backoff, retry

log = logging.getLogger(__name__)
T = TypeVar("T")

MEMORY_CACHE_ENTRIES = 4096
"""Parsed manifests and configs kept in memory (least recently used are dropped)."""
ONE_ATTEMPT = Backoff(attempts=1)
_MANIFESTS, _BLOBS = "manifests", "blobs"
_SHA256_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class _Cached:
    """A parsed manifest, or the diff_ids of a config, and the endpoint repository that
    served it ("" = read from the disk cache)."""

    document: Manifest | tuple[str, ...]
    via: str


class RegistryClient:
    """Fetches manifests from OCI registries and reports their layers (see module doc).

    `timeout` bounds each HTTP attempt (seconds, 0 = off); a transient failure is tried
    again on `backoff` (a `Retry-After` longer than its cap is reported, not waited for).
    `insecure_hosts` are insecure whatever the registries configuration says.
    """

    def __init__(
        self,
        *,
        insecure_hosts: Collection[str] = (),
        credentials: Callable[[ImageRef, ImageRef], Credentials | None] = lambda image, endpoint: None,
        platform: tuple[str, str, str] = DEFAULT_PLATFORM,
        timeout: float = 10,
        max_concurrency: int = 16,
        cache_dir: Path | None = None,
        backoff: Backoff = RegistrySettings().backoff,
        certs_dirs: Sequence[Path] = DEFAULT_CERTS_DIRS,
    ) -> None:
        if max_concurrency < 1 or backoff.attempts < 1:
            raise ValueError("max_concurrency and backoff.attempts must be at least 1")
        self.platform = Platform(*platform)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._transport = Transport(insecure_hosts=insecure_hosts, timeout=timeout,
                                    max_concurrency=max_concurrency, backoff=backoff, certs_dirs=certs_dirs)
        self._auth = Authenticator(self._transport, credentials)
        self._memory: OrderedDict[str, _Cached] = OrderedDict()
        self._absent: set[str] = set()  # digests the disk cache does not have
        self._inflight: dict[tuple[str, str, str], asyncio.Task[_Cached]] = {}

    async def layers(self, ref: ImageRef, endpoints: Sequence[Endpoint] = ()) -> ImageLayers:
        """The layers of `ref` for the node's platform, from the first of `endpoints` (default:
        its own registry) that serves them.

        Raises ImageNotFound, Unauthorized or RegistryError (`retryable` says whether
        trying again later can help), naming the image and, with several endpoints, each.
        """
        (manifest, _), _ = await self._first(ref, tuple(endpoints) or (own_endpoint(ref),), Trail(),
                                             self._platform_manifest)
        return manifest

    async def sized(self, image: ImageRef, endpoints: Sequence[Endpoint], *, diff_ids: bool = False,
                    trail: Trail | None = None) -> SizedImage:
        """`layers()` of `image` with the endpoint that served them; with `diff_ids`, each
        layer's uncompressed digest too, when its image config can be read (else none)."""
        endpoints = tuple(endpoints) or (own_endpoint(image),)
        (manifest, via), _ = await self._first(image, endpoints, trail if trail is not None else Trail(),
                                               self._platform_manifest)
        layers = manifest.layers
        if diff_ids and manifest.config_digest:
            try:
                cached, _ = await self._first(image, endpoints, Trail(), lambda target, backoff: self._document(
                    target, manifest.config_digest, _BLOBS, backoff))
            except PinsvcError as e:
                log.debug("image %s: no diff_ids, the image config is not readable: %s", image, e)
            else:
                if len(cached.document) == len(layers):
                    layers = tuple(replace(layer, diff_id=d) for layer, d in zip(layers, cached.document))
        return SizedImage(layers, via)

    async def many(self, wanted: Mapping[ImageRef, Sequence[Endpoint]], *, diff_ids: bool = False,
                   timeout: float | None = None) -> dict[ImageRef, SizedImage | PinsvcError]:
        """`sized()` of every image, concurrently; a failure is returned as the error for its
        image. `timeout` (seconds, None = none) bounds the whole call: an image not sized by
        then gets a RegistryError naming the endpoints tried and the one waited on."""
        trails = {ref: Trail() for ref in wanted}
        tasks = {ref: asyncio.create_task(self._sized_or_error(ref, endpoints, diff_ids, trails[ref]))
                 for ref, endpoints in wanted.items()}
        if not tasks:
            return {}
        pending = set(tasks.values())
        try:
            _, pending = await asyncio.wait(tasks.values(), timeout=timeout)
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        return {ref: deadline_passed(ref, timeout or 0, trails[ref]) if task.cancelled() else task.result()
                for ref, task in tasks.items()}

    async def cached_layers(self, digests: Iterable[str]) -> dict[str, tuple[Layer, ...]]:
        """The layers of the manifests among `digests` the cache holds (an index resolved to
        the node's platform, when that manifest is cached too). Never contacts a registry."""
        wanted = [d for d in dict.fromkeys(digests) if _SHA256_DIGEST.fullmatch(d)]
        await self._from_disk(wanted)
        found, children = {}, {}
        for digest in wanted:
            document = self._memory[digest].document if digest in self._memory else None
            if isinstance(document, ImageLayers):
                found[digest] = document.layers
            elif isinstance(document, ManifestIndex) and (entry := choose_platform(document.entries, self.platform)):
                children[digest] = entry.digest
        await self._from_disk(list(children.values()))
        for digest, child in children.items():
            if child in self._memory and isinstance(self._memory[child].document, ImageLayers):
                found[digest] = self._memory[child].document.layers
        return found

    async def aclose(self) -> None:
        """Cancels fetches still running and closes the connections."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._transport.aclose()

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _sized_or_error(self, ref: ImageRef, endpoints: Sequence[Endpoint], diff_ids: bool,
                              trail: Trail) -> SizedImage | PinsvcError:
        try:
            return await self.sized(ref, endpoints, diff_ids=diff_ids, trail=trail)
        except PinsvcError as e:
            return e

    # -- the endpoints, in order ---------------------------------------------------------

    async def _first(self, image: ImageRef, endpoints: tuple[Endpoint, ...], trail: Trail,
                     fetch: Callable[[Target, Backoff], Awaitable[T]]) -> tuple[T, Target]:
        """`fetch` at the first endpoint that answers it (see the module doc)."""
        if is_own(image, endpoints):
            target = self._target(image, endpoints[0])
            trail.waiting = endpoints[0]
            return await fetch(target, self._transport.backoff), target

        async def one_pass(_: int) -> tuple[T, Target]:
            trail.restart()
            for endpoint in endpoints:
                if endpoint.refused:
                    trail.refused(endpoint)
                    continue
                target = self._target(image, endpoint)
                trail.waiting = endpoint
                try:
                    return await fetch(target, ONE_ATTEMPT), target
                except PinsvcError as e:
                    trail.waiting = None
                    trail.failed(endpoint, e)
            raise none_served(image, trail)

        return await retry(one_pass, self._transport.backoff, what=f"image {image}", logger=log)

    @staticmethod
    def _target(image: ImageRef, endpoint: Endpoint) -> Target:
        return Target(endpoint.ref, insecure=endpoint.insecure, image=image)

    async def _platform_manifest(self, target: Target, backoff: Backoff) -> tuple[ImageLayers, str]:
        """The manifest of the node's platform at `target`, and who served the top one."""
        ref = target.ref
        top = await self._document(target, ref.digest, _MANIFESTS, backoff)
        if isinstance(top.document, ImageLayers):
            return top.document, top.via
        entry = platform_entry(ref, top.document, self.platform)
        child = (await self._document(target, entry.digest, _MANIFESTS, backoff)).document
        if not isinstance(child, ImageLayers):
            raise RegistryError(f"image {ref}: the {self.platform} entry {entry.digest} is itself "
                                f"an index (nested indexes are not supported)", retryable=False)
        return child, top.via

    # -- cache and single flight ------------------------------------------------------

    async def _document(self, target: Target, digest: str, kind: str, backoff: Backoff) -> _Cached:
        """Document `digest` (a manifest, or a config under `blobs`) of the target's
        repository: from memory, else one shared load."""
        cached = self._memory.get(digest)
        if cached is not None:
            self._memory.move_to_end(digest)
            return cached
        key = (target.ref.host, target.ref.path, digest)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._load(target, digest, kind, backoff), name=f"{kind} {digest}")
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(task)

    def _forget(self, key: tuple[str, str, str], task: asyncio.Task[_Cached]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: a load every waiter gave up on is not logged as lost

    async def _load(self, target: Target, digest: str, kind: str, backoff: Backoff) -> _Cached:
        """Reads the document from the disk cache or the endpoint, parses and remembers it."""
        ref, path = target.ref, self._cache_path(digest)
        body = await asyncio.to_thread(_read_cached, path, digest) if path and digest not in self._absent else None
        fetched = body is None
        if body is None:
            body = await self._fetch(target, digest, kind, backoff)
        try:
            document = parse_manifest(body, digest) if kind == _MANIFESTS else parse_config_diff_ids(body)
        except ValueError as e:
            what = "manifest" if kind == _MANIFESTS else "image config"
            raise RegistryError(f"image {ref}: {what} {digest} from {ref.host} is unusable: {e}",
                                retryable=False) from e
        if fetched and path:
            await asyncio.to_thread(_write_cached, path, body)
        entry = _Cached(document, ref.repository if fetched else "")
        self._remember(digest, entry)
        return entry

    def _remember(self, digest: str, entry: _Cached) -> None:
        self._memory[digest] = entry
        self._absent.discard(digest)
        while len(self._memory) > MEMORY_CACHE_ENTRIES:
            self._memory.popitem(last=False)

    async def _from_disk(self, digests: list[str]) -> None:
        """Puts the manifests among `digests` that the disk cache has into memory, and
        remembers which it does not have (the next check does not look again)."""
        todo = [d for d in digests if d not in self._memory and d not in self._absent]
        if not todo or self.cache_dir is None:
            return
        bodies = await asyncio.to_thread(lambda: [(d, _read_cached(self._cache_path(d), d)) for d in todo])
        if len(self._absent) > 4 * MEMORY_CACHE_ENTRIES:
            self._absent.clear()
        for digest, body in bodies:
            if body is None:
                self._absent.add(digest)
                continue
            try:
                self._remember(digest, _Cached(parse_manifest(body, digest), ""))
            except ValueError as e:
                log.debug("manifest cache: %s is not a usable manifest (%s)", digest, e)

    def _cache_path(self, digest: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{digest.replace(':', '-', 1)}.json"

    # -- fetching -----------------------------------------------------------------------

    async def _fetch(self, target: Target, digest: str, kind: str, backoff: Backoff) -> bytes:
        """GET the manifest or config blob, map failures to the error tree, verify the digest."""
        ref = target.ref
        what = "manifest" if kind == _MANIFESTS else "config"
        # the HTTP requests (token, manifest, retries) are CLIENT spans of their own (tracing.http_trace_configs)
        with tracing.span(what, {**tracing.image_attributes(str(ref)), f"oci.{what}.digest": digest}):
            reply = await self._auth.get(target, f"/v2/{ref.path}/{kind}/{digest}", backoff=backoff)
            if reply.status != 200:
                tracing.set_error(f"HTTP {reply.status}")
        if reply.status != 200:
            raise self._fetch_error(target, digest, kind, reply)
        actual = sha256_digest(reply.body)
        if actual != digest:
            raise RegistryError(f"image {ref}: {ref.host} served a {what} whose digest is "
                                f"{actual}, not {digest}; refusing it", retryable=False)
        log.debug("image %s: fetched %s %s (%d bytes) from %s", ref, what, digest, len(reply.body), ref.host)
        return reply.body

    def _fetch_error(self, target: Target, digest: str, kind: str, reply: Reply) -> PinsvcError:
        """The error for a GET that did not answer 200."""
        ref, codes = target.ref, error_codes(reply.body)
        if reply.status == 404 or {"MANIFEST_UNKNOWN", "NAME_UNKNOWN", "BLOB_UNKNOWN"} & codes:
            if "NAME_UNKNOWN" in codes:
                what = f"repository {ref.path}"
            elif kind == _BLOBS:
                what = f"image config {digest}"
            else:
                what = "manifest" if digest == ref.digest else f"platform manifest {digest}"
            return ImageNotFound(f"image {ref}: {what} unknown on {ref.host}")
        if reply.status in (401, 403):
            return self._auth.unauthorized(target)
        return http_error(ref, reply, ref.host)


def _read_cached(path: Path, digest: str) -> bytes | None:
    """The cached bytes if present and intact; a corrupt file is removed."""
    try:
        body = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("manifest cache %s unreadable (%s); fetching from the registry", path, e.strerror)
        return None
    if sha256_digest(body) != digest:
        log.warning("manifest cache %s does not match its digest; discarding it", path)
        path.unlink(missing_ok=True)
        return None
    return body


def _write_cached(path: Path, body: bytes) -> None:
    """Stores verified bytes atomically (temp file in the same dir + rename). A failure
    only costs a refetch later, so it is logged, not raised."""
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
