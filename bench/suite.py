"""The benchmark suite (issue 7): pinsvc against sequential pulls, direct parallel CRI pulls
and an emulation of OpenShift's daemon, on real CRI-O and a real registry, with plots and
`docs/benchmarks.md`.

    bash bench/run.sh [--quick] [--runs N] [--storage-driver vfs|overlay] [--only W100,...]
    # = .venv/bin/python -m bench.suite ...

Starts one distribution registry (storage cached in ~/.cache/pinsvc/bench/registry, so the
workloads are generated and pushed once) and one CRI-O (vfs storage by default, all state in a
temp dir), then per workload and run, each method from an empty image store (RemoveImage of
everything, no drop-in, reload, sync):

  W100   SEQ, PAR-k (k = 1 2 3 5 8 10), MCO-like (+ its no-op re-run in the first run),
         pinsvc end to end (+ no-op re-run), and pinctl over 3 real nodes
  W500   space check: pinsvc CheckSpace (cold and warm) vs serial inspection;
         pulls: PAR-5 and pinsvc end to end (per-image overhead)
  WBIG   1 layer and 4 layers: PAR-k (k = 1 2 3) and pinsvc end to end

Writes bench/results/results.json, bench/results/*.png and docs/benchmarks.md.
Everything it starts is stopped on exit, error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench import phases, workloads
from bench.cluster import ThreeNodes, clean
from bench.pin100 import BenchError, Node
from devenv.crio import Crio
from devenv.registry import Registry

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
PINSVC_PARALLELISM = 5


@dataclass(frozen=True)
class Plan:
    runs: int
    w100_images: int
    w100_ks: tuple[int, ...]
    w500_images: int
    w500_ks: tuple[int, ...]
    wbig_images: int
    wbig_size: int
    wbig_ks: tuple[int, ...]
    cluster: bool


FULL = Plan(3, 100, (1, 2, 3, 5, 8, 10), 500, (5,), 3, workloads.GiB, (1, 2, 3), True)
QUICK = Plan(1, 12, (1, 5), 40, (5,), 2, 32 * workloads.MiB, (1, 2), True)
WORKLOADS = ("W100", "W500", "WBIG", "CLUSTER")


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- machine ---------------------------------------------------------------------------------


def machine_facts(crio: Crio) -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")
    storage_fs = "unknown"
    best = ""
    for line in Path("/proc/mounts").read_text().splitlines():
        _, point, fstype, *_ = line.split()
        if str(crio.storage_root).startswith(point) and len(point) > len(best):
            best, storage_fs = point, fstype
    version = subprocess.run([str(crio.binary), "--version"], capture_output=True, text=True).stdout
    crio_version = version.split()[2] if version.startswith("crio version") else "unknown"
    return {"cpu_model": model, "cores": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "kernel": platform.release(), "os": platform.platform(), "python": platform.python_version(),
            "storage_driver": crio.storage_driver, "storage_filesystem": f"{storage_fs} ({best})",
            "crio_version": crio_version, "hostname": platform.node(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()]}


# ---- aggregation -----------------------------------------------------------------------------


def summarize(runs: list[dict]) -> dict:
    """Median, min and max of `seconds`, and medians of every numeric field and phase."""
    secs = [r["seconds"] for r in runs]
    out = {"median": statistics.median(secs), "min": min(secs), "max": max(secs), "n": len(runs)}
    phase_names = list(dict.fromkeys(k for r in runs for k in r.get("phases", {})))
    out["phases"] = {p: statistics.median([r["phases"].get(p, 0.0) for r in runs]) for p in phase_names}
    for key in ("noop_seconds", "agent_cpu_seconds", "crio_cpu_seconds", "agent_peak_rss_bytes",
                "disk_growth_bytes", "fs_growth_bytes", "noop_agent_cpu_seconds"):
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            out[key] = statistics.median(values)
            out[key + "_range"] = [min(values), max(values)]
    crio = [r["cpu_seconds"].get("crio") for r in runs if "crio" in r.get("cpu_seconds", {})]
    if crio and "crio_cpu_seconds" not in out:
        out["crio_cpu_seconds"] = statistics.median(crio)
    foreign = [r["cpu_seconds"].get("foreign", 0.0) for r in runs if r.get("cpu_seconds")]
    if foreign:
        out["foreign_cpu_seconds"] = statistics.median(foreign)
    plans = [r["space_plan"] for r in runs if r.get("space_plan")]
    if plans:
        out["space_plan"] = plans[0]
    return out


def _round(value):
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


# ---- the suite -------------------------------------------------------------------------------


class Suite:
    def __init__(self, args: argparse.Namespace, root: Path, resources: dict):
        self.args, self.root, self.resources = args, root, resources
        self.plan: Plan = QUICK if args.quick else FULL
        if args.runs:
            self.plan = Plan(args.runs, *list(self.plan.__dict__.values())[1:])
        self.results: dict = {"workloads": {}}

    async def method(self, workload: str, name: str, run: dict) -> None:
        entry = self.results["workloads"][workload].setdefault("methods", {}).setdefault(name, {"runs": []})
        entry["runs"].append(_round({k: v for k, v in run.items() if k != "timeline"} | (
            {"timeline": run["timeline"]} if self.args.keep_timelines and "timeline" in run else {})))
        say(f"  {workload} {name}: {run['seconds']:.2f} s" +
            (f" (no-op {run['noop_seconds']:.3f} s)" if run.get("noop_seconds") is not None else ""))
        self.checkpoint()

    def checkpoint(self) -> None:
        """Everything measured so far, to `results.partial.json` (a report can be made from
        it with `python -m bench.report` should the run not finish)."""
        self.finish()
        self.args.out.mkdir(parents=True, exist_ok=True)
        (self.args.out / "results.partial.json").write_text(json.dumps(self.results, indent=1) + "\n")

    def finish(self) -> None:
        for workload in self.results["workloads"].values():
            for entry in workload.get("methods", {}).values():
                entry["summary"] = _round(summarize(entry["runs"]))
        meta = self.results["meta"]
        meta["wall_seconds"] = round(time.perf_counter() - self.t_start, 1)
        meta["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]

    async def pull_methods(self, node: Node, workload: str, ks: tuple[int, ...], *, seq: bool, mco: bool,
                           runs: int) -> None:
        order = (["SEQ"] if seq else []) + [f"PAR-{k}" for k in ks] + (["MCO-like"] if mco else []) + ["pinsvc"]
        for r in range(runs):
            say(f"{workload} run {r + 1}/{runs}")
            for name in (order if r % 2 == 0 else order[::-1]):
                await node.reset()
                if name == "SEQ":
                    result = await phases.pulls(node, None)
                elif name.startswith("PAR-"):
                    result = await phases.pulls(node, int(name[4:]))
                elif name == "MCO-like":
                    result = await phases.mco_like(node, noop=(r == 0 and not self.args.quick))
                else:
                    result = await phases.pinsvc(node, self.root / f"agent-{workload}-{r}", PINSVC_PARALLELISM,
                                                 self.resources)
                await self.method(workload, name, result)
        await node.reset()

    async def run(self) -> dict:
        self.t_start = time.perf_counter()
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        registry = Registry(workloads.registry_root())
        self.resources["registry"] = registry
        registry.start()
        crio = Crio(self.root / "crio", registries=[registry.host], storage_driver=self.args.storage_driver)
        self.resources["crio"] = crio
        await asyncio.to_thread(crio.start)
        machine = machine_facts(crio)
        say(f"registry {registry.host}, CRI-O {machine['crio_version']} ({crio.storage_driver}); plan {self.plan}")
        p, only = self.plan, self.args.only
        self.results["meta"] = {
            "started_utc": started, "wall_seconds": None, "quick": self.args.quick, "runs": p.runs,
            "plan": p.__dict__, "machine": machine, "pinsvc_parallelism": PINSVC_PARALLELISM,
            "command": " ".join(sys.argv),
        }
        wanted = {
            "W100": lambda: workloads.w100(registry.host, p.w100_images),
            "W500": lambda: workloads.w500(registry.host, p.w500_images),
            "WBIG-1L": lambda: workloads.wbig(registry.host, 1, images=p.wbig_images, size=p.wbig_size),
            "WBIG-4L": lambda: workloads.wbig(registry.host, 4, images=p.wbig_images, size=p.wbig_size),
        }
        loaded: dict[str, workloads.Workload] = {}
        for name, make in wanted.items():
            if name.split("-")[0] in only or (name == "W100" and "CLUSTER" in only):
                t0 = time.perf_counter()
                loaded[name] = await make()
                say(f"workload {name}: {loaded[name].facts} ({time.perf_counter() - t0:.1f} s)")
                self.results["workloads"][name] = {"facts": loaded[name].facts, "methods": {}}
        node = Node(crio, registry, [])
        await node.open()
        try:
            await self._measure(node, crio, registry, loaded)
        finally:
            await node.close()
        self.finish()
        (self.args.out / "results.partial.json").unlink(missing_ok=True)
        return self.results

    async def _measure(self, node: Node, crio: Crio, registry: Registry, loaded: dict) -> None:
        p = self.plan
        if "W500" in loaded:
            node.refs = list(loaded["W500"].refs)
            await node.reset()
            space_runs = []
            for r in range(p.runs):
                space_runs.append(_round(await phases.check_space(node, self.root / f"space-{r}", self.resources)))
                say(f"  W500 space check run {r + 1}: {space_runs[-1]}")
            self.results["workloads"]["W500"]["space_check"] = {"runs": space_runs, "summary": {
                k: statistics.median([s[k] for s in space_runs]) for k in space_runs[0]}}
            self.checkpoint()
        if "W100" in loaded and "W100" in self.args.only:
            node.refs = list(loaded["W100"].refs)
            await self.pull_methods(node, "W100", p.w100_ks, seq=True, mco=True, runs=p.runs)
        if "W500" in loaded:
            node.refs = list(loaded["W500"].refs)
            await self.pull_methods(node, "W500", p.w500_ks, seq=False, mco=False, runs=p.runs)
        for variant in ("WBIG-1L", "WBIG-4L"):
            if variant in loaded:
                node.refs = list(loaded[variant].refs)
                await self.pull_methods(node, variant, p.wbig_ks, seq=False, mco=False, runs=p.runs)
        if "CLUSTER" in self.args.only and p.cluster:
            refs = list(loaded["W100"].refs)
            nodes = ThreeNodes(self.root / "cluster", crio, registry, crio.storage_driver)
            self.resources["cluster"] = nodes
            await asyncio.to_thread(nodes.start)
            try:
                for r in range(p.runs):
                    await self.method("W100", "pinctl-3-nodes", await nodes.run(refs, r))
                await asyncio.gather(*(asyncio.to_thread(clean, c) for c in nodes.crios.values()))
            finally:
                await asyncio.to_thread(nodes.stop)
                self.resources.pop("cluster", None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 run, small workloads (12/40 images, 32 MiB WBIG), few k values")
    parser.add_argument("--runs", type=int, help="runs per method (default 3; --quick 1)")
    parser.add_argument("--storage-driver", default="vfs", choices=("vfs", "overlay"))
    parser.add_argument("--only", default=",".join(WORKLOADS),
                        help=f"comma-separated subset of {','.join(WORKLOADS)} (default all)")
    parser.add_argument("--out", type=Path,
                        help="results directory (default bench/results; with --quick bench/results/quick)")
    parser.add_argument("--docs", type=Path,
                        help="report to regenerate (default docs/benchmarks.md; with --quick "
                             "bench/results/quick/benchmarks.md, so a smoke run never replaces the report; '-' = none)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs) after the run")
    parser.add_argument("--keep-timelines", action="store_true", help="store every Apply's event timeline")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = RESULTS / "quick" if args.quick else RESULTS
    if args.docs is None:
        args.docs = args.out / "benchmarks.md" if args.quick else REPO / "docs" / "benchmarks.md"
    args.only = {w.strip().upper() for w in args.only.split(",") if w.strip()}
    unknown = args.only - set(WORKLOADS)
    if unknown:
        parser.error(f"--only: unknown workload(s) {', '.join(sorted(unknown))}; choose from {', '.join(WORKLOADS)}")
    if args.runs is not None and args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    if os.geteuid() != 0:
        print("bench.suite: CRI-O needs root", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="pinsvc-suite-"))
    resources: dict = {}

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    code = 0
    try:
        results = asyncio.run(Suite(args, root, resources).run())
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        from bench import report
        written = report.write(results, args.out, None if str(args.docs) == "-" else args.docs)
        say(f"wrote {args.out / 'results.json'}, {', '.join(str(w) for w in written)}")
        print(report.targets_text(results))
    except KeyboardInterrupt:
        say("interrupted; cleaning up")
        code = 130
    except BenchError as e:
        say(f"bench.suite: {e}")
        code = 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for key in ("agent", "cluster", "crio", "registry"):
            if key in resources:
                resources[key].stop()
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
