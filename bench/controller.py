"""Controller benchmark: `kubectl apply` of 10 PinnedImageSets to 1,000 Node objects in a real
API server, rolled out by pinsvc-controller to SIMULATED agents (bench/simagent.py:
simulation, not real agents: no runtime, no registry, no disk).

What runs: etcd (data on /dev/shm) and kube-apiserver with OpenShift's CRDs (devenv.kube);
2 simulator processes with one 127.0.0.1 port per node (`--latency` seconds per Apply);
1,000 Nodes in 10 pools (`worker` and `pool-01`..`pool-09`, 100 nodes each, `maxUnavailable`
--max-unavailable), each node annotated with its simulated agent's endpoint; one set per pool
(its own role label, `--images` digest references); then pinsvc-controller (admin
kubeconfig), alone in its process. Measured:

- first, before any set exists, the time and requests to create one MachineConfigNode per
  node (once per cluster, as the MCO would);
- per rollout (the sets created, then every set edited: generation 2), the time from
  `kubectl apply -f sets.yaml` until all 1,000 MachineConfigNodes report
  currentGeneration = desiredGeneration = 1 for their pool's set (seen through a watch), and
  its ratio to the ideal: pools in parallel, each ceil(100 / maxUnavailable) waves of
  `--latency` seconds (target <= 1.3x);
- API requests per node for that rollout: the API server's own `apiserver_request_total`
  over the rollout (until every pool's status says 100 updated), less this script's own
  requests (the kubectl apply, its watch), divided by the nodes; by resource and verb too;
- the controller's peak RSS (VmHWM; target <= 300 MB) and CPU seconds;
- agent calls for a no-op change (the same sets applied again and annotated; the
  simulators' counters before and 5 s after; target 0);
- checks: every simulated node applied exactly once, every pool's PinnedImageSets
  synchronizer at 100 updated;
- the CPU seconds other work on the machine used meanwhile (`foreign_cpu_s`): when it is not
  ~0, the times are disturbed.

    sudo .venv/bin/python -m bench.controller [--nodes 1000] [--pools 10] [--latency 1] [--max-unavailable 10]
        [--json bench/results/controller.json] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from bench.scale import Processes, busy_seconds, node_object, proc_cpu, start_sims
from devenv.kube import KubeCluster

REPO = Path(__file__).resolve().parent.parent
MCO = "machineconfiguration.openshift.io"
ROLE = f"{MCO}/role"
ENDPOINT = "pinsvc.io/agent-endpoint"


def pools(count: int) -> list[str]:
    return ["worker"] + [f"pool-{k:02d}" for k in range(1, count)]


def cluster_objects(args, endpoints: list[str]) -> tuple[list[dict], list[dict], list[dict]]:
    """(nodes, pools, sets): node i in pool i % pools, its own simulated endpoint."""
    names = pools(args.pools)
    nodes = []
    for i in range(args.nodes):
        pool = names[i % args.pools]
        node = node_object(f"node-{i:04d}", i, pool, 0)
        node["metadata"] = {k: v for k, v in node["metadata"].items()
                            if k not in ("uid", "resourceVersion", "creationTimestamp")}
        node["metadata"]["annotations"][ENDPOINT] = endpoints[i]
        if pool != "worker":  # own pools only: worker's nodes are those labelled worker and nothing else
            node["metadata"]["labels"].pop("node-role.kubernetes.io/worker")
        nodes.append(node)
    pool_docs = [{"apiVersion": f"{MCO}/v1", "kind": "MachineConfigPool", "metadata": {"name": name},
                  "spec": {"machineConfigSelector": {"matchLabels": {ROLE: name}},
                           "nodeSelector": {"matchLabels": {f"node-role.kubernetes.io/{name}": ""}},
                           "maxUnavailable": args.max_unavailable}} for name in names]
    sets = [{"apiVersion": f"{MCO}/v1", "kind": "PinnedImageSet",
             "metadata": {"name": f"{name}-pinned-images", "labels": {ROLE: name}},
             "spec": {"pinnedImages": [{"name": f"quay.io/bench/{name}-{k}@sha256:{k:064x}"}
                                       for k in range(args.images)]}} for name in names]
    return nodes, pool_docs, sets


def _api_metrics(kube: KubeCluster) -> str:
    context = ssl.create_default_context(cafile=str(kube.ca_file))
    request = urllib.request.Request(f"{kube.server}/metrics", headers={"Authorization": f"Bearer {kube.token}"})
    return urllib.request.urlopen(request, context=context, timeout=30).read().decode()


def _by_request(text: str, metric: str) -> dict[tuple[str, str], float]:
    """A metric of the API server summed by (resource[/subresource], verb)."""
    found: dict[tuple[str, str], float] = {}
    for labels, value in re.findall(rf"^{metric}\{{([^}}]*)\}} (\S+)$", text, re.M):
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        key = (fields.get("resource", "") + (f"/{fields['subresource']}" if fields.get("subresource") else ""),
               fields.get("verb", ""))
        found[key] = found.get(key, 0) + float(value)
    return found


def request_counts(kube: KubeCluster) -> dict[tuple[str, str], float]:
    """apiserver_request_total by (resource, verb), from the API server's /metrics."""
    return _by_request(_api_metrics(kube), "apiserver_request_total")


