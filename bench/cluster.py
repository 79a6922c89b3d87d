"""The coordinator over 3 real nodes: 3 CRI-Os (the suite's own plus two more, same storage
driver, same registry), a `pinsvc agent` on each, and `pinctl rollout` (the CLI, as a
subprocess: the whole code path an operator runs) of one PinnedImageSet of the workload to a
`worker` pool of the 3 nodes, maxUnavailable 3 (all nodes at once).

Each run starts from empty image stores and fresh agents (no state), and is checked: exit
code 0, the pool's synchronizer reports 3 of 3 updated, and crictl on every node reports every
image pinned.
"""

from __future__ import annotations

import asyncio
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.pin100 import BenchError, CpuMeter
from devenv.agent import AgentProcess
from devenv.crio import Crio
from devenv.registry import Registry

NODES = ("n1", "n2", "n3")
ROLE = "machineconfiguration.openshift.io/role"


def cluster_docs(refs: list[str], generation: int = 1) -> list[dict]:
    """A PinnedImageSet of `refs` for the worker pool, the pool, and the 3 Ready nodes."""
    docs: list[dict] = [
        {"apiVersion": "machineconfiguration.openshift.io/v1", "kind": "PinnedImageSet",
         "metadata": {"name": "bench", "labels": {ROLE: "worker"}, "generation": generation},
         "spec": {"pinnedImages": [{"name": r} for r in refs]}},
        {"apiVersion": "machineconfiguration.openshift.io/v1", "kind": "MachineConfigPool",
         "metadata": {"name": "worker"},
         "spec": {"machineConfigSelector": {"matchLabels": {ROLE: "worker"}},
                  "nodeSelector": {"matchLabels": {"node-role.kubernetes.io/worker": ""}},
                  "maxUnavailable": len(NODES)}},
    ]
    for name in NODES:
        docs.append({"apiVersion": "v1", "kind": "Node",
                     "metadata": {"name": name, "labels": {"node-role.kubernetes.io/worker": ""}},
                     "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                                "conditions": [{"type": "Ready", "status": "True"}]}})
    return docs


def clean(crio: Crio) -> None:
    """No drop-in, no images, configuration reloaded."""
    for entry in crio.dropin_dir.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    crio.reload()
    ids = [i["id"] for i in crio.images_json().get("images") or []]
    if ids:
        crio.crictl("rmi", *ids, timeout=300)


class ThreeNodes:
    """The 3 nodes; `first` is the suite's CRI-O, the other two are started here."""

    def __init__(self, root: Path, first: Crio, registry: Registry, storage_driver: str):
        self.root, self.registry = root, registry
        self.crios = {"n1": first}
        for name in NODES[1:]:
            self.crios[name] = Crio(root / f"crio-{name}", registries=[registry.host], storage_driver=storage_driver)

    def start(self) -> None:
        for name in NODES[1:]:
            self.crios[name].start()

    def stop(self) -> None:
        for name in NODES[1:]:
            self.crios[name].stop()

    async def run(self, refs: list[str], index: int) -> dict:
        """One rollout from empty nodes; wall time of the pinctl process."""
        await asyncio.gather(*(asyncio.to_thread(clean, c) for c in self.crios.values()))
        work = self.root / f"rollout-{index}"
        agents = {n: AgentProcess(work / f"agent-{n}", c, self.registry, **{"node-name": n})
                  for n, c in self.crios.items()}
        try:
            for agent in agents.values():
                await asyncio.to_thread(agent.start)
            cluster, endpoints = work / "cluster.yaml", work / "endpoints.yaml"
            cluster.write_text(yaml.safe_dump_all(cluster_docs(refs)))
            endpoints.write_text(yaml.safe_dump({n: a.endpoint for n, a in agents.items()}))
            argv = [sys.executable, "-m", "pinsvc.coordinator.cli", "rollout", "-f", str(cluster),
                    "--endpoints", str(endpoints), "-o", "json", "--record-dir", str(work / "records")]
            pids = {f"crio-{n}": c.pid for n, c in self.crios.items()}
            pids.update({f"agent-{n}": a.proc.pid for n, a in agents.items()})
            meter = CpuMeter(pids)
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            meter.start()
            t0 = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out, err = await proc.communicate()
            seconds = time.perf_counter() - t0
            cpu = meter.stop()
            # pinctl is the only child reaped in between (the agents are reaped after)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu["pinctl"] = round(after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime, 3)
            cpu["foreign"] = round(max(0.0, cpu["foreign"] - cpu["pinctl"]), 3)
        finally:
            for agent in agents.values():
                await asyncio.to_thread(agent.stop)
        if proc.returncode != 0:
            raise BenchError(f"pinctl rollout exited {proc.returncode}: {err.decode()[-2000:]}")
        doc = json.loads(out)
        pool = next(i for i in doc["items"] if i["kind"] == "MachineConfigPool")
        (sync,) = pool["status"]["poolSynchronizersStatus"]
        if sync["updatedMachineCount"] != len(NODES):
            raise BenchError(f"pinctl rollout: pool synchronizer {sync}")
        for name, crio in self.crios.items():
            pinned = {p.lower() for p in await asyncio.to_thread(crio.pinned_images)}
            missing = [r for r in refs if r.lower() not in pinned]
            if missing:
                raise BenchError(f"node {name}: {len(missing)} images not pinned after the rollout")
        crio_cpu = sum(v for k, v in cpu.items() if k.startswith("crio-"))
        agent_cpu = sum(v for k, v in cpu.items() if k.startswith("agent-"))
        return {"seconds": seconds, "phases": {"rollout": seconds}, "cpu_seconds": cpu,
                "crio_cpu_seconds": crio_cpu, "agent_cpu_seconds": agent_cpu, "pinctl_cpu_seconds": cpu["pinctl"],
                "nodes": len(NODES)}
