"""`pinctl node ...`: one agent, reached by its endpoint, without the cluster objects.

- `status`: the agent's MachineConfigNode status; exit 1 when the node is degraded, the
  reason on stderr.
- `check-space IMAGE...`: the agent's SpacePlan; exit 1 when the images do not fit.
- `apply -f FILE...`: the PinnedImageSets of the files become the node's whole desired
  state, generations derived as `content` says. Files that hold no set (a ConfigMap, an
  empty file) are refused: applying nothing would unpin every set of the node. Only
  `--prune-all` (without `-f`) does that, and it first says what it removes.
"""

from __future__ import annotations

import argparse
import sys

from pinsvc_client import PinClient, PinError, to_dict

from pinsvc import console, errors
from pinsvc.coordinator import content, loader
from pinsvc.coordinator.record import status_doc
from pinsvc.progress import ApplyProgress


def add_arguments(node: argparse.ArgumentParser, add_tls_arguments) -> None:
    """The `node` command's subcommands and their flags."""
    sub = node.add_subparsers(dest="node_command", required=True, metavar="{status,check-space,apply}")
    for name, help in (("status", "the agent's MachineConfigNode status; exit 1 when the node is degraded"),
                       ("check-space", "size images against the node's free space; exit 1 when they do not fit"),
                       ("apply", "make the agent pin exactly the PinnedImageSets of the files")):
        n = sub.add_parser(name, help=help, description=help)
        n.add_argument("--endpoint", required=True, help="the agent: unix:///path or host:port")
        console.add_output(n)
        add_tls_arguments(n, subcommand=True)
        if name == "check-space":
            n.add_argument("images", nargs="+", metavar="IMAGE", help="digest references")
        if name == "apply":
            what = n.add_mutually_exclusive_group(required=True)
            what.add_argument("-f", "--file", action="append", help="PinnedImageSet objects (YAML/JSON; - = stdin)")
            what.add_argument("--prune-all", action="store_true",
                              help="unpin every set of the node (it says which first); the only way to do so")


async def run(client: PinClient, args: argparse.Namespace) -> int:
    if args.node_command == "status":
        return _status(await client.status(), args.output)
    if args.node_command == "check-space":
        plan = await client.check_space(args.images)
        print(console.render(to_dict(plan), args.output or "yaml"))
        if not plan.fits:
            print(f"pinctl: the images do not fit: {plan.verdict}", file=sys.stderr)
            return console.FAILED
        return console.OK
    return await _apply(client, args)


def _status(status, output: str | None) -> int:
    print(console.render({"status": status_doc(status)}, output or "yaml"))
    if reason := console.degraded(status):
        print(f"pinctl: node {status.node} is degraded: {reason}", file=sys.stderr)
        return console.FAILED
    return console.OK


async def _apply(client: PinClient, args: argparse.Namespace) -> int:
    sets = []
    if args.file:
        cluster = loader.load(args.file)
        sets = list(cluster.sets.values())
        if not sets:
            raise errors.InvalidArgument(no_sets(args.file, cluster.notes, "of the node"))
    status = await client.status()
    if not sets:
        print(f"{status.node}: unpinning every set: {console.pins_of(status)}", file=sys.stderr)
    try:
        with ApplyProgress() as progress:
            status = await client.apply(content.specs(sets, status), on_event=progress.update)
    except PinError as e:
        if e.status is not None:  # a set failed: the node's status says which, and what it kept
            print(console.render({"status": status_doc(e.status)}, args.output or "yaml"))
        raise
    print(console.render({"status": status_doc(status)}, args.output or "yaml"))
    return console.OK


def no_sets(files, notes: list[str], where: str) -> str:
    """Why an input without a PinnedImageSet is refused, naming what it held instead."""
    held = f" ({'; '.join(notes)})" if notes else ""
    return (f"{', '.join(map(str, files))}: no PinnedImageSet in the input{held}: applying it would unpin every "
            f"set {where}. Give the files with the sets, or --prune-all to unpin everything")
