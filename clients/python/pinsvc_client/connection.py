"""Endpoints, TLS files and channel options: how a client reaches an agent. Pure except for
reading the TLS files."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import grpc

from pinsvc_client.errors import ConfigError

MAX_RECEIVE_MESSAGE_BYTES = 64 << 20
"""Largest answer the client accepts. gRPC's default is 4 MiB, but the status of a node with
thousands of images (every image's detail, drift repairs) can be larger; the agent bounds
what it accepts, not what it sends."""

_HOST_PORT = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$")


@dataclass(frozen=True)
class Endpoint:
    """Where an agent listens: `target` as gRPC wants it and whether it is a unix socket."""

    target: str
    unix: bool


def parse_endpoint(endpoint: str) -> Endpoint:
    """`unix:///path` (or `unix:/path`, `/path`) or `host:port` (`[v6]:port`). Raises
    ConfigError naming the endpoint otherwise."""
    text = endpoint.strip()
    if text.startswith("/"):
        return Endpoint("unix:" + text, True)
    if text.startswith("unix:"):
        path = text.removeprefix("unix:").removeprefix("//")
        if not path.startswith("/"):
            raise ConfigError(f"endpoint {endpoint!r}: a unix socket needs an absolute path (unix:///path)")
        return Endpoint("unix:" + path, True)
    match = _HOST_PORT.match(text)
    if not match or not 0 < int(match[1]) < 65536:
        raise ConfigError(f"endpoint {endpoint!r}: expected unix:///path or host:port")
    return Endpoint(text, False)


def _read_pem(what: str, path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{what} {path}: cannot read: {e.strerror or e}") from e
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{what} {path}: not a PEM file")
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
        """Reads the files (an unreadable or non-PEM one raises ConfigError naming it)."""
        return grpc.ssl_channel_credentials(root_certificates=_read_pem("TLS CA", self.ca),
                                            private_key=_read_pem("TLS key", self.key),
                                            certificate_chain=_read_pem("TLS certificate", self.cert))

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def channel_options(*, max_receive_message_bytes: int = MAX_RECEIVE_MESSAGE_BYTES,
                    tls: TlsFiles | None = None) -> list[tuple[str, int | str]]:
    return [("grpc.max_receive_message_length", max_receive_message_bytes), *(tls.options() if tls else [])]


def open_channel(endpoint: str, *, tls: TlsFiles | None = None, insecure: bool = False,
                 max_receive_message_bytes: int = MAX_RECEIVE_MESSAGE_BYTES,
                 interceptors=None) -> grpc.aio.Channel:
    """A grpc.aio channel to the agent. Unix sockets never use TLS (the socket's mode is
    the access control; `tls` is ignored and its files not read). A TCP endpoint needs
    `tls` (mutual TLS) or an explicit `insecure=True` (plaintext); both is a ConfigError."""
    where = parse_endpoint(endpoint)
    if max_receive_message_bytes <= 0:
        raise ConfigError(f"max_receive_message_bytes {max_receive_message_bytes}: must be positive")
    if where.unix:
        return grpc.aio.insecure_channel(
            where.target, options=channel_options(max_receive_message_bytes=max_receive_message_bytes),
            interceptors=interceptors)
    if tls is not None and insecure:
        raise ConfigError(f"endpoint {endpoint}: tls and insecure=True contradict each other")
    if tls is None and not insecure:
        raise ConfigError(f"endpoint {endpoint}: TCP needs tls=TlsFiles(...) for mutual TLS, "
                          "or insecure=True for plaintext")
    options = channel_options(max_receive_message_bytes=max_receive_message_bytes, tls=tls)
    if tls is None:
        return grpc.aio.insecure_channel(where.target, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(where.target, tls.credentials(), options=options, interceptors=interceptors)
