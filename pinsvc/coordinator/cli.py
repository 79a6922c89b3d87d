"""`pinctl`: plan and roll out PinnedImageSets across node agents, per MachineConfigPool.

Examples:
  pinctl plan -f cluster.yaml                      # pre-flight: space on every node, per pool
  pinctl rollout -f cluster.yaml --canary 1        # roll out, first node of each pool first
  pinctl rollout -f cluster.yaml -o yaml > status.yaml
  pinctl status -f cluster.yaml                    # MachineConfigNode/Pool status, read live
  pinctl node status --endpoint unix:///run/pinsvc/pinsvc.sock
  pinctl node apply --endpoint 10.0.0.5:9440 -f sets.yaml
  pinctl node check-space --endpoint ... IMAGE...
  pinctl node apply --endpoint ... --prune-all      # unpin everything (says what first)

cluster.yaml holds PinnedImageSet, MachineConfigPool and Node objects as `oc get -o yaml`
prints them (several files, `-` for stdin, multi-document streams and `kind: List` all work);
`--kube [--kubeconfig FILE] [--context NAME]` reads them from the API server instead.
The agent of a node is found through --endpoints (a YAML map node -> endpoint), the node's
`pinsvc.io/agent-endpoint` annotation, or its InternalIP and --port. Agents on TCP require
mutual TLS: give --tls-cert, --tls-key and --tls-ca (and --tls-server-name when the agents'
certificates do not name the address you reach them by).

Output: documents in YAML (-o json for JSON), plan a summary unless -o is given. Exit codes:
0 done and healthy, 1 degraded or failed (the reason on stderr), 2 bad flags or input.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from pinsvc_client import PinError

from pinsvc import console, errors, tracing
from pinsvc.client import add_tls_arguments, connect, explain, insecure_from_args, tls_from_args
from pinsvc.coordinator import direct, loader, report, selection, warmup
from pinsvc.coordinator.record import (APPLYING, FAILED, UNAVAILABLE, UPDATED, WARNING, NodeRecord, Record,
                                      rollout_id)
from pinsvc.coordinator.rollout import DEFAULT_PORT, Options, Rollout, plan_rollout
from pinsvc.retry import Backoff
from pinsvc.warm.stage import Warmer

_DONE = (UPDATED, FAILED, UNAVAILABLE, "Skipped", "NotStarted", "Paused")


class RolloutProgress:
    """Per pool and per node bars in a terminal; plain lines otherwise."""

    def __init__(self, console: Console, plans):
        self.console = console
        self.live = console.is_terminal
        self.bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=console,
                             disable=not self.live)
        self.pools: dict[str, TaskID] = {p.name: self.bars.add_task(f"pool {p.name}", total=len(p.targets), note="")
                                         for p in plans}
        self.nodes: dict[str, TaskID] = {}
        self.finished: set[str] = set()
        self.warms: dict[str, TaskID] = {}
        self.warm_steps: dict[str, tuple] = {}

    def __enter__(self):
        self.bars.__enter__()
        return self

    def __exit__(self, *exc):
        self.bars.__exit__(*exc)

    def __call__(self, record: NodeRecord, event) -> None:
        if record.state == APPLYING and record.node not in self.nodes:
            self.nodes[record.node] = self.bars.add_task(f"  {record.node}", total=record.images or None, note="")
            self.say(f"{record.pool}/{record.node}: applying {record.images} images")
        if record.node in self.nodes and self.live:
            self.bars.update(self.nodes[record.node], completed=record.images_done,
                             note=f"{record.bytes_done / 2**20:.1f} MiB")
        if record.state in _DONE and record.node not in self.finished and event is None:
            self.finished.add(record.node)
            self.bars.update(self.pools[record.pool], advance=1)
            if record.node in self.nodes:
                self.bars.remove_task(self.nodes.pop(record.node))
            self.say(f"{record.pool}/{_line(record)}")

    def warm(self, pool: str, progress) -> None:
        """A pool's warm stage: a bar of bytes in a terminal, else a line per state and quarter."""
        if self.live:
            if pool not in self.warms:
                self.warms[pool] = self.bars.add_task(f"warm {pool}", total=progress.bytes_total or None, note="")
            note = progress.summary().partition(")")[2].lstrip(" ,;") or progress.state
            self.bars.update(self.warms[pool], total=progress.bytes_total or None, completed=progress.bytes_done,
                             note=note)
            return
        step = (progress.state, 4 * progress.bytes_done // max(progress.bytes_total, 1))
        if self.warm_steps.get(pool) != step:
            self.warm_steps[pool] = step
            self.say(f"pool {pool}: warm: {progress.summary()}")

    def say(self, text: str) -> None:
        if self.live:
            self.bars.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)


