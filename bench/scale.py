"""Coordinator scale benchmark: a full rollout to 1,000 SIMULATED nodes in 10 pools.

Not a test: it measures the coordinator's wall time and peak RSS for a rollout at a given
concurrency while every (simulated) node answers Apply after 0 s and after 1 s, checks the
result so that a broken run cannot pass as fast, and compares with the targets of issue 3:

- overhead <= 10 s for 1,000 nodes at 0 s latency (the wall time of that run);
- total <= 1.3x the ideal (nodes / concurrency x latency) at 1 s latency;
- peak RSS of the coordinator process <= 300 MB.

What runs, per latency (fresh processes and state each time):
1. `bench/simagent.py` x `--sim-procs` (default 2, one per core): SIMULATED agents (not real
   ones: no runtime, no registry, no disk), one 127.0.0.1 TCP port (or unix socket) per node;
2. the coordinator, alone in its own process: `pinctl rollout -f cluster.yaml --endpoints
   endpoints.yaml --concurrency N -o json` (`python -m pinsvc.coordinator.cli`), or, with
   `--driver api`, a small driver in this file (`scale.py --coordinator`) calling
   `loader.load`, `plan_rollout` and `Rollout(...).run()` directly;
3. wall time from starting that process to its exit; its peak RSS and CPU from `wait4`;
   where the time went, from the simulators' clock: start+load, pre-flight, GetStatus,
   the Apply window (mean and max Applies in flight) and the end;
4. checks: exit code 0; every node's MachineConfigNode status has exactly its expected sets
   at current == desired generation; every pool's `PinnedImageSets` synchronizer has
   machineCount = its node count and all of them updated, not degraded; and, independently of
   the coordinator's report, the simulators' own state and counters: every node applied
   exactly once and ends at the desired generations, one CheckSpace per node, and at most
   `--concurrency` Applies in flight at any time (the maximum is printed).

The cluster (written once, `oc get -o yaml` style: a List of PinnedImageSets, one of
MachineConfigPools, one of Nodes; `--format json`: one List as `oc get -o json`; Nodes with
labels, annotations, addresses, conditions, capacity and nodeInfo, plus `--node-images N`
status.images entries as kubelet reports up to 50): `--pools` pools, `worker` plus custom pools `pool-01`...
whose nodeSelector picks their own label and whose machineConfigSelector also matches worker
configs (so their nodes get worker's sets too, as OpenShift does); nodes spread evenly, every
one Ready, labelled worker (and its custom pool). `--sets` PinnedImageSets of `--images`
digest references each: `worker-pinned-images` (role worker: every node) and `extra-N`, each
named by some custom pools' spec.pinnedImageSets. Every pool's maxUnavailable is
`--max-unavailable` (default "100%"), so the coordinator's global `--concurrency` is the
binding limit, not the pools.

    .venv/bin/python bench/scale.py [--nodes 1000] [--pools 10] [--concurrency 100]
        [--latency 0 1] [--events end|spread] [--format yaml|json] [--rounds N]
        [--json out.json] [--profile PREFIX] [--keep]

The table's `overhead s` is wall - ideal (at 0 s latency: the wall time itself); `other CPU
s` is the machine's busy CPU during the run minus the coordinator, the simulators and this
script: other workloads. If it is not ~0, the figures are disturbed.

Everything started is stopped on exit, error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import importlib.util
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent
SIMAGENT = REPO / "bench" / "simagent.py"
PY = sys.executable
MCO = "machineconfiguration.openshift.io"
ROLE = f"{MCO}/role"
WORKER_SET = "worker-pinned-images"
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

TARGET_OVERHEAD_S = 10.0
TARGET_RATIO = 1.3
TARGET_RSS_MB = 300.0


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---- the cluster --------------------------------------------------------------------------

@dataclass
class Expect:
    """What a correct rollout ends with."""

    node_pool: dict[str, str] = field(default_factory=dict)
    node_sets: dict[str, dict[str, int]] = field(default_factory=dict)  # node -> set -> generation
    pool_counts: dict[str, int] = field(default_factory=dict)
    images_per_node: dict[str, int] = field(default_factory=dict)


def pool_names(pools: int) -> list[str]:
    return ["worker"] + [f"pool-{k:02d}" for k in range(1, pools)]


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def node_object(name: str, index: int, pool: str, node_images: int) -> dict:
    """A Node roughly as `oc get nodes -o yaml` prints one (minus managedFields)."""
    labels = {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
              "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
              "node-role.kubernetes.io/worker": "", "node.openshift.io/os_id": "rhcos"}
    if pool != "worker":
        labels[f"node-role.kubernetes.io/{pool}"] = ""
    ip = f"10.{128 + index // 62500}.{index // 250 % 250}.{index % 250 + 1}"
    stamp = "2026-11-01T00:00:00Z"
    conditions = [
        {"type": t, "status": "False", "reason": f"KubeletHasSufficient{t.removesuffix('Pressure')}",
         "message": f"kubelet has no {t}", "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}
        for t in ("MemoryPressure", "DiskPressure", "PIDPressure")]
    conditions.append({"type": "Ready", "status": "True", "reason": "KubeletReady",
                       "message": "kubelet is posting ready status", "lastHeartbeatTime": stamp,
                       "lastTransitionTime": stamp})
    status = {
        "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
        "allocatable": {"cpu": "7500m", "ephemeral-storage": "115470533646", "memory": "31225352Ki", "pods": "250"},
        "capacity": {"cpu": "8", "ephemeral-storage": "125293548Ki", "memory": "32375304Ki", "pods": "250"},
        "conditions": conditions,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {"architecture": "amd64", "bootID": digest(name)[:36], "containerRuntimeVersion": "cri-o://1.36.3",
                     "kernelVersion": "5.14.0-570.el9_6.x86_64", "kubeProxyVersion": "", "kubeletVersion": "v1.36.3",
                     "machineID": digest(name)[:32], "operatingSystem": "linux",
                     "osImage": "Red Hat Enterprise Linux CoreOS 9.6", "systemUUID": digest(name)[:36]},
    }
    if node_images:  # kubelet reports up to 50 (nodeStatusMaxImages)
        status["images"] = [{"names": [f"quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:{digest(f'{name}{k}')}"],
                             "sizeBytes": 400_000_000 + k} for k in range(node_images)]
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "uid": digest(name)[:36], "resourceVersion": str(1000 + index),
                         "creationTimestamp": stamp, "labels": labels,
                         "annotations": {f"{MCO}/currentConfig": "rendered-worker-0123456789abcdef",
                                         f"{MCO}/desiredConfig": "rendered-worker-0123456789abcdef",
                                         f"{MCO}/state": "Done",
                                         "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
            "spec": {"providerID": f"aws:///us-east-1a/i-{digest(name)[:17]}"},
            "status": status}


def generate(workdir: Path, args: argparse.Namespace) -> tuple[Path, Expect]:
    """Writes cluster.yaml; returns its path and what a correct rollout ends with."""
    pools = pool_names(args.pools)
    set_names = [WORKER_SET] + [f"extra-{j}" for j in range(1, args.sets)]
    generation = 1
    images = {s: [f"registry.example.com/bench/{s}/img-{i:03d}@sha256:{digest(f'{s}/{i}')}"
                  for i in range(args.images)] for s in set_names}
    sets = [{"apiVersion": f"{MCO}/v1", "kind": "PinnedImageSet",
             "metadata": {"name": s, "generation": generation, "uid": digest(s)[:36],
                          "labels": {ROLE: "worker" if s == WORKER_SET else s}},
             "spec": {"pinnedImages": [{"name": i} for i in images[s]]}} for s in set_names]
    extra_of = {}  # custom pool -> the extra set it names
    mcps = []
    for k, pool in enumerate(pools):
        spec: dict = {"maxUnavailable": args.max_unavailable, "paused": False}
        if pool == "worker":
            spec["machineConfigSelector"] = {"matchLabels": {ROLE: "worker"}}
            spec["nodeSelector"] = {"matchLabels": {"node-role.kubernetes.io/worker": ""}}
            spec["pinnedImageSets"] = [{"name": WORKER_SET}]
        else:
            spec["machineConfigSelector"] = {"matchExpressions": [
                {"key": ROLE, "operator": "In", "values": ["worker", pool]}]}
            spec["nodeSelector"] = {"matchLabels": {f"node-role.kubernetes.io/{pool}": ""}}
            if args.sets > 1:
                extra_of[pool] = set_names[1 + (k - 1) % (args.sets - 1)]
                spec["pinnedImageSets"] = [{"name": extra_of[pool]}]
        mcps.append({"apiVersion": f"{MCO}/v1", "kind": "MachineConfigPool", "metadata": {"name": pool},
                     "spec": spec})
    expect = Expect()
    nodes = []
    for i in range(args.nodes):
        name = f"node-{i:04d}"
        pool = pools[i * len(pools) // args.nodes]
        nodes.append(node_object(name, i, pool, args.node_images))
        wanted = [WORKER_SET] + ([extra_of[pool]] if pool in extra_of else [])
        expect.node_pool[name] = pool
        expect.node_sets[name] = {s: generation for s in wanted}
        expect.images_per_node[name] = sum(len(images[s]) for s in wanted)
        expect.pool_counts[pool] = expect.pool_counts.get(pool, 0) + 1
    lists = [{"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}
             for items in (sets, mcps, nodes)]
    if args.format == "json":  # `oc get -o json` of the three kinds, as one List
        path = workdir / "cluster.json"
        path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": sets + mcps + nodes,
                                    "metadata": {"resourceVersion": ""}}, indent=4))
    else:
        path = workdir / "cluster.yaml"
        with path.open("w") as f:
            yaml.dump_all(lists, f, Dumper=_Dumper, sort_keys=False, width=1000)
    return path, expect


# ---- processes ----------------------------------------------------------------------------

class Processes:
    """Every process this bench started, stopped by pid on exit (never by name)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 10.0) -> None:
        if proc.returncode is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            except ProcessLookupError:
                pass
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.procs):
            self.stop(proc, timeout=5.0)


