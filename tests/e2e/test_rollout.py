"""The coordinator (`pinctl`) against 3 real node agents, each with its own real CRI-O,
sharing one real registry: 2 pools (worker, and infra which also takes worker's sets)."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from devenv import cluster as objects
from tests.e2e.cluster import NODES, items, synchronizer


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
    assert err.count("already at the desired content") == 3


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
    assert by_node["n1"]["fits"] is True and by_node["n1"]["requiredBytes"] > 0

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
    assert err.count("already at the desired content") == 2, "n2 and n3 are not applied again"
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
