"""Errors of the client: one exception per gRPC status code the agent answers with.

Every failed call raises a `PinError`, converted once from grpc's `AioRpcError` (kept as
`__cause__`). A PinError *is* an `AioRpcError`, so `e.code()` (a `grpc.StatusCode`) and
`e.details()` work as with grpc itself and code that catches grpc's errors keeps working.
`ConfigError` is the caller's mistake found before any call (endpoint, TLS files).

The agent names the kind of every failure it answers with in a `google.rpc.ErrorInfo`
(domain `pinsvc.io`, in the status details): `reason`, e.g. `REGISTRY` for a registry that
failed or could not be reached, `NOT_FOUND`, `UNAUTHORIZED`, `INSUFFICIENT_SPACE`,
`RUNTIME_UNAVAILABLE` (proto/pinsvc/v1/pinsvc.proto lists them). A status without one did
not come from the agent's own checks: gRPC could not reach it, or the call's deadline passed.
"""

from __future__ import annotations

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc.aio import AioRpcError

from pinsvc_client._gen.pinsvc.v1 import pinsvc_pb2 as pb

DOMAIN = "pinsvc.io"
"""`ErrorInfo.domain` of the reasons the agent sends."""
DETAILS_KEY = "grpc-status-details-bin"


class ConfigError(ValueError):
    """A bad endpoint or TLS setting, found before anything is sent; names the bad value."""


class PinError(AioRpcError):
    """A call the agent (or gRPC) answered with an error status. `status` is the node's
    final status when an Apply streamed it before failing (a set failed), else None."""

    def __init__(self, code: grpc.StatusCode, details: str, *, status: pb.NodeStatus | None = None,
                 trailing_metadata=None, debug_error_string: str | None = None):
        super().__init__(code, None, trailing_metadata, details, debug_error_string)
        self.status = status

    @property
    def reason(self) -> str:
        """The agent's `ErrorInfo.reason` for this failure, e.g. "REGISTRY"; "" when the
        status did not come from the agent (unreachable, deadline) or from an older agent."""
        return reason(self.trailing_metadata())

    @property
    def retryable(self) -> bool:
        """True when the same call may succeed later because it did not get the agent's
        answer: UNAVAILABLE or DEADLINE_EXCEEDED without a reason (agent down, restarting, or
        too slow). A failure the agent reports, such as an unreachable registry, is its
        answer: calling again would only repeat the agent's own retries."""
        return (self.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                and not self.reason)

    def __str__(self) -> str:
        return f"{self.code().name}: {self.details()}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code().name}, {self.details()!r})"


class InvalidArgument(PinError):
    """Bad input (a reference, a set name, a limit); nothing was touched. The message names
    every bad value."""


class ResourceExhausted(PinError):
    """The images do not fit on the node (nothing pulled), or a message over gRPC's limit."""


class FailedPrecondition(PinError):
    """The node is not in a state to do it, e.g. a drop-in that pinsvc did not write."""


class NotFound(PinError):
    """An image the registry does not have (after an Apply's final status)."""


class Unavailable(PinError):
    """The agent cannot be reached (no `reason`), or it reports that its runtime (reason
    RUNTIME_UNAVAILABLE) or a registry (REGISTRY) could not be."""


class DeadlineExceeded(PinError):
    """The call's timeout passed."""


class Cancelled(PinError):
    """The call was cancelled, e.g. by a newer Apply."""


class Unauthenticated(PinError):
    """Credentials were refused (the registry's, reported by the agent)."""


class Internal(PinError):
    """A bug or an unexpected failure in the agent."""


ERRORS: dict[grpc.StatusCode, type[PinError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.INTERNAL: Internal,
}
"""The exception class of each status code; other codes raise PinError itself."""


def reason(trailing_metadata) -> str:
    """The `ErrorInfo.reason` of domain pinsvc.io in a call's trailing metadata, or ""."""
    for key, value in trailing_metadata or ():
        if key != DETAILS_KEY:
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            return ""
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and info.domain == DOMAIN:
                return info.reason
    return ""


def from_rpc_error(error: AioRpcError, *, status: pb.NodeStatus | None = None) -> PinError:
    """The PinError (subclass by code) for a failed call; raise it `from error`."""
    if isinstance(error, PinError):
        return error
    cls = ERRORS.get(error.code(), PinError)
    return cls(error.code(), error.details() or "", status=status,
               trailing_metadata=error.trailing_metadata(), debug_error_string=error.debug_error_string())
