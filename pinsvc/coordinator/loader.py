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

import ipaddress
import json
import re
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from pinsvc.coordinator.objects import (MASTER, MAX_SETS_PER_POOL, MCO_GROUP, OPERATORS, Cluster, LabelSelector,
                                        Node, PinnedImageSet, Pool, SelectorRequirement)
from pinsvc.errors import InvalidArgument
from pinsvc.refs import MAX_IMAGES_PER_SET, reference_problem, set_name_problem

_PERCENT = re.compile(r"^([0-9]+)%$")
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


class _Object:
    """The object being read: every problem names its location and `Kind/name`."""

    def __init__(self, where: str, kind: str, body: Mapping, problems: list[str]):
        self.where, self.kind, self.body, self._problems = where, kind, body, problems
        meta = body.get("metadata")
        name = meta.get("name") if isinstance(meta, Mapping) else None
        self.name: str | None = name if isinstance(name, str) and name else None
        self.problem_count = 0

    def problem(self, text: str) -> None:
        self.problem_count += 1
        self._problems.append(f"{self.where}: {self.kind}/{self.name or '<no name>'}: {text}")

    def mapping(self, value: Any, path: str) -> Mapping:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problem(f"{path} is {_describe(value)}, not a mapping")
            return {}
        return value

    def sequence(self, value: Any, path: str) -> list:
        if value is None:
            return []
        if not isinstance(value, list):
            self.problem(f"{path} is {_describe(value)}, not a list")
            return []
        return value

    def strings(self, value: Any, path: str) -> dict[str, str]:
        """A label-like map: string keys and string values (as kubectl insists)."""
        result = {}
        for key, item in self.mapping(value, path).items():
            if isinstance(key, str) and isinstance(item, str):
                result[key] = item
            else:
                self.problem(f"{path}: {key!r}: {item!r} is not a string (quote values such as \"true\" or \"1\")")
        return result


def _describe(value: Any) -> str:
    kinds = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list"}
    return kinds.get(type(value), "a mapping" if isinstance(value, Mapping) else type(value).__name__)


def _parse_set(obj: _Object) -> PinnedImageSet:
    if obj.name and (problem := set_name_problem(obj.name)):
        obj.problem(problem)
    meta = obj.mapping(obj.body.get("metadata"), "metadata")
    generation = meta.get("generation")  # None in a file written by hand: see coordinator.content
    if generation is None:
        pass
    elif isinstance(generation, bool) or not isinstance(generation, int):
        obj.problem(f"metadata.generation {generation!r} is not an integer")
        generation = None
    elif generation < 1:
        obj.problem(f"metadata.generation is {generation}: generations start at 1")
    labels = obj.strings(meta.get("labels"), "metadata.labels")
    uid = meta.get("uid") or ""
    if not isinstance(uid, str):
        obj.problem(f"metadata.uid {uid!r} is not a string")
        uid = ""
    entries = obj.sequence(obj.mapping(obj.body.get("spec"), "spec").get("pinnedImages"), "spec.pinnedImages")
    if not entries:
        obj.problem(f"has no images: spec.pinnedImages needs 1 to {MAX_IMAGES_PER_SET} entries")
    elif len(entries) > MAX_IMAGES_PER_SET:
        obj.problem(f"has {len(entries)} images in spec.pinnedImages (at most {MAX_IMAGES_PER_SET})")
    images: dict[str, str] = {}  # reference -> where it first appears
    for i, entry in enumerate(entries):
        path = f"spec.pinnedImages[{i}]"
        image = entry.get("name") if isinstance(entry, Mapping) else None
        if not isinstance(entry, Mapping):
            obj.problem(f"{path} is {_describe(entry)}: write each image as '- name: host/path@sha256:...'")
        elif not isinstance(image, str):
            obj.problem(f"{path}.name is missing or not a string")
        elif problem := reference_problem(image):
            obj.problem(f"{path}.name: {problem}")
        elif image in images:
            obj.problem(f"{path}.name repeats {images[image]}.name: {image}")
        else:
            images[image] = path
    return PinnedImageSet(obj.name or "", generation, uid, labels, tuple(images), obj.where)


def _parse_selector(obj: _Object, value: Any, path: str) -> LabelSelector | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        obj.problem(f"{path} is {_describe(value)}, not a label selector")
        return None
    for key in value:
        if key not in ("matchLabels", "matchExpressions"):
            obj.problem(f"{path}: unknown field {key!r} (a label selector has matchLabels and "
                        f"matchExpressions; labels go under matchLabels)")
    requirements = []
    for i, item in enumerate(obj.sequence(value.get("matchExpressions"), f"{path}.matchExpressions")):
        where = f"{path}.matchExpressions[{i}]"
        if not isinstance(item, Mapping):
            obj.problem(f"{where} is {_describe(item)}, not a mapping with key, operator and values")
            continue
        key, operator = item.get("key"), item.get("operator")
        values = obj.sequence(item.get("values"), f"{where}.values")
        before = obj.problem_count
        if not isinstance(key, str) or not key:
            obj.problem(f"{where}.key is missing")
        if operator not in OPERATORS:
            obj.problem(f"{where}.operator {operator!r} is not one of {', '.join(OPERATORS)}")
        elif operator in ("In", "NotIn") and not values:
            obj.problem(f"{where}: operator {operator} needs at least one value")
        elif operator in ("Exists", "DoesNotExist") and values:
            obj.problem(f"{where}: operator {operator} takes no values")
        if not all(isinstance(v, str) for v in values):
            obj.problem(f"{where}.values must be strings (quote values such as \"true\" or \"1\")")
        if obj.problem_count == before:
            requirements.append(SelectorRequirement(key, operator, tuple(values)))
    labels = obj.strings(value.get("matchLabels"), f"{path}.matchLabels")
    return LabelSelector(labels, tuple(requirements))


