"""One measured run of each method against one CRI-O, from an empty image store.

Every function returns a plain dict (seconds, phases, CPU seconds per process from
`pin100.CpuMeter`, and method-specific numbers) for `results.json`. The node is reset
(every image removed through CRI RemoveImage, no drop-in, CRI-O reloaded, `sync`) by the
caller before each run; the registry stays warm.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from bench import mco
from bench.pin100 import AgentProc, BenchError, CpuMeter, Node, apply_once, check_pinned, timeline
from pinsvc_client import connect, pb

Stage = pb.StageEvent.Stage
Kind = pb.ImageEvent.Kind


def disk_bytes(root: Path) -> int:
    """Bytes allocated under `root` (st_blocks, each inode once), like `du -s`."""
    seen, total = set(), 0
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            try:
                st = os.lstat(os.path.join(directory, name))
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def fs_used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def peak_rss_bytes(pid: int) -> int | None:
    """The process's peak resident set (VmHWM) so far."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


async def pulls(node: Node, k: int | None) -> dict:
    """SEQ (`k` None: one PullImage after another) or PAR-k (at most k in flight)."""
    meter = CpuMeter(node.pids())
    gate = asyncio.Semaphore(k or 1)

    async def one(ref: str) -> None:
        async with gate:
            await node.pull(ref)

    meter.start()
    t0 = time.perf_counter()
    if k is None:
        for ref in node.refs:
            await node.pull(ref)
    else:
        await asyncio.gather(*(one(ref) for ref in node.refs))
    seconds = time.perf_counter() - t0
    cpu = meter.stop()
    await node.check_all_present("SEQ" if k is None else f"PAR-{k}")
    return {"seconds": seconds, "phases": {"pulls": seconds}, "cpu_seconds": cpu}


async def mco_like(node: Node, *, noop: bool) -> dict:
    """The emulated MCO daemon's sync; with `noop`, a second sync right after (all present)."""
    meter = CpuMeter(node.pids())
    meter.start()
    run = await mco.mco_like(node.stub, node.crio, node.refs)
    cpu = meter.stop()
    pinned = await asyncio.to_thread(node.crio.pinned_images)
    missing = [r for r in node.refs if r.lower() not in {p.lower() for p in pinned}]
    if missing:
        raise BenchError(f"MCO-like: {len(missing)} images not pinned after its reload, e.g. {missing[0]}")
    out = {"seconds": run.seconds, "phases": run.phases, "cpu_seconds": cpu, "pulled": run.pulled,
           "required_bytes": run.required_bytes, "retries": run.retries}
    if noop:
        again = await mco.mco_like(node.stub, node.crio, node.refs)
        if again.pulled or again.reloaded:
            raise BenchError(f"MCO-like no-op pulled {again.pulled} images, reloaded {again.reloaded}")
        out["noop_seconds"] = again.seconds
    return out


def pinsvc_phases(tl: dict) -> dict:
    """Space check, pulls, drop-in + reload, verification and the rest, from the Apply's
    stage durations and event times (see `pin100.timeline`)."""
    st = tl["stage_seconds"]
    space = st["space_check"] or 0.0
    pull_start = tl["space_checked_at"] or 0.0
    pull_end = tl["images_ready_at"] if tl["images_ready_at"] is not None else pull_start
    dropin = (st["dropin_write"] or 0.0) + (st["reload"] or 0.0)
    verify = st["verify"] or 0.0
    phases = {"space_check": space, "pulls": max(0.0, pull_end - pull_start),
              "dropin_reload": dropin, "verify": verify}
    phases["other"] = max(0.0, tl["client_seconds"] - sum(phases.values()))
    return {k: round(v, 4) for k, v in phases.items()}


async def pinsvc(node: Node, workdir: Path, parallelism: int, resources: dict, *, noop: bool = True,
                 flags: dict | None = None) -> dict:
    """`pinsvc agent` (fresh state: cold manifest cache) end to end: one Apply of one set of
    every image, checked pinned in the status and by crictl; then the no-op re-run."""
    agent = AgentProc(workdir, node.crio, node.registry, parallelism, flags)
    resources["agent"] = agent
    before_du = await asyncio.to_thread(disk_bytes, node.crio.storage_root)
    before_fs = fs_used(node.crio.storage_root)
    try:
        startup = await asyncio.to_thread(agent.start)
        run = await apply_once(node, agent, parallelism)
        check_pinned(node, run, "pinsvc")
        rss = peak_rss_bytes(agent.proc.pid)
        tl = timeline(run)
        await asyncio.to_thread(os.sync)
        growth_du = await asyncio.to_thread(disk_bytes, node.crio.storage_root) - before_du
        out = {"seconds": run.seconds, "phases": pinsvc_phases(tl), "cpu_seconds": run.cpu,
               "agent_cpu_seconds": run.cpu.get("agent"), "crio_cpu_seconds": run.cpu.get("crio"),
               "agent_peak_rss_bytes": rss, "agent_startup_seconds": round(startup, 3),
               "space_plan": tl.get("space_plan"), "disk_growth_bytes": growth_du,
               "fs_growth_bytes": fs_used(node.crio.storage_root) - before_fs,
               "pulls": tl["pulls"], "retries": tl["retries"], "timeline": tl}
        if noop:
            again = await apply_once(node, agent, parallelism)
            check_pinned(node, again, "pinsvc no-op")
            if again.stage(Stage.DROPIN_UNCHANGED) is None or again.image_events(Kind.PULLING):
                raise BenchError("pinsvc no-op: pulled again or rewrote the drop-in")
            out["noop_seconds"] = again.seconds
            out["noop_agent_cpu_seconds"] = again.cpu.get("agent")
        return out
    except BaseException:
        tail = agent.log_tail()
        if tail:
            print(f"--- agent log tail ({agent.log_path}) ---\n{tail}", flush=True)
        raise
    finally:
        await asyncio.to_thread(agent.stop)
        resources.pop("agent", None)


async def check_space(node: Node, workdir: Path, resources: dict) -> dict:
    """CheckSpace of every image on an empty node through a fresh agent: cold (no manifest
    cache) and again warm; and the serial (skopeo-like) inspection of the same images. The
    MCO-like (podman-like) serial inspection is timed within the MCO-like runs of W100."""
    agent = AgentProc(workdir, node.crio, node.registry, 5)
    resources["agent"] = agent
    try:
        await asyncio.to_thread(agent.start)
        async with connect(agent.endpoint) as client:
            t0 = time.perf_counter()
            plan = await client.check_space(node.refs)
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            await client.check_space(node.refs)
            warm = time.perf_counter() - t0
    finally:
        await asyncio.to_thread(agent.stop)
        resources.pop("agent", None)
    skopeo = await mco.inspect_serial(list(node.refs), fetch_config=True)
    return {"pinsvc_cold_seconds": cold, "pinsvc_warm_seconds": warm,
            "pinsvc_compressed_bytes": plan.compressed_bytes, "pinsvc_required_bytes": plan.required_bytes,
            "serial_skopeo_seconds": skopeo["seconds"], "serial_compressed_bytes": skopeo["compressed_bytes"]}
