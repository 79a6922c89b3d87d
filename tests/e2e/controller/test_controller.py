"""The controller end to end: `kubectl apply` of the documented PinnedImageSet and a pool on
a real kube-apiserver with OpenShift's CRDs, 4 real CRI-O nodes with agents, the controller
running with its ServiceAccount's token. What users see: `kubectl describe
machineconfignode`, the pool status, events, and what each CRI-O reports pinned."""

from __future__ import annotations

import json
import signal
import time

from devenv import cluster
from tests.e2e.controller.conftest import NODES, applies, node_objects, wait_for

MCO = "machineconfiguration.openshift.io"
ROLE = f"{MCO}/role"


def documented_set(name: str, refs: list[str]) -> str:
    """The OpenShift documentation's PinnedImageSet, with local digests."""
    images = "".join(f"  - name: {ref}\n" for ref in refs)
    return (f"apiVersion: {MCO}/v1\nkind: PinnedImageSet\nmetadata:\n  labels:\n    {ROLE}: worker\n"
            f"  name: {name}\nspec:\n  pinnedImages:\n{images}")


def mcn(kube, node: str) -> dict:
    """The node's MachineConfigNode, {} while there is none."""
    done = kube.kubectl("get", "machineconfignode", node, "-o", "json", check=False)
    return json.loads(done.stdout) if done.returncode == 0 else {}


def mcn_sets(kube, node: str) -> dict[str, dict]:
    doc = mcn(kube, node)
    return {s["name"]: s for s in (doc.get("status") or {}).get("pinnedImageSets") or []}


def all_current(kube, nodes, set_name: str, generation: int):
    return all(mcn_sets(kube, n).get(set_name, {}).get("currentGeneration") == generation for n in nodes)


def conditions(kube, node: str) -> dict[str, dict]:
    return {c["type"]: c for c in (mcn(kube, node).get("status") or {}).get("conditions") or []}


def test_every_deploy_manifest_passes_server_side_dry_run(kube):
    from devenv.paths import REPO
    for path in sorted((REPO / "deploy" / "kubernetes").rglob("*.yaml")):
        done = kube.kubectl("apply", "--dry-run=server", "--server-side", "--force-conflicts", "-f", str(path),
                            check=False)
        assert done.returncode == 0, f"{path}: {done.stderr}"


def test_apply_rolls_out_and_follows_every_change(kube, nodes, controllers, metrics_ports, tmp_path):
    workers = NODES[:3]
    kube.apply(node_objects(nodes, workers) + node_objects(nodes, NODES[3:], role="spare")
               + [cluster.pool("worker", max_unavailable=1)])
    refs = [nodes.images["app-a"], nodes.images["app-b"]]
    path = tmp_path / "pinned-images.yaml"
    path.write_text(documented_set("flow-pinned-images", refs))
    kube.kubectl("apply", "-f", str(path))
    controller = controllers("controller-a")

    wait_for("every worker pinned at generation 1", lambda: all_current(kube, workers, "flow-pinned-images", 1))
    for name in workers:
        assert set(refs) <= nodes.nodes[name].crio.pinned_images(), name  # the runtime's own word
    described = kube.kubectl("describe", "machineconfignode", "worker-0").stdout
    for line in ("Current Generation:  1", "Desired Generation:  1", "Name:                flow-pinned-images",
                 "Type:                  PinnedImageSetsProgressing", "Type:                  PinnedImageSetsDegraded"):
        assert line in described, described
    assert {c["type"]: c["status"] for c in conditions(kube, "worker-0").values()} == {
        "PinnedImageSetsProgressing": "False", "PinnedImageSetsDegraded": "False"}
    pool = wait_for("the pool roll-up", lambda: [s for s in (kube.get("machineconfigpool", "worker").get("status") or {})
                                                  .get("poolSynchronizersStatus", [])
                                                  if s.get("updatedMachineCount") == 3])
    assert pool[0]["machineCount"] == 3 and pool[0]["poolSynchronizerType"] == "PinnedImageSets"
    assert mcn(kube, "worker-3") == {}  # in no pool
    wait_for("the completion event on the set", lambda: "RolloutComplete" in kube.kubectl(
        "get", "events", "-n", "default", "--field-selector", "involvedObject.name=flow-pinned-images").stdout)

    # a no-op change (the same set applied again) calls no agent
    before = {n: applies(metrics_ports, n) for n in workers}
    kube.kubectl("apply", "-f", str(path))
    kube.kubectl("annotate", "pinnedimageset", "flow-pinned-images", "example.com/touched=yes")
    time.sleep(3)  # the events reach the controller within milliseconds; it must do nothing
    assert {n: applies(metrics_ports, n) for n in workers} == before

    # an edited set (generation 2) rolls out
    refs.append(nodes.images["oci"])
    path.write_text(documented_set("flow-pinned-images", refs))
    kube.kubectl("apply", "-f", str(path))
    wait_for("generation 2 everywhere", lambda: all_current(kube, workers, "flow-pinned-images", 2))
    assert all(nodes.images["oci"] in nodes.nodes[n].crio.pinned_images() for n in workers)

    # a node labelled into the pool gets its sets
    kube.kubectl("label", "node", "worker-3", "node-role.kubernetes.io/worker=")
    wait_for("worker-3 pinned", lambda: all_current(kube, ["worker-3"], "flow-pinned-images", 2))
    assert set(refs) <= nodes.nodes["worker-3"].crio.pinned_images()

    # a node leaving the pool loses them (and, in no pool at all, its MachineConfigNode)
    kube.kubectl("label", "node", "worker-1", "node-role.kubernetes.io/worker-")
    wait_for("worker-1 unpinned", lambda: not set(refs) & nodes.nodes["worker-1"].crio.pinned_images())
    wait_for("worker-1's MachineConfigNode removed", lambda: mcn(kube, "worker-1") == {})

    # a deleted set is unpinned everywhere
    kube.kubectl("delete", "pinnedimageset", "flow-pinned-images")
    remaining = ["worker-0", "worker-2", "worker-3"]
    wait_for("every node unpinned", lambda: all(not set(refs) & nodes.nodes[n].crio.pinned_images() for n in remaining))
    wait_for("no set in any MachineConfigNode", lambda: all(mcn_sets(kube, n) == {} for n in remaining))

    # a deleted node's MachineConfigNode is removed
    kube.kubectl("delete", "node", "worker-2")
    wait_for("worker-2's MachineConfigNode removed", lambda: mcn(kube, "worker-2") == {})
    assert "Forbidden" not in controller.log(400), controller.log(400)


