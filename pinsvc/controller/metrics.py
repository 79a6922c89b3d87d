"""The warm stage's Prometheus metrics per pool, from the progress it reports, in the
controller's registry (`probes.Metrics`, served at /metrics on `--http-address`). Labels are
bounded: `pool` (a MachineConfigPool's name) and `state`, never an image."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge

from pinsvc.warm.plan import FAILED, PAUSED, WAITING, WARMED, WARMING, Progress
from pinsvc.warm.stage import utcnow

STATES = (WAITING, WARMING, PAUSED, WARMED, FAILED)


class WarmMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        labels = ("pool",)
        self.bytes_total = Gauge("pinsvc_warm_bytes", "Compressed bytes of the blobs the pool's nodes pull "
                                 "through the site cache", labels, registry=self.registry)
        self.bytes_done = Gauge("pinsvc_warm_bytes_done", "Of pinsvc_warm_bytes, what the cache holds, verified",
                                labels, registry=self.registry)
        self.bytes_fetched = Gauge("pinsvc_warm_bytes_fetched", "Of pinsvc_warm_bytes_done, what the cache fetched "
                                   "from upstream for this warm (the rest it held)", labels, registry=self.registry)
        self.rate = Gauge("pinsvc_warm_rate_bytes_per_second", "Upstream bytes per second of the warm while it runs",
                          labels, registry=self.registry)
        self.eta = Gauge("pinsvc_warm_eta_seconds", "Seconds until the warm is expected to end, windows counted "
                         "(-1: unknown)", labels, registry=self.registry)
        self.state = Gauge("pinsvc_warm_state", "1 for the warm's current state", ("pool", "state"),
                           registry=self.registry)

    def observe(self, pool: str, progress: Progress) -> None:
        self.bytes_total.labels(pool).set(progress.bytes_total)
        self.bytes_done.labels(pool).set(progress.bytes_done)
        self.bytes_fetched.labels(pool).set(progress.bytes_fetched)
        self.rate.labels(pool).set(progress.rate)
        eta = (progress.eta - utcnow()).total_seconds() if progress.eta is not None else -1
        self.eta.labels(pool).set(max(eta, 0) if progress.eta is not None else -1)
        for state in STATES:
            self.state.labels(pool, state).set(1 if progress.state == state else 0)
