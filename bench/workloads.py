"""The benchmark workloads, built with the project's image fixtures (`devenv.images`)
and pushed once into a registry whose storage is cached across runs.

- W100: 100 images shaped like a scaled-down release payload: every image has the `os`
  base layer and a combination of the `runtime-a`, `runtime-b` and `tools` bases (5
  combinations), then 1-3 unique layers of 1-2 MiB in total (incompressible, gzip level 0).
- W500: 500 small images (the PinnedImageSet maximum): one of 5 shared 256 KiB bases and
  one unique 32 KiB layer.
- WBIG-1L / WBIG-4L: 3 images of 1 GiB each, one 1 GiB layer each, or 4 layers of 256 MiB.
  Their layers are streamed (generated in 64 MiB chunks, digested and uploaded in chunks),
  never held in memory whole.

The registry's storage lives in `~/.cache/pinsvc/bench/registry` (`$PINSVC_CACHE`): a
workload is generated and pushed only when its marker (`pushed-<key>.json`, the references
without the host) is missing, so reruns do not regenerate GiBs.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from devenv.images import DOCKER_LAYER, Blob, Image, build_image, make_layer, push_many
from devenv.paths import cache_dir

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
CHUNK = 64 * MiB
SPEC_VERSION = 1
"""Bumped when a workload's shape changes, so stale cached pushes are not reused."""


@dataclass(frozen=True)
class Workload:
    """A named workload: `refs` (digest references on the registry) and its numbers."""

    name: str
    refs: tuple[str, ...]
    facts: dict


def registry_root() -> Path:
    return cache_dir() / "bench" / "registry"


# ---- shapes ------------------------------------------------------------------------------


RELEASE_BASES = (("os", 2 * MiB), ("runtime-a", 1 * MiB), ("runtime-b", 1 * MiB), ("tools", 512 * KiB))
RELEASE_COMBOS = ((0,), (0, 1), (0, 2), (0, 1, 3), (0, 2, 3))


