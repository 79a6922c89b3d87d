"""Space check: will the missing images fit on the image filesystem?

`plan_space` is the pure decision; `SpaceChecker` gathers its inputs: presence from the
runtime, compressed layer sizes from the registry manifests (fetched concurrently, cached by
digest), layers already on the node from the manifests of the images the runtime reports,
and free bytes from statvfs of the mountpoint the runtime's ImageFsInfo names.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

from pinsvc import errors
from pinsvc.config import SpaceSettings
from pinsvc.core.ports import ImageRuntime, ManifestSource
from pinsvc.model import ImagePlan, Layer, RuntimeImage, SpacePlan
from pinsvc.refs import parse_reference, reference_problem

log = logging.getLogger("pinsvc.space")


@dataclass(frozen=True)
class FsStat:
    mountpoint: str
    free_bytes: int
    total_bytes: int
    used_bytes: int


def statvfs(mountpoint: str) -> FsStat:
    """Free bytes as an unprivileged writer sees them (f_bavail), like df."""
    st = os.statvfs(mountpoint)
    return FsStat(mountpoint, st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize,
                  (st.f_blocks - st.f_bfree) * st.f_frsize)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def plan_space(images: list[str], present: set[str], layers: dict[str, tuple[Layer, ...]],
               layers_on_node: set[str], fs: FsStat, settings: SpaceSettings) -> SpacePlan:
    """Decides whether pulling the missing images fits. Each layer is counted once across
    the request and not at all when the node already has it."""
    counted = set(layers_on_node)
    plans, compressed = [], 0
    for image in images:
        if image in present:
            plans.append(ImagePlan(image, present=True))
            continue
        own = layers[image]
        new = [layer for layer in own if layer.digest not in counted]
        counted.update(layer.digest for layer in own)
        new_bytes = sum(layer.size for layer in new)
        compressed += new_bytes
        plans.append(ImagePlan(image, present=False, compressed_bytes=sum(l.size for l in own),
                               layers=len(own), layers_shared=len(own) - len(new), new_bytes=new_bytes))
    required = int(compressed * settings.decompression_factor)
    free_after = fs.free_bytes - required
    usage_after = 100.0 * (fs.used_bytes + required) / fs.total_bytes if fs.total_bytes else 100.0
    missing = tuple(p.image for p in plans if not p.present)
    numbers = (f"{human(required)} needed ({human(compressed)} compressed x "
               f"{settings.decompression_factor:g}) on {fs.mountpoint}: {human(fs.free_bytes)} free")
    if not missing:
        fits, verdict = True, f"all {len(plans)} images are present; nothing to pull"
    elif free_after < settings.min_free_bytes:
        fits = False
        verdict = (f"insufficient space: {numbers}, which would leave {human(max(free_after, 0))}, "
                   f"below the minimum free of {human(settings.min_free_bytes)}")
    elif usage_after > settings.max_usage_percent:
        fits = False
        verdict = (f"insufficient space: {numbers}; usage would reach {usage_after:.1f}%, "
                   f"above the threshold of {settings.max_usage_percent:g}%")
    else:
        fits = True
        verdict = (f"fits: {numbers}, leaving {human(free_after)} "
                   f"(minimum {human(settings.min_free_bytes)}), usage {usage_after:.1f}% "
                   f"(threshold {settings.max_usage_percent:g}%)")
    return SpacePlan(images=tuple(plans), compressed_bytes=compressed, required_bytes=required,
                     free_bytes=fs.free_bytes, total_bytes=fs.total_bytes, mountpoint=fs.mountpoint,
                     decompression_factor=settings.decompression_factor,
                     min_free_bytes=settings.min_free_bytes,
                     max_usage_percent=settings.max_usage_percent,
                     usage_after_percent=usage_after, fits=fits, verdict=verdict, missing=missing)


def present_in(images: list[RuntimeImage]) -> dict[str, RuntimeImage]:
    """Runtime images by lower-cased repo digest (CRI-O matches names case-insensitively)."""
    return {d.lower(): img for img in images for d in img.repo_digests}


async def find_present(runtime: ImageRuntime, images: list[str], listed: list[RuntimeImage],
                       concurrency: int = 16) -> set[str]:
    """Images the runtime has: a repo digest in ListImages, else an ImageStatus by exactly
    this reference (which also finds an image known under another name)."""
    by_digest = present_in(listed)
    unknown = [i for i in images if i.lower() not in by_digest]
    gate = asyncio.Semaphore(concurrency)

    async def status(image: str) -> bool:
        async with gate:
            return await runtime.image_status(image) is not None

    found = await asyncio.gather(*(status(i) for i in unknown))
    return {i for i in images if i.lower() in by_digest} | {i for i, ok in zip(unknown, found) if ok}


class SpaceChecker:
    def __init__(self, runtime: ImageRuntime, manifests: ManifestSource, settings: SpaceSettings):
        self.runtime = runtime
        self.manifests = manifests
        self.settings = settings

    async def filesystem(self) -> FsStat:
        filesystems = await self.runtime.image_fs()
        if not filesystems or not filesystems[0].mountpoint:
            raise errors.RuntimeError_("the runtime's ImageFsInfo reports no image filesystem")
        mountpoint = filesystems[0].mountpoint
        try:
            return await asyncio.to_thread(statvfs, mountpoint)
        except OSError as e:
            raise errors.RuntimeError_(
                f"cannot statvfs the image filesystem {mountpoint} reported by the runtime: {e}") from e

    async def plan(self, images: list[str], present: set[str] | None = None,
                   listed: list[RuntimeImage] | None = None
                   ) -> tuple[SpacePlan, dict[str, errors.PinsvcError]]:
        """The plan for `images` (validated references), and the images that could not be
        sized with why (e.g. ImageNotFound naming the image); those are left out of the plan."""
        if listed is None:
            listed = await self.runtime.list_images()
        if present is None:
            present = await find_present(self.runtime, images, listed)
        missing = [i for i in images if i not in present]
        fs_task = asyncio.ensure_future(self.filesystem())
        try:
            layers, failed = await self._layers(missing)
            on_node = await self._layers_on_node(listed) if layers else set()
            fs = await fs_task
        finally:
            fs_task.cancel()
        sized = [i for i in images if i not in failed]
        return plan_space(sized, present, layers, on_node, fs, self.settings), failed

    async def _layers(self, images: list[str]
                      ) -> tuple[dict[str, tuple[Layer, ...]], dict[str, errors.PinsvcError]]:
        refs = [parse_reference(i) for i in images]
        fetched = await self.manifests.many(refs) if refs else {}
        layers, failed = {}, {}
        for image, ref in zip(images, refs):
            result = fetched[ref]
            if isinstance(result, Exception):
                failed[image] = errors.combined([result])
            else:
                layers[image] = result.layers
        return layers, failed

    async def _layers_on_node(self, listed: list[RuntimeImage]) -> set[str]:
        """Layer digests of the images the runtime has, from their manifests. An image whose
        manifest cannot be read (registry gone, foreign name) just counts as no layers."""
        refs = []
        for img in listed:
            for digest in img.repo_digests:
                if reference_problem(digest) is None:
                    refs.append(parse_reference(digest))
                    break
        if not refs:
            return set()
        fetched = await self.manifests.many(refs)
        layers = set()
        for ref, result in fetched.items():
            if isinstance(result, Exception):
                log.debug("cannot read layers of present image %s: %s", ref, result)
                continue
            layers.update(l.digest for l in result.layers)
        return layers
