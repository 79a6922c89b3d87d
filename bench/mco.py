"""Baselines that are not pinsvc: serial manifest inspection and an emulation of the
Machine Config Operator's pinned-image daemon (`/work/shared/facts/openshift-pinned-images.md`,
from openshift/machine-config-operator `pkg/daemon/pinned_image_set.go`).

`inspect_serial` is what `skopeo inspect` / `podman manifest inspect` do per image, one
image after another: a new process, so a new connection, `GET /v2/` (the ping), `GET` the
manifest and, for skopeo, `GET` the config blob.

`mco_like` is the daemon's sync, step by step:
1. space check: per image, CRI `ImageStatus`; for each missing one a serial manifest
   inspection (`podman manifest inspect`: ping + manifest); compressed layer sizes summed,
   each layer digest once; required = 2 x that; fails when required >= allocatable - 16 GiB
   (allocatable: the image filesystem's size);
2. pulls: a queue and 5 workers; each task does `ImageStatus`, `PullImage` when missing
   (retries 5 x exponential 1 s, x2, cap 10 s), then sleeps 1 s;
3. every image checked with `ImageStatus`, the drop-in written (sorted unique, atomic,
   mode 0644; unchanged bytes: no reload) and CRI-O reloaded (SIGHUP, as `systemctl reload
   crio` does); the reload is waited for (CRI-O's "Configuration reload completed"), since
   the pins hold only then. The daemon itself never verifies the pins.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from dataclasses import dataclass, field

import grpc
import httpx

from pinsvc.gen.runtime.v1 import api_pb2

ACCEPT = ", ".join((
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
))
WORKERS = 5
SLEEP_AFTER_TASK = 1.0
RETRIES, BACKOFF_INITIAL, BACKOFF_CAP = 5, 1.0, 10.0
MIN_FREE = 16 << 30
DROPIN_NAME = "50-pinned-images"


def _split(ref: str) -> tuple[str, str, str]:
    host, _, rest = ref.partition("/")
    repo, _, digest = rest.partition("@")
    return host, repo, digest


async def inspect_one(ref: str, *, fetch_config: bool) -> dict[str, int]:
    """One inspection as a fresh process would do it: its own connection, the ping, the
    manifest (and the config). Returns layer digest -> compressed size (an index: {})."""
    host, repo, digest = _split(ref)
    async with httpx.AsyncClient(base_url=f"http://{host}", timeout=30, trust_env=False) as client:
        (await client.get("/v2/")).raise_for_status()
        response = await client.get(f"/v2/{repo}/manifests/{digest}", headers={"Accept": ACCEPT})
        response.raise_for_status()
        manifest = json.loads(response.content)
        if "layers" not in manifest:
            return {}  # a manifest list counts as 0 bytes in the daemon
        if fetch_config:
            (await client.get(f"/v2/{repo}/blobs/{manifest['config']['digest']}")).raise_for_status()
        return {layer["digest"]: layer["size"] for layer in manifest["layers"]}


async def inspect_serial(refs: list[str], *, fetch_config: bool = True) -> dict:
    """Every image inspected one after another; compressed bytes (each layer once)."""
    t0 = time.perf_counter()
    layers: dict[str, int] = {}
    for ref in refs:
        layers.update(await inspect_one(ref, fetch_config=fetch_config))
    return {"seconds": time.perf_counter() - t0, "compressed_bytes": sum(layers.values()),
            "images": len(refs)}


@dataclass
class MCOResult:
    seconds: float
    phases: dict[str, float]
    pulled: int
    required_bytes: int
    reloaded: bool
    retries: int = 0
    errors: list[str] = field(default_factory=list)


async def _present(stub, ref: str) -> bool:
    response = await stub.ImageStatus(api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref)), timeout=60)
    return bool(response.image.id)


def render_dropin(refs: list[str]) -> str:
    lines = "".join(f'  "{ref}",\n' for ref in sorted(set(refs)))
    return f"[crio.image]\npinned_images = [\n{lines}]\n"


def write_dropin(directory: str, text: str) -> bool:
    """Atomic write (temp, fsync, rename), mode 0644; False when the bytes are unchanged."""
    path = os.path.join(directory, DROPIN_NAME)
    try:
        with open(path) as f:
            if f.read() == text:
                return False
    except FileNotFoundError:
        pass
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{DROPIN_NAME}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(temp, 0o644)
    os.rename(temp, path)
    return True


async def mco_like(stub, crio, refs: list[str], *, workers: int = WORKERS,
                   sleep_after_task: float = SLEEP_AFTER_TASK, inspect_as=lambda ref: ref) -> MCOResult:
    """One sync of the emulated daemon (see the module doc); `crio` is a devenv Crio.
    `inspect_as(ref)`: the reference its manifest inspection reads (a mirror's, when the
    node reaches the image through one: the daemon's podman follows registries.conf)."""
    t0 = time.perf_counter()
    layers: dict[str, int] = {}
    for ref in refs:  # 1. space check, serial
        if not await _present(stub, ref):
            layers.update(await inspect_one(inspect_as(ref), fetch_config=False))
    required = 2 * sum(layers.values())
    st = os.statvfs(crio.storage_root)
    if required >= st.f_blocks * st.f_frsize - MIN_FREE:
        raise RuntimeError(f"MCO-like: not enough space for {required} bytes")
    t_space = time.perf_counter()

    queue: asyncio.Queue[str] = asyncio.Queue()
    for ref in refs:
        queue.put_nowait(ref)
    result = MCOResult(0.0, {}, 0, required, False)

    async def worker() -> None:
        while True:
            try:
                ref = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if not await _present(stub, ref):
                delay = BACKOFF_INITIAL
                for attempt in range(1, RETRIES + 1):
                    try:
                        await stub.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)))
                        result.pulled += 1
                        break
                    except grpc.aio.AioRpcError as e:
                        if attempt == RETRIES:
                            result.errors.append(f"{ref}: {e.details()}")
                            break
                        result.retries += 1
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, BACKOFF_CAP)
            await asyncio.sleep(sleep_after_task)

    await asyncio.gather(*(worker() for _ in range(workers)))  # 2. pulls
    t_pulls = time.perf_counter()
    if result.errors:
        raise RuntimeError(f"MCO-like: {len(result.errors)} pulls failed, e.g. {result.errors[0]}")
    missing = [ref for ref in refs if not await _present(stub, ref)]  # 3. all there?
    if missing:
        raise RuntimeError(f"MCO-like: {len(missing)} images missing after the pulls, e.g. {missing[0]}")
    t_check = time.perf_counter()
    if await asyncio.to_thread(write_dropin, str(crio.dropin_dir), render_dropin(refs)):
        await asyncio.to_thread(crio.reload)
        result.reloaded = True
    t_end = time.perf_counter()
    result.seconds = t_end - t0
    result.phases = {"space_check": t_space - t0, "pulls": t_pulls - t_space,
                     "exists_check": t_check - t_pulls, "dropin_reload": t_end - t_check}
    return result
