"""Space check: will the missing images fit on the image filesystem?

`plan_space` is the pure decision; `SpaceChecker` gathers its inputs, all within one
deadline (`space.deadline_seconds`):
- presence from the runtime (ListImages, then ImageStatus for names it does not list);
- the missing images' compressed layer sizes from their manifests, fetched from the
  endpoints the runtime pulls them from (registries.conf mirrors in the runtime's order,
  `pinsvc.mirrors.resolve`): the first endpoint that serves a manifest sizes the image, and
  the plan names it (`via`), since the runtime pulls from it too;
- the layers already on the node, from the node only (below);
- free bytes from statvfs of the mountpoint the runtime's ImageFsInfo names.

Layers already on the node are never asked of a registry: the registry of an unrelated
image may be down or silent, and it would stall every Apply. Two local sources:
1. The agent's manifest cache. A present image's repo digest is its manifest digest, and the
   manifest of every image the agent sized (so of every image it pulled) is kept on disk by
   digest: it lists the compressed digests of the layers, what the missing images'
   manifests list. No request at all.
2. For present images not in that cache (pulled by the kubelet, or before the agent ran),
   the runtime itself: CRI-O's verbose ImageStatus returns the image config in its `info`
   (`imageSpec.rootfs.diff_ids`, the uncompressed digests). Comparing them needs the
   missing images' diff_ids too, from their config blobs: one more request per missing
   image, which would double the cost of a cold check. So it is asked only when the images
   do not fit counting source 1 alone (the count is then an upper bound: a layer counted
   that the node has only makes the estimate larger), and cached by digest like the
   manifests. An image id is its config digest, so its diff_ids never change: each image
   is asked once per agent process (one call per image, which ListImages cannot answer).
A layer is on the node when its compressed digest or its diff_id is.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from pinsvc import errors
from pinsvc.config import SpaceSettings
from pinsvc.core.ports import ImageRuntime, ImageSources, ManifestSource
from pinsvc.mirrors.resolve import Endpoint, resolve
from pinsvc.model import ImagePlan, Layer, RuntimeImage, SizedImage, SpacePlan
from pinsvc.refs import ImageRef, parse_reference

LOCAL_CONCURRENCY = 16
"""Runtime calls in flight at once while reading what the node has."""
SHOWN_ENDPOINTS = 3
"""Endpoints other than the images' own registries that a verdict names."""

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


def plan_space(images: list[str], present: set[str], layers: Mapping[str, tuple[Layer, ...]],
               layers_on_node: set[str], fs: FsStat, settings: SpaceSettings,
               via: Mapping[str, str] | None = None, unsized: int = 0) -> SpacePlan:
    """Decides whether pulling the missing images fits. Each layer is counted once across
    the request and not at all when the node already has it (by compressed digest or
    diff_id). `via`: the endpoint that served each image; `unsized`: images left out of
    `images` because they could not be sized (their errors are reported apart)."""
    via = via or {}
    counted = set(layers_on_node)
    plans, compressed = [], 0
    for image in images:
        if image in present:
            plans.append(ImagePlan(image, present=True))
            continue
        own = layers[image]
        new = [layer for layer in own if layer.digest not in counted and layer.diff_id not in counted]
        counted.update(layer.digest for layer in own)
        counted.update(layer.diff_id for layer in own if layer.diff_id)
        new_bytes = sum(layer.size for layer in new)
        compressed += new_bytes
        plans.append(ImagePlan(image, present=False, compressed_bytes=sum(l.size for l in own),
                               layers=len(own), layers_shared=len(own) - len(new), new_bytes=new_bytes,
                               via=via.get(image, "")))
    required = int(compressed * settings.decompression_factor)
    free_after = fs.free_bytes - required
    usage_after = 100.0 * (fs.used_bytes + required) / fs.total_bytes if fs.total_bytes else 100.0
    missing = tuple(p.image for p in plans if not p.present)
    numbers = (f"{human(required)} needed ({human(compressed)} compressed x "
               f"{settings.decompression_factor:g}) on {fs.mountpoint}: {human(fs.free_bytes)} free")
    if not missing:
        fits = True
        verdict = (f"all {len(plans)} images are present; nothing to pull" if not unsized else
                   f"{len(plans)} of {len(plans) + unsized} images present; nothing to pull but the "
                   f"{unsized} that could not be sized")
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
    if missing and unsized:
        verdict += f"; {unsized} more images could not be sized and are left out"
    verdict += _mirrors_note(plans)
    return SpacePlan(images=tuple(plans), compressed_bytes=compressed, required_bytes=required,
                     free_bytes=fs.free_bytes, total_bytes=fs.total_bytes, mountpoint=fs.mountpoint,
                     decompression_factor=settings.decompression_factor,
                     min_free_bytes=settings.min_free_bytes,
                     max_usage_percent=settings.max_usage_percent,
                     usage_after_percent=usage_after, fits=fits, verdict=verdict, missing=missing)


def _mirrors_note(plans: Iterable[ImagePlan]) -> str:
    """"; sized via <endpoint> (n images), ..." for the images a registry other than
    their own served (a mirror, or a registries.conf location), "" when none."""
    others = Counter(p.via for p in plans if p.via and p.via != p.image.rpartition("@")[0]
                     and p.via != parse_reference(p.image).normalized().repository)
    if not others:
        return ""
    shown = [f"{endpoint} ({count} image{'s' if count > 1 else ''})"
             for endpoint, count in others.most_common(SHOWN_ENDPOINTS)]
    more = len(others) - len(shown)
    return "; sized via " + ", ".join(shown) + (f" and {more} more endpoints" if more else "")


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


