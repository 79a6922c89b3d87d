"""The durable rollout record: what the coordinator knows of each node (its outcome, the
agent's last status), kept in one JSON file so that a rerun resumes where the last run
stopped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from pinsvc_client import PinError, pb

from pinsvc.client import explain
from pinsvc.files import write_atomic

if TYPE_CHECKING:
    from pinsvc.coordinator.rollout import PoolPlan, Target

# Node outcomes.
PENDING, SKIPPED, UPDATED, FAILED, UNAVAILABLE, NOT_STARTED, PAUSED = (
    "Pending", "Skipped", "Updated", "Failed", "Unavailable", "NotStarted", "Paused")
APPLYING, CHECKED, WARNING = "Applying", "Checked", "Warning"
DEGRADED, PROGRESSING = "PinnedImageSetsDegraded", "PinnedImageSetsProgressing"

# Why a node failed: the reason of its PinnedImageSetsDegraded condition.
AGENT_UNAVAILABLE, REGISTRY_UNAVAILABLE, IMAGE_NOT_FOUND, UNAUTHORIZED = (
    "AgentUnavailable", "RegistryUnavailable", "ImageNotFound", "Unauthorized")
INSUFFICIENT_SPACE, NO_SPACE_LEFT, RUNTIME_UNAVAILABLE, PREFETCH_FAILED = (
    "InsufficientSpace", "NoSpaceLeft", "RuntimeUnavailable", "PrefetchFailed")
UNPIN_REFUSED = "UnpinRefused"  # no set selects the node and --prune-all was not given
_BY_REASON = {"REGISTRY": REGISTRY_UNAVAILABLE, "NOT_FOUND": IMAGE_NOT_FOUND, "UNAUTHORIZED": UNAUTHORIZED,
              "INSUFFICIENT_SPACE": INSUFFICIENT_SPACE, "NO_SPACE": NO_SPACE_LEFT,
              "RUNTIME_UNAVAILABLE": RUNTIME_UNAVAILABLE}
_BY_CODE = {grpc.StatusCode.NOT_FOUND: IMAGE_NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED: UNAUTHORIZED,
            grpc.StatusCode.RESOURCE_EXHAUSTED: INSUFFICIENT_SPACE}


def cause(e: PinError) -> str:
    """The cause of a failed call: AgentUnavailable when the agent did not answer (the only
    one worth calling again), else what the agent says failed (its ErrorInfo reason, or
    the status code of an agent that sends none); PrefetchFailed for any other failure."""
    if e.retryable:
        return AGENT_UNAVAILABLE
    if e.reason:
        return _BY_REASON.get(e.reason, PREFETCH_FAILED)
    return _BY_CODE.get(e.code(), PREFETCH_FAILED)


@dataclass
class NodeRecord:
    """What the coordinator knows of one node; the durable record holds these."""

    node: str
    pool: str
    endpoint: str
    state: str = PENDING
    reason: str = ""
    cause: str = ""  # why it failed (AgentUnavailable, RegistryUnavailable, ...); "" otherwise
    attempts: int = 0
    images: int = 0
    images_done: int = 0
    bytes_done: int = 0
    required_bytes: int = 0
    free_bytes: int = 0
    fits: bool | None = None
    status: dict | None = None  # the agent's NodeStatus as JSON
    seconds: float = 0.0

    def fail(self, e: PinError, prefix: str = "") -> None:
        """A failed call: Unavailable when the agent did not answer, else Failed, with the
        cause and the agent's message (its status code too when the cause says no more)."""
        self.cause = cause(e)
        self.state = UNAVAILABLE if self.cause == AGENT_UNAVAILABLE else FAILED
        if self.cause == AGENT_UNAVAILABLE:
            detail = explain(self.endpoint, e)
        else:
            detail = f"{e.code().name}: {e.details()}" if self.cause == PREFETCH_FAILED else e.details()
        self.reason = prefix + detail

    def observe(self, status: pb.NodeStatus, gaps: list[str]) -> None:
        """What the agent's status says of the node, read without changing anything: Updated
        at the desired content (no `gaps`), else Applying while the agent works, Failed
        when it reports Degraded, Pending otherwise; the reason names the gaps."""
        self.status = status_doc(status)
        conditions = {c.type: c for c in status.conditions}
        if not gaps:
            self.state, self.reason = UPDATED, "at the desired content"
        elif PROGRESSING in conditions and conditions[PROGRESSING].status == "True":
            self.state, self.reason = APPLYING, "applying; " + "; ".join(gaps)
        elif DEGRADED in conditions and conditions[DEGRADED].status == "True":
            self.state, self.cause = FAILED, conditions[DEGRADED].reason or PREFETCH_FAILED
            self.reason = "; ".join(gaps)
        else:
            self.state, self.reason = PENDING, "; ".join(gaps)


def rollout_id(plans: list[PoolPlan]) -> str:
    """Stable id of a desired state (sets by name, generation and images): the same cluster
    input resumes the same record, an edited one starts a new record."""
    sets = {s.name: s for p in plans for t in p.targets for s in t.sets}
    digests = {name: hashlib.sha256("\n".join(sorted(s.images)).encode()).hexdigest() for name, s in sets.items()}
    doc = sorted((t.node, t.endpoint, [(s.name, s.generation, digests[s.name]) for s in t.sets])
                 for p in plans for t in p.targets)
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()[:16]


class Record:
    """The durable rollout record: one JSON file, rewritten atomically on every change. With
    the warm stage also the blobs verified in the site cache (`warmed`, never looked at
    again) and each pool's last warm progress (`warm`, coordinator/warmup.py)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.nodes: dict[str, NodeRecord] = {}
        self.warmed: set[str] = set()
        self.warm: dict[str, dict] = {}
        if path and path.exists():
            doc = json.loads(path.read_text())
            self.nodes = {n["node"]: NodeRecord(**n) for n in doc.get("nodes", [])}
            self.warmed = set(doc.get("warmed", []))
            self.warm = doc.get("warm", {})

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
        doc = {"nodes": [vars(n) for n in self.nodes.values()]}
        if self.warmed or self.warm:
            doc.update(warmed=sorted(self.warmed), warm=self.warm)
        data = json.dumps(doc).encode()
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