@dataclass
class Sim:
    proc: subprocess.Popen
    ready: Path
    stats: Path
    log: Path
    endpoints: list[str] = field(default_factory=list)


def start_sims(procs: Processes, workdir: Path, args: argparse.Namespace, latency: float, tag: str) -> list[Sim]:
    total = -(-args.nodes // args.nodes_per_endpoint)
    counts = [total // args.sim_procs + (1 if p < total % args.sim_procs else 0) for p in range(args.sim_procs)]
    socket_dir = workdir / "sockets"
    socket_dir.mkdir(exist_ok=True)
    sims = []
    for p, count in enumerate(counts):
        if not count:
            continue
        name = f"sim{p}-{tag}"
        ready, stats, log = (workdir / f"{name}.{ext}" for ext in ("ready.json", "stats.json", "log"))
        cmd = [PY, str(SIMAGENT), "--endpoints", str(count), "--transport", args.transport,
               "--socket-dir", str(socket_dir), "--name", name, "--latency", str(latency),
               "--rpc-latency", str(args.rpc_latency), "--events", args.events, "--ready", str(ready), "--stats", str(stats),
               "--max-seconds", str(args.timeout + 120)]
        if args.sim_profile:
            cmd += ["--profile", str(Path(f"{args.sim_profile}.{name}.prof").resolve())]
        with log.open("w") as out:
            sims.append(Sim(procs.start(cmd, stdout=out, stderr=subprocess.STDOUT), ready, stats, log))
    deadline = time.monotonic() + 60
    for sim in sims:
        while not sim.ready.exists():
            if sim.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"simulated agents did not start:\n{sim.log.read_text()[-2000:]}")
            time.sleep(0.05)
        sim.endpoints = json.loads(sim.ready.read_text())["endpoints"]
    return sims


def stop_sims(procs: Processes, sims: list[Sim]) -> list[dict]:
    stats = []
    for sim in sims:
        procs.stop(sim.proc)
    for sim in sims:
        if not sim.stats.exists():
            raise RuntimeError(f"a simulator wrote no statistics:\n{sim.log.read_text()[-2000:]}")
        stats.append(json.loads(sim.stats.read_text()))
    return stats


def coordinator_command(args: argparse.Namespace, driver: str, cluster: Path, endpoints: Path, out_record: Path,
                        concurrency: int, profile: Path | None) -> list[str]:
    prefix = [PY] + (["-m", "cProfile", "-o", str(profile)] if profile else [])
    common = ["--endpoints", str(endpoints), "--concurrency", str(concurrency)]
    if args.max_parallel:
        common += ["--max-parallel", str(args.max_parallel)]
    if driver == "pinctl":
        return prefix + ["-m", "pinsvc.coordinator.cli", "rollout", "-f", str(cluster), *common,
                         "-o", "json", "--record-dir", str(out_record), "--insecure"]  # simulators: TCP plaintext
    return prefix + [str(Path(__file__).resolve()), "--coordinator", "--cluster", str(cluster), *common,
                     "--record-dir", str(out_record)]


def run_measured(procs: Processes, cmd: list[str], stdout: Path, stderr: Path, timeout: float) -> dict:
    """Runs `cmd` alone; wall time from start to exit, and its own rusage via wait4."""
    done: list = []
    with stdout.open("wb") as out, stderr.open("wb") as err:
        start = time.monotonic()
        proc = procs.start(cmd, stdout=out, stderr=err)

        def reap() -> None:
            _, status, usage = os.wait4(proc.pid, 0)
            done.append((time.monotonic(), status, usage))

        waiter = threading.Thread(target=reap, daemon=True)
        waiter.start()
        waiter.join(timeout)
        if not done:
            proc.kill()
            waiter.join(10)
            proc.returncode = -9
            procs.procs.remove(proc)
            raise TimeoutError(f"the coordinator did not finish within {timeout:g}s (killed)")
    end, status, usage = done[0]
    proc.returncode = os.waitstatus_to_exitcode(status)
    procs.procs.remove(proc)
    return {"start": start, "end": end, "wall_s": end - start, "exit_code": proc.returncode, "peak_rss_mb": usage.ru_maxrss / 1024,
            "cpu_s": usage.ru_utime + usage.ru_stime, "user_s": usage.ru_utime, "system_s": usage.ru_stime}


def busy_seconds() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0)


