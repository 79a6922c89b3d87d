"""The orchestrator: one Apply turns the desired sets into pulled, pinned, verified images.

Order of work (each stage in its own module): validate -> space check -> pull what is
missing -> write the drop-in (only once every image of a set is present) -> reload the
runtime -> verify the pins through the CRI (restoring the previous drop-in when they do not
hold). A set that fails keeps the pins of its last good generation, so a failed Apply never
leaves a node worse than it was; an agent started without state keeps the pins of the drop-in
it finds (core/pins.py) until an Apply succeeds for every set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pinsvc import errors, limits, tracing
from pinsvc.adapters.cri import CriClient
from pinsvc.adapters.pullsecret import PullSecretFile
from pinsvc.adapters.registry.client import RegistryClient
from pinsvc.config import Settings
from pinsvc.core import drift
from pinsvc.core.dropin import Dropin
from pinsvc.core.pins import choose_pins, dropin_references
from pinsvc.core.pull import Puller
from pinsvc.core.reload import Reloader
from pinsvc.core.space import SpaceChecker, find_present, present_in
from pinsvc.core.state import DriftRepair, ImageState, SetState, State, StateStore, now, truncate_error
from pinsvc.core.verify import VerifyReport, verify_pins
from pinsvc.model import (ConditionStatus, DriftRepairStatus, ImageDetail, ImageEvent, ImageEventKind,
                          NodeStatus, PinnedImageSet, SetStatus, SpacePlan, StageEvent, StageKind)
from pinsvc.refs import (MAX_IMAGES_PER_SET, parse_reference, parse_references, reference_problem,
                         set_name_problem, shorten)

if TYPE_CHECKING:  # imported only when metrics are on (prometheus_client)
    from pinsvc.metrics import Metrics

log = logging.getLogger("pinsvc.agent")

PROGRESSING = "PinnedImageSetsProgressing"
DEGRADED = "PinnedImageSetsDegraded"
DRIFT_REPAIR_FAILED = "DriftRepairFailed"
"""Reason of PinnedImageSetsDegraded when a drift repair failed."""
MAX_REPAIR_ERROR = 2048
"""Characters of a drift repair's error kept in the state (up to drift.MAX_REPAIRS of them)."""

Emit = Callable[[ImageEvent | StageEvent], None]


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
    return list(dict.fromkeys(i for s in sets for i in s.images))


def _ignore(event: ImageEvent | StageEvent) -> None:
    """The emit of work no client asked for (drift repairs)."""


@dataclass
class _Run:
    """What one Apply learned so far."""

    sets: list[PinnedImageSet]
    failed: dict[str, errors.PinsvcError]  # image -> why
    plan: SpacePlan | None = None
    error: errors.PinsvcError | None = None  # a failure of the whole Apply


@dataclass(frozen=True)
class ApplyOutcome:
    status: NodeStatus
    # The first failure, when a set failed (already recorded in the status).
    error: errors.PinsvcError | None


