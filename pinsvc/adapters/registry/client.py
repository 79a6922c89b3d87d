"""Registry manifest client: the compressed layer sizes of digest references.

The space check needs, for each image, the sizes of the layers the runtime will download.
`RegistryClient.layers(ref)` fetches the manifest by digest (Docker schema 2 or OCI),
verifies its sha256, resolves a manifest list / OCI index to the entry for the node's
platform (`manifest.py`) and returns the layers.

Manifests are content addressed, so parsed manifests are cached by digest in memory and,
with a `cache_dir`, their verified bytes on disk (`sha256-<hex>.json`). Concurrent requests
for one manifest share one fetch. Requests go through `transport.py` (bounded, retried)
and `auth.py` (anonymous first, then the registry's challenge).
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from types import TracebackType

from pinsvc import tracing
from pinsvc.adapters.registry.auth import Authenticator
from pinsvc.adapters.registry.manifest import (DEFAULT_PLATFORM, ImageLayers, Manifest, Platform, parse_manifest,
                                               platform_entry, sha256_digest)
from pinsvc.adapters.registry.transport import Reply, Transport, error_codes, http_error
from pinsvc.config import RegistrySettings
from pinsvc.errors import ImageNotFound, PinsvcError, RegistryError
from pinsvc.model import Credentials
from pinsvc.refs import ImageRef
from pinsvc.retry import Backoff

log = logging.getLogger(__name__)

MEMORY_CACHE_ENTRIES = 4096
"""Parsed manifests kept in memory (least recently used are dropped)."""


class RegistryClient:
    """Fetches manifests from OCI registries and reports their layers (see module doc).

    `timeout` bounds each HTTP attempt (seconds, 0 = off); a transient failure is tried
    again on `backoff` (a `Retry-After` longer than its cap is reported, not waited for).
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
        backoff: Backoff = RegistrySettings().backoff,
    ) -> None:
        if max_concurrency < 1 or backoff.attempts < 1:
            raise ValueError("max_concurrency and backoff.attempts must be at least 1")
        self.platform = Platform(*platform)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._transport = Transport(insecure_hosts=insecure_hosts, timeout=timeout,
                                    max_concurrency=max_concurrency, backoff=backoff)
        self._auth = Authenticator(self._transport, credentials)
        self._memory: OrderedDict[str, Manifest] = OrderedDict()
        self._inflight: dict[tuple[str, str, str], asyncio.Task[Manifest]] = {}

    async def layers(self, ref: ImageRef) -> ImageLayers:
        """The layers of `ref` for the node's platform.

        Raises ImageNotFound, Unauthorized or RegistryError (`retryable` says whether
        trying again later can help), each naming the image.
        """
        manifest = await self._manifest(ref, ref.digest)
        if isinstance(manifest, ImageLayers):
            return manifest
        entry = platform_entry(ref, manifest, self.platform)
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
        await self._transport.aclose()

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
        url = f"{self._transport.base_url(ref.host)}/v2/{ref.path}/manifests/{digest}"
        # the HTTP requests (token, manifest, retries) are CLIENT spans of their own (tracing.http_trace_configs)
        with tracing.span("manifest", {**tracing.image_attributes(str(ref)), "oci.manifest.digest": digest}):
            reply = await self._auth.get(ref, url)
            if reply.status != 200:
                tracing.set_error(f"HTTP {reply.status}")
        if reply.status != 200:
            raise self._manifest_error(ref, digest, reply)
        actual = sha256_digest(reply.body)
        if actual != digest:
            raise RegistryError(f"image {ref}: {ref.host} served a manifest whose digest is "
                                f"{actual}, not {digest}; refusing it", retryable=False)
        log.debug("image %s: fetched manifest %s (%d bytes)", ref, digest, len(reply.body))
        return reply.body

    def _manifest_error(self, ref: ImageRef, digest: str, reply: Reply) -> PinsvcError:
        """The error for a manifest GET that did not answer 200."""
        codes = error_codes(reply.body)
        if reply.status == 404 or {"MANIFEST_UNKNOWN", "NAME_UNKNOWN"} & codes:
            if "NAME_UNKNOWN" in codes:
                what = f"repository {ref.path}"
            else:
                what = "manifest" if digest == ref.digest else f"platform manifest {digest}"
            return ImageNotFound(f"image {ref}: {what} unknown on {ref.host}")
        if reply.status in (401, 403):
            return self._auth.unauthorized(ref)
        return http_error(ref, reply, ref.host)


def _read_cached(path: Path, digest: str) -> bytes | None:
    """The cached manifest bytes if present and intact; a corrupt file is removed."""
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