def proc_cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


# ---- checks -------------------------------------------------------------------------------

def _int(value) -> int:
    return int(value) if value not in (None, "") else 0


def check_report(doc: dict, expect: Expect) -> list[str]:
    """The coordinator's report: every node at its sets, every pool complete."""
    problems = []
    items = doc.get("items", []) if isinstance(doc, dict) else []
    nodes = {i["metadata"]["name"]: i for i in items if i.get("kind") == "MachineConfigNode"}
    pools = {i["metadata"]["name"]: i for i in items if i.get("kind") == "MachineConfigPool"}
    if set(nodes) != set(expect.node_sets):
        problems.append(f"report has {len(nodes)} MachineConfigNodes, want {len(expect.node_sets)}")
    bad = []
    for name, want in expect.node_sets.items():
        status = (nodes.get(name) or {}).get("status") or {}
        have = {s.get("name"): (_int(s.get("desiredGeneration")), _int(s.get("currentGeneration")))
                for s in status.get("pinnedImageSets", [])}
        degraded = [c for c in status.get("conditions", [])
                    if c.get("type") == "PinnedImageSetsDegraded" and c.get("status") == "True"]
        if have != {s: (g, g) for s, g in want.items()} or degraded:
            bad.append(name)
    if bad:
        problems.append(f"{len(bad)} nodes not at their sets in the report (e.g. {', '.join(bad[:3])})")
    for pool, count in expect.pool_counts.items():
        doc_pool = pools.get(pool)
        if doc_pool is None:
            problems.append(f"report has no MachineConfigPool {pool}")
            continue
        sync = [s for s in doc_pool.get("status", {}).get("poolSynchronizersStatus", [])
                if s.get("poolSynchronizerType") == "PinnedImageSets"]
        s = sync[0] if sync else {}
        got = (s.get("machineCount"), s.get("updatedMachineCount"), s.get("readyMachineCount"),
               s.get("unavailableMachineCount"))
        if got != (count, count, count, 0):
            problems.append(f"pool {pool}: machineCount/updated/ready/unavailable {got}, want ({count}, {count}, "
                            f"{count}, 0)")
        if any(c.get("type") == "PinnedImageSetsDegraded" and c.get("status") == "True"
               for c in doc_pool.get("status", {}).get("conditions", [])):
            problems.append(f"pool {pool} is degraded")
    return problems


