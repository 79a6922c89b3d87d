"""What a rollout reports: per node a MachineConfigNode-shaped document, per pool a
MachineConfigPool status with the `PinnedImageSets` pool synchronizer, as a `kind: List`
that could be applied to a cluster (status subresources), in YAML or JSON.

Besides the agent's conditions, the coordinator adds its own: `PinnedImageSetsDegraded`
with the cause when a node failed or could not be reached, and `PinnedImageSetsUpdated`,
True only for a node at the desired content (`content.gaps`), False naming what is missing
or stale; the pool's two conditions roll these up, node by node."""

from __future__ import annotations

import json
from collections.abc import Iterable

import yaml

from pinsvc.coordinator.record import (AGENT_UNAVAILABLE, DEGRADED, FAILED, NOT_STARTED, PAUSED, PREFETCH_FAILED,
                                      SKIPPED, UNAVAILABLE, UPDATED, NodeRecord)
from pinsvc.coordinator.rollout import PoolPlan

API = "machineconfiguration.openshift.io/v1"
UPDATED_CONDITION = "PinnedImageSetsUpdated"
ALL_PINNED = "All nodes are pinned"
_REASONS = {UNAVAILABLE: AGENT_UNAVAILABLE, SKIPPED: "NodeSkipped", FAILED: PREFETCH_FAILED,
            NOT_STARTED: "NotStarted", PAUSED: "PoolPaused"}


def degraded(record: NodeRecord) -> bool:
    if record.state in (FAILED, UNAVAILABLE, SKIPPED):
        return True
    conditions = (record.status or {}).get("conditions", [])
    return any(c["type"] == DEGRADED and c["status"] == "True" for c in conditions)


def cause(record: NodeRecord) -> str:
    """Why the node is not updated, in CamelCase (AgentUnavailable, RegistryUnavailable, ...)."""
    return record.cause or _REASONS.get(record.state, "")


def node_doc(record: NodeRecord) -> dict:
    status = dict(record.status or {"pinnedImageSets": [], "conditions": []})
    conditions = [c for c in status.get("conditions", []) if c["type"] != UPDATED_CONDITION]
    if record.state != UPDATED and (record.state in _REASONS):
        # The coordinator's own view when the agent could not say it (unreachable, skipped).
        conditions = [c for c in conditions if c["type"] != DEGRADED] + [{
            "type": DEGRADED, "status": "True" if record.state in (FAILED, UNAVAILABLE, SKIPPED) else "False",
            "reason": cause(record), "message": record.reason}]
    updated = record.state == UPDATED
    conditions.append({"type": UPDATED_CONDITION, "status": str(updated),
                       "reason": "AtDesiredContent" if updated else "NotAtDesiredContent", "message": record.reason})
    status["conditions"] = conditions
    return {"apiVersion": API, "kind": "MachineConfigNode", "metadata": {"name": record.node},
            "spec": {"node": {"name": record.node}, "pool": {"name": record.pool}}, "status": status}


def pool_doc(plan: PoolPlan, records: list[NodeRecord], aborted: str = "") -> dict:
    updated = [r for r in records if r.state == UPDATED]
    bad = [r for r in records if degraded(r)]
    unavailable = sum(1 for r in records if r.state in (UNAVAILABLE, SKIPPED, FAILED))
    summary = {"poolSynchronizerType": "PinnedImageSets", "machineCount": len(records),
               "updatedMachineCount": len(updated),
               "readyMachineCount": sum(1 for r in updated if not degraded(r)),
               "availableMachineCount": len(records) - unavailable,
               "unavailableMachineCount": unavailable}
    behind = [r for r in records if r.state != UPDATED]
    message = ("; ".join(f"{r.node}: {cause(r) or r.state}: {r.reason}" for r in bad)
               or ("No node is degraded" if behind else ALL_PINNED))
    if aborted:
        message = f"{aborted}; {message}"
    conditions = [{"type": DEGRADED, "status": "True" if bad or aborted else "False",
                   "reason": PREFETCH_FAILED if bad or aborted else "AsExpected", "message": message},
                  {"type": UPDATED_CONDITION, "status": str(not behind),
                   "reason": "NotAllNodesUpdated" if behind else "AllNodesUpdated",
                   "message": "; ".join(f"{r.node}: {r.reason or r.state}" for r in behind) or ALL_PINNED}]
    return {"apiVersion": API, "kind": "MachineConfigPool", "metadata": {"name": plan.name},
            "status": {"poolSynchronizersStatus": [summary], "conditions": conditions}}


def pool_degraded(doc: dict) -> bool:
    return any(c["type"] == DEGRADED and c["status"] == "True" for c in doc["status"]["conditions"])


def as_list(items: Iterable[dict]) -> dict:
    return {"apiVersion": "v1", "kind": "List", "items": list(items)}


def render(doc: dict, output: str) -> str:
    if output == "json":
        return json.dumps(doc, indent=2)
    return yaml.safe_dump(doc, sort_keys=False, width=120)