def test_waiting_nodes_show_the_new_generation_at_once(kube, nodes, controllers):
    """As the MCO does: an edited set's new generation is desired on every node at once;
    the nodes waiting for their turn say so (Progressing True), their current generation
    is still the old one. worker-0's agent is frozen (SIGSTOP) mid-rollout so that it holds
    the pool's only slot for as long as the test looks."""
    workers = NODES[:3]
    kube.apply(node_objects(nodes, workers) + [cluster.pool("worker", max_unavailable=1)])
    kube.apply([cluster.pinned_image_set("wait-pinned-images", [nodes.images["app-a"]], role="worker")])
    controllers("controller-a")
    wait_for("generation 1 everywhere", lambda: all_current(kube, workers, "wait-pinned-images", 1))
    frozen = nodes.nodes["worker-0"].agent.proc
    frozen.send_signal(signal.SIGSTOP)
    try:
        kube.apply([cluster.pinned_image_set("wait-pinned-images", [nodes.images["app-a"], nodes.images["app-b"]],
                                             role="worker", generation=2)])

        def shown() -> dict[str, tuple]:
            found = {}
            for item in kube.get("machineconfignodes")["items"]:
                status = item.get("status") or {}
                entry = next((s for s in status.get("pinnedImageSets") or [] if s["name"] == "wait-pinned-images"), {})
                progressing = next((c for c in status.get("conditions") or []
                                    if c["type"] == "PinnedImageSetsProgressing"), {})
                found[item["metadata"]["name"]] = (entry.get("desiredGeneration"), entry.get("currentGeneration"),
                                                   progressing.get("status"), progressing.get("reason"),
                                                   progressing.get("message", ""))
            return found

        last: list[dict] = [{}]

        def waiting() -> dict | None:
            last[0] = found = shown()
            ok = all(found.get(n, ())[:3] == (2, 1, "True") for n in workers) and all(
                found[n][3] == "WaitingForSlot" for n in workers[1:])
            return found if ok else None

        try:
            seen = wait_for("every node desiring generation 2, worker-1 and worker-2 waiting", waiting, timeout=20)
        except AssertionError as e:
            raise AssertionError(f"{e}; (desired, current, Progressing status, reason, message) per "
                                 f"MachineConfigNode: {last[0]}") from None
        assert seen["worker-0"][3] == "ImagePrefetch", seen  # the one applying
        for name in workers[1:]:
            assert "waits for its turn in pool worker" in seen[name][4] and "at most 1" in seen[name][4], seen
        time.sleep(2)  # still waiting, nothing else written meanwhile
        assert shown() == seen
    finally:
        frozen.send_signal(signal.SIGCONT)
    wait_for("generation 2 everywhere", lambda: all_current(kube, workers, "wait-pinned-images", 2))
    assert all(conditions(kube, n)["PinnedImageSetsProgressing"]["status"] == "False" for n in workers)


