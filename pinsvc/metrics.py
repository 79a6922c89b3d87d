"""Prometheus metrics of the node agent, derived from the events it already emits and from
the outcome of each Apply; served over HTTP at `/metrics` when `--server-metrics` is set.

Nothing here runs (or is imported) when metrics are off: the agent holds a
`core.ports.NoMetrics`, which has the same methods and does nothing.
The metrics live in their own `CollectorRegistry`, never in prometheus_client's global one.

Label values are bounded: `result`, `size_class` and `reason` (an `errors.error_class`)
come from fixed sets; `set` is a pinned image set's name (bounded by the API). Image names
are never labels.

Pulls of one image are shared by every request that wants it (see core/pull.py), so each
request sees the same attempt; an attempt is counted once, by the last request to see it
end, and `pinsvc_pulls_in_flight` counts images, not requests.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import choose_encoder

from pinsvc import errors, version
from pinsvc.model import ApplyOutcome, Emit, ImageEvent, ImageEventKind as Kind, NodeStatus, StageEvent, StageKind

log = logging.getLogger("pinsvc.metrics")

MiB = 1 << 20
# (upper bound in compressed bytes, label); an image of unknown size is "unknown".
SIZE_CLASSES = ((10 * MiB, "lt_10MiB"), (100 * MiB, "lt_100MiB"), (1024 * MiB, "lt_1GiB"))
PULL_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 900, 1800)
QUEUE_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900)
RELOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
APPLY_RESULTS = ("success", "failed", "cancelled")


def size_class(compressed_bytes: int) -> str:
    if compressed_bytes <= 0:
        return "unknown"
    for bound, label in SIZE_CLASSES:
        if compressed_bytes < bound:
            return label
    return "ge_1GiB"


def reason_label(error_class: str, default: str = "other") -> str:
    """A bounded `reason` label value: a known error class, else `default`."""
    return error_class if error_class in errors.ERROR_CLASSES else default


@dataclass
class _Call:
    """One observed request (one Apply or PullImages): what only it knows."""

    id: int
    sizes: dict[str, int] = field(default_factory=dict)  # image -> compressed bytes (space plan)


@dataclass
class _Attempt:
    """The attempt under way for one image, and the requests that saw it start."""

    started: float
    calls: set[int]
    size: int = 0


class Metrics:
    """The agent's metrics. Feed it every event (`observer(emit)` wraps a request's emit)
    and every Apply outcome (`observe_outcome`); read them through `registry`."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process_collectors: bool = True,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time):
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        # No `<counter>_created` series: in the text format they are stray gauges of process
        # start times. prometheus_client's switch is process-wide; this registry is the agent's only one.
        disable_created_metrics()
        self._clock, self._wall_clock = clock, wall_clock
        self._attempts: dict[str, _Attempt] = {}
        self._ids = itertools.count(1)
        self._default_call = _Call(0)
        self._sets: set[str] = set()
        self._pulled: dict[str, int] = {}  # image -> compressed bytes, of images pulled and still wanted
        r = self.registry
        if process_collectors:
            from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)

        self.build_info = Gauge("pinsvc_build_info", "Always 1: the version of the agent", ["version"],
                                registry=r)
        self.build_info.labels(version()).set(1)
        self.runtime_reachable = Gauge(
            "pinsvc_runtime_reachable", "1 while the container runtime answers (checked every "
            "cri_health_interval_seconds), else 0: the agent can then neither pull, pin nor verify", registry=r)
        self.pull_duration = Histogram(
            "pinsvc_pull_duration_seconds",
            "Duration of one pull attempt in the runtime (queue wait excluded), by how it ended "
            "(pulled, failed) and the image's compressed size class",
            ["result", "size_class"], buckets=PULL_BUCKETS, registry=r)
        self.pulls_in_flight = Gauge(
            "pinsvc_pulls_in_flight", "Images with a pull attempt under way in the runtime", registry=r)
        self.pulls_in_flight.set_function(lambda: len(self._attempts))
        self.queue_wait = Histogram(
            "pinsvc_pull_queue_wait_seconds",
            "Time a pull attempt waited for a free slot (request and node parallelism)",
            buckets=QUEUE_BUCKETS, registry=r)
        self.pulled_bytes = Counter(
            "pinsvc_pulled_bytes", "Compressed bytes of the images pulled (per image, from the "
            "registry manifests; layers shared between images count once per image)", registry=r)
        self.retries = Counter(
            "pinsvc_pull_retries", "Failed pull attempts that are retried, by error class",
            ["reason"], registry=r)
        self.failures = Counter(
            "pinsvc_pull_failures",
            "Images that could not be pulled, by error class (including images whose manifest "
            "could not be read before pulling, and pulls cancelled: reason=cancelled)",
            ["reason"], registry=r)
        self.already_present = Counter(
            "pinsvc_images_already_present", "Images wanted that the runtime already had (not pulled)",
            registry=r)
        self.space_failures = Counter(
            "pinsvc_space_check_failures", "Applies refused because the images would not fit on the "
            "image filesystem", registry=r)
        self.pinned_images = Gauge(
            "pinsvc_pinned_images", "Images the runtime reports pinned, as of the last Apply", registry=r)
        self.pinned_bytes = Gauge(
            "pinsvc_pinned_bytes", "Compressed bytes of the pinned images, as of the last Apply (an "
            "image the agent never pulled itself, or pulled with PullImages alone, counts 0)", registry=r)
        self.reload_duration = Histogram(
            "pinsvc_reload_duration_seconds", "Duration of a runtime reload", buckets=RELOAD_BUCKETS,
            registry=r)
        self.verification_failures = Counter(
            "pinsvc_verification_failures", "Applies whose pins the runtime did not report after the "
            "reload", registry=r)
        self.dropin_writes = Counter(
            "pinsvc_dropin_writes", "Drop-in files written or removed (unchanged ones not counted)",
            registry=r)
        self.dropin_restores = Counter(
            "pinsvc_dropin_restores", "Drop-ins put back to their previous content after a failed "
            "verification", registry=r)
        self.applies = Counter(
            "pinsvc_apply", "Applies that ran, by result (success, failed, cancelled)", ["result"],
            registry=r)
        for result in APPLY_RESULTS:
            self.applies.labels(result)
        self.set_generation = Gauge(
            "pinsvc_set_current_generation", "Generation of each pinned image set the node has fully "
            "pinned (0 = none yet)", ["set"], registry=r)
        self.set_last_success = Gauge(
            "pinsvc_set_last_success_timestamp_seconds", "Unix time of the last Apply that left each "
            "set at its desired generation", ["set"], registry=r)
        self.drift_repairs = Counter(
            "pinsvc_drift_repairs", "Drift found by the periodic check, by kind (image_removed, "
            "image_unpinned, dropin_changed, dropin_removed) and result (repaired, failed)",
            ["kind", "result"], registry=r)

    # ---- events ------------------------------------------------------------------------------

    def observer(self, emit: Emit) -> Emit:
        """`emit` of one request, observing each event first."""
        call = _Call(next(self._ids))

        def observed(event: ImageEvent | StageEvent) -> None:
            self.observe(event, call=call)
            emit(event)

        return observed

    def observe(self, event: ImageEvent | StageEvent, *, call: _Call | None = None) -> None:
        """Counts one event; never raises (metrics must not break a request)."""
        try:
            if isinstance(event, ImageEvent):
                self._image_event(event, call or self._default_call)
            elif isinstance(event, StageEvent):
                self._stage_event(event, call or self._default_call)
        except Exception:
            log.exception("metrics: could not observe %s", event)

    def _stage_event(self, event: StageEvent, call: _Call) -> None:
        if event.kind is StageKind.SPACE_CHECKED and event.space is not None:
            call.sizes.update((p.image, p.compressed_bytes) for p in event.space.images if not p.present)
        elif event.kind is StageKind.RUNTIME_RELOADED:
            self.reload_duration.observe(event.duration_seconds)
        elif event.kind is StageKind.DROPIN_WRITTEN:
            self.dropin_writes.inc()
        elif event.kind is StageKind.DROPIN_RESTORED:
            self.dropin_restores.inc()

    def _image_event(self, e: ImageEvent, call: _Call) -> None:
        attempt = self._attempts.get(e.image)
        if e.kind is Kind.QUEUED:
            if attempt is not None:  # joins a pull another request has under way
                attempt.calls.add(call.id)
        elif e.kind is Kind.PULLING:
            if attempt is None:  # a new attempt (the first request to hear of it)
                self._attempts[e.image] = _Attempt(self._clock(), {call.id}, call.sizes.get(e.image, 0))
                self.queue_wait.observe(e.queue_wait_seconds)
            else:
                attempt.calls.add(call.id)
        elif e.kind is Kind.ALREADY_PRESENT:
            self.already_present.inc()
        elif e.kind in (Kind.RETRYING, Kind.PULLED, Kind.FAILED, Kind.CANCELLED):
            self._attempt_end(e, call, attempt)

    def _attempt_end(self, e: ImageEvent, call: _Call, attempt: _Attempt | None) -> None:
        """Counts the end of an attempt once: when the last request that saw it start hears
        of its end. Ends without an attempt under way: an image that failed before any
        attempt (e.g. its manifest), or was cancelled while queued or backing off."""
        if attempt is None or call.id not in attempt.calls:
            if attempt is None and e.kind is Kind.FAILED and e.attempt == 0:
                self.failures.labels(reason_label(e.error_class)).inc()
            elif attempt is None and e.kind is Kind.CANCELLED:
                self.failures.labels("cancelled").inc()
            return
        attempt.calls.discard(call.id)
        attempt.size = max(attempt.size, e.bytes, call.sizes.get(e.image, 0))
        if attempt.calls:
            return
        del self._attempts[e.image]
        size = size_class(attempt.size)
        if e.kind is Kind.PULLED:
            duration = e.duration_seconds or self._clock() - attempt.started
            self.pull_duration.labels("pulled", size).observe(duration)
            self.pulled_bytes.inc(attempt.size)
            if attempt.size:
                self._pulled[e.image] = attempt.size
        elif e.kind is Kind.CANCELLED:
            self.failures.labels("cancelled").inc()
        else:
            self.pull_duration.labels("failed", size).observe(self._clock() - attempt.started)
            reason = reason_label(e.error_class)
            if e.kind is Kind.RETRYING:
                self.retries.labels(reason).inc()
            else:
                self.failures.labels(reason).inc()

    # ---- outcomes ----------------------------------------------------------------------------

    def observe_outcome(self, outcome: ApplyOutcome) -> None:
        """Counts an Apply that ran to its end; never raises."""
        try:
            self.applies.labels("success" if outcome.error is None else "failed").inc()
            for error in errors.parts(outcome.error):
                if isinstance(error, errors.InsufficientSpace):
                    self.space_failures.inc()
                elif isinstance(error, errors.VerificationFailed):
                    self.verification_failures.inc()
            self.observe_status(outcome.status)
            now = self._wall_clock()
            for s in outcome.status.sets:
                if s.current_generation == s.desired_generation and not s.last_failed_generation:
                    self.set_last_success.labels(s.name).set(now)
        except Exception:
            log.exception("metrics: could not observe the outcome of an Apply")

    def observe_apply_cancelled(self) -> None:
        """Counts an Apply cancelled before its end (superseded, or its client went away)."""
        self.applies.labels("cancelled").inc()

    def observe_drift_repair(self, kind: str, repaired: bool) -> None:
        """Counts one drift finding of a periodic check and whether it was repaired."""
        self.drift_repairs.labels(kind, "repaired" if repaired else "failed").inc()

    def observe_runtime(self, reachable: bool) -> None:
        """Follows the runtime health watcher (core/health.py)."""
        self.runtime_reachable.set(1 if reachable else 0)

    def observe_status(self, status: NodeStatus) -> None:
        """Sets the gauges that follow the node status (pins, set generations)."""
        pinned = [i for i in status.images if i.pinned]
        self.pinned_images.set(len(pinned))
        self.pinned_bytes.set(sum(i.bytes or self._pulled.get(i.image, 0) for i in pinned))
        listed = {i.image for i in status.images}
        self._pulled = {i: n for i, n in self._pulled.items() if i in listed}
        names = {s.name for s in status.sets}
        for s in status.sets:
            self.set_generation.labels(s.name).set(s.current_generation)
        for gone in self._sets - names:  # a set no longer wanted: its series go away
            for gauge in (self.set_generation, self.set_last_success):
                try:
                    gauge.remove(gone)
                except KeyError:
                    pass
        self._sets = names

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """(body, content type) of a scrape, in the format the `Accept` header asks for."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


# ---- serving ---------------------------------------------------------------------------------

def parse_address(address: str) -> tuple[str, int]:
    """"host:port", "[v6]:port" or ":port" (every interface) -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{address!r} is not host:port")
    return host.removeprefix("[").removesuffix("]"), int(port)


class MetricsServer:
    """`GET /metrics` over HTTP (aiohttp), in the running event loop."""

    def __init__(self, metrics: Metrics, address: str):
        self.metrics = metrics
        self.host, self.port = parse_address(address)
        self._runner = None

    async def start(self) -> None:
        from aiohttp import web

        async def scrape(request: web.Request) -> web.Response:
            body, content_type = self.metrics.exposition(request.headers.get("Accept", ""))
            return web.Response(body=body, headers={"Content-Type": content_type})

        app = web.Application()
        app.router.add_get("/metrics", scrape)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host or None, self.port)
        await site.start()
        sockets = self._runner.addresses
        if sockets:
            self.port = sockets[0][1]
        log.info("metrics served on http://%s:%d/metrics", self.host or "*", self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
