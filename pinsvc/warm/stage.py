"""The warm stage: before a pool's nodes pull, make the site cache hold every manifest and
blob they will ask it for, each fetched from upstream once, within the budget and the
windows, each verified.

`Warmer.warm(images, windows=..., done=..., on_progress=...)`:
1. waits for the windows to open (nothing goes upstream outside them);
2. routes each image to the cache the nodes try first (`routes.py`), reads its manifest
   through the cache (which stores it) and, for an index, the nodes' platform manifest;
3. per blob, in `plan.order`, at most `concurrency` at once: waits until the windows are
   open and its transfer fits before they close, books its slot on the pacer, probes the
   cache (`registry.probe`: held, or now fetching), gives the slot back when the cache held
   it, else waits until the cache stores it (first look at the end of its slot), then reads
   it back and verifies it (`registry.verify`, LAN only);
4. at a window's end starts nothing new; what is in flight finishes; at the next opening it
   goes on. `done` (keys of verified blobs) is the caller's durable state: a blob in it is
   not looked at again, and each verified one is added (and `on_done` told).

One `Warmer` per process and site link: its pacer holds the budget across every warm, and
concurrent warms of overlapping sets share each blob's fetch (single flight by blob).
Errors: `registry.CacheError` (its `reason` says what the cache did); a failing blob fails
the warm; what was verified stays in `done`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone

from pinsvc import errors
from pinsvc.adapters.pullsecret import PullSecretFile
from pinsvc.warm import manifests
from pinsvc.warm.plan import (PAUSED, WAITING, WARMED, WARMING, Blob, LinkModel, Pacer, Progress, finish_time,
                              fits, order)
from pinsvc.warm.registry import CacheClient, CacheError, NOT_IN_CACHE
from pinsvc.warm.routes import Route, Routes
from pinsvc.warm.settings import WarmSettings
from pinsvc.warm.window import Windows

log = logging.getLogger("pinsvc.warm")

PAUSE_CHECK_SECONDS = 1.0
"""While paused, the windows are looked at again this often (an edited annotation counts)."""
FIRST_LOOK_SECONDS = 0.25
"""Least wait before looking whether the cache stored a blob it was asked to fetch: a look
while the fetch runs costs a second (cut-off) copy over the link."""
SMALL_BLOB, SMALL_LOOK_SECONDS = 256 * 1024, 0.05
"""A blob this small (a config) costs little to look at too early: it is looked at sooner,
and does not wait for one of the FETCHES slots."""
FETCHES = 2
"""Blobs being fetched by the cache at once: more only share the link, and make the moment
each one is stored harder to foresee."""
LOOK_FACTOR, LOOK_MAX_SECONDS = 1.5, 5.0
LOOK_MARGIN = 0.15
"""The first look comes this fraction after the fetch should have ended."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Warmer:
    def __init__(self, settings: WarmSettings, *, client: CacheClient | None = None,
                 routes: Callable[[Iterable[str]], dict[str, Route]] | None = None,
                 clock: Callable[[], float] = time.monotonic, now: Callable[[], datetime] = utcnow):
        self.settings = settings
        self.routes = routes or Routes(settings.registries_conf, settings.registries_conf_dirs)
        if client is None:
            secret = PullSecretFile(settings.pull_secret) if settings.pull_secret else None
            client = CacheClient(credentials=secret.lookup_endpoint if secret else (lambda host, path: None),
                                 timeout=settings.timeout_seconds)
        self.client = client
        self.pacer = Pacer(settings.rate)
        self.clock, self.now = clock, now
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._small_slots = asyncio.Semaphore(settings.concurrency)
        self._flights: dict[str, asyncio.Task[bool]] = {}
        self._refunded = asyncio.Event()
        self._fetches = asyncio.Semaphore(FETCHES)
        self.link = LinkModel(settings.rate)

    async def aclose(self) -> None:
        for task in list(self._flights.values()):
            task.cancel()
        await asyncio.gather(*self._flights.values(), return_exceptions=True)
        await self.client.aclose()

    async def warm(self, images: Iterable[str], *, windows: Callable[[], Windows] = Windows,
                   done: set[str] | None = None, on_progress: Callable[[Progress], None] = lambda p: None,
                   on_done: Callable[[str], None] = lambda key: None) -> Progress:
        """Warms the cache for `images` (see the module doc); returns the final progress."""
        run = _Run(self, windows, set() if done is None else done, on_progress, on_done)
        routes = self.routes(images)
        for route in routes.values():
            if route.cache is not None:
                self.client.insecure_hosts.update({route.cache.ref.host.lower()} if route.cache.insecure else set())
        run.progress.caches = sorted({r.cache.ref.host for r in routes.values() if r.cache})
        notes = [r.note for r in routes.values() if r.note]
        run.progress.message = "; ".join(notes[:3]) + (f"; and {len(notes) - 3} more" if len(notes) > 3 else "")
        await run.wait_open()
        blobs: set[Blob] = set()
        for route in routes.values():
            if route.cache is not None:
                blobs |= await self._blobs(route.cache.ref)
        await run.blobs(order(blobs))
        run.progress.state = WARMED
        run.report()
        return run.progress

    async def _blobs(self, ref) -> set[Blob]:
        """The blobs of one image on its cache (manifests read through the cache)."""
        body = await self.client.manifest(ref)
        digest = ref.digest
        child = manifests.child(ref, body, self.settings.platform)
        if child is not None:
            ref = type(ref)(ref.host, ref.path, child)
            body, digest = await self.client.manifest(ref), child
        return manifests.blobs(ref, body, digest)

    def fallback(self, images: Iterable[str]) -> str:
        """Where the nodes pull the images from while their cache fails, when every one of
        them has somewhere to go in registries.conf ("" when not: the cache is needed)."""
        try:
            routes = self.routes(images)
        except errors.StateError:
            return ""
        mirrored = [r for r in routes.values() if r.cache is not None]
        if not mirrored or any(not r.fallback for r in mirrored):
            return ""
        return ", ".join(sorted({r.fallback for r in mirrored}))

    def flight(self, blob: Blob) -> asyncio.Task[bool] | None:
        return self._flights.get(blob.key)

    def start(self, blob: Blob, windows: Callable[[], Windows]) -> asyncio.Task[bool]:
        task = asyncio.create_task(self._ensure(blob, windows), name=f"warm {blob.key}")
        self._flights[blob.key] = task
        task.add_done_callback(lambda t: self._forget(blob.key, t))
        return task

    def _forget(self, key: str, task: asyncio.Task[bool]) -> None:
        self._flights.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: a flight whose every waiter was cancelled is not "lost"

    async def _ensure(self, blob: Blob, windows: Callable[[], Windows]) -> bool:
        """Makes the cache hold `blob` (verified); True when the cache had to fetch it."""
        small = blob.size <= SMALL_BLOB
        async with contextlib.nullcontext() if small else self._fetches:
            started = self.clock()
            fetched = not await self.client.probe(blob)
            if not fetched:
                self.pacer.refund(blob.size, self.clock())
                self._refunded.set()  # wakes the warms waiting for the pacer
                self._refunded = asyncio.Event()
            else:
                await self._stored(blob, started, self.link.start(blob.size, started), windows)
        await self.client.verify(blob)
        return fetched

    async def pacer_wait(self, seconds: float) -> None:
        """Sleeps `seconds`, or less when a booking is given back meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._refunded.wait(), seconds)

    async def _stored(self, blob: Blob, started: float, expected: float, windows: Callable[[], Windows]) -> None:
        """Waits until the cache stores a blob it is fetching (bounded by stall_seconds).
        A look while the fetch runs costs a cut-off copy over the link: the first comes when
        the link model (`plan.LinkModel`) says the blob should be there, and none while the
        windows are closed (the next opening finds the blob stored)."""
        least = SMALL_LOOK_SECONDS if blob.size <= SMALL_BLOB else FIRST_LOOK_SECONDS
        wait = max((expected - started) * (1 + LOOK_MARGIN), least)
        deadline = started + self.settings.stall_seconds
        missing_at = started  # the last look that found the blob still missing
        try:
            while True:
                await asyncio.sleep(max(started + wait - self.clock(), 0))
                while not windows().is_open(self.now()):
                    await asyncio.sleep(PAUSE_CHECK_SECONDS)
                    deadline += PAUSE_CHECK_SECONDS
                looked = self.clock()
                if await self.client.probe(blob):
                    # it ended between the last miss and this look: at `expected` when the
                    # model knew a rate, else (no budget, nothing measured yet) half way
                    end = expected if expected > started else (missing_at + looked) / 2
                    self.link.stored(blob.size, min(max(end, missing_at), looked))
                    return
                missing_at = looked
                if self.clock() >= deadline:
                    host = blob.repository.partition("/")[0]
                    raise CacheError(host, NOT_IN_CACHE, f"blob {blob.key} is still not in its storage "
                                     f"{self.settings.stall_seconds:g} s after it was asked for (is it a "
                                     f"pull-through cache, and is its upstream reachable?)")
                wait = min(wait * LOOK_FACTOR, wait + LOOK_MAX_SECONDS)
        except BaseException:
            self.link.stored(0, self.clock())
            raise


class _Run:
    """One call of `Warmer.warm`: its progress and its blobs."""

    def __init__(self, warmer: Warmer, windows: Callable[[], Windows], done: set[str],
                 on_progress: Callable[[Progress], None], on_done: Callable[[str], None]):
        self.warmer, self.windows, self.done = warmer, windows, done
        self.on_progress, self.on_done = on_progress, on_done
        self.progress = Progress(state=WAITING)
        self.active = 0.0  # seconds spent warming (pauses excluded)
        self._since: float | None = None

    def report(self) -> None:
        p = self.progress
        now, rate = self.warmer.now(), self.warmer.settings.rate
        measured = p.bytes_fetched / self._active() if self._active() > 1 else 0.0
        p.rate = measured
        pace = min(r for r in (rate, measured) if r) if rate or measured else 0.0
        p.eta = finish_time(now, p.bytes_total - p.bytes_done, pace, self.windows())
        self.on_progress(p)

    def _active(self) -> float:
        return self.active + (self.warmer.clock() - self._since if self._since is not None else 0.0)

    async def wait_open(self, seconds: float = 0.0) -> None:
        """Returns once the windows are open and a transfer of `seconds` fits before they
        close; Waiting (before the start) or Paused meanwhile, and reported so."""
        while True:
            windows, now = self.windows(), self.warmer.now()
            if windows.is_open(now) and fits(now, seconds, windows):
                if self._since is None:
                    resumed = self.progress.state == PAUSED
                    self.progress.state, self.progress.next_open = WARMING, None
                    self._since = self.warmer.clock()
                    if resumed:
                        self.report()
                return
            if self._since is not None:
                self.active += self.warmer.clock() - self._since
                self._since = None
            if self.progress.state == WARMING:
                self.progress.state = PAUSED
            nxt = windows.next_open(now if not windows.is_open(now) else windows.closes_at(now))
            self.progress.next_open = nxt
            self.report()
            until = (nxt - now).total_seconds() if nxt is not None else PAUSE_CHECK_SECONDS
            await asyncio.sleep(min(max(until, 0.01), PAUSE_CHECK_SECONDS))

    async def blobs(self, blobs: list[Blob]) -> None:
        p = self.progress
        p.blobs_total, p.bytes_total = len(blobs), sum(b.size for b in blobs)
        todo = []
        for blob in blobs:
            if blob.key in self.done:
                p.blobs_done, p.bytes_done = p.blobs_done + 1, p.bytes_done + blob.size
            else:
                todo.append(blob)
        self.report()
        small = [b for b in todo if b.size <= SMALL_BLOB]  # configs: a lane of their own, beside the layers
        await asyncio.gather(self._lane([b for b in todo if b.size > SMALL_BLOB], self.warmer._slots),
                             self._lane(small, self.warmer._small_slots))

    async def _lane(self, blobs: list[Blob], slots: asyncio.Semaphore) -> None:
        """Warms `blobs` in order, at most `slots` at once; the first failure stops it."""
        tasks: list[asyncio.Task[None]] = []
        try:
            for blob in blobs:
                await slots.acquire()
                try:
                    if failed := next((t for t in tasks if t.done() and t.exception()), None):
                        raise failed.exception()
                    task = self.warmer.flight(blob)
                    if task is None:
                        await self._admit(blob)
                        task = self.warmer.start(blob, self.windows)
                except BaseException:
                    slots.release()
                    raise
                tasks.append(asyncio.create_task(self._finish(blob, task, slots)))
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()  # a blob's flight itself goes on: another warm may share it
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _admit(self, blob: Blob) -> None:
        """Waits until the windows are open, the blob's transfer fits before they close and
        the pacer lets it start; then books it."""
        pacer, clock = self.warmer.pacer, self.warmer.clock
        while True:
            await self.wait_open(pacer.seconds(blob.size))
            wait = pacer.wait(clock())
            if wait <= 0:
                pacer.reserve(blob.size, clock())
                return
            await self.warmer.pacer_wait(wait)

    async def _finish(self, blob: Blob, task: asyncio.Task[bool], slots: asyncio.Semaphore) -> None:
        try:
            fetched = await asyncio.shield(task)
        finally:
            slots.release()
        p = self.progress
        p.blobs_done, p.bytes_done = p.blobs_done + 1, p.bytes_done + blob.size
        if fetched:
            p.bytes_fetched += blob.size
        self.done.add(blob.key)
        self.on_done(blob.key)
        self.report()
