"""How pinsvc's commands (`pinsvc`, `pinctl`, the demo) reach agents: the --tls-* flags and
`connect()`, the client library's (`pinsvc_client`) with pinsvc's tracing. The client itself
(PinClient, SetSpec, TlsFiles, errors) is `pinsvc_client`."""

from __future__ import annotations

import argparse

import pinsvc_client
from pinsvc_client import PinClient, TlsFiles

from pinsvc import tracing
from pinsvc.errors import InvalidArgument


def connect(endpoint: str, node: str = "", *, tls: TlsFiles | None = None) -> PinClient:
    """A client of the agent at `endpoint`, with the trace context propagated. A TCP
    endpoint uses mutual TLS with `tls`, else plaintext (which only an agent started with
    --server-insecure accepts). A bad endpoint or TLS file raises InvalidArgument."""
    try:
        return pinsvc_client.connect(endpoint, tls=tls, insecure=tls is None, node=node,
                                     interceptors=tracing.client_interceptors())
    except pinsvc_client.ConfigError as e:
        raise InvalidArgument(str(e)) from e


def add_tls_arguments(parser: argparse.ArgumentParser, *, subcommand: bool = False) -> None:
    """--tls-cert/--tls-key/--tls-ca [--tls-server-name], for connections to agents over TCP.
    Added to a program's parser and again (`subcommand=True`: no defaults, so they do not
    hide the program's) to its subcommands, the flags work before and after the command."""
    default = argparse.SUPPRESS if subcommand else ""
    group = parser.add_argument_group("mutual TLS to agents over TCP (unix sockets never use TLS)")
    group.add_argument("--tls-cert", default=default, help="client certificate (PEM) presented to the agents")
    group.add_argument("--tls-key", default=default, help="private key (PEM) of --tls-cert")
    group.add_argument("--tls-ca", default=default, help="CA certificate(s) (PEM) the agents' certificates must chain to")
    group.add_argument("--tls-server-name", default=default,
                       help="name expected in the agent's certificate instead of the endpoint's host")


def tls_from_args(args: argparse.Namespace) -> TlsFiles | None:
    """TlsFiles from the --tls-* flags, None when none is given; InvalidArgument naming the
    missing flags when only some are. The files are read once here, so a bad one fails
    before any agent is contacted."""
    given = {"--tls-cert": args.tls_cert, "--tls-key": args.tls_key, "--tls-ca": args.tls_ca}
    if not any(given.values()):
        if args.tls_server_name:
            raise InvalidArgument("--tls-server-name needs --tls-cert, --tls-key and --tls-ca")
        return None
    missing = [flag for flag, value in given.items() if not value]
    if missing:
        raise InvalidArgument(f"mutual TLS needs --tls-cert, --tls-key and --tls-ca: missing {', '.join(missing)}")
    tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_ca, args.tls_server_name)
    try:
        tls.credentials()
    except pinsvc_client.ConfigError as e:
        raise InvalidArgument(str(e)) from e
    return tls
