"""The local demo: a registry with sample images, 3 nodes (a real CRI-O and its pinsvc agent
each) in 2 MachineConfigPools, and `pinctl rollout` of a PinnedImageSet per pool with live
progress; then each node's status, the pool summary and what each CRI-O reports pinned.

    python -m devenv.demo [--jaeger] [--keep]     # from the repository root (scripts/demo.sh)
    python -m devenv.demo --stop DIR              # stop what --keep left running in DIR

Exit status 0 only when the rollout succeeded and every node's CRI-O reports every image of
its sets pinned (crictl). Without --keep everything is stopped and removed at the end, also
after a failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from devenv import cluster
from devenv.environment import DemoEnvironmentError, Environment, in_use, stop_kept
from devenv.jaeger import Jaeger, JaegerError, spans
from devenv.paths import REPO

NODES = {"master-0": ("master",), "worker-0": ("worker",), "worker-1": ("worker",)}
"""Node name -> roles; each role is a MachineConfigPool of the same name."""
SETS = {"master": ("master-pinned-images", ("app-a", "three-layers")),
        "worker": ("worker-pinned-images", ("app-a", "app-b", "oci", "multiarch"))}
"""Role -> (PinnedImageSet name, sample images it pins)."""
TRACE_WAIT_SECONDS = 15.0


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def table(rows: list[list[str]]) -> list[str]:
    """Rows as left-aligned columns, two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def narrow(text: str) -> list[str]:
    """crictl's table with its columns two spaces apart instead of padded to 20."""
    rows = [re.split(r"\s{2,}", line.strip()) for line in text.splitlines() if line.strip()]
    return table(rows) if rows and len({len(row) for row in rows}) == 1 else text.rstrip().splitlines()


# -- the cluster -------------------------------------------------------------------------

def cluster_objects(env: Environment) -> list[dict]:
    """The PinnedImageSets, MachineConfigPools and Nodes of the demo (agents by annotation)."""
    objects = [cluster.pinned_image_set(name, [env.images[i] for i in images], role=role)
               for role, (name, images) in SETS.items()]
    for role, (name, _) in SETS.items():
        objects.append(cluster.pool(role, pinned_image_sets=[name]))
    objects += [cluster.node(node.name, node.roles, endpoint=node.agent.endpoint) for node in env.nodes.values()]
    return objects


def wanted(env: Environment) -> dict[str, set[str]]:
    """Node -> the references its sets pin, from the layout (not from pinctl's selection)."""
    return {node: {env.images[i] for role in roles for i in SETS[role][1]} for node, roles in NODES.items()}


def describe_cluster(path: Path, objects: list[dict]) -> list[str]:
    """The pools, their nodes and sets, and one set as the file holds it (metadata trimmed)."""
    rows = [["POOL", "NODES", "PINNEDIMAGESET", "IMAGES"]]
    for role, (name, images) in SETS.items():
        rows.append([role, ",".join(n for n, roles in NODES.items() if role in roles), name, str(len(images))])
    sample = next(o for o in objects if o["kind"] == "PinnedImageSet" and o["metadata"]["name"] == SETS["worker"][0])
    sample = {**sample, "metadata": {k: sample["metadata"][k] for k in ("name", "labels")}}
    return [f"{path.name}: Nodes, MachineConfigPools and PinnedImageSets as `oc get -o yaml` prints them",
            *table(rows), "", *cluster.render([sample]).rstrip().splitlines()]


# -- the rollout -------------------------------------------------------------------------

def pinctl_command(cluster_file: Path, record_dir: Path, otlp_endpoint: str | None) -> list[str]:
    tracing = ["--otlp-endpoint", otlp_endpoint] if otlp_endpoint else []
    return [sys.executable, "-m", "pinsvc.coordinator.cli", *tracing, "rollout", "-f", str(cluster_file),
            "--record-dir", str(record_dir), "-o", "json"]


