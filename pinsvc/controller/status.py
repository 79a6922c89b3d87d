"""MachineConfigNode and MachineConfigPool status as the controller reads and writes them
(pure): what a node's MachineConfigNode says (`Observed`), the status to apply for a node
(`node_status`), and a pool's `PinnedImageSets` synchronizer with its condition
(`pool_status`).

Every value written satisfies OpenShift's CEL rules on these CRDs, which the API server
enforces: generations >= 1 and never lower than before, desiredGeneration >= current and
>= lastFailedGeneration, an error with every lastFailedGeneration, machine counts that add
up. Conditions are `metav1.Condition`s whose lastTransitionTime changes only when their
status does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pinsvc_client import pb

from pinsvc.coordinator.objects import MCO_GROUP
from pinsvc.coordinator.rollout import Target

API_VERSION = f"{MCO_GROUP}/v1"
PROGRESSING, DEGRADED = "PinnedImageSetsProgressing", "PinnedImageSetsDegraded"
SYNCHRONIZER = "PinnedImageSets"
MANAGED_BY = "pinsvc.io/managed-by"
"""Label on the MachineConfigNodes the controller created; one without it belongs to another
manager (the Machine Config Operator) and is never written."""
CONTROLLER = "pinsvc-controller"
MAX_ERROR = 32768  # lastFailedGenerationError and condition messages, as the CRD allows
MAX_POOL_MESSAGE = 4096
NO_CONFIG = "unmanaged"
"""spec.configVersion.desired (required) of a MachineConfigNode the controller creates
when the pool names no rendered configuration: no Machine Config Operator renders one."""

# Reasons the controller writes, beyond the agent's own.
APPLYING, AS_EXPECTED, PREFETCH_FAILED = "ImagePrefetch", "AsExpected", "PrefetchFailed"
AGENT_UNAVAILABLE, NODE_SKIPPED, POOL_PAUSED, NOT_ROLLED_OUT, WAITING = (
    "AgentUnavailable", "NodeSkipped", "PoolPaused", "NotRolledOut", "WaitingForSlot")


@dataclass(frozen=True)
class Observed:
    """What a node's MachineConfigNode holds."""

    exists: bool = False
    ours: bool = False
    managers: tuple[str, ...] = ()  # field managers of the object, for "managed elsewhere"
    pool: str = ""
    generation: int = 0
    uid: str = ""
    sets: Mapping[str, dict] = field(default_factory=dict)
    conditions: Mapping[str, dict] = field(default_factory=dict)

    def condition(self, kind: str) -> str:
        return (self.conditions.get(kind) or {}).get("status", "")


def observe(mcn: Mapping | None) -> Observed:
    if mcn is None:
        return Observed()
    meta = mcn.get("metadata") or {}
    status = mcn.get("status") or {}
    managers = tuple(sorted({m.get("manager", "") for m in meta.get("managedFields") or []} - {""}))
    return Observed(
        exists=True, ours=(meta.get("labels") or {}).get(MANAGED_BY) == CONTROLLER, managers=managers,
        pool=((mcn.get("spec") or {}).get("pool") or {}).get("name", ""), generation=meta.get("generation", 0),
        uid=meta.get("uid", ""),
        sets={s["name"]: s for s in status.get("pinnedImageSets") or [] if "name" in s},
        conditions={c["type"]: c for c in status.get("conditions") or [] if "type" in c})


