"""pinctl's warm stage and maintenance windows: the gate a rollout passes before a pool's
nodes (the site cache warmed with the pool's images, pinsvc.warm) and before each node
(only within the pool's windows).

A pool's windows are the `pinsvc.io/window` annotations of the pool and of every set its
nodes get, and `--window`: all must be open. The warm runs inside them too. When the cache
fails (down, refusing), the pool's nodes start anyway only if the nodes' registries.conf
lets them pull from elsewhere (the source is not blocked); otherwise none starts and each
reports the cache's reason (`CacheUnavailable`, `CacheRefused`, `NotInCache`,
`CacheCorrupt`) naming the cache, so nothing is pinned half-way. The record keeps the
blobs verified in the cache: a rerun does not look at them again.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from pinsvc import errors
from pinsvc.coordinator.objects import Cluster
from pinsvc.coordinator.record import FAILED, NOT_STARTED, PREFETCH_FAILED, NodeRecord, Record
from pinsvc.coordinator.rollout import PoolPlan
from pinsvc.warm import plan as warm_plan
from pinsvc.warm.plan import FAILED as WARM_FAILED, WARMED, Progress
from pinsvc.warm.registry import CACHE_REFUSED, CACHE_UNAVAILABLE, CacheError
from pinsvc.warm.settings import WarmSettings, parse_platform
from pinsvc.warm.stage import Warmer, utcnow
from pinsvc.warm.window import Windows, parse_all

WARMED_CONDITION = "PinnedImageSetsWarmed"
SKIPPED = "Skipped"
SAVE_INTERVAL_SECONDS = 1.0
WINDOW_CLOSED = "WindowClosed"


def add_arguments(parser: argparse.ArgumentParser, *, window: bool = True) -> None:
    """The --warm-* flags (pinctl and the controller) and, with `window`, pinctl's --window."""
    group = parser.add_argument_group("slow links and maintenance windows (docs/warm.md)")
    group.add_argument("--warm-registries-conf", metavar="FILE",
                       help="warm the site cache first: the nodes' registries.conf, whose first mirror of an "
                            "image is the cache (default: no warm stage)")
    group.add_argument("--warm-registries-conf-dir", metavar="DIR", action="append", default=[],
                       help="its drop-in directory (registries.conf.d); repeatable (default: none)")
    group.add_argument("--warm-rate", default="0", metavar="RATE",
                       help="upstream budget of the warm, bytes/s averaged, e.g. 20MiB (default: 0 = none)")
    group.add_argument("--warm-pull-secret", metavar="FILE", help="config.json with the caches' credentials")
    group.add_argument("--warm-concurrency", type=int, default=4, metavar="N",
                       help="blobs warmed at once (default: %(default)s)")
    group.add_argument("--warm-platform", default="", metavar="OS/ARCH",
                       help="the nodes' platform, os/arch[/variant] (default: this machine's)")
    if not window:
        return
    group.add_argument("--window", action="append", default=[], metavar="SPEC",
                       help="a maintenance window for every pool, e.g. 'cron=0 22 * * *; duration=4h'; the "
                            "annotations pinsvc.io/window on pools and sets apply too (default: none)")


def settings_from(args: argparse.Namespace) -> WarmSettings | None:
    """The warm settings of the flags (None: no warm stage). Raises InvalidArgument."""
    problems = []
    try:
        parse_all(getattr(args, "window", ()))
    except ValueError as e:
        problems.append(f"--window: {e}")
    if not args.warm_registries_conf:
        if problems:
            raise errors.InvalidArgument(problems)
        return None
    try:
        rate = warm_plan.parse_rate(args.warm_rate)
        platform = parse_platform(args.warm_platform) if args.warm_platform else WarmSettings(Path()).platform
    except ValueError as e:
        raise errors.InvalidArgument(problems + [str(e)]) from None
    settings = WarmSettings(Path(args.warm_registries_conf), tuple(map(Path, args.warm_registries_conf_dir)),
                            rate, Path(args.warm_pull_secret) if args.warm_pull_secret else None,
                            args.warm_concurrency, platform)
    if problems := problems + settings.problems():
        raise errors.InvalidArgument(problems)
    return settings


