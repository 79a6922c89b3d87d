"""What the controller should do, from what the API server says (pure).

`targets` turns the watched objects into each node's desired state with the coordinator's
own rules (`rollout.node_target`: the union of the sets of its pools, its agent endpoint,
NotReady/DiskPressure skips). `decide` compares one node's desired state with its
MachineConfigNode and says what it needs; `schedule` picks, per pool, which nodes that need
work may start now: at most maxUnavailable (or `--max-parallel`) at once, the canary first,
none new once `--abort-after` nodes of the pool failed, paused pools untouched, failed
nodes again after their backoff. Nothing here remembers anything between calls: every
decision is made again from the current objects, so a missed, repeated or late event, or a
new leader, changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pinsvc.coordinator import selection
from pinsvc.coordinator.objects import Cluster, Node, PinnedImageSet, Pool
from pinsvc.coordinator.rollout import DEFAULT_PORT, Options, Target, node_target
from pinsvc.controller.status import (AGENT_UNAVAILABLE, NODE_SKIPPED, POOL_PAUSED, WAITING, Observed, Verdict,
                                     up_to_date)
from pinsvc.errors import InvalidArgument

# What a node needs.
NOTHING, WORK, WRITE, DELETE, STAND_ASIDE = "Nothing", "Work", "Write", "Delete", "StandAside"
INVALID_SET, NO_ENDPOINT = "InvalidPinnedImageSet", "NoAgentEndpoint"


@dataclass(frozen=True)
class Desired:
    """A node's desired state: `target` (None: in no pool) or the `problem` that stops it."""

    node: str
    target: Target | None
    problem: Verdict | None = None


def targets(cluster: Cluster, invalid: Mapping[str, PinnedImageSet], *, port: int = DEFAULT_PORT,
            endpoints: Mapping[str, str] = {}) -> dict[str, Desired]:
    """Every node's desired state. `invalid` are sets that failed validation (their labels
    and name only): a node that would get one is not touched (unpinning it because its new
    version is unreadable would be worse), its problem names the set."""
    desired = {}
    whole = Cluster({**cluster.sets, **invalid}, cluster.pools, cluster.nodes) if invalid else cluster
    for node in cluster.nodes.values():
        try:
            target = node_target(whole, node, port=port, endpoints=endpoints)
        except InvalidArgument as e:
            try:  # no agent endpoint: the node still belongs to its pool, which reports it
                pool = selection.primary_pool(whole, node)
                target = Target(node.name, pool.name, "", tuple(selection.node_sets(whole, node))) if pool else None
                reason = NO_ENDPOINT
            except InvalidArgument:
                target, reason = None, "NodeInTwoCustomPools"
            desired[node.name] = Desired(node.name, target, Verdict(degraded=True, reason=reason, message=str(e)))
            continue
        bad = [s.name for s in target.sets if s.name in invalid] if target else []
        if bad:
            message = "; ".join(f"PinnedImageSet/{n} is invalid, the node keeps its pins: "
                                f"{invalid[n].source}" for n in bad)
            desired[node.name] = Desired(node.name, target, Verdict(degraded=True, reason=INVALID_SET, message=message))
        else:
            desired[node.name] = Desired(node.name, target)
    return desired


def unpin_target(node: Node, pool: str, *, port: int, endpoints: Mapping[str, str]) -> Target:
    """A node that left every pool but still pins sets: pin nothing. Raises InvalidArgument
    when its agent cannot be found."""
    return Target(node.name, pool, selection.endpoint(node, port=port, overrides=endpoints), ())


