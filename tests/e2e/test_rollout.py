"""The coordinator (`pinctl`) against 3 real node agents, each with its own real CRI-O,
sharing one real registry: 2 pools (worker, and infra which also takes worker's sets)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devenv import cluster as objects
from devenv.agent import AgentProcess
from devenv.crio import Crio
from tests.e2e.conftest import clean_node

NODES = {"n1": "worker", "n2": "worker", "n3": "infra"}


@pytest.fixture(scope="module")
def crios(peers_root, registry):
    nodes = {}
    try:
        for name in NODES:
            nodes[name] = Crio(peers_root / f"crio-{name}", registries=[registry.host])
            nodes[name].start()
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()


class Cluster:
    def __init__(self, workdir: Path, crios: dict[str, Crio], registry, workload):
        self.workdir, self.crios, self.registry, self.workload = workdir, crios, registry, workload
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

    def write(self, worker_images, infra_images, worker_generation=1, infra_generation=1) -> None:
        w = self.workload
        docs = [
            objects.pinned_image_set("worker-set", [w[i] for i in worker_images], role="worker",
                                     generation=worker_generation),
            objects.pinned_image_set("infra-set", [w[i] for i in infra_images], role="infra",
                                     generation=infra_generation),
            objects.pool("worker"),
            objects.pool("infra", config_roles=("worker", "infra")),  # infra nodes get worker's sets too
            *(objects.node(name, ("worker", "infra") if role == "infra" else ("worker",))
              for name, role in NODES.items()),
        ]
        self.file.write_text(objects.render(docs))

    def pinctl(self, command: str, *args: str) -> tuple[int, dict | None, str]:
        argv = [sys.executable, "-m", "pinsvc.coordinator.cli", command, "-f", str(self.file),
                "--endpoints", str(self.endpoints), "-o", "json", *args]
        if command == "rollout":
            argv += ["--record-dir", str(self.record_dir)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=240)
        doc = json.loads(proc.stdout) if proc.stdout.strip() else None
        return proc.returncode, doc, proc.stderr


@pytest.fixture
def cluster(tmp_path, crios, registry, workload):
    for crio in crios.values():
        clean_node(crio)
    c = Cluster(tmp_path, crios, registry, workload)
    for name in NODES:
        c.start_agent(name)
    c.write(["app-a", "oci"], ["three-layers"])
    yield c
    for agent in c.agents.values():
        agent.stop()


def items(doc, kind):
    return {i["metadata"]["name"]: i for i in doc["items"] if i["kind"] == kind}


def synchronizer(pool_doc):
    (entry,) = pool_doc["status"]["poolSynchronizersStatus"]
    assert entry["poolSynchronizerType"] == "PinnedImageSets"
    return {k: v for k, v in entry.items() if k != "poolSynchronizerType"}


def test_rollout_pins_each_node_its_pools_sets(cluster):
    code, doc, err = cluster.pinctl("rollout")
    assert code == 0, err
    pools = items(doc, "MachineConfigPool")
    assert synchronizer(pools["worker"]) == {"machineCount": 2, "updatedMachineCount": 2, "readyMachineCount": 2,
                                             "availableMachineCount": 2, "unavailableMachineCount": 0}
    assert synchronizer(pools["infra"])["updatedMachineCount"] == 1
    nodes = items(doc, "MachineConfigNode")
    assert nodes["n3"]["spec"]["pool"]["name"] == "infra"
    n3_sets = {s["name"]: s for s in nodes["n3"]["status"]["pinnedImageSets"]}
    assert set(n3_sets) == {"worker-set", "infra-set"}, "infra nodes get worker's sets too"
    assert n3_sets["worker-set"]["currentGeneration"] == 1 and "lastFailedGeneration" not in n3_sets["worker-set"]
    assert [s["name"] for s in nodes["n1"]["status"]["pinnedImageSets"]] == ["worker-set"]
    w = cluster.workload
    assert {w["app-a"], w["oci"]} <= cluster.crios["n1"].pinned_images()
    assert w["three-layers"] not in cluster.crios["n1"].pinned_images()
    assert {w["app-a"], w["oci"], w["three-layers"]} <= cluster.crios["n3"].pinned_images()

    # Rerunning finds every node at the desired generations and applies nothing.
    code, doc, err = cluster.pinctl("rollout")
    assert code == 0, err
    assert err.count("already at the desired generations") == 3


def test_a_set_change_rolls_out_the_new_generation_and_unpins_removed_images(cluster):
    assert cluster.pinctl("rollout")[0] == 0
    cluster.write(["app-b", "oci"], ["three-layers"], worker_generation=2)
    code, doc, err = cluster.pinctl("rollout")
    assert code == 0, err
    w = cluster.workload
    for name in NODES:
        pinned = cluster.crios[name].pinned_images()
        assert w["app-b"] in pinned and w["app-a"] not in pinned, name
        sets = {s["name"]: s for s in items(doc, "MachineConfigNode")[name]["status"]["pinnedImageSets"]}
        assert sets["worker-set"]["currentGeneration"] == 2


def test_preflight_reports_a_node_without_space_and_its_pool_stops(cluster):
    cluster.start_agent("n2", **{"space-min-free-bytes": str(1 << 60)})
    code, doc, err = cluster.pinctl("plan")
    assert code == 1
    by_node = {n["node"]: n for p in doc["pools"] for n in p["nodes"]}
    assert by_node["n2"]["fits"] is False and "insufficient space" in by_node["n2"]["reason"]
    assert by_node["n1"]["fits"] is True and by_node["n1"]["required_bytes"] > 0

    code, doc, err = cluster.pinctl("rollout", "--abort-after", "1")
    assert code == 1, "a degraded or aborted pool fails the command"
    pools = items(doc, "MachineConfigPool")
    worker = pools["worker"]["status"]
    assert worker["conditions"][0]["status"] == "True" and "aborted" in worker["conditions"][0]["message"]
    assert synchronizer(pools["worker"])["updatedMachineCount"] == 0, "the pool does not proceed past n2"
    assert "insufficient space" in err
    assert not cluster.crios["n1"].pinned_images(), "nothing pinned on the worker pool"
    assert synchronizer(pools["infra"])["updatedMachineCount"] == 1, "another pool is not held back"


def test_an_agent_killed_mid_rollout_shows_unavailable_and_a_rerun_resumes(cluster):
    cluster.agents["n1"].kill()
    code, doc, err = cluster.pinctl("rollout", "--retries", "2", "--abort-after", "0")
    assert code == 1
    nodes = items(doc, "MachineConfigNode")
    degraded = {c["type"]: c for c in nodes["n1"]["status"]["conditions"]}["PinnedImageSetsDegraded"]
    assert degraded["status"] == "True" and degraded["reason"] == "AgentUnavailable"
    pools = items(doc, "MachineConfigPool")
    assert synchronizer(pools["worker"])["unavailableMachineCount"] == 1
    assert synchronizer(pools["worker"])["updatedMachineCount"] == 1, "n2 went on without n1"

    cluster.agents["n1"].start()
    code, doc, err = cluster.pinctl("rollout")
    assert code == 0, err
    assert err.count("already at the desired generations") == 2, "n2 and n3 are not applied again"
    assert synchronizer(items(doc, "MachineConfigPool")["worker"])["updatedMachineCount"] == 2


def test_ctrl_c_cancels_cleanly_and_the_next_run_resumes(cluster, registry):
    import signal
    import time

    registry.pause()  # every node hangs in its space check
    try:
        argv = [sys.executable, "-m", "pinsvc.coordinator.cli", "rollout", "-f", str(cluster.file),
                "--endpoints", str(cluster.endpoints), "--record-dir", str(cluster.record_dir), "-o", "json"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2)
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        start = time.monotonic()
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 130 and "interrupted" in err
        assert time.monotonic() - start < 5, "Ctrl-C does not wait for the nodes"
    finally:
        registry.resume()
    for agent in cluster.agents.values():
        assert agent.proc.poll() is None, "agents survive a cancelled rollout"
    code, doc, err = cluster.pinctl("rollout")
    assert code == 0, err
    assert all(synchronizer(p)["updatedMachineCount"] == synchronizer(p)["machineCount"]
               for p in items(doc, "MachineConfigPool").values())


def test_node_commands_talk_to_one_agent(cluster):
    agent = cluster.agents["n1"]
    sets = cluster.workdir / "sets.yaml"
    sets.write_text(yaml.safe_dump(objects.pinned_image_set("direct", [cluster.workload["oci"]], generation=5)))

    def pinctl(*args):
        proc = subprocess.run([sys.executable, "-m", "pinsvc.coordinator.cli", "node", *args,
                               "--endpoint", agent.endpoint, "-o", "json"], capture_output=True, text=True, timeout=60)
        return proc.returncode, proc.stdout, proc.stderr

    code, out, err = pinctl("check-space", cluster.workload["oci"])
    assert code == 0, err
    plan = json.loads(out)
    assert plan["fits"] and int(plan["compressedBytes"]) > 0 and plan["mountpoint"]
    code, out, err = pinctl("apply", "-f", str(sets))
    assert code == 0, err
    assert json.loads(out)["status"]["pinnedImageSets"] == [
        {"name": "direct", "desiredGeneration": 5, "currentGeneration": 5}]
    assert cluster.workload["oci"] in cluster.crios["n1"].pinned_images()
    code, out, err = pinctl("status")
    assert code == 0 and json.loads(out)["status"]["pinnedImageSets"][0]["name"] == "direct"
    code, out, err = pinctl("check-space", "quay.io/app:latest")
    assert code == 1 and "INVALID_ARGUMENT" in err and "quay.io/app:latest" in err


def test_kube_mode_rolls_out_what_the_api_server_lists(cluster):
    """`pinctl rollout --kube`: the same objects served by a STAND-IN API server on loopback
    (tests/kube_standin.py) and read with the real kubernetes client, then the same rollout
    to the real agents as from the file."""
    from tests.kube_standin import StandIn, kubeconfig
    docs = list(yaml.safe_load_all(cluster.file.read_text()))
    by_kind = {kind: [d for d in docs if d["kind"] == kind] for kind in ("Node", "MachineConfigPool", "PinnedImageSet")}
    nodes = [{k: v for k, v in d.items() if k not in ("kind", "apiVersion")} for d in by_kind["Node"]]
    server = StandIn(nodes, by_kind["MachineConfigPool"], by_kind["PinnedImageSet"])
    try:
        config = kubeconfig(cluster.workdir / "kubeconfig", server.url)
        proc = subprocess.run([sys.executable, "-m", "pinsvc.coordinator.cli", "rollout", "--kube", "--kubeconfig",
                               str(config), "--endpoints", str(cluster.endpoints), "-o", "json",
                               "--record-dir", str(cluster.record_dir)], capture_output=True, text=True, timeout=240)
    finally:
        server.close()
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert {n: synchronizer(p)["updatedMachineCount"] for n, p in items(doc, "MachineConfigPool").items()} == {
        "worker": 2, "infra": 1}
    w = cluster.workload
    assert {w["app-a"], w["oci"], w["three-layers"]} <= cluster.crios["n3"].pinned_images()
    assert {w["app-a"], w["oci"]} <= cluster.crios["n1"].pinned_images()
    assert {p for p, _, _ in server.requests} == set(server.items)
