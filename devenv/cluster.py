"""Cluster objects as `oc get -o yaml` prints them (Node, MachineConfigPool, PinnedImageSet),
for `pinctl` in the demo and the e2e tests.

Pure builders of plain dicts: `node`, `pool`, `pinned_image_set`; `render` writes them as one
multi-document YAML stream. A node's agent is named in its `pinsvc.io/agent-endpoint`
annotation when `endpoint` is given, so `pinctl ... -f cluster.yaml` needs nothing else.
Fields pinctl does not read (uid, resourceVersion, nodeInfo, ...) are filled like a live
cluster fills them, so the files look like what users pass.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence

import yaml

from pinsvc.coordinator.selection import ENDPOINT_ANNOTATION

MCO_API = "machineconfiguration.openshift.io/v1"
ROLE_LABEL = "machineconfiguration.openshift.io/role"
CREATED = "2026-01-05T09:12:44Z"
_BUILT_IN = ("master", "worker")


def _uid(kind: str, name: str) -> str:
    """A stable uid per object, as the API server would have assigned once."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"pinsvc-devenv/{kind}/{name}"))


def _metadata(kind: str, name: str, *, generation: int | None = None, **extra) -> dict:
    meta = {"creationTimestamp": CREATED}
    if generation is not None:
        meta["generation"] = generation
    meta.update(extra)
    meta.update(name=name, resourceVersion=str(40000 + sum(map(ord, kind + name))), uid=_uid(kind, name))
    return dict(sorted(meta.items()))


def role_labels(roles: Sequence[str]) -> dict[str, str]:
    """`node-role.kubernetes.io/<role>: ""` per role; a master is a control-plane node too."""
    labels = {f"node-role.kubernetes.io/{role}": "" for role in roles}
    if "master" in roles:
        labels["node-role.kubernetes.io/control-plane"] = ""
    return labels


def node(name: str, roles: Sequence[str] = ("worker",), *, endpoint: str | None = None,
         address: str = "127.0.0.1", ready: bool = True, runtime: str = "cri-o://1.36.3") -> dict:
    """A Node with the role labels, an InternalIP, the Ready condition and, with `endpoint`,
    the agent endpoint annotation."""
    annotations = {"machineconfiguration.openshift.io/state": "Done"}
    if endpoint is not None:
        annotations[ENDPOINT_ANNOTATION] = endpoint
    labels = {"beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
              "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
              **role_labels(roles), "node.openshift.io/os_id": "rhcos"}
    conditions = [{"type": kind, "status": "False", "reason": f"KubeletHasNo{kind}",
                   "lastHeartbeatTime": CREATED, "lastTransitionTime": CREATED}
                  for kind in ("MemoryPressure", "DiskPressure", "PIDPressure")]
    conditions.append({"type": "Ready", "status": "True" if ready else "False",
                       "reason": "KubeletReady" if ready else "KubeletNotReady",
                       "lastHeartbeatTime": CREATED, "lastTransitionTime": CREATED})
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": _metadata("Node", name, annotations=annotations, labels=labels),
        "spec": {},
        "status": {
            "addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": name}],
            "conditions": conditions,
            "nodeInfo": {"architecture": "amd64", "containerRuntimeVersion": runtime,
                         "kubeletVersion": "v1.33.5", "operatingSystem": "linux",
                         "osImage": "Red Hat Enterprise Linux CoreOS 9.6"},
        },
    }


def pool(name: str, *, node_role: str | None = None, config_roles: Sequence[str] | None = None,
         max_unavailable: int | str = 1, pinned_image_sets: Iterable[str] = (), paused: bool = False) -> dict:
    """A MachineConfigPool selecting nodes labelled `node-role.kubernetes.io/<node_role>`
    (default: the pool's name) and configs (sets) whose role label is one of `config_roles`
    (default: the pool's name; several make a `matchExpressions` In, as custom pools do)."""
    roles = list(config_roles or [name])
    if len(roles) == 1:
        config_selector: dict = {"matchLabels": {ROLE_LABEL: roles[0]}}
    else:
        config_selector = {"matchExpressions": [{"key": ROLE_LABEL, "operator": "In", "values": roles}]}
    labels = {f"pools.operator.machineconfiguration.openshift.io/{name}": ""}
    if name in _BUILT_IN:
        labels["machineconfiguration.openshift.io/mco-built-in"] = ""
    spec = {"configuration": {"name": f"rendered-{name}-{_uid('rendered', name)[:8]}"},
            "machineConfigSelector": config_selector,
            "maxUnavailable": max_unavailable,
            "nodeSelector": {"matchLabels": {f"node-role.kubernetes.io/{node_role or name}": ""}},
            "paused": paused}
    if sets := sorted(pinned_image_sets):
        spec["pinnedImageSets"] = [{"name": s} for s in sets]
    return {"apiVersion": MCO_API, "kind": "MachineConfigPool",
            "metadata": _metadata("MachineConfigPool", name, generation=2, labels=labels), "spec": spec}


def pinned_image_set(name: str, images: Iterable[str], *, role: str | None = None,
                     generation: int | None = 1) -> dict:
    """A PinnedImageSet of digest references; `role` labels it for the pools whose
    machineConfigSelector takes that role (no role: every node of the cluster). A generation
    of None leaves `metadata.generation` out, as in a file written by hand."""
    meta = _metadata("PinnedImageSet", name, generation=generation)
    if role is not None:
        meta["labels"] = {ROLE_LABEL: role}
    return {"apiVersion": MCO_API, "kind": "PinnedImageSet", "metadata": meta,
            "spec": {"pinnedImages": [{"name": image} for image in images]}}


def render(objects: Iterable[dict]) -> str:
    """A multi-document YAML stream, keys in the order given (as `oc get -o yaml` does)."""
    return yaml.safe_dump_all(list(objects), sort_keys=False, width=200)
