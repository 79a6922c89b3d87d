"""Kubernetes Events (events.k8s.io/v1) for what users should see in `kubectl describe`:
failures on the Node, completions and invalid sets on the PinnedImageSet, a node left to
another manager. Each distinct event is sent once per leader term (a level-triggered
controller sees the same state many times); sending never blocks reconciling, and a failed
send is logged, not retried."""

from __future__ import annotations

import asyncio
import logging
import time

from pinsvc.controller.kubeapi import Kube, KubeApiError, Resource, micro_time

log = logging.getLogger("pinsvc.controller.events")

REPORTER = "pinsvc.io/controller"
NAMESPACE = "default"  # where events about cluster-scoped objects must live
MAX_NOTE = 1024
MAX_REMEMBERED = 10000


class Recorder:
    def __init__(self, kube: Kube, identity: str):
        self.kube = kube
        self.identity = identity[:128]
        self.sent: set[tuple] = set()
        self.tasks: set[asyncio.Task] = set()
        self.gate = asyncio.Semaphore(8)

    def emit(self, resource: Resource, obj: dict, reason: str, note: str, *, warning: bool = False,
             key: tuple = ()) -> None:
        """Sends the event unless the same (object, reason, key or note) was sent before."""
        meta = obj.get("metadata") or {}
        dedupe = (resource.kind, meta.get("name"), meta.get("uid"), reason, key or note)
        if dedupe in self.sent:
            return
        if len(self.sent) >= MAX_REMEMBERED:
            self.sent.clear()
        self.sent.add(dedupe)
        body = {"apiVersion": "events.k8s.io/v1", "kind": "Event",
                "metadata": {"name": f"{meta.get('name', 'pinsvc')}.{time.time_ns():x}", "namespace": NAMESPACE},
                "eventTime": micro_time(), "reportingController": REPORTER, "reportingInstance": self.identity,
                "action": "Pin", "reason": reason, "note": note[:MAX_NOTE], "type": "Warning" if warning else "Normal",
                "regarding": {"apiVersion": resource.api_version, "kind": resource.kind, "name": meta.get("name"),
                              "uid": meta.get("uid", "")}}
        task = asyncio.get_running_loop().create_task(self._send(body))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _send(self, body: dict) -> None:
        async with self.gate:
            try:
                await self.kube.event(body, NAMESPACE)
            except KubeApiError as e:
                log.warning("event %s on %s/%s not recorded: %s", body["reason"], body["regarding"]["kind"],
                            body["regarding"]["name"], e)

    async def aclose(self) -> None:
        """Waits for the events in flight (briefly), then drops the rest."""
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=2)
        for task in list(self.tasks):
            task.cancel()