class Agent:
    def __init__(self, settings: Settings, *, cri: CriClient, registry: RegistryClient,
                 secret: PullSecretFile, dropin: Dropin, reloader: Reloader, store: StateStore,
                 metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = metrics  # None: metrics off
        self.cri = cri
        self.registry = registry
        self.secret = secret
        self.dropin = dropin
        self.reloader = reloader
        self.store = store
        self.state: State = store.load()
        for leftover in dropin.remove_leftovers():
            log.warning("removed %s left by an interrupted write", leftover)
        self._inherit_dropin()
        self.space = SpaceChecker(cri, registry, settings.space)
        self.puller = Puller(settings.pull, pull=self._pull_one, is_present=self._is_present)
        self._lock = asyncio.Lock()
        self._current: asyncio.Task | None = None
        self._drift_task: asyncio.Task | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, metrics: Metrics | None = None) -> "Agent":
        secret = PullSecretFile(settings.registry.pull_secret)
        registry = RegistryClient(
            insecure_hosts=settings.registry.insecure, credentials=secret.lookup,
            timeout=settings.registry.timeout_seconds,
            max_concurrency=settings.registry.max_concurrency,
            cache_dir=settings.state_dir / "manifests", backoff=settings.registry.backoff)
        dropin = Dropin(settings.dropin_path, settings.dropin_temp_dir,
                        adopt_foreign=settings.dropin.adopt_foreign,
                        crio_binary=settings.dropin.crio_binary,
                        crio_config=settings.dropin.crio_config)
        socket = settings.cri_endpoint.removeprefix("unix://").removeprefix("unix:")
        return cls(settings, cri=CriClient(settings.cri_endpoint, timeout=settings.cri_timeout_seconds,
                                                connect_wait=settings.cri_connect_wait_seconds,
                                                fs_info_backoff=settings.cri_fs_info_backoff),
                   registry=registry, secret=secret, dropin=dropin,
                   reloader=Reloader(settings.reload, cri_socket=socket), store=StateStore(settings.state_dir),
                   metrics=metrics)

    async def close(self) -> None:
        if self._drift_task is not None:
            self._drift_task.cancel()
            await asyncio.wait([self._drift_task])
        if self._current is not None and not self._current.done():
            self._current.cancel()
            await asyncio.wait([self._current])
        await self.registry.aclose()
        await self.cri.close()

    # ---- stages callable alone ------------------------------------------------------------

    async def check_space(self, images: Sequence[str]) -> SpacePlan:
        refs = [str(r) for r in parse_references(list(images))]
        plan, failed = await self.space.plan(refs)
        if failed:
            raise errors.combined(list(failed.values()))
        return plan

    async def pull_images(self, images: Sequence[str], *, emit: Emit, parallelism: int = 0,
                          attempt_timeout: float | None = None) -> dict:
        emit = self.metrics.observer(emit) if self.metrics else emit
        limits.check_pull_options(parallelism, attempt_timeout)
        refs = [str(r) for r in parse_references(list(images))]
        return await self.puller.pull_all(refs, on_event=emit, parallelism=parallelism,
                                          attempt_timeout=attempt_timeout)

    async def write_dropin(self, images: Sequence[str]):
        refs = sorted(str(r) for r in parse_references(list(images)))
        async with self._lock:
            self._check_dropin_conflicts()
            result = await self.dropin.write(refs)
            self.state.pinned = refs
            await self._save()
            return result

    async def reload_runtime(self):
        return await self.reloader.reload()

    async def verify(self, pinned: Sequence[str], unpinned: Sequence[str], timeout: float = 0) -> VerifyReport:
        limits.check_verify_timeout(timeout)
        pinned = [str(r) for r in parse_references(list(pinned), where="pinned: ")]
        unpinned = [str(r) for r in parse_references(list(unpinned), where="unpinned: ")]
        return await verify_pins(self.cri.list_images, pinned, unpinned,
                                 timeout=timeout or self.settings.verify.timeout_seconds,
                                 interval=self.settings.verify.poll_interval_seconds,
                                 repull=self._pull_one)

    # ---- apply -----------------------------------------------------------------------------

    async def apply(self, sets: Sequence[PinnedImageSet], *, emit: Emit, parallelism: int = 0,
                    attempt_timeout: float | None = None) -> ApplyOutcome:
        """Reaches the desired state. Raises only when nothing was touched (bad input, a stale
        generation); every later failure is recorded in the status and returned."""
        emit = self.metrics.observer(emit) if self.metrics else emit
        limits.check_pull_options(parallelism, attempt_timeout)
        sets = validate_sets(sets)
        self._check_generations(sets)
        previous, self._current = self._current, asyncio.current_task()
        if previous is not None and not previous.done():
            log.info("a newer Apply supersedes the one in flight; cancelling it")
            previous.cancel()
            await asyncio.wait([previous])
        async with self._lock:
            try:
                with tracing.span("apply", {"node": self.settings.node_name, "sets": [s.name for s in sets],
                                            "generations": [s.generation for s in sets],
                                            "images": len(union(sets))}):
                    return await self._apply(sets, emit, parallelism, attempt_timeout)
            except asyncio.CancelledError:
                self.state.set_condition(PROGRESSING, "False", "Interrupted",
                                         "the last Apply was cancelled before it finished")
                if self.metrics:
                    self.metrics.observe_apply_cancelled()
                try:
                    await asyncio.shield(self._save())
                except errors.PinsvcError as e:  # the cancellation is what the caller must see
                    log.error("%s; the status is kept in memory only", e)
                raise

    async def _apply(self, sets: list[PinnedImageSet], emit: Emit, parallelism: int,
                     attempt_timeout: float | None) -> ApplyOutcome:
        run = _Run(sets, failed={})
        self._record_desired(sets)
        self.state.set_condition(PROGRESSING, "True", "ImagePrefetch",
                                 f"node is prefetching images: {self.settings.node_name}")
        try:
            await self._save()  # e.g. a full disk: fails here, before anything is pulled
            self._check_dropin_conflicts()
            images = union(sets)
            listed = await self.cri.list_images()
            present = await find_present(self.cri, images, listed)
            await self._check_space(run, images, present, listed, emit)
            await self._pull(run, [i for i in images if i not in run.failed], present, emit,
                             parallelism, attempt_timeout)
            await self._pin(run, self._pins(run), emit)
        except errors.PinsvcError as e:
            log.error("apply failed: %s", e)
            run.error = e
        await self._finish(run)
        if run.error or run.failed:
            tracing.set_error(run.error or errors.combined(list(run.failed.values())))
        failures = ([run.error] if run.error else []) + list(run.failed.values())
        outcome = ApplyOutcome(await self.status(), errors.combined(failures) if failures else None)
        if self.metrics:
            self.metrics.observe_outcome(outcome)
        return outcome

    async def _check_space(self, run: _Run, images: list[str], present: set[str], listed, emit: Emit) -> None:
        if not self.settings.space.enabled or all(i in present for i in images):
            return
        start = time.monotonic()
        with tracing.span("space check", {"images": len(images), "present": len(present)}):
            plan, failed = await self.space.plan(images, present, listed)
            layers_shared = sum(p.layers_shared for p in plan.images)
            tracing.set_attributes(compressed_bytes=plan.compressed_bytes, required_bytes=plan.required_bytes,
                                   free_bytes=plan.free_bytes, layers_already_present=layers_shared,
                                   fits=plan.fits, unsized=len(failed))
            if not plan.fits:
                tracing.set_error(plan.verdict)
        for image, error in failed.items():
            run.failed[image] = error
            self._image(image).phase, self._image(image).last_error = "failed", str(error)
            emit(ImageEvent(image, ImageEventKind.FAILED, reason=str(error), error_class=errors.error_class(error)))
        if not plan.fits:
            raise errors.InsufficientSpace(plan.verdict)
        run.plan = plan
        emit(StageEvent(StageKind.SPACE_CHECKED, plan.verdict, time.monotonic() - start, plan))

    async def _pull(self, run: _Run, images: list[str], present: set[str], emit: Emit,
                    parallelism: int, attempt_timeout: float | None) -> None:
        sizes = {p.image: p.compressed_bytes for p in run.plan.images} if run.plan else {}

        def on_event(event: ImageEvent) -> None:
            record = self._image(event.image)
            if event.kind is ImageEventKind.PULLED:
                event = ImageEvent(**{**event.__dict__, "bytes": sizes.get(event.image, 0)})
                record.phase, record.bytes, record.last_error = "present", event.bytes, ""
            elif event.kind is ImageEventKind.ALREADY_PRESENT:
                record.phase = "pinned" if record.phase == "pinned" else "present"
                record.last_error = ""
            elif event.kind is ImageEventKind.PULLING:
                record.phase, record.attempts = "pulling", event.attempt
            elif event.kind in (ImageEventKind.FAILED, ImageEventKind.CANCELLED):
                record.phase, record.last_error = "failed", event.reason
            record.attempts = max(record.attempts, event.attempt)
            emit(event)

        results = await self.puller.pull_all(images, on_event=on_event, parallelism=parallelism,
                                             attempt_timeout=attempt_timeout, known_present=present,
                                             known_missing=set(images) - present)
        for image, result in results.items():
            if result.error is not None:
                run.failed[image] = errors.combined([result.error])
        ready = len(images) - sum(1 for i in images if i in run.failed)
        emit(StageEvent(StageKind.IMAGES_READY, f"{ready} of {len(union(run.sets))} images present"))

    def _pins(self, run: _Run) -> list[str]:
        """Images of the sets that succeeded, plus the last good images of those that did not
        and, when any did not, the inherited pins."""
        return choose_pins(run.sets, run.failed, self.state.sets, self.state.inherited)

    async def _pin(self, run: _Run, pins: list[str], emit: Emit) -> None:
        """Writes the drop-in, reloads and verifies; restores the old drop-in on failure."""
        unpinned = sorted(set(self.state.pinned) - set(pins))
        start = time.monotonic()
        with tracing.span("drop-in write", {"path": str(self.dropin.path), "images": len(pins)}):
            result = await self.dropin.write(pins)
            tracing.set_attributes(changed=result.changed, removed=result.removed)
        if result.changed:
            what = "removed" if result.removed else f"written with {len(pins)} images"
            emit(StageEvent(StageKind.DROPIN_WRITTEN, f"{self.dropin.path} {what}", time.monotonic() - start))
            try:
                await self._reload(emit)
            except errors.PinsvcError:
                await self.dropin.restore(result.previous)
                raise
        else:
            emit(StageEvent(StageKind.DROPIN_UNCHANGED, f"{self.dropin.path} already pins these {len(pins)} images"))
        try:
            report = await self._verify(pins, unpinned)
        except errors.PinsvcError:
            # The runtime cannot be asked (e.g. it died after the reload): pins that cannot
            # be verified do not stay; the previous drop-in is what it starts with again.
            if result.changed:
                await self._restore(result.previous, emit)
            raise
        if not report.ok and not result.changed:
            # The file is right but the runtime may never have read it (e.g. the agent was
            # killed between the write and the reload): reload once and look again.
            await self._reload(emit)
            report = await self._verify(pins, unpinned)
        if not report.ok:
            if result.changed:
                await self._restore(result.previous, emit)
            raise errors.VerificationFailed(report.message())
        emit(StageEvent(StageKind.PINS_VERIFIED, report.message(), report.duration_seconds))
        self.state.pinned = pins
        for image in pins:
            self._image(image).phase = "pinned"

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

    async def _reload(self, emit: Emit) -> None:
        with tracing.span("reload", {"strategy": self.settings.reload.strategy}):
            reloaded = await self.reloader.reload()
            tracing.set_attributes(detail=reloaded.detail)
        emit(StageEvent(StageKind.RUNTIME_RELOADED, reloaded.detail, reloaded.duration_seconds))

    async def _verify(self, pins: list[str], unpinned: list[str]) -> VerifyReport:
        with tracing.span("verify", {"pinned": len(pins), "unpinned": len(unpinned)}):
            report = await self.verify(pins, unpinned)
            tracing.set_attributes(ok=report.ok, repulled=len(report.repulled))
            if not report.ok:
                tracing.set_error(report.message())
            return report

    # ---- state -----------------------------------------------------------------------------

    def _check_generations(self, sets: list[PinnedImageSet]) -> None:
        stale = [f"set {s.name!r}: generation {s.generation} is older than generation "
                 f"{self.state.sets[s.name].desired_generation} already requested"
                 for s in sets if s.name in self.state.sets
                 and s.generation < self.state.sets[s.name].desired_generation]
        if stale:
            raise errors.Conflict("; ".join(stale))

    def _check_dropin_conflicts(self) -> None:
        """Refuses, before anything is pulled, what would make the drop-in useless or the
        reload fail: a foreign file at our path, another broken drop-in, a later list."""
        self.dropin.check_writable()
        broken = [f"{path}: {why}" for path, why in self.dropin.broken_files() if path != self.dropin.path]
        if broken:
            raise errors.Conflict("CRI-O could not load its drop-in directory, so pinsvc changes nothing "
                                  "until it is fixed: " + "; ".join(broken))
        later = self.dropin.overriding_files()
        if later:
            names = ", ".join(str(p) for p in later)
            raise errors.Conflict(
                f"{names} sorts after {self.dropin.path.name} and sets pinned_images, which replaces "
                f"pinsvc's list in CRI-O; remove its pinned_images or rename it to sort first")

    def _record_desired(self, sets: list[PinnedImageSet]) -> None:
        old = self.state.sets
        self.state.sets = {}
        for s in sets:
            record = old.get(s.name) or SetState(s.name, s.generation)
            record.desired_generation, record.images = s.generation, list(s.images)
            self.state.sets[s.name] = record
        self._keep_images()

    def _keep_images(self) -> None:
        """Image records of the desired sets, of each set's last good generation (still
        pinned while a newer generation is not through) and of the inherited pins; the others
        are dropped."""
        keep = [i for s in self.state.sets.values() for i in (*s.images, *s.current_images)]
        keep += self.state.inherited
        self.state.images = {i: self.state.images.get(i) or ImageState() for i in dict.fromkeys(keep)}

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
        self.state.inherited, self.state.pinned = inherited, inherited
        for image in inherited:
            self._image(image).phase = "pinned"
        log.warning("state missing; keeping %d pins from %s until an Apply succeeds",
                    len(inherited), self.dropin.path)
        try:
            self.store.save(self.state)  # at startup, before serving: blocking is fine
        except errors.PinsvcError as e:
            log.warning("the inherited pins are kept in memory only: %s", e)

    def _image(self, image: str) -> ImageState:
        return self.state.images.setdefault(image, ImageState())

    async def _finish(self, run: _Run) -> None:
        """Records each set's outcome (OpenShift's rules: currentGeneration only after full
        success; failure fields only on failure) and the node conditions."""
        failed_sets = []
        for s in run.sets:
            record = self.state.sets[s.name]
            reasons = [f"{i}: {run.failed[i]}" for i in s.images if i in run.failed]
            if run.error and record.current_generation != s.generation:
                reasons.insert(0, str(run.error))
            if reasons:
                failed_sets.append(s.name)
                record.last_failed_generation = s.generation
                record.last_failed_generation_error = truncate_error("; ".join(reasons))
            else:
                record.current_generation = s.generation
                record.current_images = list(s.images)
                record.last_failed_generation, record.last_failed_generation_error = 0, ""
        if failed_sets or run.error:
            detail = "; ".join(self.state.sets[n].last_failed_generation_error for n in failed_sets)
            kept = (f" (keeping the {len(self.state.inherited)} pins inherited from {self.dropin.path} "
                    f"until an Apply succeeds for every set)" if self.state.inherited else "")
            self.state.set_condition(DEGRADED, "True", "PrefetchFailed", truncate_error(
                (f"pinned image sets failed: {', '.join(failed_sets)}: {detail}" if failed_sets
                 else str(run.error)) + kept))
        else:
            self.state.set_condition(DEGRADED, "False", "AsExpected", "All is good")
            if self.state.inherited:
                log.info("every set is pinned and verified: dropping the %d pins inherited from %s",
                            len(self.state.inherited), self.dropin.path)
                self.state.inherited = []
        self.state.set_condition(PROGRESSING, "False", "AsExpected", "All pinned image sets complete")
        self._keep_images()
        try:
            await self._save()
        except errors.PinsvcError as e:  # e.g. a full disk: the status stays in memory only
            log.error("%s; the status is kept in memory only", e)
            if run.error is None:
                run.error = e
                self.state.set_condition(DEGRADED, "True", "PrefetchFailed", truncate_error(str(e)))

    async def _save(self) -> None:
        await asyncio.to_thread(self.store.save, self.state)

    # ---- status ----------------------------------------------------------------------------

    def status_snapshot(self, runtime_images=None) -> NodeStatus:
        by_digest = present_in(runtime_images) if runtime_images is not None else {}
        members: dict[str, list[str]] = {}
        for s in self.state.sets.values():
            for i in s.images:
                members.setdefault(i, []).append(s.name)
        images = []
        for image, record in sorted(self.state.images.items()):
            found = by_digest.get(image.lower())
            images.append(ImageDetail(image, record.phase, record.attempts, record.bytes, record.last_error,
                                      pinned=bool(found and found.pinned), present=found is not None,
                                      sets=tuple(members.get(image, ()))))
        return NodeStatus(
            node=self.settings.node_name,
            sets=tuple(SetStatus(s.name, s.desired_generation, s.current_generation, s.last_failed_generation,
                                 s.last_failed_generation_error) for s in sorted(self.state.sets.values(), key=lambda s: s.name)),
            conditions=tuple(ConditionStatus(c.type, c.status, c.reason, c.message, c.last_transition_time)
                             for c in sorted(self.state.conditions.values(), key=lambda c: c.type)),
            images=tuple(images), dropin_path=str(self.dropin.path),
            drift_repairs=tuple(DriftRepairStatus(r.kind, r.target, r.time, r.repaired, r.error, r.count)
                                for r in self.state.repairs))

    async def status(self) -> NodeStatus:
        """Status with presence and pins read live from the runtime (stored values when the
        runtime does not answer)."""
        try:
            listed = await self.cri.list_images()
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
        """One drift check (core/drift.py): compares the last verified pins (`state.pinned`)
        with the runtime's images and the drop-in's bytes, and repairs toward them. Returns
        the repair records (none: no drift). Waits for an Apply or stage holding the lock."""
        async with self._lock:
            pinned = list(self.state.pinned)
            listed = await self.cri.list_images()
            try:
                current = await asyncio.to_thread(self.dropin.read)
            except OSError as e:  # e.g. a directory at the path: not our file, the repair says why
                log.warning("cannot read %s: %s", self.dropin.path, e)
                current = b""
            found = drift.find_drift(pinned, listed, current)
            if not found:
                degraded = self.state.conditions.get(DEGRADED)
                if degraded is not None and degraded.status == "True" and degraded.reason == DRIFT_REPAIR_FAILED:
                    log.warning("the drift that could not be repaired is gone")
                    self.state.set_condition(DEGRADED, "False", "AsExpected", "All is good")
                    await self._save()
                return []
            return await self._repair_drift(pinned, found)

    async def _repair_drift(self, pinned: list[str], found: drift.Drift) -> list[DriftRepair]:
        """Pulls removed images again (same puller, retries), writes the drop-in again when it
        changed (validated, atomic), reloads when the drop-in changed or an image is unpinned,
        then verifies every pin; records one repair per finding, in the state and status."""
        findings = found.findings(str(self.dropin.path))
        for kind, target in findings:
            log.warning("drift: %s: %s; repairing toward the last verified pins", kind, target)
        emit = self.metrics.observer(_ignore) if self.metrics else _ignore
        failed: dict[str, str] = {}  # image -> why it is not pinned again
        error = ""  # why the repair as a whole failed
        with tracing.span("drift repair", {"node": self.settings.node_name, "kinds": sorted({k for k, _ in findings}),
                                           "images": len(pinned)}):
            try:
                if found.removed:
                    results = await self.puller.pull_all(list(found.removed), on_event=self._drift_pull_observer(emit),
                                                         known_missing=set(found.removed))
                    failed.update((i, f"pulling it again failed: {r.error}") for i, r in results.items()
                                  if r.error is not None)
                if found.dropin or found.unpinned:
                    self._check_dropin_conflicts()
                if found.dropin:
                    start = time.monotonic()
                    written = await self.dropin.write(pinned)
                    if written.changed:
                        emit(StageEvent(StageKind.DROPIN_WRITTEN, f"{self.dropin.path} written again",
                                        time.monotonic() - start))
                if found.dropin or found.unpinned:
                    await self._reload(emit)
                report = await self._verify([i for i in pinned if i not in failed], [])
                for c in report.failing:
                    failed[c.image] = "present but not pinned after the repair" if c.present \
                        else "not present after the repair"
                    if c.image in self.state.images:
                        self._image(c.image).phase = "present" if c.present else "failed"
                if not report.ok:
                    error = report.message()
            except errors.PinsvcError as e:
                error = str(e)
                tracing.set_error(e)
                for image in (*found.removed, *found.unpinned):
                    failed.setdefault(image, error)
            for image in dict.fromkeys((*found.removed, *found.unpinned, *failed)):
                record = self.state.images.get(image)
                if record is not None and image in failed:
                    record.last_error = truncate_error(f"drift repair: {failed[image]}")
                elif record is not None:
                    record.phase, record.last_error = "pinned", ""
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
            if self.metrics:
                self.metrics.observe_drift_repair(kind, not why)
        self._drift_condition([r for r in records if not r.repaired])
        await self._save()
        if self.metrics:
            self.metrics.observe_status(await self.status())
        return records

    def _drift_pull_observer(self, emit: Emit) -> Callable[[ImageEvent], None]:
        """Image records follow a repair's pulls (bytes kept: the image is the same)."""
        def on_event(event: ImageEvent) -> None:
            record = self.state.images.get(event.image)
            if record is not None:
                if event.kind is ImageEventKind.PULLING:
                    record.phase, record.attempts = "pulling", event.attempt
                elif event.kind in (ImageEventKind.PULLED, ImageEventKind.ALREADY_PRESENT):
                    record.phase, record.last_error = "present", ""
                elif event.kind in (ImageEventKind.FAILED, ImageEventKind.CANCELLED):
                    record.phase = "failed"
            emit(event)
        return on_event

    def _drift_condition(self, failures: list[DriftRepair]) -> None:
        """Degraded (DriftRepairFailed) while a repair fails, unless it is already Degraded
        for another reason (a failed Apply says more); cleared by a successful repair."""
        degraded = self.state.conditions.get(DEGRADED)
        ours = degraded is not None and degraded.status == "True" and degraded.reason == DRIFT_REPAIR_FAILED
        if failures and (ours or degraded is None or degraded.status != "True"):
            self.state.set_condition(DEGRADED, "True", DRIFT_REPAIR_FAILED, truncate_error(
                "the pins drifted and could not be repaired: "
                + "; ".join(f"{r.kind} {r.target}: {r.error}" for r in failures)))
        elif not failures and ours:
            self.state.set_condition(DEGRADED, "False", "AsExpected", "All is good")

    # ---- I/O for the puller ----------------------------------------------------------------

    async def _pull_one(self, image: str) -> None:
        credentials = self.secret.lookup(parse_reference(image))
        await self.cri.pull(image, credentials)

    async def _is_present(self, image: str) -> bool:
        return await self.cri.image_status(image) is not None


@contextlib.asynccontextmanager
async def running_agent(settings: Settings):
    agent = Agent.from_settings(settings)
    try:
        yield agent
    finally:
        await agent.close()