def _load(args) -> tuple:
    if args.kube:
        from pinsvc.coordinator import kube
        cluster = kube.load(kube.KubeSource(args.kubeconfig or "", args.context or ""))
    else:
        cluster = loader.load(args.file)
    for note in cluster.notes:
        print(f"note: {note}", file=sys.stderr)
    endpoints = selection.load_endpoint_map(args.endpoints) if args.endpoints else {}
    return cluster, plan_rollout(cluster, port=args.port, endpoints=endpoints)


def _options(args) -> Options:
    return Options(max_parallel=getattr(args, "max_parallel", 0) or 0, canary=getattr(args, "canary", 0) or 0,
                   canary_pause=getattr(args, "canary_pause", False),
                   abort_after=getattr(args, "abort_after", 1),
                   node_deadline_seconds=getattr(args, "node_deadline", 3600.0),
                   backoff=_backoff(args), concurrency=args.concurrency,
                   parallelism=getattr(args, "parallelism", 0), prune_all=getattr(args, "prune_all", False))


# Backoff field -> the flag that sets it (`rollout` only; other commands keep the defaults).
_RETRY_FLAGS = {"attempts": "retries", "initial_seconds": "retry_backoff_initial_seconds",
                "factor": "retry_backoff_factor", "max_seconds": "retry_backoff_max_seconds",
                "jitter": "retry_backoff_jitter"}


def _backoff(args) -> Backoff:
    """The schedule of calls to unavailable agents from --retries and --retry-backoff-*."""
    given = {name: getattr(args, dest) for name, dest in _RETRY_FLAGS.items() if getattr(args, dest, None) is not None}
    backoff = dataclasses.replace(Options().backoff, **given)
    backoff = dataclasses.replace(backoff, attempts=max(backoff.attempts, 1))  # --retries 0: one attempt
    if problems := backoff.problems():
        raise errors.InvalidArgument([f"--{_RETRY_FLAGS[name].replace('_', '-')} {getattr(backoff, name)} {rule}"
                                      for name, rule in problems.items()])
    return backoff


def _connect(args):
    """(endpoint, node) -> PinClient, with the --tls-* files (read once, here) for TCP agents,
    or --insecure."""
    return functools.partial(connect, tls=tls_from_args(args), insecure=insecure_from_args(args))


def _record_path(args, plans) -> Path:
    base = Path(args.record_dir or os.environ.get("PINCTL_RECORD_DIR") or Path.home() / ".local/state/pinctl")
    return base / f"rollout-{rollout_id(plans)}.json"


def _documents(rollout: Rollout, plans) -> tuple[dict, bool]:
    records = rollout.record.nodes
    nodes = [report.node_doc(records[t.node]) for p in plans for t in p.targets]
    pools = [report.pool_doc(p, [records[t.node] for t in p.targets], rollout.aborted.get(p.name, ""))
             for p in plans]
    for doc in pools:
        if warmed := warmup.condition(rollout.record.warm.get(doc["metadata"]["name"])):
            doc["status"]["conditions"].append(warmed)
    return report.as_list(nodes + pools), any(report.pool_degraded(p) for p in pools)


def _summary(rollout: Rollout, plans) -> str:
    lines = []
    for plan in plans:
        records = [rollout.record.node(t) for t in plan.targets]
        to_pull = sum(r.required_bytes for r in records)
        failing = [r for r in records if r.state in (FAILED, UNAVAILABLE, WARNING, "Skipped")]
        lines.append(f"pool {plan.name}: {len(records)} nodes, {len(records) - len(failing)} ready, "
                     f"{to_pull / 2**30:.2f} GiB to pull (after decompression), max {plan.max_parallel} at once"
                     + (" (paused)" if plan.paused else ""))
        lines += [f"  {_line(r)}" for r in failing]
    return "\n".join(lines)


