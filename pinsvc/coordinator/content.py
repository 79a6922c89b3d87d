"""What a node should pin against what its agent reports, compared by content (pure).

Generations. A PinnedImageSet read from the API server carries `metadata.generation`,
which the server bumps on every change of the spec; it is used as is. A set written by hand
(the documented YAML) has none, so its generation is derived, per node, from what that
node's agent reports for the set:
- the agent never saw the set: 1;
- the agent was last asked for exactly these images: the generation it was asked for;
- the images differ: that generation + 1.
So a generation is never 0 and never lower than one the agent was already asked for, the
same content keeps its generation (rerunning applies nothing), and an edit always reaches
the nodes as a new generation.

Content. Numbers alone cannot tell whether a node has a set: a hand-edited dump keeps its
generation. A node is at its desired content when its agent knows exactly the wanted sets,
each at the wanted generation, fully pinned (current = desired), with the wanted images
at that generation (`ImageDetail.sets`), and the runtime reports each of them pinned.
`gaps` says, set by set, what is not so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pinsvc_client import SetSpec, pb

from pinsvc.coordinator.objects import PinnedImageSet

SHOWN = 3
"""Images named in a gap message; the others are counted."""


@dataclass(frozen=True)
class AgentSet:
    """One set as the node's agent reports it: its generations and the images it was last
    asked to pin for it (at `desired`)."""

    name: str
    desired: int
    current: int
    failed: int
    error: str
    images: frozenset[str]


def agent_sets(status: pb.NodeStatus) -> dict[str, AgentSet]:
    images: dict[str, set[str]] = {}
    for detail in status.images:
        for name in detail.sets:
            images.setdefault(name, set()).add(detail.image)
    return {s.name: AgentSet(s.name, s.desired_generation, s.current_generation, s.last_failed_generation,
                             s.last_failed_generation_error, frozenset(images.get(s.name, ())))
            for s in status.pinned_image_sets}


def generation(image_set: PinnedImageSet, reported: AgentSet | None) -> int:
    """The generation to ask the node for (see the module's docstring)."""
    if image_set.generation is not None:
        return image_set.generation
    if reported is None:
        return 1
    if reported.images == frozenset(image_set.images):
        return max(reported.desired, 1)
    return reported.desired + 1


def specs(sets: Sequence[PinnedImageSet], status: pb.NodeStatus | None) -> list[SetSpec]:
    """The sets to apply to a node whose agent reported `status` (None: it reported nothing)."""
    reported = agent_sets(status) if status is not None else {}
    return [SetSpec(s.name, generation(s, reported.get(s.name)), s.images) for s in sets]


def gaps(wanted: Sequence[SetSpec], status: pb.NodeStatus) -> list[str]:
    """Why the node is not at the wanted content, one entry per set, e.g. "worker-set:
    missing"; empty when it is."""
    reported = agent_sets(status)
    pinned = {d.image for d in status.images if d.pinned}
    out = []
    for spec in wanted:
        have = reported.get(spec.name)
        if have is None:
            out.append(f"{spec.name}: missing")
            continue
        images = frozenset(spec.images)
        if have.desired != spec.generation or have.images != images:
            out.append(f"{spec.name}: stale: {_difference(have, spec.generation, images)}")
        elif have.failed == spec.generation and have.current != spec.generation:
            out.append(f"{spec.name}: generation {spec.generation} failed: {have.error}")
        elif have.current != spec.generation:
            out.append(f"{spec.name}: generation {spec.generation} not pinned yet")
        elif unpinned := sorted(images - pinned):
            out.append(f"{spec.name}: {_some(unpinned)} not pinned by the runtime")
    names = {s.name for s in wanted}
    out += [f"{name}: pinned but not wanted" for name in sorted(set(reported) - names)]
    return out


def _difference(have: AgentSet, generation: int, images: frozenset[str]) -> str:
    if have.images != images:
        missing, extra = sorted(images - have.images), sorted(have.images - images)
        parts = ([f"{_some(missing)} missing"] if missing else []) + ([f"{_some(extra)} not wanted"] if extra else [])
        return f"the node was asked for generation {have.desired} with other images ({'; '.join(parts)})"
    if have.desired > generation:
        return f"the node was asked for generation {have.desired}, newer than the wanted {generation}"
    return f"the node was asked for generation {have.desired}, the wanted one is {generation}"


def _some(images: Sequence[str]) -> str:
    shown = ", ".join(images[:SHOWN])
    return shown + (f" and {len(images) - SHOWN} more" if len(images) > SHOWN else "")
