"""Drift: the node no longer matching its last verified pins, behind the agent's back.

A periodic check (`verify.drift_interval_seconds`) compares what the state says was last
pinned and verified (`State.pinned`) with what the runtime reports (ListImages: present,
pinned) and with the bytes at the drop-in path (the drop-in pinsvc renders for that list).
The agent then repairs toward `State.pinned` only (core/repair.py): a removed image
is pulled again by its exact reference, a changed or removed drop-in is written again
(validated, atomic) and the runtime reloaded, an image present but not pinned gets a reload
(and a pull by digest from the verification); then the pins are verified. Pins of other
origins (e.g. CRI-O's own pause image) are not drift.

This module is the pure part: the comparison, and the bounded list of repair records;
the repair itself is core/repair.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pinsvc.core.space import present_in
from pinsvc.core.state import DriftRepair
from pinsvc.dropin_format import is_managed, render_dropin
from pinsvc.model import RuntimeImage

IMAGE_REMOVED = "image_removed"
IMAGE_UNPINNED = "image_unpinned"
DROPIN_CHANGED = "dropin_changed"
DROPIN_REMOVED = "dropin_removed"
KINDS = (IMAGE_REMOVED, IMAGE_UNPINNED, DROPIN_CHANGED, DROPIN_REMOVED)

MAX_REPAIRS = 50
"""Repair records kept in the state (and status), the oldest dropped first."""


def expected_dropin(pinned: Sequence[str]) -> bytes | None:
    """The drop-in bytes pinsvc writes for `pinned` (None: no file)."""
    return render_dropin(pinned).encode() if pinned else None


@dataclass(frozen=True)
class Drift:
    removed: tuple[str, ...] = ()
    """Pinned images the runtime no longer has."""
    unpinned: tuple[str, ...] = ()
    """Pinned images the runtime has but does not report pinned."""
    dropin: str = ""
    """DROPIN_CHANGED or DROPIN_REMOVED when the file is not what pinsvc wrote; '' when it is."""

    def __bool__(self) -> bool:
        return bool(self.removed or self.unpinned or self.dropin)

    def findings(self, dropin_path: str) -> list[tuple[str, str]]:
        """(kind, target) of each difference: the image, or the drop-in path."""
        out = [(DROPIN_CHANGED if self.dropin == DROPIN_CHANGED else DROPIN_REMOVED, dropin_path)] if self.dropin else []
        out += [(IMAGE_REMOVED, i) for i in self.removed]
        out += [(IMAGE_UNPINNED, i) for i in self.unpinned]
        return out


def find_drift(pinned: Sequence[str], runtime_images: Sequence[RuntimeImage], dropin: bytes | None) -> Drift:
    """Compares the last verified pins with the runtime's images and the drop-in's bytes
    (None: no file). With nothing pinned, only a drop-in of ours left in place is drift (a
    file pinsvc did not write is none of its business then)."""
    by_digest = present_in(list(runtime_images))
    removed, unpinned = [], []
    for image in pinned:
        found = by_digest.get(image.lower())
        if found is None:
            removed.append(image)
        elif not found.pinned:
            unpinned.append(image)
    expected = expected_dropin(pinned)
    if dropin == expected:
        kind = ""
    elif expected is None:
        kind = DROPIN_CHANGED if dropin is not None and is_managed(dropin) else ""
    else:
        kind = DROPIN_REMOVED if dropin is None else DROPIN_CHANGED
    return Drift(tuple(removed), tuple(unpinned), kind)


def record(repairs: list[DriftRepair], repair: DriftRepair, limit: int = MAX_REPAIRS) -> list[DriftRepair]:
    """`repairs` with `repair` last. A failure identical to the last record of the same
    kind and target (same error) replaces it, counting one more, so that a drift that cannot
    be repaired does not flood the list at every check."""
    out = list(repairs)
    if not repair.repaired:
        for index in range(len(out) - 1, -1, -1):
            old = out[index]
            if (old.kind, old.target) == (repair.kind, repair.target):
                if not old.repaired and old.error == repair.error:
                    del out[index]
                    repair = DriftRepair(repair.kind, repair.target, repair.time, False, repair.error,
                                         old.count + 1)
                break
    out.append(repair)
    return out[-limit:]
