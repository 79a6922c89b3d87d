"""The orchestrator: one Apply turns the desired sets into pulled, pinned, verified images.

Order of work (each stage in its own module): validate -> space check -> pull what is
missing -> write the drop-in (only once every image of a set is present) -> reload the
runtime -> verify the pins through the CRI (restoring the previous drop-in when they do not
hold). A set that fails keeps the pins of its last good generation, so a failed Apply never
leaves a node worse than it was; an agent started without state keeps the pins of the drop-in
it finds (core/pins.py) until an Apply succeeds for every set.

One Apply, stage call or drift check at a time (the lock); a newer Apply cancels the one in
flight. The status rules are the state's (core/state.py), the pin stage (drop-in, reload,
verify) is core/pinning.py, drift repair core/repair.py; the I/O peers come in through
core/ports.py (put together by pinsvc/wiring.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from pinsvc import errors, limits, tracing
from pinsvc.config import Settings
from pinsvc.core.health import RuntimeWatch
from pinsvc.core.pinning import Pinner
from pinsvc.core.pins import choose_pins, dropin_references
from pinsvc.core.ports import (ConfigReloader, DropinFile, ImageRuntime, ImageSources, ManifestSource, Metrics,
                               NoMetrics, PullCredentials)
from pinsvc.core.pull import Puller
from pinsvc.core.repair import DriftRepairer
from pinsvc.core.space import SpaceChecker, find_present
from pinsvc.core.state import PREFETCH_FAILED, DriftRepair, State, StateStore
from pinsvc.core.validate import union, validate_sets
from pinsvc.core.verify import VerifyReport, verify_pins
from pinsvc.model import (ApplyOutcome, Emit, ImageEvent, ImageEventKind, NodeStatus, PinnedImageSet,
                          ReloadResult, SpacePlan, StageEvent, StageKind, WriteResult)
from pinsvc.refs import parse_reference, parse_references

log = logging.getLogger("pinsvc.agent")


@dataclass
class _Run:
    """What one Apply learned so far."""

    sets: list[PinnedImageSet]
    failed: dict[str, errors.PinsvcError]  # image -> why
    plan: SpacePlan | None = None
    error: errors.PinsvcError | None = None  # a failure of the whole Apply


class Agent:
    def __init__(self, settings: Settings, *, runtime: ImageRuntime, manifests: ManifestSource,
                 sources: ImageSources, secret: PullCredentials, dropin: DropinFile, reloader: ConfigReloader,
                 store: StateStore, metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = NoMetrics() if metrics is None else metrics
        self.runtime = runtime
        self.manifests = manifests
        self.secret = secret
        self.dropin = dropin
        self.reloader = reloader
        self.store = store
        self.state: State = store.load()
        for leftover in dropin.remove_leftovers():
            log.warning("removed %s left by an interrupted write", leftover)
        self._inherit_dropin()
        self.space = SpaceChecker(runtime, manifests, sources, settings.space)
        self.puller = Puller(settings.pull, pull=self._pull_one, is_present=self._is_present)
        self.pinner = Pinner(dropin, reloader, settings.reload.strategy, self.verify)
        self.repairer = DriftRepairer(node=settings.node_name, state=self.state, store=store, runtime=runtime,
                                      puller=self.puller, dropin=dropin, reload=self.pinner.reload,
                                      verify=self.pinner.verify, metrics=self.metrics)
        self.runtime_health = RuntimeWatch(runtime.version, endpoint=settings.cri_endpoint,
                                           interval=settings.cri_health_interval_seconds)
        self._lock = asyncio.Lock()
        self._current: asyncio.Task | None = None
        self._drift_task: asyncio.Task | None = None

    async def close(self) -> None:
        await self.runtime_health.close()
        if self._drift_task is not None:
            self._drift_task.cancel()
            await asyncio.wait([self._drift_task])
        if self._current is not None and not self._current.done():
            self._current.cancel()
            await asyncio.wait([self._current])
        await self.manifests.aclose()
        await self.runtime.close()

    # ---- stages callable alone ------------------------------------------------------------

    async def check_space(self, images: Sequence[str]) -> SpacePlan:
        refs = [str(r) for r in parse_references(list(images))]
        plan, failed = await self.space.plan(refs)
        if failed:
            raise errors.combined(list(failed.values()))
        return plan

    async def pull_images(self, images: Sequence[str], *, emit: Emit, parallelism: int = 0,
                          attempt_timeout: float | None = None) -> dict:
        emit = self.metrics.observer(emit)
        limits.check_pull_options(parallelism, attempt_timeout)
        refs = [str(r) for r in parse_references(list(images))]
        return await self.puller.pull_all(refs, on_event=emit, parallelism=parallelism,
                                          attempt_timeout=attempt_timeout)

    async def write_dropin(self, images: Sequence[str]) -> WriteResult:
        refs = sorted(str(r) for r in parse_references(list(images)))
        async with self._lock:
            self.dropin.check_conflicts()
            result = await self.dropin.write(refs)
            self.state.pinned = refs
            await self._save()
            return result

    async def reload_runtime(self) -> ReloadResult:
        return await self.reloader.reload()

    async def verify(self, pinned: Sequence[str], unpinned: Sequence[str], timeout: float = 0) -> VerifyReport:
        limits.check_verify_timeout(timeout)
        pinned = [str(r) for r in parse_references(list(pinned), where="pinned: ")]
        unpinned = [str(r) for r in parse_references(list(unpinned), where="unpinned: ")]
        return await verify_pins(self.runtime.list_images, pinned, unpinned,
                                 timeout=timeout or self.settings.verify.timeout_seconds,
                                 interval=self.settings.verify.poll_interval_seconds,
                                 repull=self._pull_one)

    # ---- apply -----------------------------------------------------------------------------

    async def apply(self, sets: Sequence[PinnedImageSet], *, emit: Emit, parallelism: int = 0,
                    attempt_timeout: float | None = None) -> ApplyOutcome:
        """Reaches the desired state. Raises only when nothing was touched (bad input, a stale
        generation); every later failure is recorded in the status and returned."""
        emit = self.metrics.observer(emit)
        limits.check_pull_options(parallelism, attempt_timeout)
        sets = validate_sets(sets)
        self.state.check_generations(sets)
        previous, self._current = self._current, asyncio.current_task()
        if previous is not None and not previous.done():
            log.info("a newer Apply supersedes the one in flight; cancelling it")
            previous.cancel()
            await asyncio.wait([previous])
        async with self._lock:
            try:
                with tracing.span("apply", {"k8s.node.name": self.settings.node_name,
                                            "pinsvc.sets": [s.name for s in sets],
                                            "pinsvc.generations": [s.generation for s in sets],
                                            "pinsvc.images": len(union(sets))}):
                    return await self._apply(sets, emit, parallelism, attempt_timeout)
            except asyncio.CancelledError:
                self.state.cancel_apply()
                self.metrics.observe_apply_cancelled()
                try:
                    await asyncio.shield(self._save())
                except errors.PinsvcError as e:  # the cancellation is what the caller must see
                    log.error("%s; the status is kept in memory only", e)
                raise

    async def _apply(self, sets: list[PinnedImageSet], emit: Emit, parallelism: int,
                     attempt_timeout: float | None) -> ApplyOutcome:
        run = _Run(sets, failed={})
        self.state.start_apply(sets, self.settings.node_name)
        try:
            await self._save()  # e.g. a full disk: fails here, before anything is pulled
            self.dropin.check_conflicts()
            images = union(sets)
            listed = await self.runtime.list_images()
            present = await find_present(self.runtime, images, listed)
            await self._check_space(run, images, present, listed, emit)
            await self._pull(run, [i for i in images if i not in run.failed], present, emit,
                             parallelism, attempt_timeout)
            pins = choose_pins(run.sets, run.failed, self.state.sets, self.state.inherited)
            await self.pinner.pin(pins, sorted(set(self.state.pinned) - set(pins)), emit)
            self.state.mark_pinned(pins)
        except errors.PinsvcError as e:
            log.error("apply failed: %s", e)
            run.error = e
        await self._finish(run)
        if run.error or run.failed:
            tracing.set_error(run.error or errors.combined(list(run.failed.values())))
        failures = ([run.error] if run.error else []) + list(run.failed.values())
        outcome = ApplyOutcome(await self.status(), errors.combined(failures) if failures else None)
        self.metrics.observe_outcome(outcome)
        return outcome

    async def _check_space(self, run: _Run, images: list[str], present: set[str], listed, emit: Emit) -> None:
        if not self.settings.space.enabled or all(i in present for i in images):
            return
        start = time.monotonic()
        with tracing.span("space check", {"pinsvc.images": len(images), "pinsvc.images.present": len(present)}):
            plan, failed = await self.space.plan(images, present, listed)
            layers_shared = sum(p.layers_shared for p in plan.images)
            tracing.set_attributes({
                "pinsvc.compressed_bytes": plan.compressed_bytes, "pinsvc.required_bytes": plan.required_bytes,
                "pinsvc.free_bytes": plan.free_bytes, "pinsvc.layers.present": layers_shared,
                "pinsvc.fits": plan.fits, "pinsvc.images.unsized": len(failed)})
            if not plan.fits:
                tracing.set_error(plan.verdict)
        for image, error in failed.items():
            run.failed[image] = error
            event = ImageEvent(image, ImageEventKind.FAILED, reason=str(error), error_class=errors.error_class(error))
            self.state.apply_image_event(event)
            emit(event)
        if not plan.fits:
            raise errors.InsufficientSpace(plan.verdict)
        run.plan = plan
        emit(StageEvent(StageKind.SPACE_CHECKED, plan.verdict, time.monotonic() - start, plan))

    async def _pull(self, run: _Run, images: list[str], present: set[str], emit: Emit,
                    parallelism: int, attempt_timeout: float | None) -> None:
        sized = {p.image: p for p in run.plan.images} if run.plan else {}

        def on_event(event: ImageEvent) -> None:
            if event.kind is ImageEventKind.PULLED and event.image in sized:
                plan = sized[event.image]
                event = replace(event, bytes=plan.compressed_bytes, via=plan.via)
            self.state.apply_image_event(event)
            emit(event)

        results = await self.puller.pull_all(images, on_event=on_event, parallelism=parallelism,
                                             attempt_timeout=attempt_timeout, known_present=present,
                                             known_missing=set(images) - present)
        for image, result in results.items():
            if result.error is not None:
                run.failed[image] = errors.combined([result.error])
        ready = len(images) - sum(1 for i in images if i in run.failed)
        emit(StageEvent(StageKind.IMAGES_READY, f"{ready} of {len(union(run.sets))} images present"))

    async def _finish(self, run: _Run) -> None:
        """Records each set's outcome and the node conditions (State.finish_apply) and saves
        them; a state that cannot be saved fails the Apply, with its status in memory."""
        dropped = self.state.finish_apply(run.sets, run.failed, run.error, str(self.dropin.path))
        if dropped:
            log.info("every set is pinned and verified: dropping the %d pins inherited from %s",
                     len(dropped), self.dropin.path)
        try:
            await self._save()
        except errors.PinsvcError as e:  # e.g. a full disk: the status stays in memory only
            log.error("%s; the status is kept in memory only", e)
            if run.error is None:
                run.error = e
                self.state.set_degraded(PREFETCH_FAILED, str(e))

    # ---- state and status ------------------------------------------------------------------

    def _inherit_dropin(self) -> None:
        """With no state (no set, nothing pinned), adopts the references of a drop-in pinsvc
        wrote as inherited pins (core/pins.py) and records them at once, so that a restart
        before the next successful Apply keeps them too."""
        if self.state.inherited:
            log.info("keeping %d pins inherited from %s (recorded in the state) until an Apply succeeds",
                     len(self.state.inherited), self.dropin.path)
        if self.state.sets or self.state.pinned or self.state.inherited:
            return
        try:
            content = self.dropin.read()
        except OSError as e:
            log.warning("cannot read %s to keep its pins: %s", self.dropin.path, e)
            return
        inherited, left_out = dropin_references(content)
        if left_out:
            log.warning("%s lists values pinsvc does not pin; not keeping them: %s",
                        self.dropin.path, ", ".join(left_out))
        if not inherited:
            return
        self.state.inherit(inherited)
        log.warning("state missing; keeping %d pins from %s until an Apply succeeds",
                    len(inherited), self.dropin.path)
        try:
            self.store.save(self.state)  # at startup, before serving: blocking is fine
        except errors.PinsvcError as e:
            log.warning("the inherited pins are kept in memory only: %s", e)

    async def _save(self) -> None:
        await asyncio.to_thread(self.store.save, self.state)

    def status_snapshot(self, runtime_images=None) -> NodeStatus:
        return self.state.status(self.settings.node_name, str(self.dropin.path), runtime_images,
                                 self.runtime_health.health)

    async def status(self) -> NodeStatus:
        """Status with presence and pins read live from the runtime (stored values when the
        runtime does not answer)."""
        try:
            listed = await self.runtime.list_images()
        except errors.PinsvcError as e:
            log.warning("status without live pins: %s", e)
            listed = None
        return self.status_snapshot(listed)

    # ---- drift -----------------------------------------------------------------------------

    def start_drift_checks(self) -> None:
        """Starts the periodic drift check in the running loop, every
        `verify.drift_interval_seconds` (0 = never); `close` stops it."""
        interval = self.settings.verify.drift_interval_seconds
        if interval > 0 and self._drift_task is None:
            self._drift_task = asyncio.create_task(self._drift_loop(interval), name="pinsvc.drift")
            log.info("checking for drift every %gs", interval)

    async def _drift_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if self._lock.locked() or (self._current is not None and not self._current.done()):
                continue  # an Apply or a stage is at work: never preempt it; look next time
            check = asyncio.create_task(self.check_drift(), name="pinsvc.drift-check")
            self._current = check  # a newer Apply cancels it as it would an Apply in flight
            try:
                await asyncio.wait([check])
            except asyncio.CancelledError:
                check.cancel()
                await asyncio.wait([check])
                raise
            if check.cancelled():
                log.info("a drift check was interrupted by an Apply (which reconciles the node itself)")
            elif isinstance(check.exception(), errors.PinsvcError):
                log.warning("drift check failed: %s", check.exception())
            elif check.exception() is not None:
                log.error("drift check failed", exc_info=check.exception())

    async def check_drift(self) -> list[DriftRepair]:
        """One drift check (core/drift.py, repaired by core/repair.py) toward the last
        verified pins. Returns the repair records (none: no drift). Waits for an Apply or
        stage holding the lock."""
        async with self._lock:
            records = await self.repairer.check()
            if records:
                self.metrics.observe_status(await self.status())
            return records

    # ---- I/O for the puller ----------------------------------------------------------------

    async def _pull_one(self, image: str) -> None:
        credentials = self.secret.lookup(parse_reference(image))
        await self.runtime.pull(image, credentials)

    async def _is_present(self, image: str) -> bool:
        return await self.runtime.image_status(image) is not None
