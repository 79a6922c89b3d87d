"""What the controller tells the kubelet and Prometheus, over HTTP on `--http-address`
(`:8080` by default; '' = off): `/healthz`, `/readyz` and `/metrics`.

- `/healthz` (liveness): 200 while the process's event loop answers. Neither the API server
  nor the Lease is asked: a controller that cannot reach the API server is not helped by a
  restart (it keeps trying, and the standby takes the Lease when the leader cannot renew).
- `/readyz` (readiness): 200 when this replica's view of the cluster is current, which
  means, on the leader, that its informers have listed every resource they watch (caches
  synced: it acts on the whole cluster, not on what it has read so far); on a standby, that
  the API server answered its last Lease request (a standby keeps no caches; it lists when
  it takes over). Leader and standby are both ready: readiness says "this replica works", not
  "this replica leads" (a Deployment's rollout would wait forever for a standby that is not
  ready). 503 with the reason otherwise, e.g. while the leader's first list is running.
- `/metrics`: Prometheus text (or OpenMetrics when asked), the controller's own registry:
  reconcile passes, node attempts by result, the queue of nodes waiting for a slot, the
  nodes applying, leadership and cache state, the warm stage's progress per pool (`pinsvc_warm_*`),
  build info, process metrics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import choose_encoder

from pinsvc import version
from pinsvc.controller.metrics import WarmMetrics
from pinsvc.metrics import parse_address

log = logging.getLogger("pinsvc.controller.probes")

PASS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
APPLY_RESULTS = ("updated", "already_current", "failed", "unavailable")


@dataclass
class State:
    """Leadership and cache state, as the readiness probe and the metrics read it."""

    leading: bool = False
    synced: bool = False  # the leader's informers have listed everything they watch
    api_error: str = "no Lease request answered by the API server yet"  # "" = the last one was

    def readiness(self) -> tuple[bool, str]:
        if self.leading:
            return (True, "leading; caches synced") if self.synced else (False, "leading; caches not synced yet")
        if self.api_error:
            return False, f"standby; {self.api_error}"
        return True, "standby; the API server answers"


class Metrics:
    """The controller's metrics, in a registry of their own."""

    def __init__(self, state: State):
        disable_created_metrics()  # no stray `_created` gauges (the agent's rule, pinsvc/metrics.py)
        self.registry = r = CollectorRegistry(auto_describe=True)
        from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        Gauge("pinsvc_build_info", "Always 1: the version of the controller", ["version"], registry=r) \
            .labels(version()).set(1)
        Gauge("pinsvc_controller_leader", "1 while this replica holds the Lease and reconciles, else 0",
              registry=r).set_function(lambda: 1 if state.leading else 0)
        Gauge("pinsvc_controller_caches_synced", "1 once the leader's informers have listed every resource "
              "they watch (0 on a standby)", registry=r).set_function(lambda: 1 if state.leading and state.synced else 0)
        self.reconciles = Counter(
            "pinsvc_controller_reconciles", "Reconcile passes, by scope: every node (after a change of sets, "
            "pools or nodes, or a timer) or the nodes something happened to", ["scope"], registry=r)
        for scope in ("all", "changed"):
            self.reconciles.labels(scope)
        self.reconcile_duration = Histogram(
            "pinsvc_controller_reconcile_duration_seconds", "Time one reconcile pass took (the event loop "
            "does nothing else meanwhile)", buckets=PASS_BUCKETS, registry=r)
        self.applies = Counter(
            "pinsvc_controller_applies", "Node attempts that ended, by result: updated (the agent applied and "
            "verified), already_current (no Apply needed), failed, unavailable (the agent could not be reached)",
            ["result"], registry=r)
        for result in APPLY_RESULTS:
            self.applies.labels(result)
        self.queue_depth = Gauge(
            "pinsvc_controller_queue_depth", "Nodes that need an Apply and wait for a slot in their pool (or "
            "for their retry)", registry=r)
        self.applying = Gauge("pinsvc_controller_nodes_applying", "Node attempts under way", registry=r)
        self.warm = WarmMetrics(r)  # pinsvc_warm_*: the warm stage per pool (docs/warm.md)
        self.status_write_failures = Counter(
            "pinsvc_controller_status_write_failures", "MachineConfigNode status writes the API server refused "
            "or did not answer (each is tried again)", registry=r)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class ProbeServer:
    """/healthz, /readyz and /metrics over HTTP (aiohttp), in the running event loop."""

    def __init__(self, state: State, metrics: Metrics, address: str):
        self.state = state
        self.metrics = metrics
        self.host, self.port = parse_address(address)
        self._runner = None

    async def start(self) -> None:
        from aiohttp import web

        async def healthz(request: web.Request) -> web.Response:
            return web.Response(text="ok\n")

        async def readyz(request: web.Request) -> web.Response:
            ready, why = self.state.readiness()
            return web.Response(text=f"{'ok' if ready else 'not ready'}: {why}\n", status=200 if ready else 503)

        async def scrape(request: web.Request) -> web.Response:
            body, content_type = self.metrics.exposition(request.headers.get("Accept", ""))
            return web.Response(body=body, headers={"Content-Type": content_type})

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/metrics", scrape)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host or None, self.port).start()
        if self._runner.addresses:
            self.port = self._runner.addresses[0][1]
        log.info("serving /healthz, /readyz and /metrics on http://%s:%d", self.host or "*", self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
