"""The warm stage and maintenance windows in the controller: a pool whose nodes need work
starts none of them until its windows are open and, with a warm stage configured, its
images are in the site cache (pinsvc.warm, the same stage as pinctl's).

A pool's windows are the `pinsvc.io/window` annotations of the pool and of its nodes' sets;
editing them takes effect at the next reconcile (a running warm looks at them again each
second). State is in the API server: the pool's `PinnedImageSetsWarmed` condition says how
far the warm is (bytes, rate, ETA), or why it stopped (`CacheUnavailable`, naming the
cache, ...); once warmed its message ends with the content key of the images, so a new
leader does not warm again what the previous one finished. A warm the leader did not finish
is run again by the next one: what the cache holds is found there (a probe of a held blob
reads the cache's storage, not the link), so nothing crosses the link twice.

When the warm fails (the cache is down or refuses), the pool's nodes start anyway only if
the nodes' registries.conf lets them pull from elsewhere; otherwise the pool is Degraded
with the warm's error and the warm is tried again after the failure backoff.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from pinsvc import errors
from pinsvc.controller.metrics import WarmMetrics
from pinsvc.controller.status import condition
from pinsvc.coordinator.objects import Pool
from pinsvc.retry import Backoff
from pinsvc.warm.plan import WARMED, Progress
from pinsvc.warm.registry import CACHE_REFUSED, CACHE_UNAVAILABLE, CacheError
from pinsvc.warm.stage import Warmer, utcnow
from pinsvc.warm.window import Windows, parse_all

log = logging.getLogger("pinsvc.controller.warm")

CONDITION = "PinnedImageSetsWarmed"
WARMING, WINDOW_CLOSED, FALLBACK = "Warming", "WindowClosed", "WarmSkipped"
_KEY = re.compile(r"\[content ([0-9a-f]{12})\]$")


def content_key(images: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(set(images))).encode()).hexdigest()[:12]


@dataclass
class PoolWarm:
    """This leader's warm of one pool's images (`key`)."""

    key: str
    warmed: bool = False
    task: asyncio.Task | None = None
    progress: Progress | None = None
    error: Exception | None = None
    fallback: str = ""  # where the nodes pull from instead, when the warm failed and they may
    failures: int = 0
    retry_at: float = 0.0
    done: set[str] = field(default_factory=set)  # blobs verified by this leader
    message: str = ""  # the warmed message found in the API server


class PoolWarms:
    """The pools' warms and windows. `poke` wakes the reconcile loop; `changed` says that a
    pool's condition may have changed since the reconciler last reset it."""

    def __init__(self, warmer: Warmer | None, *, poke: Callable[[], None], backoff: Backoff,
                 metrics: WarmMetrics | None = None,
                 clock: Callable[[], float] = time.monotonic, now: Callable[[], datetime] = utcnow):
        self.warmer, self.poke, self.backoff, self.metrics = warmer, poke, backoff, metrics
        self.clock, self.now = clock, now
        self.pools: dict[str, PoolWarm] = {}
        self.windows: dict[str, Windows] = {}
        self.changed = False

    @classmethod
    def of(cls, settings, poke: Callable[[], None], metrics: WarmMetrics | None) -> PoolWarms:
        """The controller's (`settings`: its Settings): a Warmer when the warm stage is on."""
        return cls(Warmer(settings.warm) if settings.warm else None, poke=poke, backoff=settings.failure_backoff,
                   metrics=metrics)

    def gate(self, pool: Pool, members: Iterable[str], need: Mapping[str, bool], desired: Mapping,
             raw: Callable[[], Mapping]) -> bool:
        """Whether the pool's nodes may start now: always when none needs work; else when
        its windows are open and its images warmed (`ready`). `raw()` gives the pool object
        (read only with a warm stage: its condition)."""
        if not any(need.get(n) for n in members):
            return True
        targets = [desired[n].target for n in members if n in desired and desired[n].target is not None]
        images = list(dict.fromkeys(i for t in targets if not t.skip for i in t.images))
        windows = parse_all([pool.window, *(s.window for t in targets for s in t.sets)])
        old = None if self.warmer is None else next(
            (c for c in (raw().get("status") or {}).get("conditions") or [] if c.get("type") == CONDITION), None)
        return self.ready(pool.name, images, windows, old)

    def conditions(self, pool: str, raw: Mapping, now: str) -> list[dict]:
        """The pool's conditions of the warm stage (none without one), for its status."""
        old = next((c for c in (raw.get("status") or {}).get("conditions") or [] if c.get("type") == CONDITION), None)
        mine = self.condition(pool, old, now)
        return [mine] if mine else []

    def ready(self, pool: str, images: list[str], windows: Windows, old: dict | None) -> bool:
        """Whether the pool's nodes may start now (starting its warm when due); `old` is the
        pool's condition as the API server has it."""
        self.windows[pool] = windows
        open_now = windows.is_open(self.now())
        if self.warmer is None:
            return open_now
        key = content_key(images)
        warm = self.pools.get(pool)
        if warm is None or warm.key != key:
            if warm is not None and warm.task is not None:
                warm.task.cancel()
            warm = self.pools[pool] = PoolWarm(key)
            found = _KEY.search((old or {}).get("message", ""))
            if old and old.get("status") == "True" and found and found[1] == key:
                warm.warmed, warm.message = True, old["message"]
        if not warm.warmed and warm.task is None and (warm.error is None or self.clock() >= warm.retry_at):
            warm.task = asyncio.create_task(self._run(pool, warm, images), name=f"warm pool {pool}")
        return open_now and (warm.warmed or bool(warm.fallback))

    def forget(self, keep: Iterable[str]) -> None:
        """Cancels the warms of pools that need none any more."""
        for pool in set(self.pools) - set(keep):
            warm = self.pools.pop(pool)
            if warm.task is not None:
                warm.task.cancel()

    def wake_at(self) -> float | None:
        """When the loop must look again: a retry due, or a window opening (monotonic)."""
        times = [w.retry_at for w in self.pools.values() if w.error is not None and w.task is None]
        now = self.now()
        for windows in self.windows.values():
            if windows and not windows.is_open(now) and (opens := windows.next_open(now)) is not None:
                times.append(self.clock() + (opens - now).total_seconds())
        return min(times, default=None)

    def blocked(self) -> dict[str, str]:
        """Pool -> why its nodes do not start (a failed warm they cannot do without)."""
        return {pool: f"warm stage: {w.error}" for pool, w in self.pools.items()
                if w.error is not None and not w.fallback and not w.warmed}

    def condition(self, pool: str, old: dict | None, now: str) -> dict | None:
        """The pool's PinnedImageSetsWarmed condition (None: no warm stage for it)."""
        warm = self.pools.get(pool)
        if warm is None:
            return None
        p = warm.progress
        if warm.warmed:
            message = f"{p.summary()} [content {warm.key}]" if p else warm.message
            return condition(CONDITION, True, WARMED, message, old=old, now=now)
        if warm.error is not None:
            reason = warm.error.reason if isinstance(warm.error, CacheError) else "PrefetchFailed"
            again = f"; tried again in {max(warm.retry_at - self.clock(), 0):.0f} s" if warm.task is None else ""
            note = f"; the nodes pull from {warm.fallback} instead (registries.conf allows it)" if warm.fallback else ""
            return condition(CONDITION, False, reason, f"{warm.error}{note}{again}", old=old, now=now)
        windows = self.windows.get(pool, Windows())
        if not windows.is_open(self.now()):
            if p is None:
                opens = windows.next_open(self.now())
                when = f"opens {opens.strftime('%Y-%m-%dT%H:%M:%SZ')}" if opens else "does not open again"
                return condition(CONDITION, False, WINDOW_CLOSED, f"window {windows} is closed, {when}",
                                 old=old, now=now)
            return condition(CONDITION, False, WINDOW_CLOSED, f"window {windows}: {p.summary()}", old=old, now=now)
        return condition(CONDITION, False, WARMING, p.summary() if p else "reading the manifests", old=old, now=now)

    async def aclose(self) -> None:
        tasks = [w.task for w in self.pools.values() if w.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, pool: str, warm: PoolWarm, images: list[str]) -> None:
        def progressed(progress: Progress) -> None:
            warm.progress, self.changed = progress, True
            if self.metrics is not None:
                self.metrics.observe(pool, progress)
            self.poke()

        try:
            warm.progress = await self.warmer.warm(images, windows=lambda: self.windows.get(pool, Windows()),
                                                   done=warm.done, on_progress=progressed)
            warm.warmed, warm.error, warm.failures, warm.fallback = True, None, 0, ""
            log.info("pool %s: %s", pool, warm.progress.summary())
        except (CacheError, errors.StateError) as e:
            warm.error, warm.failures = e, warm.failures + 1
            warm.retry_at = self.clock() + self.backoff.delay(warm.failures)
            can = isinstance(e, CacheError) and e.reason in (CACHE_UNAVAILABLE, CACHE_REFUSED)
            warm.fallback = self.warmer.fallback(images) if can else ""
            log.warning("pool %s: warm stage failed (attempt %d; again in %.0fs): %s", pool, warm.failures,
                        warm.retry_at - self.clock(), e)
        finally:
            warm.task, self.changed = None, True
            self.poke()
