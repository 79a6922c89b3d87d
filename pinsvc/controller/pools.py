"""The reconciler's report on the pools: each MachineConfigPool's `PinnedImageSets` entry of
`status.poolSynchronizersStatus`, its PinnedImageSetsDegraded condition and the warm stage's
PinnedImageSetsWarmed (controller/warming.py) (merge patches of
the status subresource, with the pool's resourceVersion: a pool changed meanwhile is written
again from what it says now), and a Normal event on each set once every node that should pin
its generation does."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from pinsvc.controller import status as st
from pinsvc.controller.kubeapi import POOLS, KubeApiError, now_rfc3339

if TYPE_CHECKING:
    from pinsvc.controller.reconciler import Reconciler

log = logging.getLogger("pinsvc.controller")


async def report(rec: Reconciler) -> None:
    """Writes the pools' status and the sets' completion events, at most once per
    `status_interval_seconds`, while something changed; runs while `rec` leads."""
    while True:
        await asyncio.sleep(rec.settings.status_interval_seconds)
        if rec.cache.pools_dirty or rec.warms.changed:
            rec.cache.pools_dirty = rec.warms.changed = False
            await asyncio.gather(*(_pool(rec, name) for name in rec.pools))
            _completions(rec)


async def _pool(rec: Reconciler, name: str) -> None:
    raw = rec.cache.raw(POOLS, name)
    members = st.pool_members(rec.members.get(name, ()), rec.desired, rec.observed, rec.runs)
    ours = any(s.get("poolSynchronizerType") == st.SYNCHRONIZER
               for s in (raw.get("status") or {}).get("poolSynchronizersStatus") or [])
    if not members and not ours:
        return
    new = st.pool_status(raw, members, now=now_rfc3339(), aborted=rec.aborted.get(name, ""),
                         extra=rec.warms.conditions(name, raw, now_rfc3339()))
    if not st.pool_changed(raw, new):
        return
    body = {"metadata": {"resourceVersion": raw["metadata"]["resourceVersion"]}, "status": new}
    try:
        await rec.kube.merge_patch(POOLS, name, body, subresource="status")
    except KubeApiError as e:  # 409: changed meanwhile; the watch brings the new one and a new try
        log.log(logging.INFO if e.status == 409 else logging.WARNING, "pool %s: status not written: %s", name, e)
        rec.cache.pools_dirty = True


def _completions(rec: Reconciler) -> None:
    """A Normal event on each set whose current generation every node that should pin
    it now pins, once per set generation this controller applied somewhere."""
    for set_name, generation, nodes in st.completed(rec.touched, rec.sets, rec.desired, rec.observed):
        rec.touched.discard((set_name, generation))
        if nodes:
            resource = rec.cache.set_resource
            rec.events.emit(resource, rec.cache.raw(resource, set_name), "RolloutComplete",
                             f"generation {generation} is pinned on all {nodes} nodes that should pin it",
                             key=(generation,))
