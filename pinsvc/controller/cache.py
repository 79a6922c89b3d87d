"""What the API server says, as the reconciler reads it: four informers (Nodes,
MachineConfigPools, PinnedImageSets, MachineConfigNodes) and the models parsed from their
objects with the coordinator's own parser. A watch event only updates these and wakes the
reconciler; `topology_dirty` says the nodes' desired states must be computed again,
`pools_dirty` that the pools' status may have changed.

A model is replaced only when it differs, so an object the reconciler holds stays the same
object (`is`) for as long as what it says does not change: the reconciler compares
identities to skip nodes nothing happened to.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pinsvc.controller import status as st
from pinsvc.controller.events import Recorder
from pinsvc.controller.kubeapi import MCNS, NODES, POOLS, SET_VERSIONS, Informer, Kube, Resource, discover_sets, sets
from pinsvc.coordinator.loader import parse_object
from pinsvc.coordinator.objects import Node, PinnedImageSet, Pool

log = logging.getLogger("pinsvc.controller")


class Cache:
    def __init__(self, kube: Kube, events: Recorder, poke: Callable[..., None]):
        self.kube = kube
        self.events = events
        self.poke = poke
        self.sets: dict[str, PinnedImageSet] = {}
        self.invalid: dict[str, PinnedImageSet] = {}  # sets that failed validation: name and labels only
        self.pools: dict[str, Pool] = {}
        self.nodes: dict[str, Node] = {}
        self.observed: dict[str, st.Observed] = {}
        self.versions: dict[str, int] = {}  # MachineConfigNode -> the resourceVersion `observed` is from
        self.topology_dirty = True
        self.pools_dirty = True
        self.set_resource = sets(SET_VERSIONS[0])
        self.informers: list[Informer] = []

    async def informed(self) -> list[Informer]:
        """The informers to run (the PinnedImageSet version the server serves found first)."""
        self.set_resource = await discover_sets(self.kube)
        self.informers = [Informer(self.kube, NODES, self._on_node), Informer(self.kube, POOLS, self._on_pool),
                          Informer(self.kube, self.set_resource, self._on_set), Informer(self.kube, MCNS, self._on_mcn)]
        return self.informers

    def raw(self, resource: Resource, name: str) -> dict:
        """The object as the API server last returned it (a stub with its name when gone)."""
        return next(i for i in self.informers if i.resource == resource).objects.get(name) or {"metadata": {"name": name}}

    def config(self, pool: str) -> str:
        """The pool's rendered configuration name ("" when it names none)."""
        return ((self.raw(POOLS, pool).get("spec") or {}).get("configuration") or {}).get("name", "")

    def store(self, obj: dict) -> None:
        """What a write of a MachineConfigNode returned is its newest version: used at once."""
        self._on_mcn("MODIFIED", obj)

    def _parsed(self, kind: str, obj: dict, into: dict) -> None:
        name = obj["metadata"]["name"]
        model = None if kind == "DELETED" else parse_object(f"{self.kube.server}", obj)[0]
        if into.get(name) != model:
            self.topology_dirty = True
            if model is None:
                into.pop(name, None)
            else:
                into[name] = model
            self.poke()

    def _on_node(self, kind: str, obj: dict) -> None:
        self._parsed(kind, obj, self.nodes)

    def _on_pool(self, kind: str, obj: dict) -> None:
        self.pools_dirty = True  # its status too: written from what it says now
        self._parsed(kind, obj, self.pools)

    def _on_set(self, kind: str, obj: dict) -> None:
        meta = obj["metadata"]
        name = meta["name"]
        model, problems = (None, []) if kind == "DELETED" else parse_object(self.kube.server, obj)
        if problems:
            labels = {k: v for k, v in (meta.get("labels") or {}).items() if isinstance(v, str)}
            placeholder = PinnedImageSet(name, meta.get("generation", 1), meta.get("uid", ""), labels, (),
                                         "; ".join(problems))
            if self.invalid.get(name) != placeholder:
                self.invalid[name] = placeholder
                self.topology_dirty = True
                self.events.emit(self.set_resource, obj, "InvalidPinnedImageSet", "; ".join(problems), warning=True)
                self.poke()
            self.sets.pop(name, None)
        elif self.invalid.pop(name, None) is not None:
            self.topology_dirty = True
            self.poke()
        self._parsed("DELETED" if model is None else kind, obj, self.sets)

    def _on_mcn(self, kind: str, obj: dict) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self.observed.pop(name, None)
            self.versions.pop(name, None)
        else:
            version = st.version(obj)
            if version != -1 and version <= self.versions.get(name, -1):
                return  # what a write of ours already returned, or older
            self.versions[name] = version
            self.observed[name] = st.observe(obj)
        self.pools_dirty = True
        self.poke(name)

    def forget(self, name: str) -> None:
        """A MachineConfigNode the controller deleted."""
        self._on_mcn("DELETED", {"metadata": {"name": name}})
