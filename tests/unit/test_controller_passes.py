"""The reconciler's passes (no I/O: the node attempts it would start are recorded, not run):
after a change of sets every node is looked at; a freed slot or a node's new status makes a
pass over that node and its pool only, which starts the next node of that pool and of no
other."""

from __future__ import annotations

import types

from devenv import cluster
from pinsvc.controller import status as st
from pinsvc.controller.desired import Run
from pinsvc.controller.reconciler import Reconciler
from pinsvc.controller.settings import Settings

IMAGE = "r.example/app@sha256:" + "a" * 64


def reconciler() -> tuple[Reconciler, list[str], list[str]]:
    rec = Reconciler(types.SimpleNamespace(server="https://api.test"), Settings(), connect=None, identity="t")
    started, evaluated = [], []
    rec._start = started.append
    rec._prepare = lambda name: None
    rec._spawn = lambda coro: coro.close()  # announcements and writes: not run here
    evaluate = rec._evaluate
    rec._evaluate = lambda name: (evaluated.append(name), evaluate(name))[1]
    for pool in ("worker", "infra"):
        rec.cache._on_pool("ADDED", cluster.pool(pool, max_unavailable=1))
        rec.cache._on_set("ADDED", cluster.pinned_image_set(f"{pool}-set", [IMAGE], role=pool))
        for i in range(3):
            rec.cache._on_node("ADDED", cluster.node(f"{pool}-{i}", (pool,), endpoint=f"127.0.0.1:{9000 + i}"))
    return rec, started, evaluated


def current(node: str, pool: str) -> dict:
    """The MachineConfigNode of a node that pins its pool's set (generation 1)."""
    return {"metadata": {"name": node, "labels": {st.MANAGED_BY: st.CONTROLLER}, "resourceVersion": "7"},
            "spec": {"pool": {"name": pool}},
            "status": {"pinnedImageSets": [{"name": f"{pool}-set", "desiredGeneration": 1, "currentGeneration": 1}]}}


def test_a_freed_slot_costs_a_pass_over_its_node_and_its_pool():
    rec, started, evaluated = reconciler()
    rec._pass(0.0)
    assert sorted(started) == ["infra-0", "worker-0"]  # maxUnavailable 1 in each pool
    assert len(evaluated) == 6
    for name in started:  # what _start does
        rec.runs[name] = Run(working=True)
    started.clear(), evaluated.clear()

    rec.runs["worker-0"].working = False  # its Apply ended: its slot is free, its status written
    rec.cache._on_mcn("MODIFIED", current("worker-0", "worker"))
    assert rec.dirty == {"worker-0"} and not rec.full
    rec._pass(1.0)
    assert started == ["worker-1"] and evaluated == ["worker-0"]
    assert rec.done["worker-0"] and not rec.need.get("worker-0")
    rec.runs["worker-1"] = Run(working=True)

    started.clear(), evaluated.clear()
    rec.wake.clear()
    rec.cache._on_pool("MODIFIED", {**cluster.pool("infra", max_unavailable=1), "status": {"machineCount": 3}})
    assert not rec.wake.is_set() and not rec.full and not rec.cache.topology_dirty  # status only: nothing to do
    rec.cache._on_set("MODIFIED", cluster.pinned_image_set("infra-set", [IMAGE, IMAGE[:-64] + "b" * 64],
                                                           role="infra", generation=2))
    memo = dict(rec.evaluated)
    rec._pass(2.0)  # a set changed: every node looked at again, only the infra nodes evaluated anew
    assert rec.metrics.reconciles.labels("all")._value.get() == 2 and len(evaluated) == 6
    assert sorted(n for n, seen in rec.evaluated.items() if seen is not memo[n]) == ["infra-0", "infra-1", "infra-2"]
    assert started == []  # infra-0 still applies, worker-1 too (never started twice)