def pool_windows(cluster: Cluster, plan: PoolPlan, extra: Iterable[str] = ()) -> Windows:
    """The windows of a pool: its own, its nodes' sets', and `extra` (validated already)."""
    pool = cluster.pools.get(plan.name)
    specs = [pool.window if pool else "", *(s.window for t in plan.targets for s in t.sets), *extra]
    return parse_all(specs)


Show = Callable[[str, Progress], None]


class WarmGate:
    """The rollout's gate (see the module doc). `show(pool, progress)` displays progress."""

    def __init__(self, windows: dict[str, Windows], record: Record, *, warmer: Warmer | None = None,
                 show: Show = lambda pool, progress: None, say: Callable[[str], None] = print,
                 progress: Callable[[NodeRecord, None], None] = lambda record, event: None, now=utcnow) -> None:
        self.windows, self.record, self.warmer = windows, record, warmer
        self.show, self.say, self.progress, self.now = show, say, progress, now
        self._saved_at = 0.0

    async def aclose(self) -> None:
        if self.warmer is not None:
            await self.warmer.aclose()

    async def before_pool(self, plan: PoolPlan, records: list[NodeRecord]) -> bool:
        """Warms the pool's images (when a warm stage is set); False when its nodes must not
        start, each record then saying why."""
        windows = self.windows.get(plan.name, Windows())
        if windows.next_open(self.now()) is None:
            return self._refuse(records, NOT_STARTED, WINDOW_CLOSED, f"window {windows} does not open again")
        if self.warmer is None:
            return True
        images = list(dict.fromkeys(i for t in plan.targets if not t.skip for i in t.images))
        state = self.record.warm.setdefault(plan.name, {})
        try:
            progress = await self.warmer.warm(images, windows=lambda: windows, done=self.record.warmed,
                                              on_progress=lambda p: self._progress(plan.name, p),
                                              on_done=lambda key: self._save())
        except (CacheError, errors.StateError) as e:
            reason = e.reason if isinstance(e, CacheError) else PREFETCH_FAILED
            fallback = self.warmer.fallback(images) if reason in (CACHE_UNAVAILABLE, CACHE_REFUSED) else ""
            state.update(state=SKIPPED if fallback else WARM_FAILED, reason=reason,
                         summary=f"{e}" + (f"; the nodes pull from {fallback} instead (registries.conf "
                                           f"allows it)" if fallback else ""))
            self.say(f"pool {plan.name}: warm stage: {state['summary']}")
            self._save(force=True)
            if fallback:
                return True
            return self._refuse(records, FAILED, reason, f"not started: the site cache was not warmed: {e}")
        state.update(state=WARMED, reason=WARMED, summary=progress.summary())
        self._save(force=True)
        return True

    async def before_node(self, plan: PoolPlan, record: NodeRecord) -> bool:
        """Returns once the pool's windows are open (True), or False when they never open
        again (the record then says so)."""
        windows = self.windows.get(plan.name, Windows())
        told = False
        while not windows.is_open(now := self.now()):
            opens = windows.next_open(now)
            if opens is None:
                return self._refuse([record], NOT_STARTED, WINDOW_CLOSED, f"window {windows} does not open again")
            if not told:
                self.say(f"pool {plan.name}: window {windows} is closed; nodes wait until "
                         f"{opens.strftime('%Y-%m-%dT%H:%M:%SZ')}")
                told = True
            await asyncio.sleep(min(max((opens - now).total_seconds(), 0.01), 1.0))
        return True

    def _progress(self, pool: str, progress: Progress) -> None:
        self.record.warm[pool] = {"state": progress.state, "reason": progress.state, "summary": progress.summary(),
                                  "bytesDone": progress.bytes_done, "bytesTotal": progress.bytes_total,
                                  "bytesFetched": progress.bytes_fetched}
        self.show(pool, progress)

    def _refuse(self, records: list[NodeRecord], state: str, cause: str, reason: str) -> bool:
        for r in records:
            r.state, r.cause, r.reason = state, cause, reason
            self.progress(r, None)
        return False

    def _save(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._saved_at >= SAVE_INTERVAL_SECONDS:
            self.record.save()
            self._saved_at = now


def condition(warm: dict | None) -> dict | None:
    """The pool's `PinnedImageSetsWarmed` condition from its warm state in the record."""
    if not warm:
        return None
    return {"type": WARMED_CONDITION, "status": str(warm.get("state") == WARMED),
            "reason": warm.get("reason") or warm.get("state", ""), "message": warm.get("summary", "")}