def decide(desired: Desired | None, observed: Observed, *, paused: bool) -> tuple[str, Verdict | None]:
    """What one node needs now, and the verdict to write for WRITE. `desired` None: the Node
    is gone."""
    if observed.exists and not observed.ours:
        return STAND_ASIDE, None
    if desired is None:
        return (DELETE, None) if observed.exists else (NOTHING, None)
    target = desired.target
    if target is None and desired.problem is None:  # in no pool
        if not observed.exists:
            return NOTHING, None
        return (WORK, None) if observed.sets else (DELETE, None)
    if desired.problem is not None:
        return WRITE, desired.problem
    if up_to_date(target, observed):
        return WRITE, Verdict()  # creates a missing MachineConfigNode, clears old conditions
    if target.skip:
        return WRITE, Verdict(degraded=True, reason=NODE_SKIPPED, message=f"node is {target.skip}: not rolled out")
    if paused:
        return WRITE, Verdict(reason=POOL_PAUSED, message=f"pool {target.pool} is paused")
    return WORK, None


@dataclass
class Run:
    """This leader's memory of one node's attempts at one desired state (`key`); lost on a
    leader change, which only means failed nodes are tried again at once."""

    key: tuple = ()
    working: bool = False
    failures: int = 0
    retry_at: float = 0.0
    unavailable: str = ""  # why the agent could not be reached, while it cannot


def run_key(target: Target) -> tuple:
    return (target.endpoint, tuple((s.name, s.generation, s.images) for s in target.sets))


@dataclass(frozen=True)
class PoolWork:
    """One pool's nodes that need work, in the order they go."""

    name: str
    members: tuple[str, ...]  # every node the pool rolls out
    width: int
    paused: bool = False


@dataclass
class Plan:
    start: list[str] = field(default_factory=list)
    prepare: list[str] = field(default_factory=list)  # per pool, the next nodes in line (as many as it starts)
    aborted: dict[str, str] = field(default_factory=dict)  # pool -> why it starts no new node
    wake_at: float | None = None  # the earliest retry still waiting


def schedule(pools: list[PoolWork], need: Mapping[str, bool], done: Mapping[str, bool],
             failed: Mapping[str, bool], runs: Mapping[str, Run], options: Options, now: float) -> Plan:
    """Which nodes start now, and which are next in line (their pre-flight can run while
    the others apply). `need`: the node needs work; `done`: it is up to date; `failed`: its
    MachineConfigNode says it failed at this desired state (or this leader found its agent
    unavailable)."""
    plan = Plan()
    for pool in pools:
        if pool.paused:
            continue
        members = pool.members
        working = sum(1 for n in members if (run := runs.get(n)) is not None and run.working)
        width = options.max_parallel or pool.width
        if options.canary and sum(1 for n in members if done.get(n)) < min(options.canary, len(members)):
            width = min(width, options.canary)
        failures = sum(1 for n in members if failed.get(n))
        if options.abort_after and failures >= options.abort_after:
            plan.aborted[pool.name] = (f"pool {pool.name}: {failures} nodes failed (abort after "
                                       f"{options.abort_after}); no new node starts until they recover")
        queued = 0
        for name in members:
            if working >= width and queued >= width:
                break
            run = runs.get(name, Run())
            if not need.get(name) or run.working:
                continue
            if pool.name in plan.aborted and not failed.get(name):
                continue
            if run.retry_at > now:
                plan.wake_at = min(plan.wake_at or run.retry_at, run.retry_at)
                continue
            if working < width:
                plan.start.append(name)
                working += 1
            else:
                plan.prepare.append(name)
                queued += 1
    return plan


def pool_width(pool: Pool, members: int) -> int:
    """The pool's maxUnavailable for its `members` nodes (the coordinator's rule)."""
    return selection.max_unavailable(pool, max(members, 1))


def unavailable_verdict(message: str) -> Verdict:
    return Verdict(degraded=True, reason=AGENT_UNAVAILABLE, message=message)



def waiting_verdict(pool: str, width: int, members: int, aborted: str = "") -> Verdict:
    """A node that needs work but has no slot yet: Progressing, saying why it waits."""
    message = f"node waits for its turn in pool {pool}: at most {width} of its {members} nodes apply at once"
    return Verdict(progressing=True, reason=WAITING, message=f"{message}; {aborted}" if aborted else message)