def _line(record: NodeRecord) -> str:
    """`node: State (Cause): reason`, for the messages on stderr."""
    cause = report.cause(record) if record.state != UPDATED else ""
    return f"{record.node}: {record.state}" + (f" ({cause})" if cause and cause != record.state else "") + \
        f": {record.reason}"


async def _plan(args) -> int:
    _, plans = _load(args)
    rollout = Rollout(plans, _options(args), connect=_connect(args))
    await rollout.preflight()
    failing = [r for r in rollout.record.nodes.values() if r.state in (FAILED, UNAVAILABLE, WARNING)]
    if args.output:
        print(console.render({"pools": [{"name": p.name, "nodes": [
            {console.camel(k): v for k, v in vars(rollout.record.node(t)).items() if k != "status"}
            for t in p.targets]} for p in plans]}, args.output))
        if failing:
            print("pinctl: " + "\n  ".join([f"{len(failing)} nodes would fail or cannot be checked:",
                                            *map(_line, failing)]), file=sys.stderr)
    else:
        print(_summary(rollout, plans))
    return console.FAILED if failing else console.OK


async def _rollout(args) -> int:
    cluster, plans = _load(args)
    if not cluster.sets and not args.prune_all:
        raise errors.InvalidArgument(direct.no_sets(args.file or ["the API server"], cluster.notes,
                                                    "of every node of the pools"))
    path = _record_path(args, plans)
    warm = warmup.settings_from(args)
    rollout = Rollout(plans, _options(args), record=Record(path), connect=_connect(args))
    terminal = Console(stderr=True)
    with RolloutProgress(terminal, plans) as progress:
        rollout.progress = progress
        windows = {p.name: warmup.pool_windows(cluster, p, args.window) for p in plans}
        if warm is not None or any(windows.values()):
            rollout.gate = warmup.WarmGate(windows, rollout.record, warmer=Warmer(warm) if warm else None,
                                           show=progress.warm, say=progress.say, progress=progress)
        try:
            await rollout.run()
        except asyncio.CancelledError:
            print(f"cancelled; rerun the same command to resume (record {path})", file=sys.stderr)
            raise
        finally:
            if rollout.gate is not None:
                await rollout.gate.aclose()
    print(_summary(rollout, plans), file=sys.stderr)
    doc, bad = _documents(rollout, plans)
    print(console.render(doc, args.output or "yaml"))
    print(f"record: {path}", file=sys.stderr)
    return console.FAILED if bad else console.OK


async def _status(args) -> int:
    _, plans = _load(args)
    rollout = Rollout(plans, _options(args), connect=_connect(args))
    await rollout.read_status()
    doc, bad = _documents(rollout, plans)
    print(console.render(doc, args.output or "yaml"))
    behind = [r for p in plans for r in map(rollout.record.node, p.targets) if r.state != UPDATED]
    if behind:
        total = sum(len(p.targets) for p in plans)
        print(f"pinctl: {len(behind)} of {total} nodes are not at the desired content:\n  "
              + "\n  ".join(map(_line, behind)), file=sys.stderr)
    return console.FAILED if bad or behind else console.OK


async def _node(args) -> int:
    async with connect(args.endpoint, tls=tls_from_args(args), insecure=insecure_from_args(args)) as client:
        return await direct.run(client, args)