def check_sims(stats: list[dict], expect: Expect, concurrency: int) -> tuple[list[str], dict]:
    """The simulators' own view, independent of the coordinator's report."""
    problems = []
    applies: dict[str, int] = {}
    current: dict[str, dict] = {}
    calls: dict[str, int] = {}
    intervals = []
    for s in stats:
        for node, n in s["applies_per_node"].items():
            applies[node] = applies.get(node, 0) + n
        current.update(s["current"])
        for k, v in s["calls"].items():
            calls[k] = calls.get(k, 0) + v
        intervals += s["intervals"]
    n = len(expect.node_sets)
    once = sum(1 for node in expect.node_sets if applies.get(node) == 1)
    if once != n:
        problems.append(f"simulators: {once} of {n} nodes applied exactly once")
    if calls.get("ApplyCompleted") != n:
        problems.append(f"simulators: {calls.get('ApplyCompleted')} Applies completed, want {n}")
    if calls.get("CheckSpace") != n:
        problems.append(f"simulators: {calls.get('CheckSpace')} CheckSpace calls, want {n} (one pre-flight per node)")
    stale = [node for node, want in expect.node_sets.items()
             if current.get(node) != {s: [g, g] for s, g in want.items()}]
    if stale:
        problems.append(f"simulators: {len(stale)} nodes not at the desired generations (e.g. {', '.join(stale[:3])})")
    unknown = set(current) - set(expect.node_sets)
    if unknown:
        problems.append(f"simulators: calls for unknown nodes {sorted(unknown)[:3]}")
    edges = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals], key=lambda e: (e[0], e[1]))
    level = peak = 0
    for _, d in edges:
        level += d
        peak = max(peak, level)
    if peak > concurrency:
        problems.append(f"simulators: {peak} Applies in flight at once, more than --concurrency {concurrency}")
    timeline = {}
    for rpc in ("CheckSpace", "GetStatus", "Apply"):
        firsts = [st["first"][rpc] for st in stats if rpc in st.get("first", {})]
        lasts = [st["last"][rpc] for st in stats if rpc in st.get("last", {})]
        if firsts:
            timeline[f"first_{rpc}"], timeline[f"last_{rpc}"] = min(firsts), max(lasts)
    if intervals:
        first, last = min(a for a, _ in intervals), max(b for _, b in intervals)
        timeline |= {"first_apply": first, "last_apply_end": last,
                    "mean_applies_in_flight": sum(b - a for a, b in intervals) / max(last - first, 1e-9),
                    "mean_apply_s": sum(b - a for a, b in intervals) / len(intervals)}
    return problems, {"calls": calls, "max_applies_in_flight": peak, **timeline,
                      "sim_peak_rss_mb": max((s["peak_rss_mb"] for s in stats), default=0)}