def _parse_max_unavailable(obj: _Object, value: Any) -> int | str:
    """An int >= 0 or "N%" with 0 <= N <= 100; MCO lets at least one node update whatever
    the value (0 included), see `selection.max_unavailable`."""
    want = "want an integer >= 0 or a percentage from '0%' to '100%'"
    if value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        obj.problem(f"spec.maxUnavailable {value!r}: {want}")
        return 1
    if isinstance(value, int):
        if value < 0:
            obj.problem(f"spec.maxUnavailable is {value}: {want}")
        return value
    match = _PERCENT.match(value)
    if match is None or int(match[1]) > 100:
        obj.problem(f"spec.maxUnavailable {value!r}: {want}")
    return value


def _parse_pool(obj: _Object, set_references: list[tuple[_Object, str, str]]) -> Pool:
    spec = obj.mapping(obj.body.get("spec"), "spec")
    entries = obj.sequence(spec.get("pinnedImageSets"), "spec.pinnedImageSets")
    if len(entries) > MAX_SETS_PER_POOL:
        obj.problem(f"spec.pinnedImageSets has {len(entries)} entries (at most {MAX_SETS_PER_POOL})")
    names = []
    for i, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, Mapping) else None
        if not isinstance(name, str) or not name:
            obj.problem(f"spec.pinnedImageSets[{i}] needs a name ('- name: <PinnedImageSet name>')")
        elif name not in names:
            names.append(name)
            set_references.append((obj, f"spec.pinnedImageSets[{i}]", name))
    paused = spec.get("paused")
    if paused is None:
        paused = False
    elif not isinstance(paused, bool):
        obj.problem(f"spec.paused {paused!r} is not true or false")
        paused = True  # never roll out to a pool whose intent is unclear
    return Pool(
        name=obj.name or "",
        node_selector=_parse_selector(obj, spec.get("nodeSelector"), "spec.nodeSelector"),
        machine_config_selector=_parse_selector(obj, spec.get("machineConfigSelector"), "spec.machineConfigSelector"),
        pinned_image_sets=tuple(names),
        max_unavailable=_parse_max_unavailable(obj, spec.get("maxUnavailable")),
        paused=paused, source=obj.where)


def _parse_node(obj: _Object) -> Node:
    meta = obj.mapping(obj.body.get("metadata"), "metadata")
    status = obj.mapping(obj.body.get("status"), "status")
    internal_ip = None
    for i, address in enumerate(obj.sequence(status.get("addresses"), "status.addresses")):
        if not isinstance(address, Mapping) or address.get("type") != "InternalIP":
            continue
        try:
            if not isinstance(address.get("address"), str):
                raise ValueError
            ipaddress.ip_address(address["address"])
        except ValueError:
            obj.problem(f"status.addresses[{i}]: InternalIP {address.get('address')!r} is not an IP address")
            continue
        internal_ip = internal_ip or address["address"]
    conditions = {}
    for condition in obj.sequence(status.get("conditions"), "status.conditions"):
        if isinstance(condition, Mapping) and isinstance(condition.get("type"), str):
            conditions[condition["type"]] = condition.get("status") == "True"
    return Node(obj.name or "", obj.strings(meta.get("labels"), "metadata.labels"),
                obj.strings(meta.get("annotations"), "metadata.annotations"), internal_ip,
                conditions.get("Ready"), conditions.get("DiskPressure"), obj.where)


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
        self.set_references: list[tuple[_Object, str, str]] = []  # (pool, path, set name)

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
            self.problems.append(f"{where}: {kind}: items is {_describe(items)}, not a list")
            return
        for i, item in enumerate(items):
            if kind != "List" and isinstance(item, Mapping) and "kind" not in item:
                # a typed list from the API (NodeList...) leaves kind and apiVersion off its items
                item = {"apiVersion": body.get("apiVersion"), **item, "kind": kind[: -len("List")]}
            self._object(file, [*place, f"items[{i}]"], item, skipped)

    def _known(self, where: str, kind: str, body: Mapping) -> None:
        obj = _Object(where, kind, body, self.problems)
        versions, bucket = _KINDS[kind]
        api_version = body.get("apiVersion")
        if api_version not in versions:
            said = f"apiVersion {api_version!r} is not" if api_version else "missing apiVersion, want"
            obj.problem(f"{said} {' or '.join(versions)}")
        if obj.name is None:
            obj.problem("missing metadata.name")
        if kind == "PinnedImageSet":
            model = _parse_set(obj)
        elif kind == "MachineConfigPool":
            model = _parse_pool(obj, self.set_references)
        else:
            model = _parse_node(obj)
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

