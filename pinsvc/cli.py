"""`pinsvc`: the node agent and a few direct commands against it.

    pinsvc agent --cri-endpoint unix:///var/run/crio/crio.sock [settings flags]
    pinsvc apply --endpoint unix:///run/pinsvc/pinsvc.sock sets.json
    pinsvc status --endpoint ...
    pinsvc check-space --endpoint ... IMAGE...
    pinsvc health [--endpoint unix:///run/pinsvc/pinsvc.sock]   # exit 0 when SERVING (probes)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path


from pinsvc import config, console, errors, logs, tracing

DEFAULT_ENDPOINT = "unix:///run/pinsvc/pinsvc.sock"


def _agent(args: argparse.Namespace) -> int:
    try:
        settings = config.load(args)
    except errors.PinsvcError as e:
        print(f"pinsvc: {e}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    from pinsvc.api.server import serve

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop=stop)

    endpoint = "" if settings.otlp_endpoint == "none" else settings.otlp_endpoint
    if settings.otlp_endpoint == "none":
        os.environ["OTEL_SDK_DISABLED"] = "true"
    # defaults under OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME: the node is the host
    defaults = {"host.name": settings.node_name, "k8s.node.name": settings.node_name}
    try:
        tracing.setup("pinsvc-agent", endpoint=endpoint, attributes=defaults)
    except errors.InvalidArgument as e:  # an OTLP protocol it cannot speak: nothing started
        print(f"pinsvc: {e}", file=sys.stderr)
        return 2
    try:
        asyncio.run(main())
    except errors.PinsvcError as e:
        print(f"pinsvc: {e}", file=sys.stderr)
        return 1
    finally:
        tracing.shutdown()
    return 0


def _load_sets(path: str):
    """The sets of a JSON file ("-" = stdin): [{"name", "generation", "images": [...]}]."""
    from pinsvc_client import SetSpec
    try:
        doc = json.loads(sys.stdin.read() if path == "-" else Path(path).read_text())
        return [SetSpec(s["name"], int(s["generation"]), tuple(s["images"])) for s in doc]
    except OSError as e:
        raise errors.InvalidArgument(f"{path}: cannot read: {e.strerror or e}") from e
    except (ValueError, TypeError, KeyError) as e:
        raise errors.InvalidArgument(f'{path}: want a JSON list of {{"name", "generation", "images": [...]}} '
                                     f"({type(e).__name__}: {e})") from e


def _client_command(args: argparse.Namespace) -> int:
    from pinsvc_client import PinError, to_dict

    from pinsvc.client import connect, explain, insecure_from_args, tls_from_args
    from pinsvc.progress import ApplyProgress

    def show(message) -> None:
        print(console.render(to_dict(message), args.output or "yaml"))

    async def main() -> int:
        sets = _load_sets(args.sets) if args.command == "apply" else []
        if args.command == "apply" and not sets and not args.prune_all:
            raise errors.InvalidArgument(f"{args.sets}: no sets: applying it would unpin every set of the node; "
                                         f"give the sets, or --prune-all to unpin everything")
        async with connect(args.endpoint, tls=tls_from_args(args), insecure=insecure_from_args(args)) as client:
            if args.command == "status":
                status = await client.status()
                show(status)
                if reason := console.degraded(status):
                    print(f"pinsvc: node {status.node} is degraded: {reason}", file=sys.stderr)
                    return console.FAILED
            elif args.command == "check-space":
                plan = await client.check_space(args.images)
                show(plan)
                if not plan.fits:
                    print(f"pinsvc: the images do not fit: {plan.verdict}", file=sys.stderr)
                    return console.FAILED
            else:
                if not sets:
                    status = await client.status()
                    print(f"{status.node}: unpinning every set: {console.pins_of(status)}", file=sys.stderr)
                try:
                    with ApplyProgress() as progress:
                        show(await client.apply(sets, parallelism=args.parallelism, on_event=progress.update))
                except PinError as e:
                    if e.status is not None:  # a set failed: the status says which, and what was kept
                        show(e.status)
                    raise
        return console.OK

    try:
        return asyncio.run(main())
    except PinError as e:
        print(f"pinsvc: {explain(args.endpoint, e)}", file=sys.stderr)
        return console.FAILED
    except errors.InvalidArgument as e:
        print(f"pinsvc: {e}", file=sys.stderr)
        return console.USAGE


def parser() -> argparse.ArgumentParser:
    from pinsvc.client import add_tls_arguments
    parser = console.Parser(prog="pinsvc", description="Pre-pull and pin container images through the CRI.",
                            epilog="Output: YAML (-o json for JSON). Exit codes: 0 done and healthy, 1 degraded "
                                   "or failed (the reason on stderr), 2 bad flags or input.")
    console.add_version(parser, "pinsvc")
    sub = parser.add_subparsers(dest="command", required=True)
    agent = sub.add_parser("agent", help="run the node agent")
    config.add_arguments(agent)
    for name, help in (("apply", "make the node pin exactly the given sets"),
                       ("status", "show the node status; exit 1 when it is degraded"),
                       ("check-space", "size images against the node's free space; exit 1 when they do not fit")):
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help="agent endpoint (unix:///path or host:port)")
        console.add_output(p)
        add_tls_arguments(p)
        if name == "apply":
            p.add_argument("sets", help='JSON file ("-" = stdin): [{"name", "generation", "images": [...]}]')
            p.add_argument("--parallelism", type=int, default=0, help="pulls in flight (0 = agent default)")
            p.add_argument("--prune-all", action="store_true",
                           help="let an empty list unpin every set of the node (it says which first)")
        if name == "check-space":
            p.add_argument("images", nargs="+", metavar="IMAGE", help="digest references")
    health = sub.add_parser("health", help="ask the agent's unix socket for its gRPC health (exit 0 = SERVING)")
    from pinsvc import health as health_check
    health_check.add_arguments(health, DEFAULT_ENDPOINT)
    return parser


def main(argv: list[str] | None = None) -> int:
    return console.run(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    from pinsvc import health as health_check
    args = parser().parse_args(argv)
    if args.command == "health":
        code, line = health_check.run(args)
        print(line, file=sys.stderr if code else sys.stdout)
        return code
    return _agent(args) if args.command == "agent" else _client_command(args)


if __name__ == "__main__":
    sys.exit(main())
