"""Rolling PinnedImageSets out across node agents, per MachineConfigPool.

`plan_rollout` turns a loaded Cluster into targets (node, pool, endpoint, sets) and refuses
bad endpoints before any node is contacted. `Rollout` then runs:
1. pre-flight: every target agent's CheckSpace in parallel; `plan` stops here;
2. per pool, pools in parallel: a gate first when given (coordinator/warmup.py: the site
   cache warmed, nodes started only within the windows), then at most max-parallel
   (maxUnavailable) nodes applying at once, an optional canary (the first N nodes, then pause
   or go on), abort of the pool once more than abort-after nodes failed, a deadline per node,
   retries for unavailable agents, paused pools untouched. One failing node never cancels others.
Resumable: before applying, each agent is asked for its status and a node already at the
desired content (`content.gaps`) is not applied again; a durable record keeps each node's
outcome. Only an agent that does not answer is called again (`Options.backoff`); a failure
the agent reports (a registry, an image, space) is the node's outcome, with its cause.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pinsvc_client import PinClient, PinError, SetSpec, pb

from pinsvc import errors, tracing
from pinsvc.client import connect
from pinsvc.console import pins_of
from pinsvc.coordinator import content, selection
from pinsvc.coordinator.objects import Cluster, Node, PinnedImageSet
from pinsvc.coordinator.record import (AGENT_UNAVAILABLE, APPLYING, CHECKED, FAILED, INSUFFICIENT_SPACE, NOT_STARTED,
                                       PAUSED, PENDING, PREFETCH_FAILED, REGISTRY_UNAVAILABLE, RUNTIME_UNAVAILABLE,
                                       SKIPPED, UNAVAILABLE, UNPIN_REFUSED, UPDATED, WARNING, NodeRecord, Record,
                                       status_doc)
from pinsvc.retry import Backoff, retry

log = logging.getLogger("pinsvc.coordinator")

DEFAULT_PORT = 9440
SAVE_INTERVAL_SECONDS = 1.0


@dataclass(frozen=True)
class Target:
    node: str
    pool: str
    endpoint: str
    sets: tuple[PinnedImageSet, ...]
    skip: str | None = None  # NotReady, DiskPressure

    @property
    def images(self) -> list[str]:
        return list(dict.fromkeys(i for s in self.sets for i in s.images))

    def specs(self, status: pb.NodeStatus | None = None) -> list[SetSpec]:
        """The sets to apply to this node, whose agent reported `status` (generations of sets
        written without one are derived from it: see `content`)."""
        return content.specs(self.sets, status)


def is_current(status: pb.NodeStatus, target: Target) -> bool:
    """The node is at the target's desired content (`content.gaps`), not merely at its
    generation numbers."""
    return not content.gaps(target.specs(status), status)


@dataclass(frozen=True)
class PoolPlan:
    name: str
    targets: tuple[Target, ...]
    max_parallel: int
    paused: bool


def node_target(cluster: Cluster, node: Node, *, port: int = DEFAULT_PORT,
                endpoints: Mapping[str, str] = {}) -> Target | None:
    """What `node` should pin, through which pool and agent endpoint (pure): None when it is
    in no pool. Raises InvalidArgument naming the node when its endpoint cannot be found or
    it is in two custom pools. `plan_rollout` and the controller share it."""
    pool = selection.primary_pool(cluster, node)
    if pool is None:
        return None
    endpoint = selection.endpoint(node, port=port, overrides=endpoints)
    sets = tuple(selection.node_sets(cluster, node))
    return Target(node.name, pool.name, endpoint, sets, selection.skip_reason(node))


def plan_rollout(cluster: Cluster, *, port: int = DEFAULT_PORT,
                 endpoints: Mapping[str, str] = {}) -> list[PoolPlan]:
    """Targets per pool. Raises one InvalidArgument naming every node whose agent endpoint
    cannot be found."""
    problems, by_pool = [], {}
    for node in cluster.nodes.values():
        try:
            target = node_target(cluster, node, port=port, endpoints=endpoints)
        except errors.InvalidArgument as e:
            problems += e.problems
            continue
        if target is not None:
            by_pool.setdefault(target.pool, []).append(target)
    if problems:
        raise errors.InvalidArgument(problems)
    plans = []
    for name, pool in cluster.pools.items():
        targets = tuple(by_pool.get(name, ()))
        plans.append(PoolPlan(name, targets, selection.max_unavailable(pool, max(len(targets), 1)), pool.paused))
    return plans


@dataclass(frozen=True)
class Options:
    max_parallel: int = 0  # 0 = each pool's maxUnavailable
    canary: int = 0  # apply the first N nodes of each pool first
    canary_pause: bool = False  # stop after the canary (rerun to go on)
    abort_after: int = 1  # abort a pool once more than this many nodes failed (0 = never)
    node_deadline_seconds: float = 3600.0
    # attempts per node while its agent is unavailable, and the waits between them
    backoff: Backoff = Backoff(initial_seconds=1.0, factor=2.0, max_seconds=30.0, jitter=0.2, attempts=3)
    concurrency: int = 100  # agent calls in flight across all pools
    parallelism: int = 0  # pulls in flight per node (0 = the agent's default)
    preflight: bool = True
    prune_all: bool = False  # unpin nodes no set selects; without it they are refused


Progress = Callable[[NodeRecord, "pb.ApplyEvent | None"], None]


class Rollout:
    def __init__(self, plans: list[PoolPlan], options: Options, *, record: Record | None = None,
                 progress: Progress = lambda record, event: None,
                 connect: Callable[[str, str], PinClient] = connect, gate=None):  # a warmup.Gate
        self.plans = plans
        self.gate = gate
        self.options = options
        self.record = record or Record(None)
        self.progress = progress
        self.connect = connect
        self._gate = asyncio.Semaphore(max(options.concurrency, 1))
        self.aborted: dict[str, str] = {}  # pool -> why it stopped early
        self._saved_at = 0.0
        self._clients: dict[str, PinClient] = {}
        for target in (t for p in plans for t in p.targets):
            # The record keeps the last run's outcome; this run finds each node's state anew.
            record = self.record.node(target)
            record.state, record.reason, record.cause = PENDING, "", ""

    # ---- pre-flight ----------------------------------------------------------------------

    async def preflight(self) -> None:
        """CheckSpace on every target node in parallel; records fits, bytes and reasons."""
        try:
            await self._preflight()
        finally:
            await self.aclose()

    async def _preflight(self) -> None:
        await asyncio.gather(*(self._check(t) for p in self.plans for t in p.targets))
        self._save(force=True)

    async def _check(self, target: Target) -> None:
        record = self.record.node(target)
        record.images = len(target.images)
        if target.skip:
            record.state, record.reason = SKIPPED, target.skip
            self.progress(record, None)
            return
        try:
            async with self._gate:
                plan = await self._call(target, lambda c: c.check_space(target.images), record)
        except PinError as e:
            record.fail(e, "pre-flight: ")
            if record.cause == INSUFFICIENT_SPACE:
                record.fits = False
            elif record.cause not in (AGENT_UNAVAILABLE, REGISTRY_UNAVAILABLE, RUNTIME_UNAVAILABLE):
                # Some images cannot be sized (e.g. not in the registry): the sets holding them
                # will fail on the node, the others can still be pinned, so the node goes on.
                # A registry or runtime that does not answer would only fail the Apply again.
                record.fits, record.state = None, WARNING
        else:
            record.required_bytes, record.free_bytes, record.fits = plan.required_bytes, plan.free_bytes, plan.fits
            if not plan.fits:
                record.state, record.reason, record.cause = FAILED, f"pre-flight: {plan.verdict}", INSUFFICIENT_SPACE
            else:
                record.state, record.reason = CHECKED, plan.verdict
        self.progress(record, None)

    async def read_status(self) -> None:
        """Every target agent's status, without changing anything."""
        async def one(target: Target) -> None:
            record = self.record.node(target)
            if target.skip:
                record.state, record.reason = SKIPPED, target.skip
                return
            try:
                async with self._gate:
                    status = await self._call(target, lambda c: c.status(), record)
            except PinError as e:
                record.fail(e)
                return
            record.observe(status, content.gaps(target.specs(status), status))

        try:
            await asyncio.gather(*(one(t) for p in self.plans for t in p.targets))
        finally:
            await self.aclose()

    # ---- rollout -------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            with tracing.span("rollout", {"pinsvc.pools": [p.name for p in self.plans],
                                          "pinsvc.nodes": sum(len(p.targets) for p in self.plans)}):
                if self.options.preflight:
                    with tracing.span("preflight"):
                        await self._preflight()
                await asyncio.gather(*(self._traced_pool(p) for p in self.plans))
                if self.aborted or any(r.state in (FAILED, UNAVAILABLE) for r in self.record.nodes.values()):
                    tracing.set_error("; ".join(self.aborted.values()) or "some nodes failed")
        finally:
            self._save(force=True)
            await asyncio.shield(self.aclose())

    async def _traced_pool(self, plan: PoolPlan) -> None:
        with tracing.span("pool", {"pinsvc.pool": plan.name, "pinsvc.nodes": len(plan.targets),
                                   "pinsvc.pool.paused": plan.paused}):
            await self._pool(plan)
            if plan.name in self.aborted:
                tracing.set_error(self.aborted[plan.name])

    async def _pool(self, plan: PoolPlan) -> None:
        records = [self.record.node(t) for t in plan.targets]
        if plan.paused:
            for r in records:
                if r.state not in (UPDATED, SKIPPED):
                    r.state, r.reason = PAUSED, f"pool {plan.name} is paused"
                    self.progress(r, None)
            return
        width = self.options.max_parallel or plan.max_parallel
        todo = [t for t in plan.targets if self.record.node(t).state not in (SKIPPED,)]
        if todo and self.gate and not await self.gate.before_pool(plan, [self.record.node(t) for t in todo]):
            return self._save()  # the gate failed them, its reason over the pre-flight's (e.g. the cache is down)
        failed = [t for t in todo if self.record.node(t).state in (FAILED, UNAVAILABLE)]
        todo = [t for t in todo if t not in failed]
        canary = self.options.canary
        batches = [todo[:canary], todo[canary:]] if canary else [todo]
        for index, batch in enumerate(batches):
            failures = len(failed)
            if self._aborted(plan, failures):
                self.aborted[plan.name] = (f"pool {plan.name} aborted: {failures} nodes failed "
                                           f"(abort after {self.options.abort_after})")
                self._not_started(plan, batch, self.aborted[plan.name])
                return
            failed += await self._batch(plan, batch, width, len(failed))
            if self._aborted(plan, len(failed)) and any(
                    self.record.node(t).state == NOT_STARTED for t in batch):
                self.aborted[plan.name] = (f"pool {plan.name} aborted: {len(failed)} nodes failed "
                                           f"(abort after {self.options.abort_after})")
            if canary and index == 0 and self.options.canary_pause and batches[1]:
                self._not_started(plan, batches[1], f"paused after the canary of {canary} nodes; rerun to go on")
                return

    def _aborted(self, plan: PoolPlan, failures: int) -> bool:
        return self.options.abort_after > 0 and failures >= self.options.abort_after

    def _not_started(self, plan: PoolPlan, targets, reason: str) -> None:
        for t in targets:
            r = self.record.node(t)
            if r.state not in (UPDATED, FAILED, UNAVAILABLE, SKIPPED):
                r.state, r.reason = NOT_STARTED, reason
                self.progress(r, None)
        self._save()

    async def _batch(self, plan: PoolPlan, targets, width: int, failed_before: int) -> list[Target]:
        """Applies `targets` with at most `width` at once; stops starting new ones once the
        pool's failures pass the abort threshold. Returns the targets that failed."""
        slots = asyncio.Semaphore(max(width, 1))
        failed: list[Target] = []
        stop = asyncio.Event()

        async def one(target: Target) -> None:
            async with slots:
                if stop.is_set():
                    self._not_started(plan, [target], f"pool {plan.name} aborted: {failed_before + len(failed)} "
                                                      f"nodes failed (abort after {self.options.abort_after})")
                    return
                if self.gate is not None and not await self.gate.before_node(plan, self.record.node(target)):
                    return  # its windows do not open again: the gate said so in its record
                ok = await self._node(target)
            if not ok:
                failed.append(target)
                if self._aborted(plan, failed_before + len(failed)):
                    stop.set()

        await asyncio.gather(*(one(t) for t in targets))
        return failed

    async def _node(self, target: Target) -> bool:
        """Brings one node to its sets; True when it is updated."""
        with tracing.span("node", {"k8s.node.name": target.node, "pinsvc.pool": target.pool,
                                   "pinsvc.agent.endpoint": target.endpoint,
                                   "pinsvc.sets": [s.name for s in target.sets]}):
            ok = await self._node_body(target)
            tracing.set_attributes({"pinsvc.result": self.record.node(target).state})
            if not ok:
                tracing.set_error(self.record.node(target).reason)
            return ok

    async def _node_body(self, target: Target) -> bool:
        record = self.record.node(target)
        start = time.monotonic()
        try:
            async with asyncio.timeout(self.options.node_deadline_seconds or None):
                await self._converge(target, record)
        except TimeoutError:
            record.state, record.cause = FAILED, PREFETCH_FAILED
            record.reason = f"deadline of {self.options.node_deadline_seconds:g}s passed"
        except PinError as e:
            record.fail(e)
        record.seconds = time.monotonic() - start
        self.progress(record, None)
        self._save()
        return record.state == UPDATED

    async def _converge(self, target: Target, record: NodeRecord) -> None:
        # One slot of the global gate for the node's status read and its Apply together, so
        # that nodes finish one by one instead of every node reading its status first.
        async with self._gate:
            status = await self._call(target, lambda c: c.status(), record)
            specs = target.specs(status)
            record.status = status_doc(status)
            if not content.gaps(specs, status):
                record.state, record.reason = UPDATED, "already at the desired content"
                return
            if not specs:  # a wrong file or selector must not unpin a node
                if not self.options.prune_all:
                    record.state, record.cause = FAILED, UNPIN_REFUSED
                    record.reason = (f"no PinnedImageSet in the input selects this node: applying would unpin "
                                     f"{pins_of(status)}; give --prune-all to unpin them")
                    return
                log.warning("%s: unpinning every set: %s", target.node, pins_of(status))
            record.state, record.reason = APPLYING, ""
            record.images_done = record.bytes_done = 0
            self.progress(record, None)
            final: list[pb.NodeStatus] = []

            async def apply(client: PinClient) -> None:
                async for event in client.apply(specs, parallelism=self.options.parallelism):
                    kind = event.WhichOneof("event")
                    if kind == "image" and event.image.kind in (pb.ImageEvent.PULLED,
                                                                pb.ImageEvent.ALREADY_PRESENT):
                        record.images_done += 1
                        record.bytes_done += event.image.bytes
                        self.progress(record, event)
                    elif kind == "status":
                        record.status = status_doc(event.status)
                        final.append(event.status)

            await self._call(target, apply, record)
        # The agent says it succeeded; success is reported only for content it reports too.
        gaps = content.gaps(specs, final[-1]) if final else ["the agent's Apply ended without its status"]
        if gaps:
            record.state, record.cause = FAILED, PREFETCH_FAILED
            record.reason = "the Apply succeeded but the node is not at the desired content: " + "; ".join(gaps)
        else:
            record.state, record.reason = UPDATED, "pinned and verified"

    async def _call(self, target: Target, fn, record: NodeRecord):
        """Calls the agent over the node's channel (one per node for the whole rollout),
        retrying on a fresh channel while it is unavailable."""
        async def attempt(n: int):
            record.attempts = n
            client = self._clients.get(target.node)
            if client is None:
                client = self._clients[target.node] = self.connect(target.endpoint, target.node)
            try:
                return await fn(client)
            except PinError as e:
                if e.retryable:  # a channel in backoff after a failure would delay the retry: start afresh
                    await self._clients.pop(target.node).close()
                raise

        return await retry(attempt, self.options.backoff, what=f"node {target.node}: agent at {target.endpoint}",
                           logger=log)

    async def aclose(self) -> None:
        """Closes every agent channel."""
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(c.close() for c in clients))

    def _save(self, force: bool = False) -> None:
        """Writes the record at most once a second while nodes change (a full rewrite per
        node would make a 1,000-node rollout quadratic), and always when forced."""
        now = time.monotonic()
        if force or now - self._saved_at >= SAVE_INTERVAL_SECONDS:
            self.record.save()
            self._saved_at = now

