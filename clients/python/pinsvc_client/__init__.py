"""Typed Python client of the pinsvc node agent (async `grpc.aio`, plus a blocking wrapper).

    async with connect("unix:///run/pinsvc/pinsvc.sock") as client:
        plan = await client.check_space([ref])
        status = await client.apply([SetSpec("worker-pinned-images", 1, (ref,))], on_event=print)

`pb` is the API's generated message module (pinsvc.v1), `pb_grpc` its service stubs; this
package holds the only copy of them (see clients/python/README.md).
"""

from pinsvc_client._gen.pinsvc.v1 import pinsvc_pb2 as pb
from pinsvc_client._gen.pinsvc.v1 import pinsvc_pb2_grpc as pb_grpc
from pinsvc_client.client import NODE_METADATA, ApplyCall, PinClient, SetSpec, apply_request, connect, to_dict
from pinsvc_client.connection import MAX_RECEIVE_MESSAGE_BYTES, TlsFiles, parse_endpoint
from pinsvc_client.errors import (
    Cancelled, ConfigError, DeadlineExceeded, FailedPrecondition, Internal, InvalidArgument, NotFound, PinError,
    ResourceExhausted, Unauthenticated, Unavailable)
from pinsvc_client.sync import SyncPinClient

__version__ = "0.1.0"

__all__ = [
    "MAX_RECEIVE_MESSAGE_BYTES", "NODE_METADATA", "ApplyCall", "Cancelled", "ConfigError", "DeadlineExceeded",
    "FailedPrecondition", "Internal", "InvalidArgument", "NotFound", "PinClient", "PinError", "ResourceExhausted",
    "SetSpec", "SyncPinClient", "TlsFiles", "Unauthenticated", "Unavailable", "apply_request", "connect",
    "parse_endpoint", "pb", "pb_grpc", "to_dict",
]