def parser() -> console.Parser:
    p = console.Parser(prog="pinctl", description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n", 2)[2])
    console.add_version(p, "pinctl")
    p.add_argument("--log-level", default="warning", help="debug, info, warning or error")
    p.add_argument("--otlp-endpoint", default="",
                   help="OTLP endpoint for traces, e.g. http://127.0.0.1:4317 (gRPC unless OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf; default: OTEL_EXPORTER_OTLP_ENDPOINT; unset = off)")
    add_tls_arguments(p)
    sub = p.add_subparsers(dest="command", required=True)

    def cluster_args(sp, output: str):
        source = sp.add_mutually_exclusive_group(required=True)
        source.add_argument("-f", "--file", action="append", help="cluster objects (YAML/JSON; - = stdin)")
        source.add_argument("--kube", action="store_true",
                            help="read the objects from the Kubernetes API server instead (needs pinsvc[kube])")
        sp.add_argument("--kubeconfig", help="with --kube: kubeconfig file (default: in-cluster, KUBECONFIG, ~/.kube/config)")
        sp.add_argument("--context", help="with --kube: kubeconfig context (default: the current one)")
        sp.add_argument("--endpoints", help="YAML/JSON map of node name -> agent endpoint")
        sp.add_argument("--port", type=int, default=DEFAULT_PORT, help="agent port on a node's InternalIP")
        sp.add_argument("--concurrency", type=int, default=100, help="agent calls in flight")
        console.add_output(sp, output)
        add_tls_arguments(sp, subcommand=True)

    plan = sub.add_parser("plan", help="pre-flight only: space on every target node, per pool; exit 1 when a "
                                       "node would fail")
    cluster_args(plan, "a summary")
    roll = sub.add_parser("rollout", help="roll the sets out, pool by pool; exit 1 when a pool is degraded")
    cluster_args(roll, "yaml")
    roll.add_argument("--canary", type=int, default=0, help="apply the first N nodes of each pool first")
    roll.add_argument("--canary-pause", action="store_true", help="stop after the canary; rerun to go on")
    roll.add_argument("--max-parallel", type=int, default=0, help="nodes applying at once per pool (default: maxUnavailable)")
    roll.add_argument("--abort-after", type=int, default=1, help="abort a pool once N nodes failed (0 = never)")
    roll.add_argument("--node-deadline", type=float, default=3600.0, help="seconds per node (0 = none)")
    retry = Options().backoff
    roll.add_argument("--retries", type=int, default=retry.attempts,
                      help="attempts per node while its agent is unavailable (default: %(default)s)")
    roll.add_argument("--retry-backoff-initial-seconds", type=float, default=retry.initial_seconds,
                      help="wait before the second attempt (default: %(default)s)")
    roll.add_argument("--retry-backoff-factor", type=float, default=retry.factor,
                      help="growth of the wait per attempt (default: %(default)s)")
    roll.add_argument("--retry-backoff-max-seconds", type=float, default=retry.max_seconds,
                      help="cap of the wait between attempts (default: %(default)s)")
    roll.add_argument("--retry-backoff-jitter", type=float, default=retry.jitter,
                      help="random +/- fraction applied to each wait (default: %(default)s)")
    roll.add_argument("--parallelism", type=int, default=0, help="pulls in flight per node (0 = agent default)")
    roll.add_argument("--record-dir", help="where the durable rollout record lives (default: ~/.local/state/pinctl)")
    roll.add_argument("--prune-all", action="store_true",
                      help="unpin every set of the nodes no PinnedImageSet selects (each is named first); "
                           "without it such nodes are refused")
    warmup.add_arguments(roll)
    status = sub.add_parser("status", help="MachineConfigNode/Pool status read live from every agent; exit 1 "
                                           "unless every node is at the desired content")
    cluster_args(status, "yaml")
    node = sub.add_parser("node", help="talk to one agent directly")
    direct.add_arguments(node, add_tls_arguments)
    return p


def main(argv: list[str] | None = None) -> int:
    return console.run(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if (getattr(args, "kubeconfig", None) or getattr(args, "context", None)) and not getattr(args, "kube", False):
        p.error("--kubeconfig and --context need --kube")
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    run = {"plan": _plan, "rollout": _rollout, "status": _status, "node": _node}[args.command]
    try:
        with tracing.configured("pinctl", args.otlp_endpoint):
            return asyncio.run(run(args))
    except errors.InvalidArgument as e:
        print("pinctl: invalid input:\n  " + "\n  ".join(e.problems), file=sys.stderr)
        return console.USAGE
    except errors.PinsvcError as e:
        print(f"pinctl: {e}", file=sys.stderr)
        return console.FAILED
    except PinError as e:
        print(f"pinctl: {explain(getattr(args, 'endpoint', ''), e)}", file=sys.stderr)
        return console.FAILED
    except KeyboardInterrupt:
        print("pinctl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
