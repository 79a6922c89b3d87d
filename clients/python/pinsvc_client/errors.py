"""Errors of the client: one exception per gRPC status code the agent answers with.

Every failed call raises a `PinError`, converted once from grpc's `AioRpcError` (kept as
`__cause__`). A PinError *is* an `AioRpcError`, so `e.code()` (a `grpc.StatusCode`) and
`e.details()` work as with grpc itself and code that catches grpc's errors keeps working.
`ConfigError` is the caller's mistake found before any call (endpoint, TLS files).
"""

from __future__ import annotations

import grpc
from grpc.aio import AioRpcError

from pinsvc_client._gen.pinsvc.v1 import pinsvc_pb2 as pb


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
    def retryable(self) -> bool:
        """True for codes where the same call may succeed later (agent down or busy)."""
        return self.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)

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
    """The agent cannot be reached (or its runtime or registry could not be)."""


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


def from_rpc_error(error: AioRpcError, *, status: pb.NodeStatus | None = None) -> PinError:
    """The PinError (subclass by code) for a failed call; raise it `from error`."""
    if isinstance(error, PinError):
        return error
    cls = ERRORS.get(error.code(), PinError)
    return cls(error.code(), error.details() or "", status=status,
               trailing_metadata=error.trailing_metadata(), debug_error_string=error.debug_error_string())