# ---- one scenario -------------------------------------------------------------------------

def run_scenario(procs: Processes, workdir: Path, args: argparse.Namespace, cluster: Path, expect: Expect,
                 latency: float, round_no: int, driver: str) -> dict:
    tag = f"lat{latency:g}-r{round_no}"
    say(f"-- {tag}: starting {args.sim_procs} simulated-agent process(es) (simulation, not real agents)")
    sims = start_sims(procs, workdir, args, latency, tag)
    endpoints = [e for sim in sims for e in sim.endpoints]
    mapping = {node: endpoints[i // args.nodes_per_endpoint] for i, node in enumerate(expect.node_sets)}
    map_path = workdir / f"endpoints-{tag}.yaml"
    map_path.write_text(yaml.dump(mapping, Dumper=_Dumper, sort_keys=False))
    profile = Path(f"{args.profile}.{tag}.prof").resolve() if args.profile else None
    cmd = coordinator_command(args, driver, cluster, map_path, workdir / f"record-{tag}", args.concurrency, profile)
    out, err = workdir / f"coordinator-{tag}.out", workdir / f"coordinator-{tag}.err"
    say(f"-- {tag}: {' '.join(Path(c).name if c.startswith('/') else c for c in cmd)}")
    sim_pids = [s.proc.pid for s in sims]
    busy0, sims0, self0 = busy_seconds(), proc_cpu(sim_pids), resource.getrusage(resource.RUSAGE_SELF)
    result = run_measured(procs, cmd, out, err, args.timeout)
    busy1, sims1, self1 = busy_seconds(), proc_cpu(sim_pids), resource.getrusage(resource.RUSAGE_SELF)
    stats = stop_sims(procs, sims)
    own = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    result.update({"nodes": args.nodes, "pools": args.pools, "concurrency": args.concurrency,
                   "latency_s": latency, "round": round_no, "driver": driver, "profiled": bool(profile),
                   "ideal_s": args.nodes / args.concurrency * latency,
                   "sim_cpu_s": sims1 - sims0, "other_cpu_s": (busy1 - busy0) - result["cpu_s"] - (sims1 - sims0) - own})
    result["overhead_s"] = result["wall_s"] - result["ideal_s"]
    result["ratio"] = result["wall_s"] / result["ideal_s"] if result["ideal_s"] else None
    problems = [] if result["exit_code"] == 0 else [f"coordinator exit code {result['exit_code']}"]
    try:
        doc = json.loads(out.read_text())
    except ValueError as e:
        doc = {}
        problems.append(f"coordinator output is not JSON: {e}")
    problems += check_report(doc, expect)
    sim_problems, sim_facts = check_sims(stats, expect, args.concurrency)
    problems += sim_problems
    result.update(sim_facts)
    if "first_apply" in result:  # where the wall time went, on the simulators' clock (CLOCK_MONOTONIC)
        result["before_first_apply_s"] = result["first_apply"] - result["start"]
        result["apply_window_s"] = result["last_apply_end"] - result["first_apply"]
        result["after_last_apply_s"] = result["end"] - result["last_apply_end"]
    result["problems"] = problems
    result["ok"] = not problems
    if profile:
        result["profile"] = str(profile)
    if problems:
        say(f"-- {tag}: FAILED CHECKS:\n   " + "\n   ".join(problems) + "\n   coordinator stderr (tail):\n"
            + err.read_text(errors="replace")[-3000:])
    say(f"-- {tag}: wall {result['wall_s']:.2f}s, peak RSS {result['peak_rss_mb']:.1f} MB, checks "
        + ("ok" if not problems else "FAILED"))
    if "first_CheckSpace" in result and "first_GetStatus" in result:
        t0 = result["start"]
        result["phases"] = phases = {
            "start, import, load, plan": result["first_CheckSpace"] - t0,
            "pre-flight (first to last CheckSpace)": result["last_CheckSpace"] - result["first_CheckSpace"],
            "to the first GetStatus": result["first_GetStatus"] - result["last_CheckSpace"],
            "first GetStatus to first Apply": result["first_Apply"] - result["first_GetStatus"],
            "Applies (first start to last end)": result["last_apply_end"] - result["first_apply"],
            "after the last Apply (report, exit)": result["end"] - result["last_apply_end"]}
        say(f"-- {tag}: " + ", ".join(f"{k} {v:.2f}s" for k, v in phases.items()))
    if "first_apply" in result:
        say(f"-- {tag}: Applies: mean {result['mean_applies_in_flight']:.1f} in flight (max "
            f"{result['max_applies_in_flight']}), {result['mean_apply_s']:.3f}s each as the simulators saw them")
    return result


# ---- output -------------------------------------------------------------------------------

COLUMNS = ("nodes", "concurrency", "latency s", "wall s", "ideal s", "ratio", "overhead s", "peak RSS MB",
           "coord CPU s", "sim CPU s", "other CPU s", "max in flight", "checks")


def render(results: list[dict]) -> str:
    rows = []
    for r in results:
        rows.append((str(r["nodes"]), str(r["concurrency"]), f"{r['latency_s']:g}", f"{r['wall_s']:.2f}",
                     f"{r['ideal_s']:.2f}", f"{r['ratio']:.2f}x" if r["ratio"] else "-", f"{r['overhead_s']:.2f}",
                     f"{r['peak_rss_mb']:.1f}", f"{r['cpu_s']:.2f}", f"{r['sim_cpu_s']:.2f}",
                     f"{r['other_cpu_s']:.2f}", str(r["max_applies_in_flight"]), "ok" if r["ok"] else "FAILED"))
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(COLUMNS, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in rows]
    lines.append("")
    lines += verdicts(results)
    if any(r["profiled"] for r in results):
        lines.append("NOTE: the coordinator ran under cProfile: times are inflated, not comparable with the targets")
    return "\n".join(lines)


def verdicts(results: list[dict]) -> list[str]:
    out = []
    ok = [r for r in results if r["ok"]]
    zero = [r["wall_s"] for r in ok if r["latency_s"] == 0]
    if zero:
        v = statistics.median(zero)
        out.append(f"overhead at 0 s latency: {v:.2f} s (target <= {TARGET_OVERHEAD_S:g} s): "
                   + ("PASS" if v <= TARGET_OVERHEAD_S else "MISS"))
    for latency in sorted({r["latency_s"] for r in ok if r["latency_s"] > 0}):
        ratios = [r["ratio"] for r in ok if r["latency_s"] == latency]
        walls = [r["wall_s"] for r in ok if r["latency_s"] == latency]
        v = statistics.median(ratios)
        ideal = next(r["ideal_s"] for r in ok if r["latency_s"] == latency)
        out.append(f"total at {latency:g} s latency: {statistics.median(walls):.2f} s = {v:.2f}x the ideal "
                   f"{ideal:.2f} s (target <= {TARGET_RATIO:g}x): " + ("PASS" if v <= TARGET_RATIO else "MISS"))
    if ok:
        v = max(r["peak_rss_mb"] for r in ok)
        out.append(f"peak RSS of the coordinator: {v:.1f} MB (target <= {TARGET_RSS_MB:g} MB): "
                   + ("PASS" if v <= TARGET_RSS_MB else "MISS"))
    failed = [r for r in results if not r["ok"]]
    if failed:
        out.append(f"{len(failed)} run(s) FAILED their checks: their figures mean nothing")
    return out


def profile_summary(path: str, limit: int = 25) -> str:
    import io
    import pstats
    text = io.StringIO()
    stats = pstats.Stats(path, stream=text)
    stats.strip_dirs().sort_stats("tottime").print_stats(limit)
    stats.sort_stats("cumulative").print_stats(limit)
    return text.getvalue()


# ---- the in-file coordinator driver (--driver api) ----------------------------------------

def coordinator_main(args: argparse.Namespace) -> int:
    """Drives the coordinator API directly, as pinctl would, and prints a JSON List of
    MachineConfigNode / MachineConfigPool documents (the same shape as pinctl -o json)."""
    from pinsvc.client import connect
    from pinsvc.coordinator import loader, selection
    from pinsvc.coordinator.record import UPDATED, Record, rollout_id
    from pinsvc.coordinator.rollout import Options, Rollout, plan_rollout

    cluster = loader.load([args.cluster])
    plans = plan_rollout(cluster, endpoints=selection.load_endpoint_map(args.endpoints))
    record = Record(Path(args.record_dir) / f"rollout-{rollout_id(plans)}.json")
    rollout = Rollout(plans, Options(max_parallel=args.max_parallel, concurrency=args.concurrency),
                      record=record, connect=functools.partial(connect, insecure=True))  # simulators: TCP plaintext
    asyncio.run(rollout.run())
    items = []
    for plan in plans:
        records = [rollout.record.node(t) for t in plan.targets]
        for r in records:
            items.append({"kind": "MachineConfigNode", "metadata": {"name": r.node}, "spec": {"pool": {"name": r.pool}},
                          "status": r.status or {}, "state": r.state, "reason": r.reason})
        updated = sum(1 for r in records if r.state == UPDATED)
        items.append({"kind": "MachineConfigPool", "metadata": {"name": plan.name}, "status": {
            "poolSynchronizersStatus": [{"poolSynchronizerType": "PinnedImageSets", "machineCount": len(records),
                                         "updatedMachineCount": updated, "readyMachineCount": updated,
                                         "unavailableMachineCount": len(records) - updated}],
            "conditions": [{"type": "PinnedImageSetsDegraded",
                            "status": "True" if updated != len(records) else "False"}]}})
    print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    return 0 if all(r.state == UPDATED for r in rollout.record.nodes.values()) else 1


# ---- main ---------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--pools", type=int, default=10, help="worker + (N-1) custom pools")
    p.add_argument("--concurrency", type=int, default=100, help="the coordinator's agent calls in flight")
    p.add_argument("--latency", type=float, nargs="+", default=[0.0, 1.0],
                   help="seconds each simulated Apply takes; one run per value (default 0 1)")
    p.add_argument("--events", choices=("end", "spread"), default="end",
                   help="simulated Apply streams its events after the latency (default) or spreads PULLED over it")
    p.add_argument("--rpc-latency", type=float, default=0.0, help="seconds simulated CheckSpace/GetStatus take")
    p.add_argument("--sets", type=int, default=3, help="PinnedImageSets: worker-pinned-images + extra-N")
    p.add_argument("--images", type=int, default=20, help="images per set")
    p.add_argument("--node-images", type=int, default=0,
                   help="status.images entries per Node object (kubelet reports up to 50; default 0)")
    p.add_argument("--format", choices=("yaml", "json"), default="yaml",
                   help="cluster file: YAML (3 Lists in a stream, default) or JSON (one List, as oc get -o json)")
    p.add_argument("--max-unavailable", default="100%", help="every pool's spec.maxUnavailable")
    p.add_argument("--max-parallel", type=int, default=0, help="pass --max-parallel to the coordinator (0: not)")
    p.add_argument("--sim-procs", type=int, default=2, help="simulated-agent processes")
    p.add_argument("--nodes-per-endpoint", type=int, default=1, help="nodes sharing one simulated endpoint")
    p.add_argument("--transport", choices=("tcp", "unix"), default="tcp")
    p.add_argument("--driver", choices=("auto", "pinctl", "api"), default="auto",
                   help="pinctl (python -m pinsvc.coordinator.cli) or this file's API driver; auto: pinctl if present")
    p.add_argument("--rounds", type=int, default=1, help="runs per latency")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a coordinator run may take")
    p.add_argument("--profile", metavar="PREFIX", help="run the coordinator under cProfile: PREFIX.<run>.prof")
    p.add_argument("--sim-profile", metavar="PREFIX", help="run the simulators under cProfile: PREFIX.<sim>.prof")
    p.add_argument("--json", metavar="FILE", help="write every figure here")
    p.add_argument("--keep", action="store_true", help="keep the work directory (cluster, logs, outputs)")
    # the in-file driver, run as a subprocess by the bench
    p.add_argument("--coordinator", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cluster", help=argparse.SUPPRESS)
    p.add_argument("--endpoints", help=argparse.SUPPRESS)
    p.add_argument("--record-dir", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.coordinator:
        return coordinator_main(args)
    if args.nodes < 1 or args.pools < 1 or args.concurrency < 1 or args.sim_procs < 1 or args.nodes_per_endpoint < 1:
        raise SystemExit("scale.py: --nodes, --pools, --concurrency, --sim-procs, --nodes-per-endpoint must be >= 1")
    driver = args.driver
    if driver == "auto":
        driver = "pinctl" if importlib.util.find_spec("pinsvc.coordinator.cli") else "api"

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT too: even when started ignoring it
        signal.signal(sig, on_term)
    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="pinsvc-scale-"))
    results: list[dict] = []
    try:
        cluster, expect = generate(workdir, args)
        say(f"cluster: {args.nodes} nodes, {args.pools} pools ({', '.join(f'{p} {n}' for p, n in expect.pool_counts.items())}), "
            f"{args.sets} sets x {args.images} images, {cluster.name} {cluster.stat().st_size / 2**20:.1f} MiB; driver {driver}; "
            f"work dir {workdir}")
        for round_no in range(1, args.rounds + 1):
            for latency in args.latency:
                results.append(run_scenario(procs, workdir, args, cluster, expect, latency, round_no, driver))
        print(f"driver {driver}, {cluster.name} {cluster.stat().st_size / 2**20:.1f} MiB, {args.sim_procs} simulator "
              f"process(es) ({args.transport}, {args.nodes_per_endpoint} node(s) per endpoint), simulated Apply "
              f"events: {args.events}")
        print(render(results))
        if args.profile:
            for r in results:
                say(f"\n==== cProfile of the coordinator, {r['latency_s']:g} s latency: {r['profile']}")
                say(profile_summary(r["profile"]))
        if args.json:
            Path(args.json).write_text(json.dumps({"args": {k: v for k, v in vars(args).items()
                                                            if k not in ("coordinator", "cluster", "endpoints", "record_dir")},
                                                   "driver": driver, "results": results,
                                                   "verdicts": verdicts(results)}, indent=2))
        return 0 if all(r["ok"] for r in results) else 1
    except (TimeoutError, RuntimeError) as e:
        say(f"scale.py: {e}")
        return 1
    except KeyboardInterrupt:
        say("interrupted; stopping everything")
        return 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        procs.stop_all()
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
