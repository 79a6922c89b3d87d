"""Cluster objects as `oc get -o yaml` prints them: PinnedImageSet, MachineConfigPool, Node,
as the plain frozen types the coordinator works on, and label selectors with Kubernetes
semantics.

`pinsvc.coordinator.loader` reads and validates them from YAML or JSON; which sets reach
which nodes, which pool rolls a node out and where its agent listens is decided in
`pinsvc.coordinator.selection`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

MCO_GROUP = "machineconfiguration.openshift.io"
MASTER, WORKER = "master", "worker"
MAX_SETS_PER_POOL = 100  # MachineConfigPool.spec.pinnedImageSets, as in openshift/api
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True)
class SelectorRequirement:
    """One `matchExpressions` entry."""

    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":  # an absent label is "not in" (Kubernetes semantics)
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels  # DoesNotExist


@dataclass(frozen=True)
class LabelSelector:
    """A Kubernetes `metav1.LabelSelector`: every matchLabels pair and every expression must
    hold, so the empty selector `{}` matches everything. A missing selector is None in the
    model and matches nothing: see `selects`."""

    match_labels: dict[str, str] = field(default_factory=dict)
    match_expressions: tuple[SelectorRequirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        return (all(k in labels and labels[k] == v for k, v in self.match_labels.items())
                and all(r.matches(labels) for r in self.match_expressions))


def selects(selector: LabelSelector | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes semantics: a missing selector (None) matches nothing, `{}` everything."""
    return selector is not None and selector.matches(labels)


@dataclass(frozen=True)
class PinnedImageSet:
    name: str
    generation: int | None  # metadata.generation; None when not given (derived per node, see content.py)
    uid: str
    labels: dict[str, str]
    images: tuple[str, ...]
    source: str  # "file (document N)": where it was read, for messages
    window: str = ""  # its pinsvc.io/window annotation: when its images may be fetched and pulled


@dataclass(frozen=True)
class Pool:
    """A MachineConfigPool. `max_unavailable` is as written (an int or "N%"); see
    `selection.max_unavailable` for the number of nodes it allows."""

    name: str
    node_selector: LabelSelector | None
    machine_config_selector: LabelSelector | None
    pinned_image_sets: tuple[str, ...]
    max_unavailable: int | str
    paused: bool
    source: str
    window: str = ""  # its pinsvc.io/window annotation: when its nodes may fetch and pull

    @property
    def custom(self) -> bool:
        return self.name not in (MASTER, WORKER)

    def selects_node(self, node: Node) -> bool:
        """MCO's rule (GetPoolsForNode): a nil *or empty* nodeSelector selects no node."""
        return (self.node_selector is not None and not self.node_selector.empty
                and self.node_selector.matches(node.labels))

    def attaches(self, image_set: PinnedImageSet) -> bool:
        """Whether the set goes to this pool: named in spec.pinnedImageSets; or carrying no
        labels at all (the documentation: "without it the images go to every node of the
        cluster"); or its labels match the machineConfigSelector, which must not be empty
        (MCO's pinned image set controller skips a nil or empty selector)."""
        if image_set.name in self.pinned_image_sets or not image_set.labels:
            return True
        selector = self.machine_config_selector
        return selector is not None and not selector.empty and selector.matches(image_set.labels)


@dataclass(frozen=True)
class Node:
    name: str
    labels: dict[str, str]
    annotations: dict[str, str]
    internal_ip: str | None  # the first InternalIP in status.addresses
    ready: bool | None  # the Ready condition is "True"; None when the condition is absent
    disk_pressure: bool | None  # the DiskPressure condition is "True"; None when absent
    source: str


@dataclass(frozen=True)
class Cluster:
    """Everything the loader read (`loader.load`), by name in input order; `notes` are what was skipped or is
    worth knowing (not errors)."""

    sets: dict[str, PinnedImageSet] = field(default_factory=dict)
    pools: dict[str, Pool] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
