"""The controller's pure decisions: what a node needs from its MachineConfigNode, which nodes
start under the rollout rules, and the status documents (valid under OpenShift's rules)."""

from __future__ import annotations

from pinsvc_client import pb

from pinsvc.controller import status as st
from pinsvc.controller.desired import (DELETE, NOTHING, STAND_ASIDE, WORK, WRITE, Desired, PoolWork, Run, decide,
                                       schedule, targets, waiting_verdict)
from pinsvc.coordinator.loader import parse_object
from pinsvc.coordinator.objects import Cluster, PinnedImageSet
from pinsvc.coordinator.rollout import Options, Target

NOW, LATER = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"
S1 = PinnedImageSet("s1", 2, "", {}, ("r.example/a@sha256:" + "a" * 64,), "")


def target(*sets, skip=None) -> Target:
    return Target("n1", "worker", "unix:///a.sock", tuple(sets), skip)


def mcn(sets=(), conditions=(), ours=True, generation=1) -> st.Observed:
    labels = {st.MANAGED_BY: st.CONTROLLER} if ours else {}
    return st.observe({"metadata": {"name": "n1", "labels": labels, "generation": generation, "uid": "u",
                                    "managedFields": [{"manager": "machine-config-controller" if not ours else "x"}]},
                       "spec": {"pool": {"name": "worker"}},
                       "status": {"pinnedImageSets": list(sets), "conditions": list(conditions)}})


def test_decide_per_node():
    done = mcn([{"name": "s1", "desiredGeneration": 2, "currentGeneration": 2}])
    behind = mcn([{"name": "s1", "desiredGeneration": 2, "currentGeneration": 1}])
    assert decide(Desired("n1", target(S1)), done, paused=False) == (WRITE, st.Verdict())  # keeps conditions right
    assert decide(Desired("n1", target(S1)), behind, paused=False) == (WORK, None)
    assert decide(Desired("n1", target(S1)), st.Observed(), paused=False) == (WORK, None)
    assert decide(Desired("n1", target(S1)), behind, paused=True)[1].reason == st.POOL_PAUSED
    assert decide(Desired("n1", target(S1, skip="NotReady")), behind, paused=False)[1].reason == st.NODE_SKIPPED
    assert decide(Desired("n1", target(S1)), mcn(ours=False), paused=False) == (STAND_ASIDE, None)
    assert decide(None, done, paused=False) == (DELETE, None)  # the Node is gone
    assert decide(None, st.Observed(), paused=False) == (NOTHING, None)
    assert decide(Desired("n1", None), done, paused=False) == (WORK, None)  # left every pool: unpin first
    assert decide(Desired("n1", None), mcn(), paused=False) == (DELETE, None)