def version(obj: Mapping) -> int:
    """An object's resourceVersion as a number (etcd's revision), -1 when it is not one."""
    try:
        return int(obj["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return -1


def status_body(name: str, status: Mapping) -> dict:
    """What a server-side apply of a MachineConfigNode's status sends."""
    return {"apiVersion": API_VERSION, "kind": "MachineConfigNode", "metadata": {"name": name}, "status": status}


def wanted(target: Target | None) -> dict[str, int]:
    """Set name -> generation the node should pin."""
    return {s.name: s.generation for s in target.sets} if target else {}


def up_to_date(target: Target | None, observed: Observed) -> bool:
    """The MachineConfigNode says the node pins exactly the target's sets, each at its
    generation (what MCO calls an updated machine)."""
    want = wanted(target)
    return set(observed.sets) == set(want) and all(
        observed.sets[n].get("currentGeneration") == g and observed.sets[n].get("desiredGeneration") == g
        for n, g in want.items())


def announced(target: Target | None, observed: Observed) -> bool:
    """The MachineConfigNode already desires each of the target's sets at its generation
    (what the controller writes on every node a change concerns, at once)."""
    return all(observed.sets.get(n, {}).get("desiredGeneration") == g for n, g in wanted(target).items())


def failed_at(target: Target | None, observed: Observed) -> bool:
    """The node is Degraded for exactly the desired state the target asks for."""
    want = wanted(target)
    return (observed.condition(DEGRADED) == "True" and set(observed.sets) == set(want)
            and all(observed.sets[n].get("desiredGeneration") == g for n, g in want.items()))


def spec(node: str, pool: str, config_name: str) -> dict:
    """The MachineConfigNode the controller creates (server-side apply, its own fields)."""
    return {"apiVersion": API_VERSION, "kind": "MachineConfigNode",
            "metadata": {"name": node, "labels": {MANAGED_BY: CONTROLLER}},
            "spec": {"node": {"name": node}, "pool": {"name": pool},
                     "configVersion": {"desired": config_name or NO_CONFIG}}}


def _entry(name: str, generation: int, old: Mapping, agent: pb.PinnedImageSetStatus | None) -> dict:
    """One status.pinnedImageSets entry: the agent's view when it gave one, else what the
    MachineConfigNode said; a value that would break a rule (decrease, exceed desired) is
    left out rather than written wrong."""
    entry = {"name": name, "desiredGeneration": generation}
    current = agent.current_generation if agent is not None else old.get("currentGeneration", 0)
    failed = agent.last_failed_generation if agent is not None else old.get("lastFailedGeneration", 0)
    error = agent.last_failed_generation_error if agent is not None else old.get("lastFailedGenerationError", "")
    if 1 <= current <= generation and current >= old.get("currentGeneration", 0):
        entry["currentGeneration"] = current
    if 1 <= failed <= generation and failed >= old.get("lastFailedGeneration", 0):
        entry["lastFailedGeneration"] = failed
        entry["lastFailedGenerationError"] = (error or "failed")[:MAX_ERROR]
    return entry


def condition(kind: str, status: bool, reason: str, message: str, *, old: Mapping | None, now: str,
              generation: int = 0) -> dict:
    """A metav1.Condition; lastTransitionTime kept from `old` when the status is the same."""
    value = "True" if status else "False"
    since = old["lastTransitionTime"] if old and old.get("status") == value and old.get("lastTransitionTime") else now
    doc = {"type": kind, "status": value, "reason": reason, "message": message[:MAX_ERROR],
           "lastTransitionTime": since}
    if generation:
        doc["observedGeneration"] = generation
    return doc


@dataclass(frozen=True)
class Verdict:
    """What the controller says of a node: Progressing and Degraded, with reasons (a
    progressing verdict with the default reason is an Apply under way: `ImagePrefetch`)."""

    progressing: bool = False
    degraded: bool = False
    reason: str = AS_EXPECTED
    message: str = ""


def node_status(node: str, target: Target | None, observed: Observed, verdict: Verdict, *, now: str,
                agent: pb.NodeStatus | None = None) -> dict:
    """The MachineConfigNode status to apply: an entry per set the node should pin (sorted),
    the two conditions. Entries of sets the node no longer gets are left out (removed)."""
    from_agent = {s.name: s for s in agent.pinned_image_sets} if agent is not None else {}
    sets = [_entry(name, generation, observed.sets.get(name, {}), from_agent.get(name) if agent is not None else None)
            for name, generation in sorted(wanted(target).items())]
    done = not verdict.progressing and not verdict.degraded and all(
        e.get("currentGeneration") == e["desiredGeneration"] for e in sets)
    if verdict.progressing and verdict.reason == AS_EXPECTED:
        progressing = (True, APPLYING, f"node is prefetching images: {node}")
    elif verdict.progressing:
        progressing = (True, verdict.reason, verdict.message)
    elif done:
        progressing = (False, AS_EXPECTED, "All pinned image sets complete")
    else:
        progressing = (False, verdict.reason, verdict.message or "not at the desired generations")
    degraded = ((True, verdict.reason, verdict.message) if verdict.degraded
                else (False, AS_EXPECTED, "All is good"))
    generation = observed.generation
    return {"pinnedImageSets": sets, "conditions": [
        condition(PROGRESSING, *progressing, old=observed.conditions.get(PROGRESSING), now=now, generation=generation),
        condition(DEGRADED, *degraded, old=observed.conditions.get(DEGRADED), now=now, generation=generation)]}


def decreasing(status: Mapping, observed: Observed) -> list[str]:
    """Sets whose desiredGeneration would go down (a set deleted and created again): their
    entries must be removed in a first write, as the rules refuse a decrease."""
    return [e["name"] for e in status["pinnedImageSets"]
            if e["desiredGeneration"] < observed.sets.get(e["name"], {}).get("desiredGeneration", 0)]


def same_status(status: Mapping, observed: Observed) -> bool:
    """Writing `status` would change nothing the controller owns."""
    if [e["name"] for e in status["pinnedImageSets"]] != sorted(observed.sets):
        return False
    if any({k: v for k, v in observed.sets[e["name"]].items()} != e for e in status["pinnedImageSets"]):
        return False
    return all({k: v for k, v in (observed.conditions.get(c["type"]) or {}).items()} == c
               for c in status["conditions"])


@dataclass(frozen=True)
class PoolNode:
    """A pool member as the roll-up counts it."""

    name: str
    updated: bool
    degraded: bool
    unavailable: bool  # degraded, skipped, or applying
    why: str = ""


def managed_elsewhere(name: str, observed: Observed) -> str:
    """Why the controller leaves a node alone whose MachineConfigNode another manager owns."""
    return (f"MachineConfigNode/{name} was not created by {CONTROLLER} (managed by "
            f"{', '.join(observed.managers) or 'another manager'}, e.g. the Machine Config Operator): "
            f"pinsvc leaves this node's pins and status to it")


def pool_status(pool: Mapping, members: Iterable[PoolNode], *, now: str, aborted: str = "",
                extra: Iterable[dict] = ()) -> dict:
    """The pool's status fields merged with what is there (others' synchronizers and
    conditions kept): the `PinnedImageSets` synchronizer, `PinnedImageSetsDegraded` and the
    `extra` conditions of the controller (the warm stage's)."""
    members = list(members)
    status = pool.get("status") or {}
    meta = pool.get("metadata") or {}
    updated = sum(m.updated for m in members)
    ready = sum(m.updated and not m.degraded for m in members)
    unavailable = sum(m.unavailable for m in members)
    ours = {"poolSynchronizerType": SYNCHRONIZER, "machineCount": len(members), "updatedMachineCount": updated,
            "readyMachineCount": ready, "availableMachineCount": len(members) - unavailable,
            "unavailableMachineCount": unavailable, "observedGeneration": meta.get("generation", 0)}
    bad = [m for m in members if m.degraded]
    message = "; ".join(f"{m.name}: {m.why}" for m in bad)
    if aborted:
        message = f"{aborted}; {message}" if message else aborted
    old = next((c for c in status.get("conditions") or [] if c.get("type") == DEGRADED), None)
    mine = condition(DEGRADED, bool(bad or aborted), PREFETCH_FAILED if bad or aborted else AS_EXPECTED,
                     (message or "All nodes are pinned")[:MAX_POOL_MESSAGE], old=old, now=now)
    synchronizers = [s for s in status.get("poolSynchronizersStatus") or []
                     if s.get("poolSynchronizerType") != SYNCHRONIZER] + [ours]
    extra = list(extra)
    replaced = {DEGRADED, *(c["type"] for c in extra)}
    conditions = [c for c in status.get("conditions") or [] if c.get("type") not in replaced] + [mine, *extra]
    return {"poolSynchronizersStatus": synchronizers, "conditions": conditions}


def pool_changed(pool: Mapping, new: Mapping) -> bool:
    status = pool.get("status") or {}
    return (status.get("poolSynchronizersStatus") or []) != new["poolSynchronizersStatus"] or \
        (status.get("conditions") or []) != new["conditions"]


def pool_members(names: Iterable[str], desired: Mapping, observed: Mapping[str, Observed],
                 runs: Mapping) -> list[PoolNode]:
    """The pool's nodes as the roll-up counts them (nodes another manager owns left out):
    degraded from the MachineConfigNode or an agent this leader found unavailable;
    unavailable when degraded, skipped or applying."""
    members = []
    for node in names:
        seen, run = observed.get(node, Observed()), runs.get(node)
        if seen.exists and not seen.ours:
            continue
        target = desired[node].target
        unreachable = run.unavailable if run else ""
        degraded = seen.condition(DEGRADED) == "True" or bool(unreachable)
        why = unreachable or (seen.conditions.get(DEGRADED) or {}).get("message", "")
        busy = bool(run and run.working) or bool(target and target.skip)
        members.append(PoolNode(node, up_to_date(target, seen), degraded, degraded or busy, why))
    return members


def completed(touched: Iterable[tuple[str, int]], sets: Mapping, desired: Mapping,
              observed: Mapping[str, Observed]) -> list[tuple[str, int, int]]:
    """(set, generation, nodes) for each touched set generation that is done everywhere it
    should be (nodes 0: the set changed or is gone meanwhile, nothing to announce)."""
    done = []
    for name, generation in list(touched):
        image_set = sets.get(name)
        if image_set is None or image_set.generation != generation:
            done.append((name, generation, 0))
            continue
        nodes = [n for n, d in desired.items() if d.target and any(s.name == name for s in d.target.sets)]
        if nodes and all(observed.get(n, Observed()).sets.get(name, {}).get("currentGeneration") == generation
                         for n in nodes):
            done.append((name, generation, len(nodes)))
    return done

