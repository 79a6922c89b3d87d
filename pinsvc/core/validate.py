"""Checking a desired state before anything is touched: one InvalidArgument names every
bad value of every set."""

from __future__ import annotations

from collections.abc import Sequence

from pinsvc import errors, limits
from pinsvc.model import PinnedImageSet
from pinsvc.refs import MAX_IMAGES_PER_SET, reference_problem, set_name_problem, shorten


def validate_sets(sets: Sequence[PinnedImageSet]) -> list[PinnedImageSet]:
    """Checks a whole desired state; one InvalidArgument names every bad value. Duplicate
    images within a set collapse. Over a limit of pinsvc.limits, only the count is named."""
    too_many = limits.count_problem(len(sets), limits.MAX_SETS_PER_REQUEST, "sets in the request")
    if too_many:
        raise errors.InvalidArgument(too_many)
    problems, seen, out = [], set(), []
    for index, s in enumerate(sets):
        where = f"set {shorten(s.name)}: " if s.name else f"set #{index}: "
        problem = set_name_problem(s.name)
        if problem:
            problems.append(where + problem)
        elif s.name in seen:
            problems.append(f"set name {s.name!r} appears more than once")
        seen.add(s.name)
        if s.generation < 1:
            problems.append(f"{where}generation {s.generation} must be >= 1")
        if len(s.images) > MAX_IMAGES_PER_SET:
            problems.append(f"{where}{len(s.images)} images (at most {MAX_IMAGES_PER_SET})")
            continue  # its references are not checked one by one
        if not s.images:
            problems.append(f"{where}no images")
        bad = [p for p in (reference_problem(i) for i in s.images) if p]
        problems += [where + p for p in bad]
        if not bad:
            unique = tuple(dict.fromkeys(s.images))
            out.append(PinnedImageSet(s.name, s.generation, unique))
    distinct = {i for s in sets if len(s.images) <= MAX_IMAGES_PER_SET for i in s.images}
    if too_many := limits.count_problem(len(distinct), limits.MAX_IMAGES_PER_APPLY, "distinct images across the sets"):
        problems.append(too_many)
    if problems:
        raise errors.InvalidArgument(problems)
    return out


def union(sets: Sequence[PinnedImageSet]) -> list[str]:
    """The images of the sets, each once, in order."""
    return list(dict.fromkeys(i for s in sets for i in s.images))