def run_pinctl(command: list[str]) -> tuple[int, dict | None]:
    """Runs pinctl: its live progress goes to our stderr, its JSON result is parsed."""
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    try:
        return done.returncode, json.loads(done.stdout)
    except ValueError:
        return done.returncode, None


def _items(doc: dict, kind: str) -> list[dict]:
    return [item for item in doc.get("items", []) if item.get("kind") == kind]


def node_rows(doc: dict) -> list[str]:
    """Each node's MachineConfigNode status: per set its generations, and the conditions."""
    rows = [["NODE", "POOL", "PINNEDIMAGESET", "DESIRED", "CURRENT", "PROGRESSING", "DEGRADED"]]
    for item in _items(doc, "MachineConfigNode"):
        status = item["status"]
        conditions = {c["type"]: f"{c['status']} ({c['reason']})" for c in status.get("conditions", [])}
        for entry in status.get("pinnedImageSets") or [{"name": "-"}]:
            failed = f" failed {entry['lastFailedGeneration']}" if entry.get("lastFailedGeneration") else ""
            rows.append([item["metadata"]["name"], item["spec"]["pool"]["name"], entry["name"],
                         str(entry.get("desiredGeneration", "-")), str(entry.get("currentGeneration", "-")) + failed,
                         conditions.get("PinnedImageSetsProgressing", "-"),
                         conditions.get("PinnedImageSetsDegraded", "-")])
    return table(rows)


def pool_rows(doc: dict) -> list[str]:
    """The PinnedImageSets pool synchronizer of every MachineConfigPool, and its Degraded."""
    rows = [["POOL", "MACHINES", "UPDATED", "READY", "AVAILABLE", "UNAVAILABLE", "DEGRADED"]]
    for item in _items(doc, "MachineConfigPool"):
        (sync,) = [s for s in item["status"]["poolSynchronizersStatus"]
                   if s["poolSynchronizerType"] == "PinnedImageSets"]
        degraded = next(c for c in item["status"]["conditions"] if c["type"] == "PinnedImageSetsDegraded")
        rows.append([item["metadata"]["name"], *(str(sync[k]) for k in (
            "machineCount", "updatedMachineCount", "readyMachineCount", "availableMachineCount",
            "unavailableMachineCount")), f"{degraded['status']}: {degraded['message']}"])
    return table(rows)


def crictl_view(env: Environment, want: dict[str, set[str]]) -> tuple[list[str], list[str]]:
    """Per node `crictl images --pinned` and the check of its sets through crictl's JSON:
    (lines to print, nodes whose CRI-O does not report every wanted image pinned)."""
    lines, short = [], []
    for name, node in env.nodes.items():
        lines.append(f"-- {name}: crictl --runtime-endpoint {node.crio.endpoint} images --pinned")
        lines += narrow(node.crio.crictl("images", "--pinned"))
        pinned = node.crio.pinned_images()
        missing = sorted(want[name] - pinned)
        lines.append(f"   {len(want[name]) - len(missing)} of {len(want[name])} images of its sets pinned"
                     + (f"; NOT pinned: {', '.join(missing)}" if missing else ""))
        if missing:
            short.append(name)
    return lines, short


# -- tracing -----------------------------------------------------------------------------

def rollout_trace(jaeger: Jaeger, nodes: list[str]) -> dict:
    """The rollout trace once spans of pinctl, of every node's agent and of CRI-O are in and
    the span count held for a second (spans arrive in batches); after TRACE_WAIT_SECONDS,
    what arrived. Raises JaegerError when there is no rollout trace at all."""
    deadline = time.monotonic() + TRACE_WAIT_SECONDS
    trace, seen, changed = None, -1, time.monotonic()
    while time.monotonic() < deadline:
        if trace is None:
            found = jaeger.traces("pinctl", operation="rollout", lookback="10m", limit=1)
            trace = found[0] if found else None
        else:
            trace = jaeger.find_trace(trace["traceID"]) or trace
        if trace is not None:
            if len(trace["spans"]) != seen:
                seen, changed = len(trace["spans"]), time.monotonic()
            hosts = trace_hosts(trace)
            if (set(nodes) <= set(hosts.get("pinsvc-agent", ())) and "crio" in hosts
                    and time.monotonic() - changed >= 1.0):
                return trace
        time.sleep(0.2)
    if trace is None:
        raise JaegerError(f"no rollout trace from pinctl in Jaeger at {jaeger.query_url}")
    return trace


