"""The level-triggered reconcile loop (controller-runtime's model), run while this
controller holds the Lease.

Four informers keep PinnedImageSets, MachineConfigPools, Nodes and MachineConfigNodes in
memory; any change only wakes the loop. Each pass recomputes what every node needs from
those objects alone (`desired`), starts the node attempts the rollout rules allow
(`desired.schedule`), writes the MachineConfigNode status the controller owns (`writer`)
and, at most once per `status_interval_seconds` per pool, the pool's synchronizer status.
As the Machine Config Operator does, a change's new desired generations are written to
every node it concerns at once ("announced"), each waiting node saying it waits. The API
server is the store: a node is done when its MachineConfigNode says so, so a new leader
resumes where the old one stopped, and a no-op change calls no agent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from pinsvc_client import PinClient

from pinsvc.controller import status as st
from pinsvc.controller.agents import FAILED, UNAVAILABLE, UPDATED, Agents, Outcome
from pinsvc.controller.desired import (DELETE, STAND_ASIDE, WORK, WRITE, Desired, PoolWork, Run, decide, pool_width,
                                       run_key, schedule, targets, unavailable_verdict, unpin_target, waiting_verdict)
from pinsvc.controller.events import Recorder
from pinsvc.controller.kubeapi import (MCNS, NODES, POOLS, SET_VERSIONS, Informer, Kube, KubeApiError,
                                      discover_sets, now_rfc3339, sets)
from pinsvc.controller.settings import Settings
from pinsvc.controller.writer import ANNOUNCE, Writer
from pinsvc.coordinator.loader import parse_object
from pinsvc.coordinator.objects import Cluster, PinnedImageSet
from pinsvc.coordinator.rollout import Target
from pinsvc.errors import InvalidArgument

log = logging.getLogger("pinsvc.controller")


class Reconciler:
    def __init__(self, kube: Kube, settings: Settings, connect: Callable[[str, str], PinClient], identity: str):
        self.kube = kube
        self.settings = settings
        self.agents = Agents(connect, settings.rollout)
        self.events = Recorder(kube, identity)
        self.sets: dict[str, PinnedImageSet] = {}
        self.invalid: dict[str, PinnedImageSet] = {}
        self.pools: dict = {}
        self.nodes: dict = {}
        self.observed: dict[str, st.Observed] = {}
        self.mcn_versions: dict[str, int] = {}
        self.desired: dict[str, Desired] = {}
        self.members: dict[str, tuple[str, ...]] = {}
        self.runs: dict[str, Run] = {}
        self.settled: dict[str, tuple] = {}  # node -> (desired, observed, paused) found needing nothing
        self.busy: set[str] = set()  # nodes with a status write or delete in flight
        self.announcing: set[str] = set()  # nodes with an announcement queued or in flight
        self.retry_write: dict[str, float] = {}
        self.touched: set[tuple[str, int]] = set()  # (set, generation) this term applied somewhere
        self.aborted: dict[str, str] = {}
        self.tasks: set[asyncio.Task] = set()
        self.wake = asyncio.Event()
        self.writer = Writer(kube, self.observed, self._store, self._config)
        self.timer: asyncio.TimerHandle | None = None
        self.pools_dirty = True
        self.topology_dirty = True
        self.set_resource = sets(SET_VERSIONS[0])
        self.informers: list[Informer] = []

    # ---- running ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Reconciles until cancelled (the Lease is lost or the process stops)."""
        self.set_resource = await discover_sets(self.kube)
        self.informers = [Informer(self.kube, NODES, self._on_node), Informer(self.kube, POOLS, self._on_pool),
                          Informer(self.kube, self.set_resource, self._on_set), Informer(self.kube, MCNS, self._on_mcn)]
        log.info("reconciling %s", ", ".join(f"{i.resource.plural}.{i.resource.api_version}" for i in self.informers))
        try:
            async with asyncio.TaskGroup() as group:
                for informer in self.informers:
                    group.create_task(informer.run())
                await asyncio.gather(*(i.synced.wait() for i in self.informers))
                log.info("caches synced: %d nodes, %d pools, %d sets, %d MachineConfigNodes", len(self.nodes),
                         len(self.pools), len(self.sets), len(self.observed))
                group.create_task(self._loop())
                group.create_task(self._pool_loop())
        finally:
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await self.agents.aclose()
            await self.events.aclose()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _poke(self) -> None:
        self.wake.set()

    # ---- watch events: they only update the caches and wake the loop ------------------------

    def _parsed(self, kind: str, obj: dict, into: dict) -> None:
        name = obj["metadata"]["name"]
        model = None if kind == "DELETED" else parse_object(f"{self.kube.server}", obj)[0]
        if into.get(name) != model:
            self.topology_dirty = True
            if model is None:
                into.pop(name, None)
            else:
                into[name] = model
        self._poke()

    def _on_node(self, kind: str, obj: dict) -> None:
        self._parsed(kind, obj, self.nodes)

    def _on_pool(self, kind: str, obj: dict) -> None:
        self.pools_dirty = True  # its status too: written from what it says now
        self._parsed(kind, obj, self.pools)

    def _on_set(self, kind: str, obj: dict) -> None:
        meta = obj["metadata"]
        name = meta["name"]
        model, problems = (None, []) if kind == "DELETED" else parse_object(self.kube.server, obj)
        if problems:
            labels = {k: v for k, v in (meta.get("labels") or {}).items() if isinstance(v, str)}
            placeholder = PinnedImageSet(name, meta.get("generation", 1), meta.get("uid", ""), labels, (),
                                         "; ".join(problems))
            if self.invalid.get(name) != placeholder:
                self.invalid[name] = placeholder
                self.topology_dirty = True
                self.events.emit(self.set_resource, obj, "InvalidPinnedImageSet", "; ".join(problems), warning=True)
            self.sets.pop(name, None)
        elif self.invalid.pop(name, None) is not None:
            self.topology_dirty = True
        self._parsed("DELETED" if model is None else kind, obj, self.sets)

    def _on_mcn(self, kind: str, obj: dict) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self.observed.pop(name, None)
            self.mcn_versions.pop(name, None)
        else:
            version = st.version(obj)
            if version != -1 and version < self.mcn_versions.get(name, -1):
                return  # older than what a write of ours already returned
            self.mcn_versions[name] = version
            self.observed[name] = st.observe(obj)
        self.pools_dirty = True
        self._poke()

    def _store(self, obj: dict) -> None:
        self._on_mcn("MODIFIED", obj)

    def _config(self, pool: str) -> str:
        return ((self._raw(POOLS, pool).get("spec") or {}).get("configuration") or {}).get("name", "")

    # ---- the loop ----------------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            await self.wake.wait()
            await asyncio.sleep(self.settings.debounce_seconds)
            self.wake.clear()
            wake_at = self._pass(time.monotonic())
            if wake_at is not None and (self.timer is None or self.timer.when() > wake_at
                                        or self.timer.when() < time.monotonic()):
                if self.timer is not None:
                    self.timer.cancel()  # one timer, for the earliest retry
                self.timer = asyncio.get_running_loop().call_at(wake_at, self._poke)

    def _recompute(self) -> None:
        cluster = Cluster(self.sets, self.pools, self.nodes)
        self.desired = targets(cluster, self.invalid, port=self.settings.port, endpoints=self.settings.endpoints)
        members: dict[str, list[str]] = {}
        for name, desired in self.desired.items():
            if desired.target is not None:
                members.setdefault(desired.target.pool, []).append(name)
        self.members = {pool: tuple(sorted(names)) for pool, names in members.items()}
        self.topology_dirty = False
        self.pools_dirty = True

    def _pass(self, now: float) -> float | None:
        if self.topology_dirty:
            self._recompute()
        need, done, failed, unpins, announce = {}, {}, {}, [], []
        for name in self.desired.keys() | self.observed.keys():
            run = self.runs.get(name)
            desired, observed = self.desired.get(name), self.observed.get(name, st.Observed())
            target = desired.target if desired else None
            done[name] = st.up_to_date(target, observed)
            failed[name] = bool(run and run.unavailable) or st.failed_at(target, observed)
            if (run and run.working) or name in self.busy:
                continue
            pool = self.pools.get(target.pool) if target else None
            memo = (desired, observed, pool.paused if pool else False)
            if self.settled.get(name) == memo:
                continue
            action, verdict = decide(desired, observed, paused=memo[2])
            if action == WORK:
                need[name] = True
                if target is None:
                    unpins.append(name)
                elif not st.announced(target, observed) and name not in self.announcing:
                    announce.append(name)
            elif action == WRITE and self.retry_write.get(name, 0) <= now:
                self._spawn(self._write(name, target, verdict, memo))
            elif action == DELETE:
                self._spawn(self._delete(name, observed))
            elif action == STAND_ASIDE:
                self._stand_aside(name, observed)
                self.settled[name] = memo
            elif action != WRITE:
                self.settled[name] = memo
        work = [PoolWork(pool, members, pool_width(self.pools[pool], len(members)), self.pools[pool].paused)
                for pool, members in self.members.items() if pool in self.pools]
        if unpins:  # nodes that left every pool: pinning nothing is not limited by a pool
            work.append(PoolWork("", tuple(sorted(unpins)), max(len(unpins), 1)))
        plan = schedule(work, need, done, failed, self.runs, self.settings.rollout, now)
        self.aborted = plan.aborted
        for name in plan.start:
            self._start(name)
        for name in announce:
            self.announcing.add(name)
            self._spawn(self._announce(name))
        return min((t for t in (plan.wake_at, *self.retry_write.values()) if t is not None and t > now), default=None)

    def _start(self, name: str) -> None:
        desired = self.desired.get(name)
        target = desired.target if desired else None
        if target is None:
            observed = self.observed[name]
            try:
                target = unpin_target(self.nodes[name], observed.pool, port=self.settings.port,
                                      endpoints=self.settings.endpoints)
            except (InvalidArgument, KeyError) as e:
                log.warning("node %s left every pool but its pins cannot be removed: %s", name, e)
                return
        run = self.runs.setdefault(name, Run())
        if run.key != run_key(target):
            run.key, run.failures, run.retry_at, run.unavailable = run_key(target), 0, 0.0, ""
        run.working = True
        self._spawn(self._work(name, target, run))

    # ---- a node's attempt --------------------------------------------------------------------

    async def _work(self, name: str, target: Target, run: Run) -> None:
        progress: list[asyncio.Task] = []

        async def say_progressing() -> None:
            await asyncio.sleep(self.settings.progress_after_seconds)
            write = asyncio.ensure_future(self.writer.write(name, target, st.Verdict(progressing=True)))
            progress.append(write)
            await asyncio.shield(write)

        timer: list[asyncio.Task] = []
        try:
            outcome = await self.agents.converge(target, lambda: timer.append(asyncio.ensure_future(say_progressing())))
            for task in timer:
                task.cancel()
            await asyncio.gather(*timer, *progress, return_exceptions=True)
            # The agent is done: the node's slot goes to the next node at once; until its status
            # is written the node is busy (never started again on the old status).
            self.busy.add(name)
            run.working = False
            self._poke()
            await self._finish(name, target, run, outcome)
        except KubeApiError as e:
            log.warning("node %s: status not written: %s", name, e)
        finally:
            run.working = False
            self.busy.discard(name)
            self.pools_dirty = True
            self._poke()

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
                self.events.emit(NODES, self._raw(NODES, name), "PinnedImageSetsFailed", verdict.message,
                                 warning=True, key=(run.key, verdict.reason, outcome.message))
        await self.writer.write(name, target, verdict, outcome.status)

    def _raw(self, resource, name: str) -> dict:
        return next(i for i in self.informers if i.resource == resource).objects.get(name) or {"metadata": {"name": name}}

    # ---- writes --------------------------------------------------------------------------------

    async def _write(self, name: str, target: Target | None, verdict: st.Verdict, memo: tuple) -> None:
        self.busy.add(name)
        try:
            await self.writer.write(name, target, verdict)
            self.settled[name] = (memo[0], self.observed.get(name, st.Observed()), memo[2])
            self.retry_write.pop(name, None)
        except KubeApiError as e:
            log.warning("node %s: status not written: %s", name, e)
            self.retry_write[name] = time.monotonic() + self.settings.failure_backoff.delay(1)
        finally:
            self.busy.discard(name)
            self._poke()

    async def _announce(self, name: str) -> None:
        """Writes the node's new desired generations (current ones unchanged) and why it
        waits, or that it applies when it started meanwhile; nothing when its attempt's own
        write got there first."""
        try:
            async with self.writer.slot(name, ANNOUNCE):
                desired = self.desired.get(name)
                target = desired.target if desired else None
                if target is None or st.announced(target, self.observed.get(name, st.Observed())):
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
            self._on_mcn("DELETED", {"metadata": {"name": name}})
            self.runs.pop(name, None)
            await self.agents.forget(name)
        except KubeApiError as e:
            log.warning("node %s: MachineConfigNode not deleted: %s", name, e)
        finally:
            self.busy.discard(name)

    def _stand_aside(self, name: str, observed: st.Observed) -> None:
        message = (f"MachineConfigNode/{name} was not created by {st.CONTROLLER} (managed by "
                   f"{', '.join(observed.managers) or 'another manager'}, e.g. the Machine Config Operator): "
                   f"pinsvc leaves this node's pins and status to it")
        log.info("%s", message)
        if name in self.nodes:
            self.events.emit(NODES, self._raw(NODES, name), "ManagedElsewhere", message)

    # ---- pools ---------------------------------------------------------------------------------

    async def _pool_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.status_interval_seconds)
            if self.pools_dirty:
                self.pools_dirty = False
                await asyncio.gather(*(self._pool(name) for name in self.pools))
                self._completions()

    async def _pool(self, name: str) -> None:
        raw = self._raw(POOLS, name)
        members = st.pool_members(self.members.get(name, ()), self.desired, self.observed, self.runs)
        ours = any(s.get("poolSynchronizerType") == st.SYNCHRONIZER
                   for s in (raw.get("status") or {}).get("poolSynchronizersStatus") or [])
        if not members and not ours:
            return
        new = st.pool_status(raw, members, now=now_rfc3339(), aborted=self.aborted.get(name, ""))
        if not st.pool_changed(raw, new):
            return
        body = {"metadata": {"resourceVersion": raw["metadata"]["resourceVersion"]}, "status": new}
        try:
            await self.kube.merge_patch(POOLS, name, body, subresource="status")
        except KubeApiError as e:  # 409: changed meanwhile; the watch brings the new one and a new try
            log.log(logging.INFO if e.status == 409 else logging.WARNING, "pool %s: status not written: %s", name, e)
            self.pools_dirty = True

    def _completions(self) -> None:
        """A Normal event on each set whose current generation every node that should pin
        it now pins, once per set generation this controller applied somewhere."""
        for set_name, generation, nodes in st.completed(self.touched, self.sets, self.desired, self.observed):
            self.touched.discard((set_name, generation))
            if nodes:
                self.events.emit(self.set_resource, self._raw(self.set_resource, set_name), "RolloutComplete",
                                 f"generation {generation} is pinned on all {nodes} nodes that should pin it",
                                 key=(generation,))