def request_seconds(kube: KubeCluster) -> tuple[dict, dict]:
    """(seconds, count) of apiserver_request_duration_seconds by (resource, verb): the time
    the API server itself took, from reading a request to writing its response."""
    text = _api_metrics(kube)
    return (_by_request(text, "apiserver_request_duration_seconds_sum"),
            _by_request(text, "apiserver_request_duration_seconds_count"))


def delta(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}


def sim_stats(sims) -> list[dict]:
    """The simulators' statistics right now (SIGUSR1 makes each write them)."""
    for sim in sims:
        sim.stats.unlink(missing_ok=True)
        sim.proc.send_signal(signal.SIGUSR1)
    found = []
    for sim in sims:
        deadline = time.monotonic() + 10
        while not sim.stats.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        found.append(json.loads(sim.stats.read_text()))
    return found


def sim_calls(sims) -> dict[str, int]:
    """The simulators' call counters right now."""
    total: dict[str, int] = {}
    for stats in sim_stats(sims):
        for rpc, count in stats["calls"].items():
            total[rpc] = total.get(rpc, 0) + count
    return total


def _summary(values: list[float]) -> dict:
    values = sorted(values)
    if not values:
        return {}
    return {"mean": round(sum(values) / len(values), 3), "p50": round(values[len(values) // 2], 3),
            "p90": round(values[int(len(values) * 0.9)], 3), "max": round(values[-1], 3)}


def breakdown(stats: list[dict], pool_of: dict[str, str], width: int, t0: float, t_done: float) -> dict:
    """Where a rollout's time went, from the simulators' per-node timelines (CLOCK_MONOTONIC,
    the same clock as this process): per node the GetStatus, CheckSpace, Apply and its end
    after `t0` (the kubectl apply). In each pool the k-th node to start took the slot the
    (k - width)-th Apply to end freed: `handover` is from that end to the node's Apply (the
    controller learning the Apply ended, its pass, the start; the node's pre-flight ran
    before, while it waited in line); `first` is t0 to each first-wave Apply (kubectl, the
    watch, the first pass, the first wave's pre-flight); `status` (GetStatus to CheckSpace)
    and `check` (CheckSpace to Apply, including the wait in line) per node; `apply` the
    simulated work; `tail` from the last Apply's end to the moment every MachineConfigNode
    was seen current (the result writes and the watch)."""
    nodes: dict[str, dict[str, float]] = {}
    for sim in stats:
        for node, events in sim["timeline"].items():
            for rpc, when in events:
                if when >= t0:
                    nodes.setdefault(node, {}).setdefault(rpc, when)  # the rollout's first of each
    pools: dict[str, list[dict[str, float]]] = {}
    for node, seen in nodes.items():
        if all(k in seen for k in ("GetStatus", "CheckSpace", "Apply", "ApplyCompleted")):
            pools.setdefault(pool_of[node], []).append(seen)
    parts: dict[str, list[float]] = {k: [] for k in ("first", "handover", "status", "check", "apply")}
    for members in pools.values():
        ends = sorted(m["ApplyCompleted"] for m in members)
        for k, m in enumerate(sorted(members, key=lambda m: m["Apply"])):
            parts["first" if k < width else "handover"].append(m["Apply"] - (t0 if k < width else ends[k - width]))
            parts["status"].append(m["CheckSpace"] - m["GetStatus"])
            parts["check"].append(m["Apply"] - m["CheckSpace"])
            parts["apply"].append(m["ApplyCompleted"] - m["Apply"])
    last_end = max((m["ApplyCompleted"] for members in pools.values() for m in members), default=t_done)
    return {**{k: _summary(v) for k, v in parts.items()}, "tail": round(t_done - last_end, 3)}


async def create_nodes(kube: KubeCluster, nodes: list[dict]) -> None:
    """POSTs the nodes 20 at a time (kubectl would take minutes for 1,000)."""
    from pinsvc.controller.kubeapi import Kube, connect
    api = await connect(str(kube.kubeconfig))
    client, gate = Kube(api), asyncio.Semaphore(20)

    async def one(node: dict) -> None:
        async with gate:
            await client.request("POST", "/api/v1/nodes", body=node)

    try:
        await asyncio.gather(*(one(n) for n in nodes))
    finally:
        await api.close()


async def watch_done(kube: KubeCluster, expected: dict[str, str], timeout: float,
                     generation: int = 1) -> tuple[float, float, float]:
    """(t0, seconds, kubectl): when `kubectl apply -f sets.yaml` started (time.monotonic),
    the seconds until every node's MachineConfigNode had its set at current = desired =
    `generation`, and the seconds kubectl itself took."""
    from pinsvc.controller.kubeapi import MCNS, Informer, Kube, connect
    api = await connect(str(kube.kubeconfig))
    done: set[str] = set()
    finished = asyncio.Event()

    def on_event(kind: str, obj: dict) -> None:
        name = obj["metadata"]["name"]
        sets = {s["name"]: s for s in (obj.get("status") or {}).get("pinnedImageSets") or []}
        entry = sets.get(expected.get(name, ""), {})
        if kind != "DELETED" and entry.get("currentGeneration") == generation == entry.get("desiredGeneration"):
            done.add(name)
            if len(done) == len(expected):
                finished.set()

    informer = Informer(Kube(api), MCNS, on_event)
    task = asyncio.ensure_future(informer.run())
    try:
        await informer.synced.wait()
        t0 = time.monotonic()
        await asyncio.to_thread(kube.kubectl, "apply", "-f", str(kube.root / "sets.yaml"))
        kubectl = time.monotonic() - t0
        await asyncio.wait_for(finished.wait(), timeout)
        return t0, time.monotonic() - t0, kubectl
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await api.close()


def pools_done(kube: KubeCluster, per_pool: int) -> bool:
    for pool in kube.get("machineconfigpools")["items"]:
        sync = [s for s in (pool.get("status") or {}).get("poolSynchronizersStatus") or []
                if s["poolSynchronizerType"] == "PinnedImageSets"]
        if not sync or sync[0]["updatedMachineCount"] != per_pool:
            return False
    return True


def rollout(kube: KubeCluster, sims, expected: dict, args, generation: int) -> dict:
    """One measured rollout: kubectl apply of sets.yaml until every node pins its set at
    `generation` and every pool says so; the API requests and agent calls it took."""
    per_pool = args.nodes // args.pools
    before, calls, seconds0 = request_counts(kube), sim_calls(sims), request_seconds(kube)
    pids = [os.getpid(), kube.apiserver.pid, kube.etcd.pid, *args.measured_pids]
    busy0, ours0 = busy_seconds(), proc_cpu(pids)
    t0, seconds, kubectl = asyncio.run(watch_done(kube, expected, args.timeout, generation))
    foreign = (busy_seconds() - busy0) - (proc_cpu(pids) - ours0)
    deadline = time.monotonic() + 30
    while not pools_done(kube, per_pool) and time.monotonic() < deadline:
        time.sleep(0.2)
    requests = delta(request_counts(kube), before)
    seconds1 = request_seconds(kube)
    spent, answered = delta(seconds1[0], seconds0[0]), delta(seconds1[1], seconds0[1])
    stats = sim_stats(sims)
    calls_after = {}
    for sim in stats:
        for rpc, count in sim["calls"].items():
            calls_after[rpc] = calls_after.get(rpc, 0) + count
    pool_of = {node: pool.removesuffix("-pinned-images") for node, pool in expected.items()}
    # the bench's own requests: kubectl apply (discovery, a GET and a PATCH or POST per set), its
    # list and watch of MachineConfigNodes, the pool polls above
    own = sum(v for (resource, verb), v in requests.items()
              if resource == "pinnedimagesets" or verb == "LIST" or resource == "" or resource.startswith("openapi"))
    ideal = math.ceil(per_pool / args.max_unavailable) * args.latency
    return {"generation": generation, "seconds": round(seconds, 2), "kubectl_apply_s": round(kubectl, 2), "ideal_seconds": ideal,
            "ratio": round(seconds / ideal, 3) if ideal else None,
            "api_requests": {f"{verb} {resource}": int(v) for (resource, verb), v in sorted(requests.items())},
            "api_requests_per_node": round((sum(requests.values()) - own) / args.nodes, 2),
            "api_server_mean_ms": {f"{verb} {resource}": round(1000 * spent[(resource, verb)] / n, 1)
                                   for (resource, verb), n in sorted(answered.items())
                                   if resource.startswith("machineconfig") and verb in ("APPLY", "PATCH")},
            "agent_calls": {k: v - calls.get(k, 0) for k, v in calls_after.items()},
            "breakdown_s": breakdown(stats, pool_of, args.max_unavailable, t0, t0 + seconds),
            "pools_report_all_updated": pools_done(kube, per_pool),
            "foreign_cpu_s": round(foreign, 1)}  # other work on the machine meanwhile: ~0 for clean figures


def vm_hwm_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) / 1024


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(args) -> dict:
    procs = Processes()
    work = Path(tempfile.mkdtemp(prefix="pinsvc-bench-controller-"))
    etcd = Path(tempfile.mkdtemp(prefix="pinsvc-bench-etcd-", dir="/dev/shm"))
    kube = KubeCluster(work / "kube", etcd_dir=etcd,
                       apiserver_flags=("--max-requests-inflight=800", "--max-mutating-requests-inflight=400"))
    try:
        kube.start()
        sim_args = argparse.Namespace(nodes=args.nodes, nodes_per_endpoint=1, sim_procs=2, transport="tcp",
                                      rpc_latency=0.0, events="end", timeout=args.timeout, sim_profile=None)
        sims = start_sims(procs, work, sim_args, args.latency, "ctl")
        endpoints = [e for sim in sims for e in sim.endpoints]
        nodes, pool_docs, sets = cluster_objects(args, endpoints)
        t = time.monotonic()
        asyncio.run(create_nodes(kube, nodes))
        kube.apply(pool_docs)
        (kube.root / "sets.yaml").write_text(yaml.safe_dump_all(sets))
        print(f"{args.nodes} Nodes and {args.pools} pools created in {time.monotonic() - t:.1f}s", flush=True)
        log = (work / "controller.log").open("w")
        controller = procs.start([sys.executable, "-m", "pinsvc.controller.cli", "--kubeconfig", str(kube.kubeconfig),
                                  "--lease-namespace", "default", "--concurrency", str(args.concurrency),
                                  "--http-address", "127.0.0.1:0",  # probes and metrics: loopback only
                                  "--insecure"],  # the simulated agents: TCP plaintext
                                 stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while "caches synced" not in (work / "controller.log").read_text():
            if controller.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the controller did not start:\n" + (work / "controller.log").read_text()[-3000:])
            time.sleep(0.1)
        cpu0 = cpu_seconds(controller.pid)
        if args.py_spy:  # sampled while the rollouts run, without pausing the controller
            spy = procs.start([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(controller.pid),
                               "--rate", "100", "--nonblocking", "--format", "raw", "-o", str(Path(args.py_spy).resolve())],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        args.measured_pids = [controller.pid, *(sim.proc.pid for sim in sims)]
        # before any set: one MachineConfigNode per node, as on a cluster without the MCO
        t, before = time.monotonic(), request_counts(kube)
        while len(kube.kubectl("get", "machineconfignodes", "-o", "name").stdout.split()) < args.nodes:
            if time.monotonic() - t > args.timeout:
                raise RuntimeError("the MachineConfigNodes were not all created")
            time.sleep(0.5)
        created = {"seconds": round(time.monotonic() - t, 2),
                   "api_requests": {f"{verb} {resource}": int(v) for (resource, verb), v
                                    in sorted(delta(request_counts(kube), before).items()) if verb != "LIST"}}
        print(json.dumps(created), flush=True)
        expected = {n["metadata"]["name"]: f"{pools(args.pools)[i % args.pools]}-pinned-images"
                    for i, n in enumerate(nodes)}
        first = rollout(kube, sims, expected, args, 1)
        print(json.dumps(first), flush=True)
        for doc in sets:  # an edit of every set: generation 2
            doc["spec"]["pinnedImages"].append({"name": f"quay.io/bench/extra@sha256:{'e' * 64}"})
        (kube.root / "sets.yaml").write_text(yaml.safe_dump_all(sets))
        second = rollout(kube, sims, expected, args, 2)
        print(json.dumps(second), flush=True)
        cpu = cpu_seconds(controller.pid) - cpu0
        if args.py_spy:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=30)
        calls = sim_calls(sims)
        kube.apply(sets)  # the same sets again, and a metadata-only change: no agent call
        kube.kubectl("annotate", "pinnedimagesets", "--all", "bench.pinsvc.io/noop=1")
        time.sleep(5)
        noop = {k: v - calls.get(k, 0) for k, v in sim_calls(sims).items()}
        rss = vm_hwm_mb(controller.pid)
        result = {
            "nodes": args.nodes, "pools": args.pools, "images_per_set": args.images, "latency_s": args.latency,
            "max_unavailable": args.max_unavailable, "simulation": True,
            "machineconfignodes_created": created, "first_rollout": first, "edit_rollout": second,
            "controller_peak_rss_mb": round(rss, 1), "controller_cpu_s": round(cpu, 1), "agent_calls_noop": noop,
            "checks": {"applies": all(r["agent_calls"].get("ApplyCompleted") == args.nodes for r in (first, second)),
                       "pools": first["pools_report_all_updated"] and second["pools_report_all_updated"],
                       "noop": sum(noop.values()) == 0},
        }
        procs.stop(controller, timeout=15)
        return result
    finally:
        procs.stop_all()
        kube.stop()
        shutil.rmtree(etcd, ignore_errors=True)
        if args.keep:
            print(f"logs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--pools", type=int, default=10)
    p.add_argument("--images", type=int, default=10, help="digest references per set")
    p.add_argument("--latency", type=float, default=1.0, help="seconds a simulated Apply takes")
    p.add_argument("--max-unavailable", type=int, default=10, help="every pool's maxUnavailable")
    p.add_argument("--concurrency", type=int, default=200, help="the controller's --concurrency")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--json", help="write the result here")
    p.add_argument("--keep", action="store_true", help="keep the work directory (controller, simulator logs)")
    p.add_argument("--py-spy", metavar="FILE", help="sample the controller during both rollouts with py-spy "
                   "(pip install py-spy) and write its folded stacks here")
    args = p.parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(result["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
