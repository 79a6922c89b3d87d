"""Manifests, pure: parsing a Docker schema 2 / OCI manifest or a manifest list / OCI
index, and choosing the index entry for the node's platform the way CRI-O
(containers/image) chooses it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from platform import machine
from typing import NamedTuple

from pinsvc.errors import ImageNotFound, RegistryError
from pinsvc.model import Layer
from pinsvc.refs import ImageRef

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
ACCEPT = ", ".join((DOCKER_MANIFEST, OCI_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX))

_DIGEST = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_SHA256_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
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
    config_digest: str = ""


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


def platform_entry(ref: ImageRef, index: ManifestIndex, node: Platform) -> PlatformManifest:
    """The entry of `ref`'s index that the node pulls. Raises ImageNotFound naming the
    platforms the index has, or RegistryError when the entry's digest is not sha256."""
    entry = choose_platform(index.entries, node)
    if entry is None:
        available = ", ".join(sorted({str(e.platform) for e in index.entries})) or "none"
        raise ImageNotFound(f"image {ref}: no manifest for platform {node} in its "
                            f"index (available: {available})")
    if not _SHA256_DIGEST.match(entry.digest):
        raise RegistryError(f"image {ref}: the {node} manifest {entry.digest} does "
                            f"not use a sha256 digest", retryable=False)
    return entry


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


def sha256_digest(body: bytes) -> str:
    """The `sha256:<hex>` digest of some bytes."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _parse_image_manifest(document: dict, digest: str) -> ImageLayers:
    config, layers = document.get("config"), document.get("layers")
    if not isinstance(config, dict) or not isinstance(layers, list):
        raise ValueError("no 'config' object or no 'layers' list")
    config_digest, config_size = _descriptor(config, "config")
    return ImageLayers(manifest_digest=digest,
                       layers=tuple(Layer(*_descriptor(layer, "layer")) for layer in layers),
                       config_size=config_size, config_digest=config_digest)


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


def parse_config_diff_ids(body: bytes) -> tuple[str, ...]:
    """The `rootfs.diff_ids` of an image config (the uncompressed layer digests, in the
    order of the manifest's layers). Raises ValueError when there are none to read."""
    try:
        document = json.loads(body)
        diff_ids = document["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"no rootfs.diff_ids ({type(e).__name__})") from e
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) and _DIGEST.match(d) for d in diff_ids):
        raise ValueError("rootfs.diff_ids is not a list of digests")
    return tuple(diff_ids)
