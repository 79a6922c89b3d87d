"""The agent's durable state and the rules that change it: per set generations and
failures (OpenShift's rules), per image progress, the node conditions, what the drop-in
holds, and the status built from it. The rules are pure methods of `State`, called by the
orchestrator (core/agent.py) and the drift repair (core/repair.py).

`StateStore` keeps it in one JSON file, written atomically (temp file in the same
directory, fsync, rename, fsync the directory), so a restarted agent reports the same status
and resumes without re-pulling what is present. Never holds credentials.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from pinsvc import errors
from pinsvc.core.space import present_in
from pinsvc.files import write_atomic
from pinsvc.model import (ConditionStatus, DriftRepairStatus, ImageDetail, ImageEvent, ImageEventKind, ImagePhase,
                          NodeStatus, PinnedImageSet, RuntimeImage, SetStatus)

if TYPE_CHECKING:
    from pinsvc.core.health import RuntimeHealth

VERSION = 1
MAX_ERROR = 32768

PROGRESSING = "PinnedImageSetsProgressing"
DEGRADED = "PinnedImageSetsDegraded"
PREFETCH_FAILED = "PrefetchFailed"
"""Reason of PinnedImageSetsDegraded when an Apply failed."""
DRIFT_REPAIR_FAILED = "DriftRepairFailed"
"""Reason of PinnedImageSetsDegraded when a drift repair failed."""
RUNTIME_UNREACHABLE = "RuntimeUnreachable"
"""Reason of PinnedImageSetsDegraded while the container runtime does not answer (core/health.py):
shown, never stored; the stored condition shows again once the runtime answers."""


@dataclass
class SetState:
    name: str
    desired_generation: int
    current_generation: int = 0
    last_failed_generation: int = 0
    last_failed_generation_error: str = ""
    images: list[str] = field(default_factory=list)          # at desired_generation
    current_images: list[str] = field(default_factory=list)  # at current_generation


@dataclass
class ImageState:
    phase: ImagePhase = ImagePhase.PENDING
    attempts: int = 0
    bytes: int = 0
    last_error: str = ""


@dataclass
class Condition:
    type: str
    status: str
    reason: str
    message: str
    last_transition_time: str = ""


@dataclass
class DriftRepair:
    """A difference between the node and its last verified pins that a drift check found,
    and how its repair went (see core/drift.py)."""

    kind: str     # image_removed, image_unpinned, dropin_changed, dropin_removed
    target: str   # the image, or the drop-in path
    time: str     # of the last check that found it
    repaired: bool
    error: str = ""
    count: int = 1  # consecutive checks that found it and failed the same way


@dataclass
class State:
    sets: dict[str, SetState] = field(default_factory=dict)
    images: dict[str, ImageState] = field(default_factory=dict)
    conditions: dict[str, Condition] = field(default_factory=dict)
    pinned: list[str] = field(default_factory=list)  # what the drop-in pins now
    repairs: list[DriftRepair] = field(default_factory=list)  # most recent last
    # Pins of a drop-in of ours found with no state (core/pins.py), kept through failed
    # Applies until one succeeds for every set. Absent from files of older agents.
    inherited: list[str] = field(default_factory=list)

    # ---- conditions ----------------------------------------------------------------------

    def set_condition(self, type: str, status: str, reason: str, message: str) -> None:
        old = self.conditions.get(type)
        when = old.last_transition_time if old and old.status == status else now()
        self.conditions[type] = Condition(type, status, reason, message, when)

    def set_degraded(self, reason: str, message: str) -> None:
        self.set_condition(DEGRADED, "True", reason, truncate_error(message))

    def clear_degraded(self) -> None:
        self.set_condition(DEGRADED, "False", "AsExpected", "All is good")

    def degraded_by_drift(self) -> bool:
        """Whether the node is Degraded because a drift repair failed."""
        degraded = self.conditions.get(DEGRADED)
        return degraded is not None and degraded.status == "True" and degraded.reason == DRIFT_REPAIR_FAILED

    # ---- an Apply --------------------------------------------------------------------------

    def check_generations(self, sets: Iterable[PinnedImageSet]) -> None:
        """Raises Conflict naming each set whose generation is older than one requested."""
        stale = [f"set {s.name!r}: generation {s.generation} is older than generation "
                 f"{self.sets[s.name].desired_generation} already requested"
                 for s in sets if s.name in self.sets and s.generation < self.sets[s.name].desired_generation]
        if stale:
            raise errors.Conflict("; ".join(stale))

    def start_apply(self, sets: Sequence[PinnedImageSet], node: str) -> None:
        """Records the desired sets (their generation and images; sets not named are
        forgotten) and that the node is Progressing."""
        old = self.sets
        self.sets = {}
        for s in sets:
            record = old.get(s.name) or SetState(s.name, s.generation)
            record.desired_generation, record.images = s.generation, list(s.images)
            self.sets[s.name] = record
        self.keep_images()
        self.set_condition(PROGRESSING, "True", "ImagePrefetch", f"node is prefetching images: {node}")

    def cancel_apply(self) -> None:
        self.set_condition(PROGRESSING, "False", "Interrupted", "the last Apply was cancelled before it finished")

    def image(self, image: str) -> ImageState:
        """The record of `image`, a new one when there is none."""
        return self.images.setdefault(image, ImageState())

    def apply_image_event(self, event: ImageEvent, *, new_record: bool = True, keep_bytes: bool = False) -> None:
        """Follows one pull event in the image's record. An Apply records every image it
        pulls, with the size its space check found (`event.bytes`). A drift repair
        (new_record=False, keep_bytes=True) only follows images already recorded, and keeps
        their size: the image is the same."""
        record = self.image(event.image) if new_record else self.images.get(event.image)
        if record is None:
            return
        if event.kind is ImageEventKind.PULLED:
            record.phase, record.last_error = ImagePhase.PRESENT, ""
            if not keep_bytes:
                record.bytes = event.bytes
        elif event.kind is ImageEventKind.ALREADY_PRESENT:
            record.phase = ImagePhase.PINNED if record.phase == ImagePhase.PINNED else ImagePhase.PRESENT
            record.last_error = ""
        elif event.kind is ImageEventKind.PULLING:
            record.phase, record.attempts = ImagePhase.PULLING, event.attempt
        elif event.kind in (ImageEventKind.FAILED, ImageEventKind.CANCELLED):
            record.phase, record.last_error = ImagePhase.FAILED, event.reason
        record.attempts = max(record.attempts, event.attempt)

    def mark_pinned(self, pins: Sequence[str]) -> None:
        """The drop-in lists `pins` and the runtime reported them pinned."""
        self.pinned = list(pins)
        for image in pins:
            self.image(image).phase = ImagePhase.PINNED

    def inherit(self, pins: Sequence[str]) -> None:
        """Keeps the pins of a drop-in of ours found without state (core/pins.py)."""
        self.inherited = list(pins)
        self.mark_pinned(pins)

    def finish_apply(self, sets: Sequence[PinnedImageSet], failed: Mapping[str, Exception],
                     error: Exception | None, dropin_path: str) -> list[str]:
        """Records each set's outcome by OpenShift's rules (currentGeneration only after full
        success; the failure fields only on failure, cleared by a success) and the node
        conditions. `failed`: image -> why; `error`: a failure of the whole Apply (a set not
        already at its generation fails with it). Returns the inherited pins dropped: all of
        them once every set succeeded, else none."""
        failed_sets = []
        for s in sets:
            record = self.sets[s.name]
            reasons = [errors.about(i, failed[i]) for i in s.images if i in failed]
            if error and record.current_generation != s.generation:
                reasons.insert(0, str(error))
            if reasons:
                failed_sets.append(s.name)
                record.last_failed_generation = s.generation
                record.last_failed_generation_error = truncate_error("; ".join(reasons))
            else:
                record.current_generation = s.generation
                record.current_images = list(s.images)
                record.last_failed_generation, record.last_failed_generation_error = 0, ""
        dropped: list[str] = []
        if failed_sets or error:
            detail = "; ".join(self.sets[n].last_failed_generation_error for n in failed_sets)
            kept = (f" (keeping the {len(self.inherited)} pins inherited from {dropin_path} "
                    f"until an Apply succeeds for every set)" if self.inherited else "")
            self.set_degraded(PREFETCH_FAILED, (f"pinned image sets failed: {', '.join(failed_sets)}: {detail}"
                                                if failed_sets else str(error)) + kept)
        else:
            self.clear_degraded()
            dropped, self.inherited = self.inherited, []
        self.set_condition(PROGRESSING, "False", "AsExpected", "All pinned image sets complete")
        self.keep_images()
        return dropped

    def keep_images(self) -> None:
        """Keeps the image records of the desired sets, of each set's last good generation
        (still pinned while a newer generation is not through) and of the inherited pins;
        drops the others."""
        keep = [i for s in self.sets.values() for i in (*s.images, *s.current_images)]
        keep += self.inherited
        self.images = {i: self.images.get(i) or ImageState() for i in dict.fromkeys(keep)}

    # ---- drift ---------------------------------------------------------------------------

    def repaired_images(self, images: Iterable[str], failed: Mapping[str, str]) -> None:
        """The records of the images a drift repair worked on: pinned again, or why not
        (`failed`: image -> why). Images without a record stay without."""
        for image in dict.fromkeys(images):
            record = self.images.get(image)
            if record is not None and image in failed:
                record.last_error = truncate_error(f"drift repair: {failed[image]}")
            elif record is not None:
                record.phase, record.last_error = ImagePhase.PINNED, ""

    def drift_condition(self, failures: Sequence[DriftRepair]) -> bool:
        """Degraded (DriftRepairFailed) while a repair fails, unless it is already Degraded
        for another reason (a failed Apply says more); cleared once no repair fails. Returns
        whether the condition changed."""
        degraded = self.conditions.get(DEGRADED)
        ours = self.degraded_by_drift()
        if failures and (ours or degraded is None or degraded.status != "True"):
            self.set_degraded(DRIFT_REPAIR_FAILED, "the pins drifted and could not be repaired: "
                              + "; ".join(f"{r.kind} {r.target}: {r.error}" for r in failures))
            return True
        if not failures and ours:
            self.clear_degraded()
            return True
        return False

    # ---- status --------------------------------------------------------------------------

    def status(self, node: str, dropin_path: str, runtime_images: Sequence[RuntimeImage] | None = None,
               runtime: RuntimeHealth | None = None) -> NodeStatus:
        """The node status; presence and pins from `runtime_images` (None: not known, e.g.
        the runtime did not answer); the conditions as `runtime_conditions` says."""
        by_digest = present_in(list(runtime_images)) if runtime_images is not None else {}
        members: dict[str, list[str]] = {}
        for s in self.sets.values():
            for i in s.images:
                members.setdefault(i, []).append(s.name)
        images = []
        for image, record in sorted(self.images.items()):
            found = by_digest.get(image.lower())
            images.append(ImageDetail(image, record.phase, record.attempts, record.bytes, record.last_error,
                                      pinned=bool(found and found.pinned), present=found is not None,
                                      sets=tuple(members.get(image, ()))))
        return NodeStatus(
            node=node,
            sets=tuple(SetStatus(s.name, s.desired_generation, s.current_generation, s.last_failed_generation,
                                 s.last_failed_generation_error) for s in sorted(self.sets.values(), key=lambda s: s.name)),
            conditions=tuple(ConditionStatus(c.type, c.status, c.reason, c.message, c.last_transition_time)
                             for c in sorted(self.runtime_conditions(runtime).values(), key=lambda c: c.type)),
            images=tuple(images), dropin_path=dropin_path,
            drift_repairs=tuple(DriftRepairStatus(r.kind, r.target, r.time, r.repaired, r.error, r.count)
                                for r in self.repairs))

    def runtime_conditions(self, runtime: RuntimeHealth | None) -> dict[str, Condition]:
        """The conditions as a reader should see them given whether the runtime answers:
        while it does not, PinnedImageSetsDegraded is True with reason RuntimeUnreachable
        (what every reader of Degraded, `pinctl` and the pool roll-up, already acts on),
        naming the endpoint and the error, and the stored reason after it when the node was
        Degraded already. Once it answers again, the stored condition is back; when that
        says False, its transition time is the runtime's return."""
        degraded = self.conditions.get(DEGRADED)
        if runtime is None or (runtime.reachable and (degraded is None or degraded.status == "True"
                                                      or degraded.last_transition_time >= runtime.since)):
            return self.conditions
        if runtime.reachable:
            shown = Condition(DEGRADED, "False", degraded.reason, degraded.message, runtime.since)
        else:
            was = degraded is not None and degraded.status == "True"
            message = (f"{runtime.detail}: images can be neither pulled, pinned nor verified until it answers"
                       + (f"; already degraded: {degraded.reason}: {degraded.message}" if was else ""))
            since = degraded.last_transition_time if was else runtime.since
            shown = Condition(DEGRADED, "True", RUNTIME_UNREACHABLE, truncate_error(message), since)
        return {**self.conditions, DEGRADED: shown}


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def truncate_error(message: str) -> str:
    return message if len(message) <= MAX_ERROR else message[: MAX_ERROR - 3] + "..."


