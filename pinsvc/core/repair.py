"""Drift repair: brings the node back to its last verified pins (`State.pinned`) when a
drift check (core/drift.py) finds it has moved away from them.

A removed image is pulled again by its exact reference (the same puller as an Apply: slots,
retries, single flight); a changed or removed drop-in is written again (validated, atomic);
the runtime is reloaded when the drop-in changed or an image is unpinned; then every pin is
verified. Each finding becomes a repair record in the state (and status), and the node is
Degraded (DriftRepairFailed) while one cannot be repaired.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from pinsvc import errors, tracing
from pinsvc.core import drift
from pinsvc.core.ports import DropinFile, ImageRuntime, Metrics
from pinsvc.core.pull import Puller
from pinsvc.core.state import DriftRepair, State, StateStore, now
from pinsvc.core.verify import VerifyReport
from pinsvc.model import Emit, ImageEvent, ImagePhase, StageEvent, StageKind

log = logging.getLogger("pinsvc.agent")

MAX_REPAIR_ERROR = 2048
"""Characters of a drift repair's error kept in the state (up to drift.MAX_REPAIRS of them)."""


def _ignore(event: ImageEvent | StageEvent) -> None:
    """The emit of work no client asked for."""


class DriftRepairer:
    """Checks for drift and repairs it. Handed the agent's collaborators and its traced
    `reload` (emits RUNTIME_RELOADED) and `verify` stages; the caller holds the agent's lock."""

    def __init__(self, *, node: str, state: State, store: StateStore, runtime: ImageRuntime, puller: Puller,
                 dropin: DropinFile, reload: Callable[[Emit], Awaitable[None]],
                 verify: Callable[[list[str], list[str]], Awaitable[VerifyReport]], metrics: Metrics):
        self.node = node
        self.state = state
        self.store = store
        self.runtime = runtime
        self.puller = puller
        self.dropin = dropin
        self.reload = reload
        self.verify = verify
        self.metrics = metrics

    async def check(self) -> list[DriftRepair]:
        """Compares the last verified pins with the runtime's images and the drop-in's bytes,
        and repairs toward them. Returns the repair records (none: no drift)."""
        pinned = list(self.state.pinned)
        listed = await self.runtime.list_images()
        try:
            current = await asyncio.to_thread(self.dropin.read)
        except OSError as e:  # e.g. a directory at the path: not our file, the repair says why
            log.warning("cannot read %s: %s", self.dropin.path, e)
            current = b""
        found = drift.find_drift(pinned, listed, current)
        if not found:
            if self.state.drift_condition([]):
                log.warning("the drift that could not be repaired is gone")
                await self._save()
            return []
        return await self._repair(pinned, found)

    async def _repair(self, pinned: list[str], found: drift.Drift) -> list[DriftRepair]:
        findings = found.findings(str(self.dropin.path))
        for kind, target in findings:
            log.warning("drift: %s: %s; repairing toward the last verified pins", kind, target)
        emit = self.metrics.observer(_ignore)
        failed: dict[str, str] = {}  # image -> why it is not pinned again
        error = ""  # why the repair as a whole failed
        with tracing.span("drift repair", {"k8s.node.name": self.node,
                                           "pinsvc.drift.kinds": sorted({k for k, _ in findings}),
                                           "pinsvc.images": len(pinned)}):
            try:
                if found.removed:
                    results = await self.puller.pull_all(list(found.removed), on_event=self._follow(emit),
                                                         known_missing=set(found.removed))
                    failed.update((i, f"pulling it again failed: {r.error}") for i, r in results.items()
                                  if r.error is not None)
                if found.dropin or found.unpinned:
                    self.dropin.check_conflicts()
                if found.dropin:
                    start = time.monotonic()
                    written = await self.dropin.write(pinned)
                    if written.changed:
                        emit(StageEvent(StageKind.DROPIN_WRITTEN, f"{self.dropin.path} written again",
                                        time.monotonic() - start))
                if found.dropin or found.unpinned:
                    await self.reload(emit)
                report = await self.verify([i for i in pinned if i not in failed], [])
                for c in report.failing:
                    failed[c.image] = "present but not pinned after the repair" if c.present \
                        else "not present after the repair"
                    if (record := self.state.images.get(c.image)) is not None:
                        record.phase = ImagePhase.PRESENT if c.present else ImagePhase.FAILED
                if not report.ok:
                    error = report.message()
            except errors.PinsvcError as e:
                error = str(e)
                tracing.set_error(e)
                for image in (*found.removed, *found.unpinned):
                    failed.setdefault(image, error)
            self.state.repaired_images((*found.removed, *found.unpinned, *failed), failed)
        records = self._record(findings, failed, error)
        self.state.drift_condition([r for r in records if not r.repaired])
        await self._save()
        return records

    def _follow(self, emit: Emit) -> Callable[[ImageEvent], None]:
        """Image records follow a repair's pulls (only images recorded; bytes kept: the
        image is the same)."""
        def on_event(event: ImageEvent) -> None:
            self.state.apply_image_event(event, new_record=False, keep_bytes=True)
            emit(event)
        return on_event

    def _record(self, findings: list[tuple[str, str]], failed: dict[str, str], error: str) -> list[DriftRepair]:
        """One repair record per finding, in the state; logged and counted."""
        when, records = now(), []
        for kind, target in findings:
            why = error if kind in (drift.DROPIN_CHANGED, drift.DROPIN_REMOVED) else failed.get(target, "")
            if len(why) > MAX_REPAIR_ERROR:
                why = why[:MAX_REPAIR_ERROR - 3] + "..."
            self.state.repairs = drift.record(self.state.repairs, DriftRepair(kind, target, when, not why, why))
            records.append(self.state.repairs[-1])
            if why:
                log.warning("drift: %s: %s: not repaired: %s", kind, target, why)
            else:
                log.warning("drift: %s: %s: repaired, pins verified", kind, target)
            self.metrics.observe_drift_repair(kind, not why)
        return records

    async def _save(self) -> None:
        await asyncio.to_thread(self.store.save, self.state)