def test_a_down_agent_degrades_its_node_only(kube, nodes, controllers):
    workers = NODES[:3]
    kube.apply(node_objects(nodes, workers) + [cluster.pool("worker", max_unavailable=1)])
    nodes.nodes["worker-1"].agent.stop()
    try:
        kube.apply([cluster.pinned_image_set("down-pinned-images", [nodes.images["app-a"]], role="worker")])
        controllers("controller-a")
        wait_for("the others pinned", lambda: all_current(kube, ["worker-0", "worker-2"], "down-pinned-images", 1))
        degraded = wait_for("worker-1 degraded", lambda: (conditions(kube, "worker-1").get("PinnedImageSetsDegraded")
                                                          or {}).get("status") == "True")
        degraded = conditions(kube, "worker-1")["PinnedImageSetsDegraded"]
        assert degraded["reason"] == "AgentUnavailable" and "unavailable" in degraded["message"], degraded
        pool = wait_for("the pool degraded", lambda: [c for c in kube.get("machineconfigpool", "worker")
                                                      .get("status", {}).get("conditions", [])
                                                      if c["type"] == "PinnedImageSetsDegraded" and c["status"] == "True"])
        assert "worker-1" in pool[0]["message"]
        assert "PinnedImageSetsFailed" in kube.kubectl("get", "events", "-n", "default", "--field-selector",
                                                       "involvedObject.name=worker-1").stdout
    finally:
        nodes.nodes["worker-1"].agent.start()
    wait_for("worker-1 recovers once its agent is back", lambda: all_current(kube, ["worker-1"], "down-pinned-images", 1))
    assert conditions(kube, "worker-1")["PinnedImageSetsDegraded"]["status"] == "False"


def test_killed_leader_is_replaced_and_finished_nodes_are_not_applied_again(kube, nodes, controllers, metrics_ports):
    workers = NODES[:3]
    kube.apply(node_objects(nodes, workers) + [cluster.pool("worker", max_unavailable=1)])
    leader = controllers("controller-a")
    assert leader.wait_for_log("controller-a leads")
    standby = controllers("controller-b")
    assert standby.wait_for_log("campaigns")
    before = {n: applies(metrics_ports, n) for n in workers}
    kube.apply([cluster.pinned_image_set("lead-pinned-images", [nodes.images[i] for i in ("app-a", "three-layers",
                                                                                         "multiarch")], role="worker")])
    first = wait_for("a first node done", lambda: [n for n in workers
                                                  if mcn_sets(kube, n).get("lead-pinned-images", {})
                                                  .get("currentGeneration") == 1], interval=0.05)
    leader.kill()
    lease = wait_for("controller-b holding the Lease", lambda: kube.get("lease", "pinsvc-controller", "-n", "pinsvc")
                     ["spec"].get("holderIdentity") == "controller-b", timeout=30)
    assert lease
    wait_for("every node done", lambda: all_current(kube, workers, "lead-pinned-images", 1))
    after = {n: applies(metrics_ports, n) for n in workers}
    for name in first:
        assert after[name] - before[name] == 1, (name, before, after)  # done before the kill: never again
    assert all(after[n] - before[n] >= 1 for n in workers)


def test_watches_resume_after_the_api_server_restarts(kube, nodes, controllers):
    workers = NODES[:2]
    kube.apply(node_objects(nodes, workers) + [cluster.pool("worker", max_unavailable=2)])
    kube.apply([cluster.pinned_image_set("restart-pinned-images", [nodes.images["app-a"]], role="worker")])
    controller = controllers("controller-a")
    wait_for("generation 1", lambda: all_current(kube, workers, "restart-pinned-images", 1))
    down = kube.restart_apiserver()
    kube.apply([cluster.pinned_image_set("restart-pinned-images", [nodes.images["app-b"]], role="worker",
                                         generation=2)])
    generation = kube.get("pinnedimageset", "restart-pinned-images")["metadata"]["generation"]
    wait_for(f"generation {generation} after a {down:.0f}s restart",
             lambda: all_current(kube, workers, "restart-pinned-images", generation), timeout=90)
    assert controller.running


def test_a_machineconfignode_of_another_manager_is_left_alone(kube, nodes, controllers):
    kube.apply(node_objects(nodes, NODES[:2]) + [cluster.pool("worker")])
    foreign = {"apiVersion": f"{MCO}/v1", "kind": "MachineConfigNode", "metadata": {"name": "worker-1"},
               "spec": {"node": {"name": "worker-1"}, "pool": {"name": "worker"},
                        "configVersion": {"desired": "rendered-worker-1234"}}}
    kube.kubectl("apply", "--server-side", "--field-manager=machine-config-controller", "-f", "-",
                 input=json.dumps(foreign))
    kube.apply([cluster.pinned_image_set("aside-pinned-images", [nodes.images["app-a"]], role="worker")])
    controllers("controller-a")
    wait_for("worker-0 pinned", lambda: all_current(kube, ["worker-0"], "aside-pinned-images", 1))
    events = wait_for("the stand-aside event", lambda: "ManagedElsewhere" in kube.kubectl(
        "get", "events", "-n", "default", "--field-selector", "involvedObject.name=worker-1").stdout)
    assert events
    assert "status" not in mcn(kube, "worker-1")
