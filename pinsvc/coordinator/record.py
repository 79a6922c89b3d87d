"""The durable rollout record: what the coordinator knows of each node (its outcome, the
agent's last status), kept in one JSON file so that a rerun resumes where the last run
stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pinsvc_client import pb

from pinsvc.files import write_atomic

if TYPE_CHECKING:
    from pinsvc.coordinator.rollout import Target

# Node outcomes.
PENDING, SKIPPED, UPDATED, FAILED, UNAVAILABLE, NOT_STARTED, PAUSED = (
    "Pending", "Skipped", "Updated", "Failed", "Unavailable", "NotStarted", "Paused")
APPLYING, CHECKED, WARNING = "Applying", "Checked", "Warning"
DEGRADED = "PinnedImageSetsDegraded"


@dataclass
class NodeRecord:
    """What the coordinator knows of one node; the durable record holds these."""

    node: str
    pool: str
    endpoint: str
    state: str = PENDING
    reason: str = ""
    attempts: int = 0
    images: int = 0
    images_done: int = 0
    bytes_done: int = 0
    required_bytes: int = 0
    free_bytes: int = 0
    fits: bool | None = None
    status: dict | None = None  # the agent's NodeStatus as JSON
    seconds: float = 0.0


class Record:
    """The durable rollout record: one JSON file, rewritten atomically on every change."""

    def __init__(self, path: Path | None):
        self.path = path
        self.nodes: dict[str, NodeRecord] = {}
        if path and path.exists():
            doc = json.loads(path.read_text())
            self.nodes = {n["node"]: NodeRecord(**n) for n in doc.get("nodes", [])}

    def node(self, target: Target) -> NodeRecord:
        record = self.nodes.get(target.node)
        if record is None or record.endpoint != target.endpoint:
            record = self.nodes[target.node] = NodeRecord(target.node, target.pool, target.endpoint)
        record.pool = target.pool
        return record

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"nodes": [vars(n) for n in self.nodes.values()]}).encode()
        write_atomic(self.path, data)


def status_doc(status: pb.NodeStatus) -> dict:
    """The agent's NodeStatus as MachineConfigNode.status (failure fields only when set)."""
    sets = []
    for s in status.pinned_image_sets:
        entry = {"name": s.name, "desiredGeneration": s.desired_generation}
        if s.current_generation:
            entry["currentGeneration"] = s.current_generation
        if s.last_failed_generation:
            entry["lastFailedGeneration"] = s.last_failed_generation
            entry["lastFailedGenerationError"] = s.last_failed_generation_error
        sets.append(entry)
    conditions = [{"type": c.type, "status": c.status, "reason": c.reason, "message": c.message,
                   "lastTransitionTime": c.last_transition_time} for c in status.conditions]
    return {"pinnedImageSets": sets, "conditions": conditions}