def release_images(n: int = 100) -> list[Image]:
    """W100: a scaled-down release payload (see the module doc)."""
    bases = [make_layer(f"bench/release/base/{name}", size) for name, size in RELEASE_BASES]
    images = []
    for i in range(n):
        combo = [bases[b] for b in RELEASE_COMBOS[i % len(RELEASE_COMBOS)]]
        count = 1 + (i * 7) % 3
        total = 1 * MiB + ((i * 37) % 9) * 128 * KiB
        unique = [make_layer(f"bench/release/{i}/{j}", total // count) for j in range(count)]
        images.append(build_image(f"pinsvc-bench/release-{i:03d}", [*combo, *unique]))
    return images


def small_images(n: int = 500) -> list[Image]:
    """W500: many small images (see the module doc)."""
    bases = [make_layer(f"bench/small/base/{b}", 256 * KiB) for b in range(5)]
    return [build_image(f"pinsvc-bench/small-{i:03d}",
                        [bases[i % 5], make_layer(f"bench/small/{i}", 32 * KiB)]) for i in range(n)]


def facts_of(images: list[Image]) -> dict:
    layers = {layer.digest: layer.size for img in images for layer in img.layers}
    per_image = [len(img.layers) for img in images]
    return {
        "images": len(images),
        "layers": sum(per_image),
        "unique_layers": len(layers),
        "layers_per_image": [min(per_image), max(per_image)] if per_image else [0, 0],
        "total_compressed_mib": round(sum(img.compressed_bytes for img in images) / MiB, 1),
        "unique_compressed_mib": round(sum(layers.values()) / MiB, 1),
    }


# ---- big layers, streamed ----------------------------------------------------------------


def _random_chunks(seed: str, size: int) -> Iterator[bytes]:
    """`size` incompressible bytes, deterministic in `seed`, in CHUNK pieces."""
    for index, start in enumerate(range(0, size, CHUNK)):
        yield random.Random(f"{seed}/{index}").randbytes(min(CHUNK, size - start))


def _tar_stream(name: str, seed: str, size: int) -> Iterator[bytes]:
    """A tar (fixed headers, as `images._tar_one_file`) of one file, streamed."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid = size, 0, 0o644, 0, 0
    info.uname = info.gname = ""
    yield info.tobuf(format=tarfile.USTAR_FORMAT)
    yield from _random_chunks(seed, size)
    padding = (-size) % tarfile.BLOCKSIZE
    yield b"\0" * padding + b"\0" * (2 * tarfile.BLOCKSIZE)  # end of archive
    # tarfile also pads the archive to RECORDSIZE; not needed by any reader


def big_layer_chunks(seed: str, size: int, digests: dict) -> Iterator[bytes]:
    """The gzip (level 0) blob of a one-file tar of `size` random bytes, streamed; fills
    `digests` with "digest", "diff_id" and "size" when the stream ends."""
    tar_hash, gz_hash, total = hashlib.sha256(), hashlib.sha256(), 0
    gz = zlib.compressobj(0, zlib.DEFLATED, 31)
    for piece in _tar_stream(f"pinsvc-{seed.replace('/', '-')}.bin", seed, size):
        tar_hash.update(piece)
        out = gz.compress(piece)
        if out:
            gz_hash.update(out)
            total += len(out)
            yield out
    out = gz.flush()
    gz_hash.update(out)
    total += len(out)
    yield out
    digests.update(digest="sha256:" + gz_hash.hexdigest(), diff_id="sha256:" + tar_hash.hexdigest(), size=total)


async def upload_streamed(client: httpx.AsyncClient, repo: str, chunks: Iterator[bytes], digests: dict) -> None:
    """Chunked blob upload (POST, PATCH per piece, PUT ?digest=) of a streamed layer."""
    response = await client.post(f"/v2/{repo}/blobs/uploads/")
    response.raise_for_status()
    location, offset, buffer = response.headers["Location"], 0, io.BytesIO()

    async def patch(data: bytes) -> str:
        r = await client.patch(location, content=data, headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{offset}-{offset + len(data) - 1}"})
        r.raise_for_status()
        return r.headers["Location"]

    for piece in chunks:
        buffer.write(piece)
        if buffer.tell() >= CHUNK:
            data = buffer.getvalue()
            location = await patch(data)
            offset += len(data)
            buffer = io.BytesIO()
    if buffer.tell():
        location = await patch(buffer.getvalue())
    url = client.base_url.join(location).copy_merge_params({"digest": digests["digest"]})
    response = await client.put(str(url))
    if response.status_code != 201:
        raise RuntimeError(f"upload of {digests['digest']} to {repo}: HTTP {response.status_code} {response.text[:200]}")


async def push_big(registry: str, variant: str, *, images: int = 3, size: int = GiB, layers: int = 1) -> list[Image]:
    """WBIG: `images` images of `size` bytes in `layers` equal layers, streamed to the registry."""
    built = []
    async with httpx.AsyncClient(base_url=f"http://{registry}", timeout=600, trust_env=False) as client:
        for i in range(images):
            repo = f"pinsvc-bench/{variant.lower()}-{i}"
            blobs = []
            for j in range(layers):
                digests: dict = {}
                seed = f"bench/{variant}/{size}/{i}/{j}"
                await upload_streamed(client, repo, big_layer_chunks(seed, size // layers, digests), digests)
                blobs.append(Blob(digests["digest"], digests["size"], b"", DOCKER_LAYER, digests["diff_id"]))
            built.append(build_image(repo, blobs))
    await push_many(registry, built)  # config + manifest; the layers are found by HEAD
    return built


# ---- cached pushing ------------------------------------------------------------------------


def _marker(key: str) -> Path:
    return registry_root() / f"pushed-{key}.json"


async def ensure(registry_host: str, name: str, key: str, build) -> Workload:
    """The workload `name`, pushed unless the cached registry storage already holds it.
    `build(host)` pushes and returns the images; the marker keeps refs and facts."""
    marker = _marker(f"v{SPEC_VERSION}-{key}")
    if marker.exists():
        saved = json.loads(marker.read_text())
        refs = tuple(f"{registry_host}/{r}" for r in saved["refs"])
        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
            for ref in (refs[0], refs[-1]):
                host, _, rest = ref.partition("/")
                repo, _, digest = rest.partition("@")
                r = await client.head(f"http://{host}/v2/{repo}/manifests/{digest}",
                                      headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
                if r.status_code != 200:
                    break
            else:
                return Workload(name, refs, {**saved["facts"], "push_seconds": 0.0, "cached": True})
    t0 = time.perf_counter()
    images = await build(registry_host)
    facts = facts_of(images)
    marker.write_text(json.dumps({"refs": [f"{img.repo}@{img.digest}" for img in images], "facts": facts}) + "\n")
    return Workload(name, tuple(img.ref(registry_host) for img in images),
                    {**facts, "push_seconds": round(time.perf_counter() - t0, 1), "cached": False})


async def _push_images(host: str, images: list[Image]) -> list[Image]:
    await push_many(host, images)
    return images


async def w100(host: str, n: int = 100) -> Workload:
    return await ensure(host, "W100", f"w100-{n}", lambda h: _push_images(h, release_images(n)))


async def w500(host: str, n: int = 500) -> Workload:
    return await ensure(host, "W500", f"w500-{n}", lambda h: _push_images(h, small_images(n)))


async def wbig(host: str, layers: int, *, images: int = 3, size: int = GiB) -> Workload:
    variant = f"WBIG-{layers}L"
    return await ensure(host, variant, f"wbig-{layers}-{images}-{size}",
                        lambda h: push_big(h, variant, images=images, size=size, layers=layers))


if __name__ == "__main__":  # a quick look: python -m bench.workloads
    for name, imgs in (("W100", release_images()), ("W500", small_images())):
        print(name, facts_of(imgs))
