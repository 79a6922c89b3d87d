"""The warm stage benchmark (issue 15): upstream bytes and rollout wall time of one
PinnedImageSet to N = 1, 3, 5 real nodes behind a slow link, in one run, on one workload:

- **pinsvc + warm**: `pinctl rollout --warm-registries-conf ... --warm-rate CAP`;
- **pinsvc**: `pinctl rollout`, the nodes pulling through the site cache as their
  registries.conf says (no warm stage);
- **MCO-like**: `bench/mco.py`'s emulation of the Machine Config Operator's daemon on every
  node at once (a pool's nodes prefetch together), through the same cache.

Peers (devenv/site.py): the upstream registry behind a link capped at CAP (a fault proxy
with a shared rate cap and byte counter), Debian's docker-registry in proxy mode as the site
cache, N real CRI-Os whose registries.conf reaches the canonical (unresolvable) name only
through the cache, an agent each (fresh state per measurement), the pool's maxUnavailable N.
Every measurement starts from an empty cache and empty nodes. The ideal for a rollout: one
transfer of the set at the cap plus one LAN pull (the N nodes pulling the whole set from a
warm cache at once, measured per N: here they share this machine's cores). Writes bench/results/warm.json, bench/results/warm.png and the
warm section of docs/benchmarks.md (bench/warm_report.py).

    .venv/bin/python -m bench.warm [--quick] [--nodes 1,3,5] [--cap 8MiB] [--images 50] [--keep]

Run as root (CRI-O). The full run takes ~15 min on 2 cores; `--quick` ~2 min.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import yaml

from bench import warm_report
from bench.cluster import clean
from bench.mco import mco_like
from bench.pin100 import BenchError, CpuMeter
from devenv.agent import AgentProcess
from devenv.crio import Crio
from devenv.site import CANONICAL_HOST, MiB, Site, release_workload, unique_bytes
from pinsvc.gen.runtime.v1 import api_pb2, api_pb2_grpc
from pinsvc.warm.plan import parse_rate
from pinsvc.warm.settings import WarmSettings
from pinsvc.warm.stage import Warmer

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
METHODS = ("pinsvc+warm", "pinsvc", "MCO-like")
ROLE = "machineconfiguration.openshift.io/role"
FULL = {"images": 50, "bases": 5, "base_size": 10 * MiB, "unique_size": 3 * MiB}  # 200 MiB in one repository
QUICK = {"images": 6, "bases": 2, "base_size": 2 * MiB, "unique_size": 1 * MiB}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def cluster_docs(refs: list[str], nodes: list[str]) -> list[dict]:
    """One set for the worker pool of `nodes`, all of them at once (maxUnavailable N)."""
    return [{"apiVersion": "machineconfiguration.openshift.io/v1", "kind": "PinnedImageSet",
             "metadata": {"name": "release", "labels": {ROLE: "worker"}},
             "spec": {"pinnedImages": [{"name": r} for r in refs]}},
            {"apiVersion": "machineconfiguration.openshift.io/v1", "kind": "MachineConfigPool",
             "metadata": {"name": "worker"},
             "spec": {"machineConfigSelector": {"matchLabels": {ROLE: "worker"}},
                      "nodeSelector": {"matchLabels": {"node-role.kubernetes.io/worker": ""}},
                      "maxUnavailable": len(nodes)}},
            *({"apiVersion": "v1", "kind": "Node",
               "metadata": {"name": n, "labels": {"node-role.kubernetes.io/worker": ""}},
               "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                          "conditions": [{"type": "Ready", "status": "True"}]}} for n in nodes)]


class Bench:
    def __init__(self, root: Path, *, cap: float, nodes: int, workload: dict) -> None:
        self.root, self.cap = root, cap
        self.site = Site(root / "site", rate=cap)
        self.images = release_workload(**workload)
        self.crios = {f"n{i + 1}": Crio(root / f"crio-n{i + 1}") for i in range(nodes)}
        self.refs: list[str] = []
        self.conf = root / "registries.conf"
        self.index, self.warm_seconds = 0, 0.0

    def start(self) -> None:
        self.site.start()
        self.refs = self.site.push(self.images)
        self.conf.write_text(self.site.registries_conf())
        for crio in self.crios.values():
            crio.registries_conf_dir.mkdir(parents=True, exist_ok=True)
            (crio.registries_conf_dir / "50-site.conf").write_text(self.site.registries_conf())
            crio.start(timeout=60)

    def stop(self) -> None:
        for crio in self.crios.values():
            crio.stop()
        self.site.stop()

    def reset(self, names: list[str]) -> None:
        """An empty cache, empty nodes, counters at zero."""
        self.site.cache.wipe()
        for name in names:
            clean(self.crios[name])
        self.site.proxy.reset_counters()
        self.site.link.reset()

    async def lan_pull(self, n: int) -> float:
        """Seconds for N nodes to pull the set from a warm cache, each 5 pulls in flight:
        the rollout's floor once the set is in the site (the nodes share this machine's cores)."""
        names = list(self.crios)[:n]
        self.reset(names)
        warmer = Warmer(WarmSettings(self.conf, rate=self.cap))  # fills the cache; not measured
        try:
            await warmer.warm(self.refs)
        finally:
            await warmer.aclose()

        async def node(crio: Crio) -> None:
            slots = asyncio.Semaphore(5)
            async with grpc.aio.insecure_channel(f"unix://{crio.socket}") as channel:
                stub = api_pb2_grpc.ImageServiceStub(channel)

                async def pull(ref: str) -> None:
                    async with slots:
                        await stub.PullImage(api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=ref)),
                                             timeout=600)

                await asyncio.gather(*(pull(r) for r in self.refs))

        t0 = time.perf_counter()
        await asyncio.gather(*(node(self.crios[name]) for name in names))
        return time.perf_counter() - t0

    async def measure(self, method: str, n: int) -> dict:
        names = list(self.crios)[:n]
        await asyncio.to_thread(self.reset, names)
        self.index, self.warm_seconds = self.index + 1, 0.0
        t0 = time.perf_counter()
        if method == "MCO-like":
            cpu = await self._mco(names)
        else:
            cpu = await self._pinctl(names, warm=method == "pinsvc+warm")
        seconds = time.perf_counter() - t0
        for name in names:
            pinned = {p.lower() for p in self.crios[name].pinned_images()}
            if missing := [r for r in self.refs if r.lower() not in pinned]:
                raise BenchError(f"{method}, N={n}: node {name}: {len(missing)} images not pinned")
        upstream = self.site.link.bytes
        own = cpu["own"]
        return {"method": method, "nodes": n, "seconds": round(seconds, 2), "upstream_bytes": upstream,
                "upstream_ratio": round(upstream / unique_bytes(self.images), 3),
                **({"warm_seconds": round(self.warm_seconds, 2)} if method == "pinsvc+warm" else {}),
                "cpu_seconds": cpu, "own_cpu_per_node": round(own / n, 3),
                "own_cpu_per_image_node": round(own / (n * len(self.refs)), 4),
                "crio_cpu_per_image_node": round(sum(v for k, v in cpu.items() if k.startswith("crio-"))
                                                 / (n * len(self.refs)), 4)}

    def _meter(self, names: list[str], agents: dict[str, AgentProcess] | None = None) -> CpuMeter:
        """CPU of the nodes' CRI-Os, the cache, and the agents (see `_pinctl`, `_mco`)."""
        pids = {f"crio-{n}": self.crios[n].pid for n in names}
        pids.update({f"agent-{n}": a.proc.pid for n, a in (agents or {}).items()})
        pids["cache"] = self.site.cache.pid
        meter = CpuMeter(pids)
        meter.start()
        return meter

    async def _pinctl(self, names: list[str], *, warm: bool) -> dict[str, float]:
        """One `pinctl rollout`; CPU seconds per process, `own`: the agents' and pinctl's
        (incl. its warm stage)."""
        work = self.root / f"run-{self.index}"
        agents = {n: AgentProcess(work / f"agent-{n}", self.crios[n], self.site.cache, **{"node-name": n})
                  for n in names}
        try:
            for agent in agents.values():
                await asyncio.to_thread(agent.start)
            cluster, endpoints = work / "cluster.yaml", work / "endpoints.yaml"
            cluster.write_text(yaml.safe_dump_all(cluster_docs(self.refs, names)))
            endpoints.write_text(yaml.safe_dump({n: a.endpoint for n, a in agents.items()}))
            argv = [sys.executable, "-m", "pinsvc.coordinator.cli", "rollout", "-f", str(cluster), "--endpoints",
                    str(endpoints), "-o", "json", "--record-dir", str(work / "records")]
            if warm:
                argv += ["--warm-registries-conf", str(self.conf), "--warm-rate", str(int(self.cap))]
            meter, children = self._meter(names, agents), resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            err = []
            async for line in proc.stderr:  # the first node applying ends the warm stage
                err.append(line.decode())
                if ": applying " in err[-1] and not self.warm_seconds:
                    self.warm_seconds = time.perf_counter() - t0
            if await proc.wait() != 0:
                raise BenchError(f"pinctl rollout exited {proc.returncode}: {''.join(err)[-2000:]}")
            cpu = meter.stop()
            # pinctl is the only child reaped in between (the agents are reaped after)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu["pinctl"] = round(after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime, 3)
            cpu["foreign"] = round(max(0.0, cpu["foreign"] - cpu["pinctl"]), 3)
            cpu["own"] = round(cpu["pinctl"] + sum(v for k, v in cpu.items() if k.startswith("agent-")), 3)
            return cpu
        finally:
            for agent in agents.values():
                await asyncio.to_thread(agent.stop)

    async def _mco(self, names: list[str]) -> dict[str, float]:
        """The emulation on every node at once; CPU seconds per process, `own`: the
        emulation's (this process' main thread, where it runs; the link's proxy runs in
        another thread)."""
        cache = self.site.cache.host

        def via_cache(ref: str) -> str:  # the daemon's inspection follows registries.conf too
            return ref.replace(CANONICAL_HOST, cache, 1)

        async def node(name: str) -> None:
            crio = self.crios[name]
            async with grpc.aio.insecure_channel(f"unix://{crio.socket}") as channel:
                await mco_like(api_pb2_grpc.ImageServiceStub(channel), crio, self.refs, inspect_as=via_cache)

        meter, thread0 = self._meter(names), time.thread_time()
        await asyncio.gather(*(node(n) for n in names))
        cpu = meter.stop()
        cpu["own"] = round(time.thread_time() - thread0, 3)
        return cpu


