"""Parsing one cluster object's fields into its model (`pinsvc.coordinator.objects`):
every problem names where it was read, the object `Kind/name` and the field. Used by the
loader (`pinsvc.coordinator.loader`), which finds the objects in documents and checks them
across objects. Pure.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from pinsvc.coordinator.objects import (MAX_SETS_PER_POOL, OPERATORS, LabelSelector, Node, PinnedImageSet, Pool,
                                        SelectorRequirement)
from pinsvc.refs import MAX_IMAGES_PER_SET, reference_problem, set_name_problem
from pinsvc.warm import window

_PERCENT = re.compile(r"^([0-9]+)%$")


class Fields:
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
            self.problem(f"{path} is {describe(value)}, not a mapping")
            return {}
        return value

    def sequence(self, value: Any, path: str) -> list:
        if value is None:
            return []
        if not isinstance(value, list):
            self.problem(f"{path} is {describe(value)}, not a list")
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


def describe(value: Any) -> str:
    kinds = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list"}
    return kinds.get(type(value), "a mapping" if isinstance(value, Mapping) else type(value).__name__)


def parse_set(obj: Fields) -> PinnedImageSet:
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
            obj.problem(f"{path} is {describe(entry)}: write each image as '- name: host/path@sha256:...'")
        elif not isinstance(image, str):
            obj.problem(f"{path}.name is missing or not a string")
        elif problem := reference_problem(image):
            obj.problem(f"{path}.name: {problem}")
        elif image in images:
            obj.problem(f"{path}.name repeats {images[image]}.name: {image}")
        else:
            images[image] = path
    return PinnedImageSet(obj.name or "", generation, uid, labels, tuple(images), obj.where, _window(obj, meta))


def _window(obj: Fields, meta: Mapping) -> str:
    """The object's maintenance window annotation, checked (pinsvc.warm.window)."""
    spec = obj.mapping(meta.get("annotations"), "metadata.annotations").get(window.ANNOTATION, "")
    if not isinstance(spec, str):
        obj.problem(f"metadata.annotations[{window.ANNOTATION}] is {describe(spec)}, not a string")
        return ""
    try:
        window.parse(spec) if spec.strip() else None
    except ValueError as e:
        obj.problem(f"metadata.annotations[{window.ANNOTATION}]: {e}")
        return ""
    return spec.strip()


def _parse_selector(obj: Fields, value: Any, path: str) -> LabelSelector | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        obj.problem(f"{path} is {describe(value)}, not a label selector")
        return None
    for key in value:
        if key not in ("matchLabels", "matchExpressions"):
            obj.problem(f"{path}: unknown field {key!r} (a label selector has matchLabels and "
                        f"matchExpressions; labels go under matchLabels)")
    requirements = []
    for i, item in enumerate(obj.sequence(value.get("matchExpressions"), f"{path}.matchExpressions")):
        where = f"{path}.matchExpressions[{i}]"
        if not isinstance(item, Mapping):
            obj.problem(f"{where} is {describe(item)}, not a mapping with key, operator and values")
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


def _parse_max_unavailable(obj: Fields, value: Any) -> int | str:
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


def parse_pool(obj: Fields, set_references: list[tuple[Fields, str, str]]) -> Pool:
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
        paused=paused, source=obj.where,
        window=_window(obj, obj.mapping(obj.body.get("metadata"), "metadata")))


def parse_node(obj: Fields) -> Node:
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