def trace_hosts(trace: dict) -> dict[str, list[str]]:
    """Service name -> the host.name of each of its processes in the trace."""
    out: dict[str, list[str]] = {}
    for process in trace["processes"].values():
        tags = {t["key"]: t["value"] for t in process.get("tags", [])}
        out.setdefault(process["serviceName"], []).append(tags.get("host.name", "?"))
    return out


def trace_lines(jaeger: Jaeger, trace: dict) -> list[str]:
    by_service = Counter(s["service"] for s in spans(trace))
    hosts = trace_hosts(trace)
    parts = [f"{service} {count}" + (f" ({', '.join(sorted(hosts[service]))})" if service == "pinsvc-agent" else "")
             for service, count in sorted(by_service.items())]
    return [f"trace {trace['traceID']}: {len(trace['spans'])} spans: {', '.join(parts)}",
            f"query: {jaeger.query_url}/api/traces/{trace['traceID']}"]


# -- keep ----------------------------------------------------------------------------------

def kept_lines(env: Environment, script: Path) -> list[str]:
    """Where everything listens and the commands that use and stop it."""
    pinctl = Path(sys.executable).with_name("pinctl")
    pinctl_cmd = shlex.quote(str(pinctl)) if pinctl.exists() else f"{sys.executable} -m pinsvc.coordinator.cli"
    lines = [f"registry  {env.registry.url}/v2/_catalog"]
    for name, node in env.nodes.items():
        lines.append(f"{name:<9} CRI-O {node.crio.endpoint}  agent {node.agent.endpoint}")
    if env.jaeger is not None:
        lines.append(f"jaeger    {env.jaeger.query_url}/api/services  (OTLP/gRPC {env.jaeger.otlp_endpoint})")
    first = next(iter(env.nodes.values()))
    lines += ["logs      " + str(env.root / "*" / "crio" / "crio.log") + ", " + str(env.root / "*" / "agent" / "agent.log"),
              "", "Try (as root):",
              f"  {pinctl_cmd} status -f {env.root / 'cluster.yaml'}",
              f"  {pinctl_cmd} node status --endpoint {first.agent.endpoint}",
              f"  {first.crio.crictl_binary} --runtime-endpoint {first.crio.endpoint} images --pinned",
              "", f"Stop everything and remove {env.root}:", f"  {script}",
              f"  (the same: cd {shlex.quote(str(REPO))} && {sys.executable} -m devenv.demo --stop {env.root})"]
    return lines


# -- main ----------------------------------------------------------------------------------

