"""A small cluster for pinctl's e2e tests: real CRI-Os, one real agent each, and the cluster
file (Nodes, MachineConfigPools, PinnedImageSets) that `pinctl -f` reads, with every agent
named in an endpoint map. The default layout has 2 pools: worker (n1, n2), and infra (n3),
which also takes worker's sets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from devenv import cluster as objects
from devenv.agent import AgentProcess
from devenv.crio import Crio

NODES = {"n1": "worker", "n2": "worker", "n3": "infra"}


class Cluster:
    def __init__(self, workdir: Path, crios: dict[str, Crio], registry, workload, nodes: dict[str, str] = NODES):
        self.workdir, self.crios, self.registry, self.workload = workdir, crios, registry, workload
        self.nodes = nodes
        self.agents: dict[str, AgentProcess] = {}
        self.file = workdir / "cluster.yaml"
        self.endpoints = workdir / "endpoints.yaml"
        self.record_dir = workdir / "records"

    def start_agent(self, name: str, **flags: str) -> AgentProcess:
        old = self.agents.get(name)
        if old:
            old.stop()
        agent = AgentProcess(self.workdir / f"agent-{name}", self.crios[name], self.registry,
                             **{"node-name": name, **flags})
        agent.start()
        self.agents[name] = agent
        self.endpoints.write_text(yaml.safe_dump({n: a.endpoint for n, a in self.agents.items()}))
        return agent

    def refs(self, names) -> list[str]:
        """Workload names as references; a name that is no workload image is taken as one."""
        return [self.workload.get(n, n) for n in names]

    def write(self, worker_images, infra_images=(), worker_generation: int | None = 1,
              infra_generation: int | None = 1) -> None:
        """The cluster file; a generation of None leaves metadata.generation out, as a
        PinnedImageSet written by hand (the documented YAML) has none."""
        docs = [objects.pinned_image_set("worker-set", self.refs(worker_images), role="worker",
                                         generation=worker_generation)]
        if infra_images:
            docs.append(objects.pinned_image_set("infra-set", self.refs(infra_images), role="infra",
                                                 generation=infra_generation))
        docs.append(objects.pool("worker"))
        if "infra" in self.nodes.values():
            docs.append(objects.pool("infra", config_roles=("worker", "infra")))  # infra nodes get worker's sets too
        docs += [objects.node(name, ("worker", "infra") if role == "infra" else ("worker",))
                 for name, role in self.nodes.items()]
        self.file.write_text(objects.render(docs))

    def pinctl(self, command: str, *args: str, timeout: float = 240) -> tuple[int, dict | None, str]:
        argv = [sys.executable, "-m", "pinsvc.coordinator.cli", command, "-f", str(self.file),
                "--endpoints", str(self.endpoints), "-o", "json", *args]
        if command == "rollout":
            argv += ["--record-dir", str(self.record_dir)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        doc = json.loads(proc.stdout) if proc.stdout.strip() else None
        return proc.returncode, doc, proc.stderr

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.stop()


def items(doc, kind):
    return {i["metadata"]["name"]: i for i in doc["items"] if i["kind"] == kind}


def synchronizer(pool_doc):
    (entry,) = pool_doc["status"]["poolSynchronizersStatus"]
    assert entry["poolSynchronizerType"] == "PinnedImageSets"
    return {k: v for k, v in entry.items() if k != "poolSynchronizerType"}


def node_condition(node_doc, type: str = "PinnedImageSetsDegraded") -> dict:
    return next(c for c in node_doc["status"]["conditions"] if c["type"] == type)
