"""What a node pulls of an image, as blobs (pure): the manifest parsed as the agent parses
it (`pinsvc.adapters.registry.manifest`: Docker schema 2, OCI, lists and indexes, the
node's platform chosen as CRI-O chooses it), read for the blobs it names: the config and
the layers."""

from __future__ import annotations

import json

from pinsvc.adapters.registry.manifest import ManifestIndex, Platform, parse_manifest, platform_entry
from pinsvc.errors import RegistryError
from pinsvc.refs import ImageRef
from pinsvc.warm.plan import Blob


def child(ref: ImageRef, body: bytes, platform: Platform) -> str | None:
    """The digest of the platform manifest to fetch next when `body` (the manifest of
    `ref`) is a list or index, else None. Raises ImageNotFound (no entry for the platform)
    or RegistryError (not a manifest)."""
    manifest = _parse(ref, body, ref.digest)
    return platform_entry(ref, manifest, platform).digest if isinstance(manifest, ManifestIndex) else None


def blobs(ref: ImageRef, body: bytes, digest: str) -> set[Blob]:
    """The config and layer blobs of image manifest `body` (of `ref`'s repository), as
    the node will ask the cache for them. Raises RegistryError when it is not one."""
    manifest = _parse(ref, body, digest)
    if isinstance(manifest, ManifestIndex):
        raise RegistryError(f"image {ref}: platform manifest {digest} is itself an index "
                            f"(nested indexes are not supported)", retryable=False)
    config = json.loads(body)["config"]  # validated by parse_manifest
    found = {Blob(ref.repository, layer.digest, layer.size) for layer in manifest.layers}
    found.add(Blob(ref.repository, config["digest"], manifest.config_size))
    return found


def _parse(ref: ImageRef, body: bytes, digest: str):
    try:
        return parse_manifest(body, digest)
    except ValueError as e:
        raise RegistryError(f"image {ref}: manifest {digest} is unusable: {e}", retryable=False) from e
