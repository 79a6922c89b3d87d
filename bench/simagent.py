"""SIMULATED pinsvc node agents for the coordinator's scale benchmark: simulation, not a real agent.

Nothing here talks to a container runtime, a registry or a disk. Each simulated node is a
few dicts in memory behind the real `pinsvc.v1.PinService` gRPC API (the generated code in
`pinsvc_client.pb_grpc`), so that `pinctl` / `pinsvc.coordinator.rollout` can be driven
against 1,000 "nodes" on one machine and their cost measured alone:

- `CheckSpace`: every image missing, a fixed size per image (`--image-bytes`), always fits.
- `GetStatus`: the node's simulated state (per set desired/current generation, per image
  phase), `PinnedImageSetsProgressing` / `PinnedImageSetsDegraded` conditions.
- `Apply`: the request becomes the node's desired state at once (desired generations); after
  `--latency` seconds (the simulated work) it streams one `SPACE_CHECKED` stage event, one
  `ImageEvent PULLED` per image, `IMAGES_READY`, `DROPIN_WRITTEN`, `RUNTIME_RELOADED`,
  `PINS_VERIFIED` and the final `status` event with every set current == desired; from then
  on `GetStatus` shows the node updated. With `--events spread`, `SPACE_CHECKED` comes at
  once and the PULLED events are spread evenly over the latency instead, as a real agent's
  pulls would be (one timer per event: costs the simulator about twice the CPU). Sets no longer
  requested are dropped (unpinned). No validation beyond generations >= 1 and not lower than
  already requested (INVALID_ARGUMENT), no supersede of an Apply in flight.
- `--rpc-latency` delays CheckSpace and GetStatus (default 0: they answer at once).
- The stage RPCs (PullImages, WriteDropin, ...) answer UNIMPLEMENTED.

A node is known by the `x-pinsvc-node` metadata that `pinsvc_client.PinClient` sends on
every call (state is per node name, not per endpoint); a call without it is the node "".

Endpoints: one process binds `--endpoints N` listeners, all served by ONE `grpc.aio` server
and one event loop (gRPC core polls every listener), on 127.0.0.1 TCP ports chosen by the kernel (`--transport tcp`, the default) or unix
sockets in `--socket-dir` (`--transport unix`). Nothing listens beyond 127.0.0.1. The bench
(`bench/scale.py`) gives each node its own endpoint, as in a real cluster where every node
has its own address (so the coordinator opens one connection per node, not a few shared
ones), and runs 2 such processes to use both cores.

Once serving, the process writes `--ready FILE` (JSON: pid, endpoints in order). On SIGTERM
or SIGINT it stops and writes `--stats FILE` (on SIGUSR1 it writes it and goes on) (JSON: calls per kind, per node Apply count,
every Apply's start/end, each RPC's first and last call and, per node, when each of its
calls came and its Applies ended (`timeline`), on CLOCK_MONOTONIC (comparable across
processes), its own CPU seconds and peak RSS), then exits 0.

    .venv/bin/python bench/simagent.py --endpoints 500 --latency 1 --ready ready.json --stats stats.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pinsvc_client import pb, pb_grpc  # noqa: E402

log = logging.getLogger("simagent")
NODE_METADATA = "x-pinsvc-node"
PROGRESSING, DEGRADED = "PinnedImageSetsProgressing", "PinnedImageSetsDegraded"
FREE_BYTES = 500 * 2**30
TOTAL_BYTES = 1000 * 2**30
LAYERS_PER_IMAGE = 5


def _now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class SetState:
    desired: int
    current: int = 0
    images: tuple[str, ...] = ()


@dataclass
class NodeState:
    """One simulated node: its sets and whether an Apply is in flight."""

    name: str
    sets: dict[str, SetState] = field(default_factory=dict)
    applying: int = 0
    pinned: set[str] = field(default_factory=set)
    changed: str = field(default_factory=_now_rfc3339)

    def status(self, image_bytes: int) -> pb.NodeStatus:
        progressing = self.applying > 0 or any(s.current != s.desired for s in self.sets.values())
        status = pb.NodeStatus(node=self.name, dropin_path="/simulated/50-pinned-images")
        for name in sorted(self.sets):
            s = self.sets[name]
            status.pinned_image_sets.add(name=name, desired_generation=s.desired, current_generation=s.current)
        status.conditions.add(type=PROGRESSING, status="True" if progressing else "False",
                              reason="Applying" if progressing else "AsExpected",
                              message="simulated node", last_transition_time=self.changed)
        status.conditions.add(type=DEGRADED, status="False", reason="AsExpected",
                              message="simulated node", last_transition_time=self.changed)
        owners: dict[str, list[str]] = {}
        for name in sorted(self.sets):
            for image in self.sets[name].images:
                owners.setdefault(image, []).append(name)
        for image, sets in owners.items():
            pinned = image in self.pinned
            status.images.add(image=image, phase=pb.IMAGE_PHASE_PINNED if pinned else pb.IMAGE_PHASE_PENDING,
                              attempts=1 if pinned else 0, bytes=image_bytes, pinned=pinned, present=pinned,
                              sets=sets)
        return status


class Stats:
    def __init__(self) -> None:
        self.calls = {"CheckSpace": 0, "GetStatus": 0, "Apply": 0, "ApplyCompleted": 0}
        self.first: dict[str, float] = {}  # RPC -> CLOCK_MONOTONIC of its first and last call
        self.last: dict[str, float] = {}
        self.applies_per_node: dict[str, int] = {}
        self.intervals: list[tuple[float, float]] = []  # (start, end) of each completed Apply
        self.timeline: dict[str, list[tuple[str, float]]] = {}  # node -> (RPC or "ApplyCompleted", when)
        self.in_flight = 0
        self.max_in_flight = 0

    def call(self, rpc: str, node: str = "") -> None:
        now = time.monotonic()
        self.calls[rpc] += 1
        self.first.setdefault(rpc, now)
        self.last[rpc] = now
        self.timeline.setdefault(node, []).append((rpc, now))


class SimulatedPinService(pb_grpc.PinServiceServicer):
    """The PinService of every simulated node served by this process."""

    def __init__(self, latency: float, rpc_latency: float, image_bytes: int, spread: bool = False):
        self.latency = latency
        self.spread = spread
        self.rpc_latency = rpc_latency
        self.image_bytes = image_bytes
        self.nodes: dict[str, NodeState] = {}
        self.stats = Stats()

    def _node(self, context: grpc.aio.ServicerContext) -> NodeState:
        name = ""
        for key, value in context.invocation_metadata() or ():
            if key == NODE_METADATA:
                name = value
                break
        node = self.nodes.get(name)
        if node is None:
            node = self.nodes[name] = NodeState(name)
        return node

    async def CheckSpace(self, request: pb.CheckSpaceRequest, context) -> pb.SpacePlan:
        self.stats.call("CheckSpace", self._node(context).name)
        if self.rpc_latency:
            await asyncio.sleep(self.rpc_latency)
        return self._space(list(dict.fromkeys(request.images)))

    def _space(self, images: list[str]) -> pb.SpacePlan:
        compressed = self.image_bytes * len(images)
        required = compressed * 2
        after = (TOTAL_BYTES - FREE_BYTES + required) * 100 / TOTAL_BYTES
        plan = pb.SpacePlan(compressed_bytes=compressed, required_bytes=required, free_bytes=FREE_BYTES,
                            total_bytes=TOTAL_BYTES, mountpoint="/simulated", decompression_factor=2.0,
                            min_free_bytes=16 * 2**30, max_usage_percent=85.0, usage_after_percent=after,
                            fits=True, verdict=f"fits (simulated): {required} bytes required, {FREE_BYTES} free")
        for image in images:
            plan.images.add(image=image, present=False, compressed_bytes=self.image_bytes,
                            layers=LAYERS_PER_IMAGE, new_bytes=self.image_bytes)
        return plan

    async def GetStatus(self, request: pb.GetStatusRequest, context) -> pb.NodeStatus:
        node = self._node(context)
        self.stats.call("GetStatus", node.name)
        if self.rpc_latency:
            await asyncio.sleep(self.rpc_latency)
        return node.status(self.image_bytes)

    async def Apply(self, request: pb.ApplyRequest, context):
        stats = self.stats
        node = self._node(context)
        stats.call("Apply", node.name)
        stats.applies_per_node[node.name] = stats.applies_per_node.get(node.name, 0) + 1
        problems = []
        for s in request.sets:
            if s.generation < 1:
                problems.append(f"set {s.name}: generation {s.generation} < 1")
            elif s.name in node.sets and s.generation < node.sets[s.name].desired:
                problems.append(f"set {s.name}: generation {s.generation} is lower than the one requested "
                                f"before ({node.sets[s.name].desired})")
        if problems:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(problems))
        start = time.monotonic()
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        node.applying += 1
        done = False
        try:
            wanted = {s.name: s for s in request.sets}
            for name in [n for n in node.sets if n not in wanted]:
                del node.sets[name]  # no longer requested: unpinned
            for name, s in wanted.items():
                state = node.sets.setdefault(name, SetState(s.generation))
                state.desired, state.images = s.generation, tuple(dict.fromkeys(s.images))
            node.changed = _now_rfc3339()
            images = list(dict.fromkeys(i for s in request.sets for i in s.images))
            if self.latency and not self.spread:
                await asyncio.sleep(self.latency)
            yield pb.ApplyEvent(time_unix_nano=time.time_ns(), stage=pb.StageEvent(
                stage=pb.StageEvent.SPACE_CHECKED, message="simulated", space=self._space(images)))
            for k, image in enumerate(images, 1):
                if self.latency and self.spread:
                    wait = start + self.latency * k / len(images) - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                yield pb.ApplyEvent(time_unix_nano=time.time_ns(), image=pb.ImageEvent(
                    image=image, kind=pb.ImageEvent.PULLED, attempt=1, bytes=self.image_bytes,
                    duration_seconds=self.latency / max(len(images), 1)))
            if self.latency and (wait := start + self.latency - time.monotonic()) > 0:
                await asyncio.sleep(wait)  # a request without images still takes the latency
            for stage in (pb.StageEvent.IMAGES_READY, pb.StageEvent.DROPIN_WRITTEN,
                          pb.StageEvent.RUNTIME_RELOADED, pb.StageEvent.PINS_VERIFIED):
                yield pb.ApplyEvent(time_unix_nano=time.time_ns(),
                                    stage=pb.StageEvent(stage=stage, message="simulated"))
            node.pinned = set(images)
            for state in node.sets.values():
                state.current = state.desired
            node.applying -= 1
            done = True
            node.changed = _now_rfc3339()
            stats.call("ApplyCompleted", node.name)
            stats.intervals.append((start, time.monotonic()))
            yield pb.ApplyEvent(time_unix_nano=time.time_ns(), status=node.status(self.image_bytes))
        finally:
            stats.in_flight -= 1
            if not done:
                node.applying -= 1  # cancelled (the caller went away) before the end


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


async def serve(args: argparse.Namespace) -> int:
    service = SimulatedPinService(args.latency, args.rpc_latency, args.image_bytes, args.events == "spread")
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_PinServiceServicer_to_server(service, server)
    endpoints = []
    for i in range(args.endpoints):
        if args.transport == "unix":
            path = Path(args.socket_dir) / f"{args.name}-{i:04d}.sock"
            path.unlink(missing_ok=True)
            if server.add_insecure_port(f"unix://{path}") == 0:
                raise SystemExit(f"simagent: cannot listen on {path}")
            endpoints.append(f"unix://{path}")
        else:
            port = server.add_insecure_port("127.0.0.1:0")
            if port == 0:
                raise SystemExit("simagent: cannot listen on a 127.0.0.1 port")
            endpoints.append(f"127.0.0.1:{port}")
    await server.start()
    log.warning("%s: SIMULATION, not a real agent: %d simulated endpoints (%s), Apply latency %gs "
                "(events: %s), CheckSpace/GetStatus latency %gs, pid %d", args.name, len(endpoints), args.transport,
                args.latency, args.events, args.rpc_latency, os.getpid())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.stats:  # SIGUSR1: the statistics so far, without stopping (bench/controller.py's no-op check)
        loop.add_signal_handler(signal.SIGUSR1, lambda: _write_stats(Path(args.stats), service, endpoints, args.name))
    if args.ready:
        _write_json(Path(args.ready), {"pid": os.getpid(), "name": args.name, "endpoints": endpoints})
    try:
        await asyncio.wait_for(stop.wait(), timeout=args.max_seconds)
    except TimeoutError:
        log.warning("%s: --max-seconds %gs passed; stopping", args.name, args.max_seconds)
    await server.stop(grace=0.5)
    if args.stats:
        _write_stats(Path(args.stats), service, endpoints, args.name)
    return 0


def _write_stats(path: Path, service: SimulatedPinService, endpoints: list[str], name: str = "") -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    s = service.stats
    _write_json(path, {
        "name": name, "simulation": True, "endpoints": len(endpoints), "calls": s.calls,
        "nodes": len(service.nodes), "applies_per_node": s.applies_per_node,
        "max_in_flight": s.max_in_flight, "intervals": s.intervals, "first": s.first, "last": s.last,
        "timeline": s.timeline,
        "current": {n.name: {k: [v.desired, v.current] for k, v in n.sets.items()}
                    for n in service.nodes.values()},
        "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024})


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Simulated pinsvc node agents (simulation, not a real agent).")
    p.add_argument("--endpoints", type=int, default=100, help="listeners to open (default 100)")
    p.add_argument("--transport", choices=("tcp", "unix"), default="tcp",
                   help="127.0.0.1 TCP ports chosen by the kernel, or unix sockets in --socket-dir")
    p.add_argument("--socket-dir", default="/tmp", help="where unix sockets go (--transport unix)")
    p.add_argument("--name", default="sim", help="name in logs, stats and socket file names")
    p.add_argument("--latency", type=float, default=0.0, help="seconds an Apply takes (the simulated work)")
    p.add_argument("--events", choices=("end", "spread"), default="end",
                   help="Apply's events all after the latency (default), or PULLED events spread over it")
    p.add_argument("--rpc-latency", type=float, default=0.0, help="seconds CheckSpace and GetStatus take")
    p.add_argument("--image-bytes", type=int, default=50 * 2**20, help="compressed bytes of every image")
    p.add_argument("--ready", help="write pid and endpoints here (JSON) once serving")
    p.add_argument("--stats", help="write call statistics here (JSON) on SIGTERM/SIGINT")
    p.add_argument("--profile", help="run under cProfile and write the stats here on exit")
    p.add_argument("--max-seconds", type=float, default=3600.0, help="stop by itself after this long")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    if not args.profile:
        return asyncio.run(serve(args))
    import cProfile
    profiler = cProfile.Profile()
    try:
        return profiler.runcall(asyncio.run, serve(args))
    finally:
        profiler.dump_stats(args.profile)


if __name__ == "__main__":
    sys.exit(main())
