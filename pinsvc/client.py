"""How pinsvc's commands (`pinsvc`, `pinctl`, the controller, the demo) reach agents: the
--tls-* and --insecure flags, `connect()` (the client library's, `pinsvc_client`, with
pinsvc's tracing) and `explain()`, which says what to do when an agent cannot be reached.
The client itself (PinClient, SetSpec, TlsFiles, errors) is `pinsvc_client`."""

from __future__ import annotations

import argparse
import os
import pwd
import stat
import sys

import pinsvc_client
from pinsvc_client import PinClient, PinError, TlsFiles

from pinsvc import tracing
from pinsvc.errors import InvalidArgument


TCP_NEEDS_TLS = ("agents on TCP require mutual TLS: give --tls-cert, --tls-key and --tls-ca (or --insecure for "
                 "an agent started with --server-insecure: plaintext, neither encrypted nor authenticated)")


def connect(endpoint: str, node: str = "", *, tls: TlsFiles | None = None, insecure: bool = False) -> PinClient:
    """A client of the agent at `endpoint`, with the trace context propagated. A TCP
    endpoint uses mutual TLS with `tls`; plaintext only when asked (`insecure`, for an
    agent started with --server-insecure). A bad endpoint, a TCP endpoint with neither, or
    a bad TLS file raises InvalidArgument."""
    try:
        where = pinsvc_client.parse_endpoint(endpoint)
        if not where.unix and tls is None and not insecure:
            raise InvalidArgument(f"agent endpoint {endpoint} is TCP: {TCP_NEEDS_TLS}")
        return pinsvc_client.connect(endpoint, tls=tls, insecure=insecure and tls is None, node=node,
                                     interceptors=tracing.client_interceptors(where.target))
    except pinsvc_client.ConfigError as e:
        raise InvalidArgument(str(e)) from e


def explain(endpoint: str, error: PinError) -> str:
    """A failed call as the commands print it. When the agent could not be reached at a unix
    socket, why and what to do: no socket there (is the agent running?), or a socket the
    caller may not use (its mode and owner, and how to open it to a group)."""
    if not error.retryable:
        return str(error)
    try:
        where = pinsvc_client.parse_endpoint(endpoint)
    except pinsvc_client.ConfigError:
        return str(error)
    if not where.unix:
        return f"{error} (is `pinsvc agent` serving --server-tcp {endpoint}, reachable from here?)"
    path = where.target.removeprefix("unix:")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return f"no agent at {path}: is `pinsvc agent` running with --server-socket {path}?"
    except PermissionError:
        return f"permission denied on the way to {path}: run as root"
    if not stat.S_ISSOCK(info.st_mode):
        return f"{path} is not a socket: is it the agent's --server-socket?"
    if not os.access(path, os.R_OK | os.W_OK):
        try:
            owner = pwd.getpwuid(info.st_uid).pw_name
        except KeyError:
            owner = str(info.st_uid)
        return (f"permission denied on {path} (mode {stat.S_IMODE(info.st_mode):04o}, owner {owner}): run as "
                f"root, or start the agent with --server-socket-group GROUP --server-socket-mode 0660 for a "
                f"group of yours")
    return str(error)


def add_tls_arguments(parser: argparse.ArgumentParser, *, subcommand: bool = False) -> None:
    """--tls-cert/--tls-key/--tls-ca [--tls-server-name], for connections to agents over TCP,
    and --insecure. Added to a program's parser and again (`subcommand=True`: no defaults,
    so they do not hide the program's) to its subcommands, the flags work before and after
    the command."""
    default = argparse.SUPPRESS if subcommand else ""
    group = parser.add_argument_group(
        "agents over TCP: mutual TLS is required (unix sockets never use TLS; the socket's mode is the access control)")
    group.add_argument("--tls-cert", default=default, help="client certificate (PEM) presented to the agents")
    group.add_argument("--tls-key", default=default, help="private key (PEM) of --tls-cert")
    group.add_argument("--tls-ca", default=default, help="CA certificate(s) (PEM) the agents' certificates must chain to")
    group.add_argument("--tls-server-name", default=default,
                       help="name expected in the agent's certificate instead of the endpoint's host")
    group.add_argument("--insecure", action="store_true", default=argparse.SUPPRESS if subcommand else False,
                       help="plaintext TCP, for an agent started with --server-insecure (labs and tests: neither "
                            "encrypted nor authenticated)")


def insecure_from_args(args: argparse.Namespace) -> bool:
    """--insecure, said loudly on stderr when given."""
    if getattr(args, "insecure", False):
        print("warning: --insecure: plaintext to agents over TCP, neither encrypted nor authenticated",
              file=sys.stderr)
        return True
    return False


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