def run(env: Environment, t0: float) -> int:
    """The demo on a started environment; its exit status."""
    say("Cluster")
    cluster_file = env.root / "cluster.yaml"
    objects = cluster_objects(env)
    cluster_file.write_text(cluster.render(objects))
    print("\n".join(describe_cluster(cluster_file, objects)))

    otlp = env.jaeger.otlp_endpoint if env.jaeger is not None else None
    command = pinctl_command(cluster_file, env.root / "records", otlp)
    shown = ["pinctl", *command[command.index("pinsvc.coordinator.cli") + 1:]]
    say(f"Rollout: {' '.join(shown[:-2])}")  # without `-o json`: that is for this demo to read
    t_rollout = time.monotonic()
    code, doc = run_pinctl(command)
    print(f"pinctl exited with {code} after {time.monotonic() - t_rollout:.1f} s", flush=True)
    if doc is None:
        print("pinctl printed no result", file=sys.stderr)
        return 1

    say("Node status (MachineConfigNode, as each agent reports it)")
    print("\n".join(node_rows(doc)))
    say("Pool summary (MachineConfigPool PinnedImageSets synchronizer)")
    print("\n".join(pool_rows(doc)))
    say("crictl images --pinned, per node (what each CRI-O reports)")
    want = wanted(env)
    lines, short = crictl_view(env, want)
    print("\n".join(lines))

    traced_ok = True
    if env.jaeger is not None:
        say("Trace (Jaeger)")
        try:
            print("\n".join(trace_lines(env.jaeger, rollout_trace(env.jaeger, list(env.nodes)))))
        except JaegerError as e:
            print(f"no trace: {e}")
            traced_ok = False

    ok = code == 0 and not short and traced_ok
    say(f"{'OK' if ok else 'FAILED'}: {len(env.nodes) - len(short)} of {len(env.nodes)} nodes pin every image "
        f"of their sets (checked with crictl), pinctl exit {code}; {time.monotonic() - t0:.1f} s in all")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devenv.demo", description=__doc__.splitlines()[0],
                                     epilog="Needs root (CRI-O does) and the peers of scripts/install-peers.sh.")
    parser.add_argument("--jaeger", action="store_true", help="also run Jaeger and trace the rollout into it")
    parser.add_argument("--keep", action="store_true", help="leave everything running and say how to stop it")
    parser.add_argument("--stop", metavar="DIR", type=Path, help="stop an environment that --keep left in DIR")
    args = parser.parse_args(argv)
    if args.stop is not None:
        try:
            print("\n".join(stop_kept(args.stop)))
        except DemoEnvironmentError as e:
            print(f"demo --stop: {e}", file=sys.stderr)
            return 1
        leftovers = in_use(args.stop)
        print("\n".join(f"still there: {item}" for item in leftovers) or "nothing left running")
        return 1 if leftovers else 0

    t0 = time.monotonic()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill cleans up like Ctrl-C
    if args.jaeger:
        os.environ.setdefault("OTEL_BSP_SCHEDULE_DELAY", "200")  # agents and CRI-O export spans soon
    root = Path(tempfile.mkdtemp(prefix="pinsvc-demo-"))
    env = Environment(root, NODES, jaeger=args.jaeger)
    print(f"pinsvc demo: a registry, {len(NODES)} nodes (CRI-O + agent each) in {len(SETS)} pools, "
          f"a pinctl rollout{' traced into Jaeger' if args.jaeger else ''}\nwork directory {env.root}")
    code, started = 1, False
    try:
        say("Starting the registry" + (", Jaeger" if args.jaeger else "") + f" and {len(NODES)} CRI-Os with their agents")
        asyncio.run(env.start())
        started = True
        print(f"registry  {env.registry.host}  {len(env.images)} sample images pushed "
              f"({env.image_bytes / 2**20:.1f} MiB)")
        for name, node in env.nodes.items():
            print(f"{name:<9} CRI-O {node.crio.socket.relative_to(env.root)} and agent "
                  f"{node.agent.socket.relative_to(env.root)} ready in {node.ready_seconds:.1f} s")
        if env.jaeger is not None:
            print(f"jaeger    {env.jaeger.query_url}  OTLP/gRPC {env.jaeger.otlp_endpoint}")
        print(f"ready in {time.monotonic() - t0:.1f} s")
        code = run(env, t0)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        code = 130
    except (RuntimeError, OSError) as e:  # a peer failed to start or answer (or is not installed)
        print(f"\ndemo failed: {e}", file=sys.stderr)
    finally:
        keep = args.keep and started and code != 130
        if keep:
            script = env.keep()
            say("Left running (--keep)")
            print("\n".join(kept_lines(env, script)))
        else:
            code = _clean_up(env, code)
    return code


def _clean_up(env: Environment, code: int) -> int:
    """Stops and removes everything (a second Ctrl-C cannot cut it short); the exit status,
    failed when something is left."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    env.stop()
    leftovers = in_use(env.root)
    if leftovers or env.root.exists():
        print(f"cleanup left {', '.join(leftovers) or env.root}", file=sys.stderr)
        return code or 1
    print(f"stopped and removed everything ({env.root})", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