class StateStore:
    def __init__(self, directory: Path):
        self.directory = directory
        self.path = directory / "state.json"

    def load(self) -> State:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return State()
        except (OSError, ValueError) as e:
            raise errors.StateError(f"state file {self.path} is unreadable: {e}; move it aside to start afresh") from e
        if doc.get("version") != VERSION:
            raise errors.StateError(f"state file {self.path} has version {doc.get('version')!r}, expected {VERSION}")
        try:
            images = {k: ImageState(**{**v, "phase": ImagePhase(v.get("phase", ImagePhase.PENDING))})
                      for k, v in doc.get("images", {}).items()}
        except ValueError as e:
            raise errors.StateError(f"state file {self.path} is unreadable: {e}; move it aside to start afresh") from e
        return State(
            sets={k: SetState(**v) for k, v in doc.get("sets", {}).items()},
            images=images,
            conditions={k: Condition(**v) for k, v in doc.get("conditions", {}).items()},
            pinned=list(doc.get("pinned", [])),
            repairs=[DriftRepair(**r) for r in doc.get("repairs", [])],
            inherited=list(doc.get("inherited", [])),
        )

    def save(self, state: State) -> None:
        """Atomic and durable; blocking (call through asyncio.to_thread)."""
        doc = {"version": VERSION, **asdict(state)}
        data = json.dumps(doc, indent=1, sort_keys=True).encode()
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(self.path, data)
        except OSError as e:
            raise errors.from_os_error(f"the state file {self.path}", e) from e
