"""Reads cluster objects (`pinsvc.coordinator.objects`) as `oc get -o yaml` prints them.

`load(sources)` reads YAML or JSON (files, or stdin for "-"): single objects, multi-document
streams and `kind: List` / `<Kind>List` in any mix. It keeps the three kinds the coordinator
uses, notes and skips every other kind (users pass whole dumps), ignores fields it does not
use (status, managedFields, resourceVersion...), and validates everything before returning:
every problem is collected and raised as one `InvalidArgument`, each naming the file (and the
document when the file has several), the object `Kind/name` and the field.

Pure: reads its inputs, touches nothing else.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from pinsvc.coordinator.objects import MASTER, MCO_GROUP, Cluster, Node, PinnedImageSet, Pool
from pinsvc.coordinator.parse import Fields, describe, parse_node, parse_pool, parse_set
from pinsvc.errors import InvalidArgument

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load(sources: Sequence[str | Path]) -> Cluster:
    """Reads and validates every source (a path, or "-" for stdin). Raises one
    InvalidArgument listing every problem in every source; returns the Cluster otherwise."""
    reader = _Reader()
    for source in sources:
        reader.read(source)
    return reader.validated()


def load_documents(named: Sequence[tuple[str, Any]]) -> Cluster:
    """`load` for documents already parsed, e.g. the lists read from an API server
    (`pinsvc.coordinator.kube`): (name for messages, document) pairs, validated the same way."""
    reader = _Reader()
    for name, document in named:
        reader.add(name, [document])
    return reader.validated()


def parse_object(name: str, body: Any) -> tuple[PinnedImageSet | Pool | Node | None, list[str]]:
    """One object as `load` reads it, on its own: (its model, or None when it has a
    problem or is not of a kind pinsvc uses; every problem). Without the checks across
    objects (a pool naming a set that does not exist, a node in two custom pools), which a
    controller watching objects one by one makes where it combines them, so that one bad
    object never stops the others."""
    reader = _Reader()
    reader._object(name, [], body, Counter())
    if reader.problems or not reader.clean:
        return None, reader.problems
    ((kind, object_name),) = reader.clean
    return reader.objects[_KINDS[kind][1]][object_name], []


def read_documents(source: str | Path) -> tuple[str, list[Any], str | None]:
    """Reads a source (a path, or "-" for stdin): its name for messages, its documents (one
    for JSON; YAML streams give None for empty documents) up to the first syntax error, and
    the read or syntax error if any."""
    name = "<stdin>" if str(source) == "-" else str(source)
    try:
        text = sys.stdin.read() if name == "<stdin>" else Path(source).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return name, [], f"{name}: not UTF-8 text"
    except OSError as e:
        return name, [], f"{name}: cannot read: {e.strerror or e}"
    documents: list[Any] = []
    if text.lstrip()[:1] in ("{", "["):  # JSON first: tab-indented JSON is not YAML
        try:
            return name, [json.loads(text)], None
        except ValueError:
            pass  # flow-style YAML, or broken JSON: the YAML parser says where
    try:
        for document in yaml.load_all(text, Loader=_Loader):
            documents.append(document)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return name, documents, f"{name}: not valid YAML or JSON{at}: {getattr(e, 'problem', None) or e}"
    return name, documents, None


_KINDS: dict[str, tuple[tuple[str, ...], str]] = {
    "PinnedImageSet": ((f"{MCO_GROUP}/v1", f"{MCO_GROUP}/v1alpha1"), "sets"),
    "MachineConfigPool": ((f"{MCO_GROUP}/v1",), "pools"),
    "Node": (("v1",), "nodes"),
}


class _Reader:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.objects: dict[str, dict[str, Any]] = {"sets": {}, "pools": {}, "nodes": {}}
        self.clean: set[tuple[str, str]] = set()  # (kind, name) read without a problem
        self.first_seen: dict[tuple[str, str], str] = {}
        self.set_references: list[tuple[Fields, str, str]] = []  # (pool, path, set name)

    def read(self, source: str | Path) -> None:
        name, documents, problem = read_documents(source)
        if problem:
            self.problems.append(problem)
        self.add(name, documents)

    def add(self, name: str, documents: list[Any]) -> None:
        several = sum(d is not None for d in documents) > 1
        skipped: Counter[str] = Counter()
        for number, document in enumerate(documents, 1):
            if document is not None:
                self._object(name, [f"document {number}"] if several else [], document, skipped)
        if skipped:
            kinds = ", ".join(f"{kind} ({count})" for kind, count in sorted(skipped.items()))
            self.notes.append(f"{name}: skipped {sum(skipped.values())} object(s) of kinds "
                              f"pinsvc does not use: {kinds}")

    def _object(self, file: str, place: list[str], body: Any, skipped: Counter[str]) -> None:
        where = f"{file} ({', '.join(place)})" if place else file
        kind = body.get("kind") if isinstance(body, Mapping) else None
        if not isinstance(kind, str) or not kind:
            self.problems.append(f"{where}: not a Kubernetes object (no kind): want a mapping with "
                                 f"apiVersion, kind and metadata, or a List of them")
            return
        if kind == "List" or (kind.endswith("List") and "items" in body):
            self._list(file, place, body, kind, skipped)
        elif kind not in _KINDS:
            skipped[kind] += 1
        else:
            self._known(where, kind, body)

    def _list(self, file: str, place: list[str], body: Mapping, kind: str, skipped: Counter[str]) -> None:
        items = body.get("items") or []
        if not isinstance(items, list):
            where = f"{file} ({', '.join(place)})" if place else file
            self.problems.append(f"{where}: {kind}: items is {describe(items)}, not a list")
            return
        for i, item in enumerate(items):
            if kind != "List" and isinstance(item, Mapping) and "kind" not in item:
                # a typed list from the API (NodeList...) leaves kind and apiVersion off its items
                item = {"apiVersion": body.get("apiVersion"), **item, "kind": kind[: -len("List")]}
            self._object(file, [*place, f"items[{i}]"], item, skipped)

    def _known(self, where: str, kind: str, body: Mapping) -> None:
        obj = Fields(where, kind, body, self.problems)
        versions, bucket = _KINDS[kind]
        api_version = body.get("apiVersion")
        if api_version not in versions:
            said = f"apiVersion {api_version!r} is not" if api_version else "missing apiVersion, want"
            obj.problem(f"{said} {' or '.join(versions)}")
        if obj.name is None:
            obj.problem("missing metadata.name")
        if kind == "PinnedImageSet":
            model = parse_set(obj)
        elif kind == "MachineConfigPool":
            model = parse_pool(obj, self.set_references)
        else:
            model = parse_node(obj)
        if obj.name is None:
            return
        key = (kind, obj.name)
        if key in self.first_seen:
            obj.problem(f"defined more than once: first in {self.first_seen[key]}")
            return
        self.first_seen[key] = where
        self.objects[bucket][obj.name] = model
        if obj.problem_count == 0:
            self.clean.add(key)

    def check_references(self) -> None:
        """Checks across objects: sets named by pools exist; a node is in at most one custom
        pool (MCO refuses a node in two). Notes what is worth knowing."""
        for pool, path, name in self.set_references:
            if ("PinnedImageSet", name) not in self.first_seen:
                pool.problem(f"{path} names PinnedImageSet/{name}, which is not in the input")
        pools = [p for p in self.objects["pools"].values() if ("MachineConfigPool", p.name) in self.clean]
        for pool in pools:
            if pool.node_selector is None or pool.node_selector.empty:
                self.notes.append(f"{pool.source}: MachineConfigPool/{pool.name}: spec.nodeSelector is "
                                  f"missing or empty, so it selects no node (as in OpenShift)")
        poolless = []
        for node in self.objects["nodes"].values():
            if ("Node", node.name) not in self.clean:
                continue
            matched = [p for p in pools if p.selects_node(node)]
            custom = [p.name for p in matched if p.custom]
            if not matched:
                poolless.append(node.name)
            elif len(custom) > 1:
                self.problems.append(
                    f"{node.source}: Node/{node.name}: is in {len(custom)} custom pools "
                    f"({', '.join(custom)}); OpenShift refuses such a node: make the pools' "
                    f"nodeSelectors exclusive")
            elif custom and any(p.name == MASTER for p in matched):
                self.notes.append(f"Node/{node.name} is in pools master and {custom[0]}: it follows "
                                  f"master and does not get {custom[0]}'s sets (as in OpenShift)")
        if poolless:
            shown = ", ".join(poolless[:5]) + (f" and {len(poolless) - 5} more" if len(poolless) > 5 else "")
            self.notes.append(f"{len(poolless)} node(s) are in no MachineConfigPool, nothing is "
                              f"pinned there: {shown}")

    def cluster(self) -> Cluster:
        return Cluster(self.objects["sets"], self.objects["pools"], self.objects["nodes"], self.notes)

    def validated(self) -> Cluster:
        """The Cluster of everything added; one InvalidArgument listing every problem."""
        self.check_references()
        if self.problems:
            raise InvalidArgument(self.problems)
        return self.cluster()

