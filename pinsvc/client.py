"""A small async client for the agent, used by the CLI, the demo and the tests."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf import json_format

from pinsvc import tracing
from pinsvc.errors import InvalidArgument
from pinsvc.gen.pinsvc.v1 import pinsvc_pb2 as pb
from pinsvc.gen.pinsvc.v1 import pinsvc_pb2_grpc


def channel_target(endpoint: str) -> str:
    """`unix:///path`, `/path` or `host:port`."""
    if endpoint.startswith("/"):
        return "unix:" + endpoint
    return endpoint


@dataclass(frozen=True)
class SetSpec:
    name: str
    generation: int
    images: tuple[str, ...]


NODE_METADATA = "x-pinsvc-node"


def _read_pem(what: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise InvalidArgument(f"{what} {path}: cannot read: {e.strerror or e}") from e
    if b"-----BEGIN " not in data:
        raise InvalidArgument(f"{what} {path}: not a PEM file")
    return data


@dataclass(frozen=True)
class TlsFiles:
    """The client side of the agent's mTLS: PEM files of the client certificate (chain), its
    private key, and the CA the agent's certificate must chain to. `server_name` (optional)
    is the name checked in the agent's certificate instead of the endpoint's host, for
    agents reached by IP whose certificate names the node."""

    cert: str
    key: str
    ca: str
    server_name: str = ""

    def credentials(self) -> grpc.ChannelCredentials:
        """Reads the files (an unreadable one raises InvalidArgument naming it)."""
        return grpc.ssl_channel_credentials(root_certificates=_read_pem("TLS CA", self.ca),
                                            private_key=_read_pem("TLS key", self.key),
                                            certificate_chain=_read_pem("TLS certificate", self.cert))

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


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
    tls.credentials()
    return tls


class PinClient:
    """`node` (optional) is sent as `x-pinsvc-node` metadata on every call, so an agent's
    logs (and simulated agents) know which node the caller means. With `tls`, a TCP
    endpoint is reached over mutual TLS; unix socket endpoints never use TLS."""

    def __init__(self, endpoint: str, node: str = "", *, tls: TlsFiles | None = None):
        target = channel_target(endpoint)
        if tls is None or target.startswith("unix"):
            self.channel = grpc.aio.insecure_channel(target, interceptors=tracing.client_interceptors())
        else:
            self.channel = grpc.aio.secure_channel(target, tls.credentials(), options=tls.options(),
                                                   interceptors=tracing.client_interceptors())
        self.stub = pinsvc_pb2_grpc.PinServiceStub(self.channel)
        self.metadata = ((NODE_METADATA, node),) if node else None

    async def __aenter__(self) -> "PinClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    def apply(self, sets: Iterable[SetSpec], *, parallelism: int = 0,
              attempt_timeout: float | None = None) -> AsyncIterator[pb.ApplyEvent]:
        options = pb.PullOptions(parallelism=parallelism)
        if attempt_timeout is not None:
            options.attempt_timeout_seconds = attempt_timeout
        return self.stub.Apply(pb.ApplyRequest(
            sets=[pb.PinnedImageSet(name=s.name, generation=s.generation, images=list(s.images)) for s in sets],
            pull=options), metadata=self.metadata)

    async def status(self) -> pb.NodeStatus:
        return await self.stub.GetStatus(pb.GetStatusRequest(), metadata=self.metadata)

    async def check_space(self, images: Iterable[str]) -> pb.SpacePlan:
        return await self.stub.CheckSpace(pb.CheckSpaceRequest(images=list(images)), metadata=self.metadata)


def to_dict(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=False)