def _sizes(refs: Mapping[str, ImageRef], sized: Mapping[ImageRef, SizedImage | Exception],
           failed: dict[str, errors.PinsvcError]) -> tuple[dict[str, tuple[Layer, ...]], dict[str, str]]:
    """The layers and endpoint of each image sized; the others are added to `failed`."""
    layers, via = {}, {}
    for image, ref in refs.items():
        result = sized[ref]
        if isinstance(result, Exception):
            failed[image] = errors.combined([result])
        else:
            layers[image], via[image] = result.layers, result.via
    return layers, via


class SpaceChecker:
    def __init__(self, runtime: ImageRuntime, manifests: ManifestSource, sources: ImageSources,
                 settings: SpaceSettings):
        self.runtime = runtime
        self.manifests = manifests
        self.sources = sources
        self.settings = settings
        self._diff_ids: dict[str, tuple[str, ...]] = {}  # image id -> its diff_ids (immutable)

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
        sized with why (e.g. ImageNotFound naming every endpoint tried); those are left out
        of the plan. Raises StateError for a malformed registries configuration."""
        if listed is None:
            listed = await self.runtime.list_images()
        if present is None:
            present = await find_present(self.runtime, images, listed)
        missing = [i for i in images if i not in present]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.deadline_seconds if self.settings.deadline_seconds else None

        def left() -> float | None:
            return max(deadline - loop.time(), 0.0) if deadline is not None else None

        fs_task = asyncio.ensure_future(self.filesystem())
        try:
            refs, wanted, failed = await self._endpoints(missing)
            on_node, unknown = await self._cached_on_node(listed) if wanted else (set(), [])
            sized = await self.manifests.many(wanted, timeout=left())
            fs = await fs_task
        finally:
            fs_task.cancel()
        layers, via = _sizes(refs, sized, failed)
        kept = [i for i in images if i not in failed]
        plan = plan_space(kept, present, layers, on_node, fs, self.settings, via, len(failed))
        if plan.fits or not unknown or not layers:
            return plan, failed
        # Does not fit counting only the layers the agent knows: ask the runtime about the
        # others (source 2 of the module doc) and count again.
        refs = {image: ref for image, ref in refs.items() if image in layers}
        sized, diff_ids = await asyncio.gather(
            self.manifests.many({ref: wanted[ref] for ref in refs.values()}, diff_ids=True, timeout=left()),
            self._diff_ids_on_node(unknown, listed, left()))
        layers, via = _sizes(refs, sized, failed)
        kept = [i for i in images if i not in failed]
        return plan_space(kept, present, layers, on_node | diff_ids, fs, self.settings, via, len(failed)), failed

    async def _endpoints(self, images: list[str]) -> tuple[dict[str, ImageRef], dict[ImageRef, Sequence[Endpoint]],
                                                          dict[str, errors.PinsvcError]]:
        """Where the runtime would pull each image from (by image and by reference); an
        image whose registries.conf entry maps it to a name the runtime cannot pull fails
        (StateError naming it)."""
        if not images:
            return {}, {}, {}
        config = await asyncio.to_thread(self.sources.current)
        refs, wanted, failed = {}, {}, {}
        for image in images:
            ref = parse_reference(image)
            try:
                wanted[ref] = resolve(config, ref)
                refs[image] = ref
            except errors.StateError as e:
                failed[image] = e
        return refs, wanted, failed

    async def _cached_on_node(self, listed: list[RuntimeImage]) -> tuple[set[str], list[RuntimeImage]]:
        """Compressed layer digests of the present images whose manifest the agent has
        cached (source 1 of the module doc), and the present images it has not."""
        digests = {img.id: [d.partition("@")[2] for d in img.repo_digests if "@" in d] for img in listed}
        cached = await self.manifests.cached_layers({d for ds in digests.values() for d in ds})
        known, unknown = set(), []
        for img in listed:
            found = next((cached[d] for d in digests[img.id] if d in cached), None)
            if found is None:
                unknown.append(img)
            else:
                known.update(layer.digest for layer in found)
        return known, unknown

    async def _diff_ids_on_node(self, images: list[RuntimeImage], listed: Collection[RuntimeImage],
                                timeout: float | None) -> set[str]:
        """The diff_ids of `images` as the runtime reports them (source 2 of the module
        doc), each image asked once; an image the runtime does not answer for in time just
        counts as having no layers (its shared layers are counted again: more, not less)."""
        gate = asyncio.Semaphore(LOCAL_CONCURRENCY)

        async def ask(image: RuntimeImage) -> None:
            async with gate:
                try:
                    self._diff_ids[image.id] = await self.runtime.image_diff_ids(image.id)
                except errors.PinsvcError as e:
                    log.debug("cannot read the layers of present image %s: %s", image.id, e)

        todo = [img for img in images if img.id not in self._diff_ids]
        if todo:
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.gather(*(ask(img) for img in todo))
            except TimeoutError:
                log.warning("the runtime did not report the layers of %d present images within the space "
                            "check's deadline; they count as not on the node", len(todo))
        ids = {img.id for img in listed}
        self._diff_ids = {i: d for i, d in self._diff_ids.items() if i in ids}
        return {d for img in images for d in self._diff_ids.get(img.id, ())}
