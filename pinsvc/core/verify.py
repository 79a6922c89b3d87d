"""Verification: does the runtime report the pins we asked for?

After a reload, poll ListImages until every wanted image reports pinned=true and every
removed one pinned=false. An image present but not pinned may have been pulled under another
name (e.g. by tag): it is pulled once more by the exact digest reference, which pins it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pinsvc.core.space import present_in
from pinsvc.model import RuntimeImage

log = logging.getLogger("pinsvc.verify")


@dataclass(frozen=True)
class PinCheck:
    image: str
    present: bool
    pinned: bool
    want_pinned: bool

    @property
    def ok(self) -> bool:
        # An absent image cannot be pinned; an absent image is trivially not pinned.
        return (self.present and self.pinned) if self.want_pinned else not self.pinned


@dataclass(frozen=True)
class VerifyReport:
    checks: tuple[PinCheck, ...]
    duration_seconds: float
    repulled: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failing(self) -> list[PinCheck]:
        return [c for c in self.checks if not c.ok]

    def message(self) -> str:
        if self.ok:
            return f"{sum(c.want_pinned for c in self.checks)} images pinned, " \
                   f"{sum(not c.want_pinned for c in self.checks)} unpinned, verified in {self.duration_seconds:.2f}s"
        parts = []
        for c in self.failing:
            if c.want_pinned and not c.present:
                parts.append(f"{c.image} is not present")
            elif c.want_pinned:
                parts.append(f"{c.image} is present but not pinned")
            else:
                parts.append(f"{c.image} is still pinned")
        return "the runtime does not report the wanted pins: " + "; ".join(parts)


def check(images: list[RuntimeImage], pinned: list[str], unpinned: list[str]) -> tuple[PinCheck, ...]:
    """Compares what the runtime reports with what is wanted (pure)."""
    by_digest = present_in(images)
    out = []
    for image, want in [(i, True) for i in pinned] + [(i, False) for i in unpinned]:
        found = by_digest.get(image.lower())
        out.append(PinCheck(image, found is not None, bool(found and found.pinned), want))
    return tuple(out)


async def verify_pins(list_images: Callable[[], Awaitable[list[RuntimeImage]]], pinned: list[str],
                      unpinned: list[str], *, timeout: float, interval: float,
                      repull: Callable[[str], Awaitable[None]] | None = None,
                      repull_after: float = 1.0) -> VerifyReport:
    """Polls until the pins match or `timeout` passes, first every 10 ms (a CRI-O reload
    takes 20-45 ms) and then less often, up to `interval`. Images present but unpinned for
    `repull_after` seconds are pulled again by their digest reference (once each)."""
    start = time.monotonic()
    repulled: list[str] = []
    pause = min(0.01, interval)
    while True:
        checks = check(await list_images(), pinned, unpinned)
        elapsed = time.monotonic() - start
        report = VerifyReport(checks, elapsed, tuple(repulled))
        if report.ok or elapsed >= timeout:
            return report
        if repull is not None and elapsed >= min(repull_after, timeout / 4):
            todo = [c.image for c in report.failing if c.want_pinned and c.present and c.image not in repulled]
            for image in todo:
                log.info("%s is present but not pinned; pulling it again by its digest reference", image)
                repulled.append(image)
                await repull(image)
            if todo:
                continue
        await asyncio.sleep(pause)
        pause = min(pause * 2, interval)
