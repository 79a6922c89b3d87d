"""The pin stage of an Apply: write the drop-in, have the runtime reload it, verify the pins
through the CRI; when they do not hold, put the previous drop-in back (and reload it), so a
failed Apply never leaves the node pinning what could not be verified.

Its traced reload and verify steps are also what a drift repair (core/repair.py) uses.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from pinsvc import errors, tracing
from pinsvc.core.ports import ConfigReloader, DropinFile
from pinsvc.core.verify import VerifyReport
from pinsvc.model import Emit, StageEvent, StageKind

log = logging.getLogger("pinsvc.agent")


class Pinner:
    def __init__(self, dropin: DropinFile, reloader: ConfigReloader, strategy: str,
                 verify: Callable[[list[str], list[str]], Awaitable[VerifyReport]]):
        self.dropin = dropin
        self.reloader = reloader
        self.strategy = strategy  # the reload strategy, for the trace
        self._verify = verify

    async def pin(self, pins: list[str], unpinned: list[str], emit: Emit) -> None:
        """Makes the drop-in list `pins`, reloads and verifies that the runtime pins them and
        no longer pins `unpinned`; restores the old drop-in on failure (and raises)."""
        start = time.monotonic()
        with tracing.span("drop-in write", {"file.path": str(self.dropin.path), "pinsvc.images": len(pins)}):
            result = await self.dropin.write(pins)
            tracing.set_attributes({"pinsvc.dropin.changed": result.changed, "pinsvc.dropin.removed": result.removed})
        if result.changed:
            what = "removed" if result.removed else f"written with {len(pins)} images"
            emit(StageEvent(StageKind.DROPIN_WRITTEN, f"{self.dropin.path} {what}", time.monotonic() - start))
            try:
                await self.reload(emit)
            except errors.PinsvcError:
                await self.dropin.restore(result.previous)
                raise
        else:
            emit(StageEvent(StageKind.DROPIN_UNCHANGED, f"{self.dropin.path} already pins these {len(pins)} images"))
        try:
            report = await self.verify(pins, unpinned)
        except errors.PinsvcError:
            # The runtime cannot be asked (e.g. it died after the reload): pins that cannot
            # be verified do not stay; the previous drop-in is what it starts with again.
            if result.changed:
                await self._restore(result.previous, emit)
            raise
        if not report.ok and not result.changed:
            # The file is right but the runtime may never have read it (e.g. the agent was
            # killed between the write and the reload): reload once and look again.
            await self.reload(emit)
            report = await self.verify(pins, unpinned)
        if not report.ok:
            if result.changed:
                await self._restore(result.previous, emit)
            raise errors.VerificationFailed(report.message())
        emit(StageEvent(StageKind.PINS_VERIFIED, report.message(), report.duration_seconds))

    async def reload(self, emit: Emit) -> None:
        with tracing.span("reload", {"pinsvc.reload.strategy": self.strategy}):
            reloaded = await self.reloader.reload()
            tracing.set_attributes({"pinsvc.reload.detail": reloaded.detail})
        emit(StageEvent(StageKind.RUNTIME_RELOADED, reloaded.detail, reloaded.duration_seconds))

    async def verify(self, pins: list[str], unpinned: list[str]) -> VerifyReport:
        with tracing.span("verify", {"pinsvc.images.pinned": len(pins), "pinsvc.images.unpinned": len(unpinned)}):
            report = await self._verify(pins, unpinned)
            tracing.set_attributes({"pinsvc.verified": report.ok, "pinsvc.images.repulled": len(report.repulled)})
            if not report.ok:
                tracing.set_error(report.message())
            return report

    async def _restore(self, previous: bytes | None, emit: Emit) -> None:
        """Puts the previous drop-in back and asks the runtime to reload it. A failing reload
        is reported in the event, not raised: the failure that led here is the one to report."""
        await self.dropin.restore(previous)
        try:
            await self.reloader.reload()
            done = "and reloaded the runtime"
        except errors.PinsvcError as e:
            log.warning("restored the previous %s but could not reload the runtime: %s", self.dropin.path, e)
            done = f"but could not reload the runtime: {e}"
        emit(StageEvent(StageKind.DROPIN_RESTORED, f"restored the previous {self.dropin.path} {done}"))
