"""Which images the drop-in lists after an Apply, and the pins an agent inherits (pure).

A set that fails keeps the pins of its last good generation (`SetState.current_images`).
An agent that starts without state (the state directory wiped, a new hostPath) knows no
last good generation; when it finds a drop-in pinsvc wrote, it inherits that file's
references (`State.inherited`) and keeps them pinned through every Apply that does not
fully succeed, so a failure never leaves the node with fewer pins than it had. The first
Apply that succeeds for every set drops them: the desired sets are then the whole truth.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping, Sequence

from pinsvc.core.state import SetState
from pinsvc.dropin_format import is_managed
from pinsvc.model import PinnedImageSet
from pinsvc.refs import reference_problem


def choose_pins(sets: Sequence[PinnedImageSet], failed: Iterable[str], recorded: Mapping[str, SetState],
                inherited: Sequence[str] = ()) -> list[str]:
    """Sorted pins for the drop-in: the images of the sets whose images are all present;
    for a set with a failed image, its last good images (`recorded[name].current_images`).
    When any set failed, the inherited pins too."""
    failed = set(failed)
    pins: set[str] = set()
    any_failed = False
    for s in sets:
        if any(i in failed for i in s.images):
            any_failed = True
            record = recorded.get(s.name)
            pins.update(record.current_images if record is not None else ())
        else:
            pins.update(s.images)
    if any_failed:
        pins.update(inherited)
    return sorted(pins)


def dropin_references(content: bytes | None) -> tuple[list[str], list[str]]:
    """(references to inherit, values left out) of a drop-in's bytes. Only a drop-in pinsvc
    wrote (its header) is inherited: a foreign file or none gives ([], []). Values that are
    not digest references pinsvc would pin are left out (pinsvc never writes them)."""
    if content is None or not is_managed(content):
        return [], []
    try:
        doc = tomllib.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return [], []
    crio = doc.get("crio")
    image = crio.get("image") if isinstance(crio, dict) else None
    values = image.get("pinned_images") if isinstance(image, dict) else None
    if not isinstance(values, list):
        return [], []
    good = [v for v in values if isinstance(v, str) and reference_problem(v) is None]
    bad = [repr(v) for v in values if not (isinstance(v, str) and reference_problem(v) is None)]
    return sorted(set(good)), bad
