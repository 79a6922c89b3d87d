"""The pull stage: pulls images with bounded parallelism, retries, per-attempt timeouts,
single-flight per image across requests, and fail-fast when the disk fills up.

Pure asyncio: the runtime calls (`pull`, `is_present`) and `sleep` are injected, so every
decision here is unit-testable. Events go to the caller's `on_event`; one `PullResult` per
distinct image comes back.

Slots: a pull attempt holds one slot of its request (`parallelism`) and one of the node
(`PullSettings.max_parallelism`, shared by every call of a `Puller`); both are released
while backing off. A request asking for an image another request is already pulling joins
that pull (a "flight") without taking a slot; the flight runs with the slots and attempt
timeout of the request that started it, and is cancelled only when every request waiting
on it has gone.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field

from pinsvc import errors, tracing
from pinsvc.config import PullSettings
from pinsvc.model import ImageEvent, ImageEventKind as Kind, PullResult
from pinsvc.retry import retry

log = logging.getLogger("pinsvc.pull")


@dataclass
class _Call:
    """The state of one `pull_all` call."""

    slots: asyncio.Semaphore
    attempt_timeout: float
    on_event: Callable[[ImageEvent], None]
    tasks: dict[str, asyncio.Task[PullResult]] = field(default_factory=dict)
    flights: dict[str, _Flight] = field(default_factory=dict)
    abandoned: list[asyncio.Task] = field(default_factory=list)
    disk_full: tuple[str, errors.PinsvcError] | None = None

    def stop_for_disk_full(self, image: str, error: errors.PinsvcError) -> None:
        """Fail fast: cancels every other image of this call (queued or in flight)."""
        if self.disk_full is None:
            self.disk_full = (image, error)
            for other, task in self.tasks.items():
                if other != image:
                    task.cancel()

    def emit(self, event: ImageEvent) -> None:
        """Hands an event to the caller; a failing observer never breaks a pull."""
        try:
            self.on_event(event)
        except Exception:
            log.exception("pull %s: event observer failed", event.image)


@dataclass
class _Flight:
    """One pull of one image, shared by every call waiting for it."""

    image: str
    task: asyncio.Task[_Outcome] | None = None
    callers: list[_Call] = field(default_factory=list)
    attempts: int = 0
    queue_wait: float = 0.0
    abandoned: bool = False

    def broadcast(self, event: ImageEvent) -> None:
        for call in list(self.callers):
            call.emit(event)


@dataclass(frozen=True)
class _Outcome:
    attempts: int
    queue_wait: float
    duration: float = 0.0
    error: errors.PinsvcError | None = None


class Puller:
    """Pulls images through injected `pull`/`is_present`; see the module docstring."""

    def __init__(self, settings: PullSettings, *, pull: Callable[[str], Awaitable[None]],
                 is_present: Callable[[str], Awaitable[bool]],
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
                 rng: random.Random | None = None):
        self._settings = settings
        self._pull = pull
        self._is_present = is_present
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._node_slots = asyncio.Semaphore(settings.max_parallelism)
        self._flights: dict[str, _Flight] = {}

    async def pull_all(self, images: Sequence[str], *, on_event: Callable[[ImageEvent], None],
                       parallelism: int = 0, attempt_timeout: float | None = None,
                       known_present: Collection[str] = (),
                       known_missing: Collection[str] = ()) -> dict[str, PullResult]:
        """Pulls every image that is not present; returns one result per distinct image, in
        input order. Never raises for a failed image; re-raises CancelledError after stopping
        its own pulls. `parallelism` 0 and `attempt_timeout` None take the settings; an
        attempt timeout of 0 means none. Images in `known_present` or `known_missing` (the
        caller just asked the runtime) are not checked again."""
        call = _Call(asyncio.Semaphore(parallelism or self._settings.parallelism),
                     self._settings.attempt_timeout_seconds if attempt_timeout is None else attempt_timeout,
                     on_event)
        for image in dict.fromkeys(images):
            known = True if image in known_present else False if image in known_missing else None
            call.tasks[image] = asyncio.create_task(self._one(call, image, known),
                                                    name=f"pinsvc.pull {image}")
        try:
            if call.tasks:
                await asyncio.wait(call.tasks.values())
        except asyncio.CancelledError:
            await _settle(call.tasks.values(), cancel=True)
            for image, task in call.tasks.items():
                if task.cancelled():
                    call.emit(self._cancelled_event(call, image, "request cancelled"))
            raise
        finally:
            await _settle(call.abandoned)
        return {image: self._result(call, image, task) for image, task in call.tasks.items()}

    # ---- one image, as seen by one call -------------------------------------------------

    async def _one(self, call: _Call, image: str, known_present: bool | None) -> PullResult:
        """Presence check (unless known), then join or start the flight of `image` and
        report its end."""
        if known_present is None:
            known_present = await self._check_present(call, image)
        if known_present:
            call.emit(ImageEvent(image, Kind.ALREADY_PRESENT))
            return PullResult(image, already_present=True)
        call.emit(ImageEvent(image, Kind.QUEUED))
        flight = self._join(call, image)
        try:
            outcome = await asyncio.shield(flight.task)
        except asyncio.CancelledError:
            self._leave(call, flight)
            raise
        return self._finish(call, image, outcome)

    async def _check_present(self, call: _Call, image: str) -> bool:
        """`is_present` under the call's slots; False when a pull of it is under way anyway
        or when the check fails (the pull then decides)."""
        if image in self._flights:
            return False
        async with call.slots:
            try:
                return await self._is_present(image)
            except Exception as e:
                log.warning("pull %s: presence check failed, pulling: %s", image, e)
                return False

    def _join(self, call: _Call, image: str) -> _Flight:
        """The live flight of `image`, or a new one started with this call's slots."""
        flight = self._flights.get(image)
        if flight is None or flight.abandoned:
            after = flight.task if flight else None
            flight = _Flight(image)
            flight.task = asyncio.create_task(self._fly(flight, call, after), name=f"pinsvc.flight {image}")
            flight.task.add_done_callback(lambda _, f=flight: self._forget(f))
            self._flights[image] = flight
        flight.callers.append(call)
        call.flights[image] = flight
        return flight

    def _forget(self, flight: _Flight) -> None:
        """Unregisters a finished flight unless a newer one already took its place."""
        if self._flights.get(flight.image) is flight:
            del self._flights[flight.image]

    def _leave(self, call: _Call, flight: _Flight) -> None:
        """Drops this call's interest; the last one out cancels the pull."""
        flight.callers.remove(call)
        if not flight.callers and not flight.task.done():
            flight.abandoned = True
            flight.task.cancel()
            call.abandoned.append(flight.task)

    def _finish(self, call: _Call, image: str, o: _Outcome) -> PullResult:
        """PULLED or FAILED for this call."""
        if o.error is None:
            call.emit(ImageEvent(image, Kind.PULLED, attempt=o.attempts, duration_seconds=o.duration,
                                 queue_wait_seconds=o.queue_wait))
        else:
            call.emit(ImageEvent(image, Kind.FAILED, attempt=o.attempts, reason=str(o.error),
                                 queue_wait_seconds=o.queue_wait, error_class=errors.error_class(o.error)))
        return PullResult(image, attempts=o.attempts, duration_seconds=o.duration,
                          queue_wait_seconds=o.queue_wait, error=o.error)

    def _result(self, call: _Call, image: str, task: asyncio.Task[PullResult]) -> PullResult:
        """The result of a finished task; a task stopped by disk full becomes CANCELLED."""
        if not task.cancelled():
            return task.result()
        if call.disk_full is None:  # cancelled by someone else than pinsvc
            error: errors.PinsvcError = errors.RuntimeError_(f"pull {image}: cancelled")
        else:
            full_image, cause = call.disk_full
            error = errors.NoSpaceLeft(f"pull {image}: cancelled: no space left on device while pulling {full_image}")
            error.__cause__ = cause
        call.emit(self._cancelled_event(call, image, str(error)))
        flight = call.flights.get(image)
        return PullResult(image, attempts=flight.attempts if flight else 0,
                          queue_wait_seconds=flight.queue_wait if flight else 0.0, error=error)

    @staticmethod
    def _cancelled_event(call: _Call, image: str, reason: str) -> ImageEvent:
        flight = call.flights.get(image)
        return ImageEvent(image, Kind.CANCELLED, attempt=flight.attempts if flight else 0, reason=reason)

    # ---- the shared pull ------------------------------------------------------------------

    async def _fly(self, flight: _Flight, call: _Call, after: asyncio.Task | None) -> _Outcome:
        """The traced pull of one image: a `pull` span (child of the caller's span) with one
        `attempt` span per attempt and an event per retry."""
        with tracing.span("pull", tracing.image_attributes(flight.image)):
            outcome = await self._fly_attempts(flight, call, after)
            tracing.set_attributes({"pinsvc.attempts": outcome.attempts, "pinsvc.queue_wait_seconds": outcome.queue_wait,
                                    "pinsvc.result": "pulled" if outcome.error is None else "failed"})
            if outcome.error is not None:
                tracing.set_error(outcome.error)
            return outcome

    async def _fly_attempts(self, flight: _Flight, call: _Call, after: asyncio.Task | None) -> _Outcome:
        """Attempts until success, a final error, or the last attempt; backs off without slots."""
        if after is not None:
            await asyncio.wait([after])  # an abandoned pull of the same image is still stopping

        def retrying(attempt: int, error: Exception, delay: float) -> None:
            flight.broadcast(ImageEvent(flight.image, Kind.RETRYING, attempt=attempt, reason=str(error),
                                        retry_in_seconds=delay, error_class=errors.error_class(error)))
            tracing.add_event("retry", {"pinsvc.attempt": attempt, "pinsvc.reason": str(error),
                                        "pinsvc.retry_in_seconds": delay})

        try:
            duration = await retry(lambda _: self._attempt(flight, call), self._settings.backoff,
                                   what=f"pull {flight.image}", logger=log, on_retry=retrying,
                                   sleep=self._sleep, rng=self._rng)
        except errors.PinsvcError as error:
            return _Outcome(flight.attempts, flight.queue_wait, error=error)
        return _Outcome(flight.attempts, flight.queue_wait, duration=duration)

    async def _attempt(self, flight: _Flight, call: _Call) -> float:
        """One attempt under both slots: its duration, or raises its PinsvcError. The
        timeout starts once the slots are held."""
        loop = asyncio.get_running_loop()
        queued = loop.time()
        async with call.slots, self._node_slots:
            waited = loop.time() - queued
            flight.attempts += 1
            flight.queue_wait += waited
            flight.broadcast(ImageEvent(flight.image, Kind.PULLING, attempt=flight.attempts,
                                        queue_wait_seconds=waited))
            with tracing.span("attempt", {"pinsvc.attempt": flight.attempts, "pinsvc.queue_wait_seconds": waited}):
                duration, error = await self._attempt_in_slot(flight, call, loop)
                if error is not None:
                    tracing.set_error(error)
        if error is not None:
            raise error
        return duration

    async def _attempt_in_slot(self, flight: _Flight, call: _Call, loop) -> tuple[float, errors.PinsvcError | None]:
        """The attempt itself, slots held; the timeout starts now."""
        started = loop.time()
        bound = call.attempt_timeout if call.attempt_timeout > 0 else None
        try:
            async with asyncio.timeout(bound) as scope:
                await self._pull(flight.image)
        except Exception as e:
            if isinstance(e, TimeoutError) and scope.expired():
                error: errors.PinsvcError = errors.Timeout(
                    f"pull {flight.image}: attempt timed out after {bound:g}s")
                error.__cause__ = e
            else:
                error = _as_pinsvc_error(flight.image, e)
            if isinstance(error, errors.NoSpaceLeft):  # before the slots free up for others
                for caller in list(flight.callers):
                    caller.stop_for_disk_full(flight.image, error)
            return 0.0, error
        return loop.time() - started, None


def _as_pinsvc_error(image: str, e: Exception) -> errors.PinsvcError:
    """The error itself if it is ours; otherwise a non-retryable RuntimeError_ keeping it."""
    if isinstance(e, errors.PinsvcError):
        return e
    wrapped = errors.RuntimeError_(f"pull {image}: {type(e).__name__}: {e}")
    wrapped.__cause__ = e
    return wrapped


async def _settle(tasks: Iterable[asyncio.Task], *, cancel: bool = False) -> None:
    """Waits until every task has finished (cancelling them first if asked), even when
    cancelled meanwhile; re-raises that cancellation afterwards."""
    tasks = list(tasks)
    if cancel:
        for task in tasks:
            task.cancel()
    interrupted = False
    while pending := [t for t in tasks if not t.done()]:
        try:
            await asyncio.wait(pending)
        except asyncio.CancelledError:
            interrupted = True
    if interrupted:
        raise asyncio.CancelledError
