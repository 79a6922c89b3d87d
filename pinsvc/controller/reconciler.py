"""The level-triggered reconcile loop (controller-runtime's model), run while this
controller holds the Lease.

Four informers keep PinnedImageSets, MachineConfigPools, Nodes and MachineConfigNodes in
memory (`cache`); any change only wakes the loop. Each pass decides what the nodes need
from those objects alone (`desired`): after a change of sets, pools or nodes every node,
else only the nodes something happened to (a freed slot, a written status, an event of
their MachineConfigNode), and a node whose objects are the same objects as at the last
pass is not evaluated again. It starts the node attempts the rollout rules allow in those
nodes' pools (`desired.schedule`), runs the pre-flight of the nodes next in line while the
others apply, and writes the MachineConfigNode status the controller owns (`writer`); at
most once per `status_interval_seconds`, the pools' synchronizer status (`pools`). As the
Machine Config Operator does, a change's new desired generations are written to every node
it concerns at once ("announced"), each waiting node saying it waits. A node's Apply that
ends frees its slot at once (the next pass runs without the debounce, no status write
waited for). The API server is the store: a node is done when its MachineConfigNode says
so, so a new leader resumes where the old one stopped, and a no-op change calls no agent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from pinsvc_client import PinClient

from pinsvc.controller import pools, status as st
from pinsvc.controller.agents import UNAVAILABLE, UPDATED, Agents, Outcome, Preflight
from pinsvc.controller.cache import Cache
from pinsvc.controller.desired import (DELETE, STAND_ASIDE, WORK, WRITE, Desired, PoolWork, Run, decide, pool_width,
                                       run_key, schedule, targets, unavailable_verdict, unpin_target, waiting_verdict)
from pinsvc.controller.events import Recorder
from pinsvc.controller.kubeapi import NODES, POOLS, Kube, KubeApiError
from pinsvc.controller.probes import Metrics, State
from pinsvc.controller.settings import Settings
from pinsvc.controller.warming import PoolWarms
from pinsvc.controller.writer import ANNOUNCE, Writer
from pinsvc.coordinator.objects import Cluster
from pinsvc.coordinator.rollout import Target
from pinsvc.errors import InvalidArgument

log = logging.getLogger("pinsvc.controller")
NONE = st.Observed()  # the MachineConfigNode of a node that has none


class Reconciler:
    def __init__(self, kube: Kube, settings: Settings, connect: Callable[[str, str], PinClient], identity: str,
                 state: State | None = None, metrics: Metrics | None = None):
        self.kube = kube
        self.settings = settings
        self.state = state or State()
        self.metrics = metrics or Metrics(self.state)
        self.warms = PoolWarms.of(settings, self._poke, self.metrics.warm)
        self.agents = Agents(connect, settings.rollout)
        self.events = Recorder(kube, identity)
        self.cache = Cache(kube, self.events, self._poke)  # its dicts, updated in place, by shorter names:
        self.sets, self.pools, self.nodes, self.observed = (self.cache.sets, self.cache.pools, self.cache.nodes,
                                                            self.cache.observed)
        self.desired: dict[str, Desired] = {}
        self.members: dict[str, tuple[str, ...]] = {}
        self.runs: dict[str, Run] = {}
        self.settled: dict[str, tuple] = {}  # node -> (desired, observed, pool) found needing nothing
        self.evaluated: dict[str, tuple] = {}  # node -> (desired, observed, pool, done, failed, action, verdict)
        self.preflights: dict[str, tuple[tuple, asyncio.Task]] = {}  # node -> (run key, its pre-flight)
        self.urgent = False  # a slot is free: the next pass runs without the debounce
        self.full = True  # the next pass looks at every node, else only at `dirty` ones
        self.dirty: set[str] = set()  # nodes something happened to since the last pass
        # what the passes found, per node (kept between passes: a pass updates its dirty nodes)
        self.need, self.done, self.failed = {}, {}, {}  # node -> bool
        self.unpins: set[str] = set()  # nodes that left every pool and still pin something
        self.busy: set[str] = set()  # nodes with a status write or delete in flight
        self.announcing: set[str] = set()  # nodes with an announcement queued or in flight
        self.retry_write: dict[str, float] = {}
        self.touched: set[tuple[str, int]] = set()  # (set, generation) this term applied somewhere
        self.aborted: dict[str, str] = {}
        self.tasks: set[asyncio.Task] = set()
        self.wake = asyncio.Event()
        self.writer = Writer(kube, self.observed, self.cache.store, self.cache.config)
        self.timer: asyncio.TimerHandle | None = None

    # ---- running ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Reconciles until cancelled (the Lease is lost or the process stops)."""
        informers = await self.cache.informed()
        log.info("reconciling %s", ", ".join(f"{i.resource.plural}.{i.resource.api_version}" for i in informers))
        try:
            async with asyncio.TaskGroup() as group:
                for informer in informers:
                    group.create_task(informer.run())
                await asyncio.gather(*(i.synced.wait() for i in informers))
                log.info("caches synced: %d nodes, %d pools, %d sets, %d MachineConfigNodes", len(self.nodes),
                         len(self.pools), len(self.sets), len(self.observed))
                self.state.synced = True
                group.create_task(self._loop())
                group.create_task(pools.report(self))
        finally:
            self.state.synced = False
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            self.metrics.queue_depth.set(0)
            await asyncio.gather(self.agents.aclose(), self.events.aclose(), self.warms.aclose())

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _poke(self, name: str | None = None, *, urgent: bool = False) -> None:
        """Wakes the loop to look at node `name` again, or at every node."""
        if name is None:
            self.full = True
        else:
            self.dirty.add(name)
        self.urgent = self.urgent or urgent
        self.wake.set()

    # ---- the loop ----------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            await self.wake.wait()
            if not self.urgent:
                await asyncio.sleep(self.settings.debounce_seconds)
            self.wake.clear()
            self.urgent = False
            started = time.monotonic()
            wake_at = self._pass(started)
            self.metrics.reconcile_duration.observe(time.monotonic() - started)
            if wake_at is not None and (self.timer is None or self.timer.when() > wake_at
                                        or self.timer.when() < time.monotonic()):
                if self.timer is not None:
                    self.timer.cancel()  # one timer, for the earliest retry
                self.timer = asyncio.get_running_loop().call_at(wake_at, self._poke)

    def _recompute(self) -> None:
        cluster = Cluster(self.sets, self.pools, self.nodes)
        old = self.desired
        # a node whose desired state did not change keeps the same object: it is not evaluated again
        self.desired = {name: old[name] if old.get(name) == new else new for name, new in
                        targets(cluster, self.cache.invalid, port=self.settings.port,
                                endpoints=self.settings.endpoints).items()}
        members: dict[str, list[str]] = {}
        for name, desired in self.desired.items():
            if desired.target is not None:
                members.setdefault(desired.target.pool, []).append(name)
        self.members = {pool: tuple(sorted(names)) for pool, names in members.items()}
        self.cache.topology_dirty = False
        self.cache.pools_dirty = True

    def _evaluate(self, name: str) -> tuple:
        """(desired, observed, pool, done, failed, action, verdict) of a node: computed again
        only when one of the first three objects was replaced (a full pass looks at every node)."""
        desired, observed = self.desired.get(name), self.observed.get(name, NONE)
        target = desired.target if desired else None
        pool = self.pools.get(target.pool) if target else None
        seen = self.evaluated.get(name)
        if seen is None or seen[0] is not desired or seen[1] is not observed or seen[2] is not pool:
            seen = (desired, observed, pool, st.up_to_date(target, observed), st.failed_at(target, observed),
                    *decide(desired, observed, paused=pool.paused if pool else False))
            self.evaluated[name] = seen
        return seen

    def _pass(self, now: float) -> float | None:
        """Looks at the nodes something happened to (every node after a change of sets,
        pools or nodes, or a timer) and schedules the pools they are in: during a rollout a
        freed slot or a written status costs a look at one node and one pool, not at all."""
        full = self.full or self.cache.topology_dirty
        if self.cache.topology_dirty:
            self._recompute()
        names = self.desired.keys() | self.observed.keys() if full else self.dirty
        self.full, self.dirty = False, set()
        self.metrics.reconciles.labels("all" if full else "changed").inc()
        if full:
            self.need, self.done, self.failed, self.unpins = {}, {}, {}, set()
        scheduled, announce = set(), []  # the pools to schedule
        for name in names:
            self.need.pop(name, None)
            if name in self.unpins:
                self.unpins.discard(name)
                scheduled.add("")
            if name not in self.desired and name not in self.observed:
                for memory in (self.done, self.failed, self.evaluated, self.settled):
                    memory.pop(name, None)
                continue
            run = self.runs.get(name)
            desired, observed, pool, self.done[name], failed_at, action, verdict = self._evaluate(name)
            self.failed[name] = bool(run and run.unavailable) or failed_at
            target = desired.target if desired else None
            if target is not None:
                scheduled.add(target.pool)
            if (run and run.working) or name in self.busy:
                continue
            memo = self.settled.get(name)
            if memo and memo[0] is desired and memo[1] is observed and memo[2] is pool:
                continue
            if action == WORK:
                self.need[name] = True
                if target is None:
                    self.unpins.add(name)
                    scheduled.add("")
                elif not st.announced(target, observed) and name not in self.announcing:
                    announce.append(name)
            elif action == WRITE and self.retry_write.get(name, 0) <= now:
                self._spawn(self._write(name, target, verdict, (desired, observed, pool)))
            elif action == DELETE:
                self._spawn(self._delete(name, observed))
            elif action == STAND_ASIDE:
                self._stand_aside(name, observed)
                self.settled[name] = (desired, observed, pool)
            elif action != WRITE:
                self.settled[name] = (desired, observed, pool)
        work = [PoolWork(pool, members, pool_width(self.pools[pool], len(members)), self.pools[pool].paused or not
                         self.warms.gate(self.pools[pool], members, self.need, self.desired, lambda: self.cache.raw(POOLS, pool)))
                for pool, members in self.members.items() if pool in self.pools and (full or pool in scheduled)]
        if self.unpins and (full or "" in scheduled):  # nodes that left every pool: not limited by a pool
            work.append(PoolWork("", tuple(sorted(self.unpins)), len(self.unpins)))
        plan = schedule(work, self.need, self.done, self.failed, self.runs, self.settings.rollout, now)
        self.aborted = {**(plan.aborted if full else {  # the warm stage's failures name their pools too
            **{p: why for p, why in self.aborted.items() if p not in scheduled}, **plan.aborted}), **self.warms.blocked()}
        for name in [n for n in self.preflights if not self.need.get(n)]:
            self.preflights.pop(name)[1].cancel()
        for name in plan.start:
            self._start(name)
        for name in plan.prepare:
            self._prepare(name)
        for name in announce:
            self.announcing.add(name)
            self._spawn(self._announce(name))
        self.metrics.queue_depth.set(len(self.need))
        return min((t for t in (plan.wake_at, self.warms.wake_at(), *self.retry_write.values()) if t and t > now), default=None)

    def _target(self, name: str) -> Target | None:
        """What the node's attempt brings it to: its target, or nothing pinned when it left
        every pool (None when its agent cannot be found)."""
        desired = self.desired.get(name)
        if desired is not None and desired.target is not None:
            return desired.target
        try:
            return unpin_target(self.nodes[name], self.observed[name].pool, port=self.settings.port,
                                endpoints=self.settings.endpoints)
        except (InvalidArgument, KeyError) as e:
            log.warning("node %s left every pool but its pins cannot be removed: %s", name, e)
            return None

    def _prepare(self, name: str) -> None:
        """Runs the node's pre-flight while it waits in line (once per desired state)."""
        target = self._target(name)
        if target is None or (name in self.preflights and self.preflights[name][0] == run_key(target)):
            return
        if name in self.preflights:
            self.preflights.pop(name)[1].cancel()
        self.preflights[name] = (run_key(target), self._spawn(self.agents.preflight(target)))

    def _start(self, name: str) -> None:
        target = self._target(name)
        if target is None:
            return
        run = self.runs.setdefault(name, Run())
        if run.key != run_key(target):
            run.key, run.failures, run.retry_at, run.unavailable = run_key(target), 0, 0.0, ""
        key, preflight = self.preflights.pop(name, ((), None))
        if preflight is not None and key != run.key:
            preflight.cancel()
            preflight = None
        run.working = True
        self.metrics.applying.inc()
        self._spawn(self._work(name, target, run, preflight))

    # ---- a node's attempt --------------------------------------------------------------------

    async def _work(self, name: str, target: Target, run: Run, preflight: asyncio.Task | None) -> None:
        ended = asyncio.Event()

        async def say_progressing() -> None:
            """Progressing=True for an Apply still running after --progress-after; nothing
            once it has ended (its result is written instead)."""
            try:
                await asyncio.wait_for(ended.wait(), self.settings.progress_after_seconds)
                return
            except TimeoutError:
                pass
            try:
                async with self.writer.slot(name):
                    if not ended.is_set():
                        await self.writer.write_now(name, target, st.Verdict(progressing=True))
            except KubeApiError as e:
                log.warning("node %s: Progressing not written: %s", name, e)

        try:
            prepared: Preflight | None = await preflight if preflight is not None else None
            outcome = await self.agents.converge(target, lambda: self._spawn(say_progressing()), prepared)
            ended.set()
            self.metrics.applies.labels(outcome.state.lower() if outcome.applied or outcome.state != UPDATED
                                        else "already_current").inc()
            # The agent is done: the node's slot goes to the next node at once, without waiting
            # for any status write; until its result is written the node is busy (never started
            # again on the old status).
            self.busy.add(name)
            run.working = False
            self.metrics.applying.dec()
            self._poke(name, urgent=True)
            await self._finish(name, target, run, outcome)
        except KubeApiError as e:
            log.warning("node %s: status not written: %s", name, e)
            self.metrics.status_write_failures.inc()
        finally:
            if run.working:  # cancelled before the agent was done
                run.working = False
                self.metrics.applying.dec()
            self.busy.discard(name)
            self.cache.pools_dirty = True
            self._poke(name)

    async def _finish(self, name: str, target: Target, run: Run, outcome: Outcome) -> None:
        if outcome.applied:
            self.touched.update((s.name, s.generation) for s in target.sets)
        if outcome.state == UPDATED:
            run.failures, run.unavailable, verdict = 0, "", st.Verdict()
        else:
            run.failures += 1
            run.retry_at = time.monotonic() + self.settings.failure_backoff.delay(run.failures)
            if outcome.state == UNAVAILABLE:
                run.unavailable = f"agent at {target.endpoint} unavailable: {outcome.message}"
                verdict = unavailable_verdict(run.unavailable)
            else:
                run.unavailable = ""
                verdict = st.Verdict(degraded=True, reason=st.PREFETCH_FAILED, message=outcome.message)
            log.warning("node %s: %s (attempt %d; again in %.0fs)", name, verdict.message, run.failures,
                        run.retry_at - time.monotonic())
            if name in self.nodes:
                self.events.emit(NODES, self.cache.raw(NODES, name), "PinnedImageSetsFailed", verdict.message,
                                 warning=True, key=(run.key, verdict.reason, outcome.message))
        await self.writer.write(name, target, verdict, outcome.status)

    # ---- writes --------------------------------------------------------------------------------

    async def _write(self, name: str, target: Target | None, verdict: st.Verdict, memo: tuple) -> None:
        self.busy.add(name)
        try:
            await self.writer.write(name, target, verdict)
            self.settled[name] = (memo[0], self.observed.get(name, NONE), memo[2])
            self.retry_write.pop(name, None)
        except KubeApiError as e:
            log.warning("node %s: status not written: %s", name, e)
            self.metrics.status_write_failures.inc()
            self.retry_write[name] = time.monotonic() + self.settings.failure_backoff.delay(1)
        finally:
            self.busy.discard(name)
            self._poke(name)

    async def _announce(self, name: str) -> None:
        """Writes the node's new desired generations (current ones unchanged) and why it
        waits, or that it applies when it started meanwhile; nothing when its attempt's own
        write got there first."""
        try:
            async with self.writer.slot(name, ANNOUNCE):
                desired = self.desired.get(name)
                target = desired.target if desired else None
                if target is None or st.announced(target, self.observed.get(name, NONE)):
                    return
                run = self.runs.get(name)
                await self.writer.write_now(name, target, st.Verdict(progressing=True) if run and run.working
                                            else self._waiting(target.pool))
        except KubeApiError as e:  # the node's attempt writes its status anyway
            log.warning("node %s: new desired generations not written: %s", name, e)
        finally:
            self.announcing.discard(name)

    def _waiting(self, pool: str) -> st.Verdict:
        members = len(self.members.get(pool, ()))
        width = self.settings.rollout.max_parallel or (pool_width(self.pools[pool], members)
                                                       if pool in self.pools else 1)
        return waiting_verdict(pool, width, members, self.aborted.get(pool, ""))

    async def _delete(self, name: str, observed: st.Observed) -> None:
        if name in self.busy:
            return
        self.busy.add(name)
        try:
            await self.writer.delete(name, observed.uid)
            log.info("node %s: deleted its MachineConfigNode", name)
            self.cache.forget(name)
            self.runs.pop(name, None)
            await self.agents.forget(name)
        except KubeApiError as e:
            log.warning("node %s: MachineConfigNode not deleted: %s", name, e)
            asyncio.get_running_loop().call_later(self.settings.failure_backoff.delay(1), self._poke, name)
        finally:
            self.busy.discard(name)

    def _stand_aside(self, name: str, observed: st.Observed) -> None:
        message = st.managed_elsewhere(name, observed)
        log.info("%s", message)
        if name in self.nodes:
            self.events.emit(NODES, self.cache.raw(NODES, name), "ManagedElsewhere", message)