async def run(bench: Bench, ns: list[int]) -> dict:
    set_bytes = unique_bytes(bench.images)
    say(f"set: {len(bench.refs)} images, {set_bytes / MiB:.1f} MiB in one repository; link {bench.cap / MiB:g} MiB/s")
    runs, lan = [], {}
    for n in ns:
        lan[n] = await bench.lan_pull(n)
        ideal = set_bytes / bench.cap + lan[n]
        say(f"N={n}: the set from a warm cache to {n} node(s) at once: {lan[n]:.1f} s; ideal rollout {ideal:.1f} s")
        for method in METHODS:
            result = await bench.measure(method, n)
            result["ideal_seconds"] = round(ideal, 2)
            result["vs_ideal"] = round(result["seconds"] / ideal, 2)
            warm = f", warm {result['warm_seconds']:.1f} s" if "warm_seconds" in result else ""
            say(f"N={n} {method:12} {result['seconds']:7.1f} s ({result['vs_ideal']:.2f}x ideal{warm}), "
                f"upstream {result['upstream_bytes'] / MiB:7.1f} MiB ({result['upstream_ratio']:.2f}x the set), "
                f"CPU {result['own_cpu_per_image_node'] * 1000:.1f} ms per image per node "
                f"(CRI-O {result['crio_cpu_per_image_node'] * 1000:.1f} ms)")
            runs.append(result)
    return {"set_bytes": set_bytes, "images": len(bench.refs), "blobs": len({b.digest for i in bench.images
                                                                             for b in (i.config, *i.layers)}),
            "cap_bytes_per_second": bench.cap, "lan_pull_seconds": {str(n): round(t, 2) for n, t in lan.items()},
            "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.warm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ~10 MiB set, N = 1 and 3 (results in bench/results/quick)")
    parser.add_argument("--nodes", default="", help="comma-separated N (default: 1,3,5; quick: 1,3)")
    parser.add_argument("--cap", default="", help="the link's rate (default: 8MiB; quick: 4MiB)")
    parser.add_argument("--images", type=int, default=FULL["images"],
                        help="images in the set (default: %(default)s, 200 MiB; each one more adds 3 MiB)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    ns = [int(n) for n in (args.nodes or ("1,3" if args.quick else "1,3,5")).split(",")]
    cap = parse_rate(args.cap or ("4MiB" if args.quick else "8MiB"))
    root = Path(tempfile.mkdtemp(prefix="pinsvc-bench-warm-"))
    bench = Bench(root, cap=cap, nodes=max(ns), workload=QUICK if args.quick else dict(FULL, images=args.images))
    started = time.time()
    try:
        bench.start()
        results = asyncio.run(run(bench, ns))
    finally:
        bench.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    results.update(quick=args.quick, started_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                   wall_seconds=round(time.time() - started), machine=warm_report.machine())
    out = RESULTS / "quick" if args.quick else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    (out / "warm.json").write_text(json.dumps(results, indent=2) + "\n")
    for path in warm_report.write(out / "warm.json", docs=not args.quick):
        say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
