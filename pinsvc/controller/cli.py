"""`pinsvc-controller`: the Kubernetes-native controller. `kubectl apply` a PinnedImageSet
and the cluster pins it; each node's MachineConfigNode and each pool's status say how far.

Examples:
  pinsvc-controller                                   # in a pod: its service account, Lease in POD_NAMESPACE
  pinsvc-controller --kubeconfig admin.kubeconfig --tls-cert c.crt --tls-key c.key --tls-ca agents-ca.crt

Run two replicas: one leads (Lease `pinsvc-controller`), the other takes over when the
leader stops renewing. A node's agent is found through --endpoints (a YAML map node ->
endpoint), the node's `pinsvc.io/agent-endpoint` annotation, or its InternalIP and --port;
agents on TCP require mutual TLS (--tls-*). See docs/controller.md.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import signal
import sys

from pinsvc import console, errors, tracing
from pinsvc.client import add_tls_arguments, connect, insecure_from_args, tls_from_args
from pinsvc.coordinator import selection, warmup
from pinsvc.coordinator.rollout import DEFAULT_PORT, Options
from pinsvc.metrics import parse_address
from pinsvc.retry import Backoff

log = logging.getLogger("pinsvc.controller")


def parser() -> argparse.ArgumentParser:
    p = console.Parser(prog="pinsvc-controller", description=__doc__.split("\n\n")[0],
                       epilog=__doc__.split("\n", 2)[2])
    console.add_version(p, "pinsvc-controller")
    p.add_argument("--kubeconfig", default="", help="kubeconfig file (default: in-cluster, KUBECONFIG, ~/.kube/config)")
    p.add_argument("--context", default="", help="kubeconfig context (default: the current one)")
    p.add_argument("--endpoints", help="YAML/JSON map of node name -> agent endpoint")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="agent port on a node's InternalIP")
    roll = p.add_argument_group("rollout (pinctl rollout's rules)")
    roll.add_argument("--max-parallel", type=int, default=0, help="nodes applying at once per pool (default: maxUnavailable)")
    roll.add_argument("--canary", type=int, default=0, help="per pool, the first N nodes first, the rest once they are done")
    roll.add_argument("--abort-after", type=int, default=0,
                      help="a pool starts no new node while N of its nodes are failed (0 = never)")
    roll.add_argument("--node-deadline", type=float, default=3600.0, help="seconds per node attempt")
    roll.add_argument("--retries", type=int, default=3, help="attempts per call while an agent is unavailable")
    roll.add_argument("--concurrency", type=int, default=100, help="agent calls in flight")
    roll.add_argument("--parallelism", type=int, default=0, help="pulls in flight per node (0 = agent default)")
    roll.add_argument("--no-preflight", action="store_true", help="skip the space check before an Apply")
    roll.add_argument("--failure-backoff", type=float, default=5.0,
                      help="seconds before a failed node is tried again (doubling, up to --failure-backoff-max)")
    roll.add_argument("--failure-backoff-max", type=float, default=300.0,
                      help="the longest wait before a failed node is tried again (seconds)")
    roll.add_argument("--progress-after", type=float, default=2.0,
                      help="write Progressing=True for an Apply running longer than this (seconds)")
    lead = p.add_argument_group("leader election (coordination.k8s.io Lease)")
    lead.add_argument("--lease-name", default="pinsvc-controller", help="the Lease the replicas compete for")
    lead.add_argument("--lease-namespace", default="", help="default: POD_NAMESPACE, else pinsvc")
    lead.add_argument("--identity", default="", help="default: POD_NAME (or the host name) and a random suffix")
    lead.add_argument("--lease-duration", type=int, default=15, help="seconds")
    lead.add_argument("--renew-deadline", type=int, default=10, help="seconds")
    lead.add_argument("--retry-period", type=int, default=2, help="seconds")
    warmup.add_arguments(p, window=False)
    p.add_argument("--http-address", default=":8080",
                   help="serve /healthz (liveness), /readyz (readiness) and Prometheus /metrics over HTTP on this "
                        "host:port (':8080' = every interface, for the kubelet's probes; '' = off)")
    p.add_argument("--log-level", default="info", help="debug, info, warning or error")
    p.add_argument("--otlp-endpoint", default="", help="OTLP endpoint for traces (gRPC unless OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf; default: OTEL_EXPORTER_OTLP_ENDPOINT)")
    add_tls_arguments(p)
    return p


def settings_from(args: argparse.Namespace):
    from pinsvc.controller.settings import Leadership, Settings
    leadership = Leadership(args.lease_name, args.lease_namespace, args.identity, args.lease_duration,
                            args.renew_deadline, args.retry_period)
    if problems := leadership.problems():
        raise errors.InvalidArgument(problems)
    options = Options(max_parallel=args.max_parallel, canary=args.canary, abort_after=args.abort_after,
                      node_deadline_seconds=args.node_deadline, concurrency=args.concurrency,
                      parallelism=args.parallelism, preflight=not args.no_preflight,
                      backoff=Backoff(initial_seconds=1.0, factor=2.0, max_seconds=30.0, jitter=0.2,
                                      attempts=max(args.retries, 1)))
    if args.http_address:
        try:
            parse_address(args.http_address)
        except ValueError as e:
            raise errors.InvalidArgument(f"--http-address: {e}, e.g. :8080 or 127.0.0.1:8080")
    return Settings(kubeconfig=args.kubeconfig, context=args.context, port=args.port, http_address=args.http_address,
                    endpoints=selection.load_endpoint_map(args.endpoints) if args.endpoints else {},
                    rollout=options, progress_after_seconds=args.progress_after,
                    failure_backoff=Backoff(initial_seconds=args.failure_backoff, factor=2.0,
                                            max_seconds=args.failure_backoff_max, jitter=0.2, attempts=1),
                    leadership=leadership, warm=warmup.settings_from(args))


async def run(settings, tls, insecure: bool = False) -> None:
    try:
        from pinsvc.controller import kubeapi, leader
        from pinsvc.controller.probes import Metrics, ProbeServer, State
        from pinsvc.controller.reconciler import Reconciler
    except ImportError as e:
        raise errors.InvalidArgument(f"the controller needs kubernetes_asyncio: pip install 'pinsvc[controller]' ({e})")
    api = await kubeapi.connect(settings.kubeconfig, settings.context)
    # the Lease has a client (a connection pool) of its own: a busy reconciler never delays a renewal
    lease_api = await kubeapi.connect(settings.kubeconfig, settings.context)
    kube = kubeapi.Kube(api)
    identity = settings.leadership.resolved_identity()
    agents = functools.partial(connect, tls=tls, insecure=insecure)
    main = asyncio.current_task()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, main.cancel)
    log.info("pinsvc-controller %s starting against %s", identity, kube.server)
    state = State()
    metrics = Metrics(state)
    probes = ProbeServer(state, metrics, settings.http_address) if settings.http_address else None
    try:
        if probes is not None:
            try:
                await probes.start()
            except OSError as e:
                raise errors.InvalidArgument(f"--http-address {settings.http_address}: cannot listen: {e}") from e
        await leader.run_elected(lease_api, settings.leadership, identity,
                                 lambda: Reconciler(kube, settings, agents, identity, state, metrics).run(), state)
    except asyncio.CancelledError:
        log.info("stopped (%d API requests)", kube.requests)
    finally:
        if probes is not None:
            await probes.stop()
        await asyncio.gather(api.close(), lease_api.close())


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings, tls, insecure = settings_from(args), tls_from_args(args), insecure_from_args(args)
        with tracing.configured("pinsvc-controller", args.otlp_endpoint):
            asyncio.run(run(settings, tls, insecure))
    except errors.InvalidArgument as e:
        print("pinsvc-controller: invalid input:\n  " + "\n  ".join(e.problems), file=sys.stderr)
        return 2
    except errors.PinsvcError as e:
        print(f"pinsvc-controller: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