def test_a_node_getting_an_invalid_set_is_left_alone():
    pool, _ = parse_object("t", {"apiVersion": "machineconfiguration.openshift.io/v1", "kind": "MachineConfigPool",
                                 "metadata": {"name": "worker"},
                                 "spec": {"nodeSelector": {"matchLabels": {"role": "w"}}}})
    node, _ = parse_object("t", {"apiVersion": "v1", "kind": "Node",
                                 "metadata": {"name": "n1", "labels": {"role": "w"},
                                              "annotations": {"pinsvc.io/agent-endpoint": "/a.sock"}},
                                 "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    invalid = PinnedImageSet("bad", 3, "", {}, (), "spec.pinnedImages[0].name: not a digest")
    found = targets(Cluster({"s1": S1}, {"worker": pool}, {"n1": node}), {"bad": invalid})
    assert found["n1"].problem.reason == "InvalidPinnedImageSet" and "not a digest" in found["n1"].problem.message
    assert decide(found["n1"], st.Observed(), paused=False)[0] == WRITE  # never WORK: that would unpin it
    assert [s.name for s in targets(Cluster({"s1": S1}, {"worker": pool}, {"n1": node}), {})["n1"].target.sets] == ["s1"]


def test_schedule_width_canary_abort_and_backoff():
    nodes = tuple(f"n{i}" for i in range(6))
    need = dict.fromkeys(nodes, True)
    pool = PoolWork("worker", nodes, width=2)
    assert schedule([pool], need, {}, {}, {}, Options(), 0).start == ["n0", "n1"]
    runs = {"n0": Run(working=True)}
    assert schedule([pool], need, {}, {}, runs, Options(), 0).start == ["n1"]
    assert schedule([pool], need, {}, {}, {}, Options(canary=1), 0).start == ["n0"]
    assert schedule([pool], need, {"n0": True}, {}, {}, Options(canary=1), 0).start == ["n0", "n1"]
    failed = {"n0": True, "n1": True}
    plan = schedule([pool], need, {}, failed, {"n1": Run(retry_at=10)}, Options(abort_after=2), 0)
    assert plan.start == ["n0"] and "2 nodes failed" in plan.aborted["worker"] and plan.wake_at == 10
    assert schedule([PoolWork("p", nodes, 2, paused=True)], need, {}, {}, {}, Options(), 0).start == []


def test_the_nodes_next_in_line_are_prepared_while_the_others_apply():
    """Their pre-flight (GetStatus, CheckSpace) runs while the pool's slots are taken: as
    many as the pool starts at once, those that could start (not failed and waiting for a
    retry, not excluded by an abort)."""
    nodes = tuple(f"n{i}" for i in range(6))
    need = dict.fromkeys(nodes, True)
    pool = PoolWork("worker", nodes, width=2)
    plan = schedule([pool], need, {}, {}, {}, Options(), 0)
    assert (plan.start, plan.prepare) == (["n0", "n1"], ["n2", "n3"])
    working = {"n0": Run(working=True), "n1": Run(working=True), "n2": Run(retry_at=5)}
    plan = schedule([pool], need, {}, {}, working, Options(), 0)
    assert (plan.start, plan.prepare, plan.wake_at) == ([], ["n3", "n4"], 5)
    assert schedule([pool], {"n5": True}, {}, {}, {}, Options(), 0).prepare == []
    assert schedule([PoolWork("p", nodes, 2, paused=True)], need, {}, {}, {}, Options(), 0).prepare == []


def test_node_status_keeps_the_rules():
    agent = pb.NodeStatus(pinned_image_sets=[pb.PinnedImageSetStatus(name="s1", desired_generation=2,
                                                                     current_generation=1, last_failed_generation=2,
                                                                     last_failed_generation_error="manifest unknown")])
    old = mcn([{"name": "s1", "desiredGeneration": 1, "currentGeneration": 1},
               {"name": "gone", "desiredGeneration": 4, "currentGeneration": 4}],
              [{"type": st.DEGRADED, "status": "False", "reason": "AsExpected", "message": "", "lastTransitionTime": NOW}])
    failed = st.node_status("n1", target(S1), old, st.Verdict(degraded=True, reason=st.PREFETCH_FAILED, message="x"),
                            now=LATER, agent=agent)
    assert failed["pinnedImageSets"] == [{"name": "s1", "desiredGeneration": 2, "currentGeneration": 1,
                                          "lastFailedGeneration": 2, "lastFailedGenerationError": "manifest unknown"}]
    degraded = {c["type"]: c for c in failed["conditions"]}[st.DEGRADED]
    assert degraded["status"] == "True" and degraded["lastTransitionTime"] == LATER and degraded["observedGeneration"] == 1

    # an agent whose state was wiped reports current 0: never written as 0, nor lower than before
    wiped = pb.NodeStatus(pinned_image_sets=[pb.PinnedImageSetStatus(name="s1", desired_generation=2)])
    again = st.node_status("n1", target(S1), st.observe({"metadata": {"name": "n1"}, "status": {
        "pinnedImageSets": [{"name": "s1", "desiredGeneration": 2, "currentGeneration": 2}]}}), st.Verdict(),
        now=LATER, agent=wiped)
    assert again["pinnedImageSets"] == [{"name": "s1", "desiredGeneration": 2}]

    ok = st.node_status("n1", target(S1), mcn([{"name": "s1", "desiredGeneration": 2, "currentGeneration": 2}],
                                              [{"type": st.DEGRADED, "status": "False", "reason": "AsExpected",
                                                "message": "All is good", "lastTransitionTime": NOW}]),
                        st.Verdict(), now=LATER)
    assert {c["type"]: c["lastTransitionTime"] for c in ok["conditions"]}[st.DEGRADED] == NOW  # no transition

    recreated = mcn([{"name": "s1", "desiredGeneration": 5, "currentGeneration": 5}])
    assert st.decreasing(st.node_status("n1", target(S1), recreated, st.Verdict(), now=NOW), recreated) == ["s1"]


def test_a_waiting_node_desires_the_new_generation_and_says_it_waits():
    """The announcement written to every node a change concerns: desired = the set's new
    generation, current and the last failure kept, Progressing True saying why it waits,
    Degraded cleared (the new generation has not failed anywhere yet)."""
    old = mcn([{"name": "s1", "desiredGeneration": 1, "currentGeneration": 1, "lastFailedGeneration": 1,
                "lastFailedGenerationError": "manifest unknown"}],
              [{"type": st.DEGRADED, "status": "True", "reason": st.PREFETCH_FAILED, "message": "manifest unknown",
                "lastTransitionTime": NOW}])
    assert not st.announced(target(S1), old) and not st.announced(target(S1), st.Observed())
    verdict = waiting_verdict("worker", 10, 100)
    doc = st.node_status("n1", target(S1), old, verdict, now=LATER)
    assert doc["pinnedImageSets"] == [{"name": "s1", "desiredGeneration": 2, "currentGeneration": 1,
                                       "lastFailedGeneration": 1, "lastFailedGenerationError": "manifest unknown"}]
    conditions = {c["type"]: c for c in doc["conditions"]}
    assert (conditions[st.PROGRESSING]["status"], conditions[st.PROGRESSING]["reason"]) == ("True", st.WAITING)
    assert conditions[st.PROGRESSING]["message"] == ("node waits for its turn in pool worker: at most 10 of its "
                                                     "100 nodes apply at once")
    assert (conditions[st.DEGRADED]["status"], conditions[st.DEGRADED]["lastTransitionTime"]) == ("False", LATER)
    now = mcn(doc["pinnedImageSets"], doc["conditions"])
    assert st.announced(target(S1), now) and not st.up_to_date(target(S1), now) and not st.failed_at(target(S1), now)
    assert decide(Desired("n1", target(S1)), now, paused=False) == (WORK, None)
    applying = {c["type"]: c for c in st.node_status("n1", target(S1), now, st.Verdict(progressing=True),
                                                     now=LATER)["conditions"]}[st.PROGRESSING]
    assert (applying["reason"], applying["message"]) == (st.APPLYING, "node is prefetching images: n1")
    assert "; pool worker: 2 nodes failed" in waiting_verdict("worker", 1, 3, "pool worker: 2 nodes failed").message


def test_pool_status_counts_and_keeps_others():
    pool = {"metadata": {"generation": 3}, "status": {
        "poolSynchronizersStatus": [{"poolSynchronizerType": "MachineConfigNode", "machineCount": 2}],
        "conditions": [{"type": "Updated", "status": "True"}]}}
    members = [st.PoolNode("a", True, False, False), st.PoolNode("b", False, True, True, "agent down"),
               st.PoolNode("c", False, False, True)]
    new = st.pool_status(pool, members, now=NOW)
    ours = new["poolSynchronizersStatus"][-1]
    assert new["poolSynchronizersStatus"][0]["poolSynchronizerType"] == "MachineConfigNode"
    assert ours == {"poolSynchronizerType": "PinnedImageSets", "machineCount": 3, "updatedMachineCount": 1,
                    "readyMachineCount": 1, "availableMachineCount": 1, "unavailableMachineCount": 2,
                    "observedGeneration": 3}
    assert ours["availableMachineCount"] >= ours["readyMachineCount"]  # OpenShift's rule
    degraded = new["conditions"][-1]
    assert new["conditions"][0]["type"] == "Updated"
    assert degraded["status"] == "True" and degraded["message"] == "b: agent down"


def test_a_set_generation_is_complete_once_every_node_that_should_pin_it_does():
    desired = {"n1": Desired("n1", target(S1)), "n2": Desired("n2", target(S1)), "n3": Desired("n3", target())}
    current = mcn([{"name": "s1", "desiredGeneration": 2, "currentGeneration": 2}])
    behind = mcn([{"name": "s1", "desiredGeneration": 2, "currentGeneration": 1}])
    touched = {("s1", 2), ("s1", 1)}
    assert st.completed(touched, {"s1": S1}, desired, {"n1": current, "n2": behind}) == [("s1", 1, 0)]
    assert sorted(st.completed(touched, {"s1": S1}, desired, {"n1": current, "n2": current})) == [
        ("s1", 1, 0), ("s1", 2, 2)]
    members = st.pool_members(["n1", "n2"], desired, {"n1": current, "n2": behind},
                              {"n2": Run(working=True)})
    assert [(m.name, m.updated, m.unavailable) for m in members] == [("n1", True, False), ("n2", False, True)]
