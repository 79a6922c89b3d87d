"""Writes of the MachineConfigNodes the controller owns: creating one (server-side apply of
its spec), its status (server-side apply of the status subresource, only when it differs)
and deleting one.

Writes of one node never overlap: each holds the node's lock and computes its document from
what the MachineConfigNode says once the lock is held (with what the previous write
returned), so two writes of one node can never break the CEL rules against each other (a
late write lowering a generation). Writes wait in one of two lanes, each bounded:
`RESULT` for what a node's attempt found (the end of a rollout waits for those) and
`ANNOUNCE` for the new desired generations written to every node a change concerns, so that
a thousand announcements at the start of a rollout never queue ahead of a result.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from pinsvc.controller import status as st
from pinsvc.controller.kubeapi import MCNS, Kube, now_rfc3339
from pinsvc.coordinator.rollout import Target

RESULT, ANNOUNCE = "result", "announce"
LANES = {RESULT: 32, ANNOUNCE: 16}
"""Writes in flight at once per lane: a rollout of 1,000 nodes queues here, not in the
connection pool that also carries the watches."""


class Writer:
    """`observed` is the reconciler's view of each MachineConfigNode (read under the node's
    lock); `store(obj)` takes what a write returned into it; `config(pool)` is the pool's
    rendered configuration name (spec.configVersion.desired of a new MachineConfigNode)."""

    def __init__(self, kube: Kube, observed: dict[str, st.Observed], store: Callable[[dict], None],
                 config: Callable[[str], str]):
        self.kube = kube
        self.observed = observed
        self.store = store
        self.config = config
        self.lanes = {lane: asyncio.Semaphore(size) for lane, size in LANES.items()}
        self.locks: dict[str, asyncio.Lock] = {}
        self.holders: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def slot(self, name: str, lane: str = RESULT) -> AsyncIterator[None]:
        """A place in `lane`, then the node's lock."""
        self.holders[name] = self.holders.get(name, 0) + 1
        try:
            async with self.lanes[lane], self.locks.setdefault(name, asyncio.Lock()):
                yield
        finally:
            self.holders[name] -= 1
            if not self.holders[name]:  # nobody holds or waits for it: forget the lock
                del self.holders[name]
                self.locks.pop(name, None)

    async def write(self, name: str, target: Target | None, verdict: st.Verdict, agent=None) -> None:
        async with self.slot(name):
            await self.write_now(name, target, verdict, agent)

    async def write_now(self, name: str, target: Target | None, verdict: st.Verdict, agent=None) -> None:
        """Creates or re-pools the node's MachineConfigNode when needed, then applies its
        status when it differs; the caller holds the node's `slot`."""
        observed = self.observed.get(name, st.Observed())
        pool = target.pool if target and target.pool else observed.pool
        if not observed.exists or (pool and observed.pool != pool):
            observed = self._stored(await self.kube.apply(MCNS, st.spec(name, pool or "none", self.config(pool))))
        doc = st.node_status(name, target, observed, verdict, now=now_rfc3339(), agent=agent)
        if st.same_status(doc, observed):
            return
        if lower := st.decreasing(doc, observed):
            first = {**doc, "pinnedImageSets": [e for e in doc["pinnedImageSets"] if e["name"] not in lower]}
            observed = self._stored(await self.kube.apply(MCNS, st.status_body(name, first), subresource="status"))
            doc = st.node_status(name, target, observed, verdict, now=now_rfc3339(), agent=agent)
        self._stored(await self.kube.apply(MCNS, st.status_body(name, doc), subresource="status"))

    async def delete(self, name: str, uid: str) -> None:
        async with self.slot(name):
            await self.kube.delete(MCNS, name, uid=uid)

    def _stored(self, obj: dict) -> st.Observed:
        """What a write returned is the newest version: use it at once."""
        self.store(obj)
        return self.observed[obj["metadata"]["name"]]
