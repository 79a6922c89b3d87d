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


from pinsvc import config, errors, logs, tracing
from pinsvc.console import HelpFormatter

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
    with tracing.configured("pinsvc-agent", endpoint, {"host.name": settings.node_name}):
        try:
            asyncio.run(main())
        except errors.PinsvcError as e:
            print(f"pinsvc: {e}", file=sys.stderr)
            return 1
    return 0


def _load_sets(path: str):
    from pinsvc_client import SetSpec
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    doc = json.loads(text)
    return [SetSpec(s["name"], int(s["generation"]), tuple(s["images"])) for s in doc]


def _client_command(args: argparse.Namespace) -> int:
    from pinsvc_client import PinError, to_dict

    from pinsvc.client import connect, tls_from_args
    from pinsvc.progress import ApplyProgress

    async def main() -> int:
        async with connect(args.endpoint, tls=tls_from_args(args)) as client:
            if args.command == "status":
                print(json.dumps(to_dict(await client.status()), indent=2))
            elif args.command == "check-space":
                print(json.dumps(to_dict(await client.check_space(args.images)), indent=2))
            else:
                with ApplyProgress() as progress:
                    status = await client.apply(_load_sets(args.sets), parallelism=args.parallelism,
                                                on_event=progress.update)
                print(json.dumps(to_dict(status), indent=2))
        return 0

    try:
        return asyncio.run(main())
    except PinError as e:
        print(f"pinsvc: {e}", file=sys.stderr)
        return 1
    except errors.InvalidArgument as e:
        print(f"pinsvc: {e}", file=sys.stderr)
        return 2


def parser() -> argparse.ArgumentParser:
    from pinsvc.client import add_tls_arguments
    parser = argparse.ArgumentParser(prog="pinsvc", description="Pre-pull and pin container images through the CRI.",
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    agent = sub.add_parser("agent", help="run the node agent", formatter_class=HelpFormatter)
    config.add_arguments(agent)
    for name, help in (("apply", "make the node pin exactly the given sets"), ("status", "show the node status"),
                       ("check-space", "size images against the node's free space")):
        p = sub.add_parser(name, help=help, formatter_class=HelpFormatter)
        p.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help="agent endpoint (unix:///path or host:port)")
        add_tls_arguments(p)
        if name == "apply":
            p.add_argument("sets", help='JSON file ("-" = stdin): [{"name", "generation", "images": [...]}]')
            p.add_argument("--parallelism", type=int, default=0, help="pulls in flight (0 = agent default)")
        if name == "check-space":
            p.add_argument("images", nargs="+")
    health = sub.add_parser("health", help="ask the agent's unix socket for its gRPC health (exit 0 = SERVING)",
                            formatter_class=HelpFormatter)
    from pinsvc import health as health_check
    health_check.add_arguments(health, DEFAULT_ENDPOINT)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pinsvc import health as health_check
    args = parser().parse_args(argv)
    if args.command == "health":
        code, line = health_check.run(args)
        print(line, file=sys.stderr if code else sys.stdout)
        return code
    return _agent(args) if args.command == "agent" else _client_command(args)


if __name__ == "__main__":
    sys.exit(main())
