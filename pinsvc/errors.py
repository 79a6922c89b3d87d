"""The error tree. Every error knows its gRPC status code and whether retrying can help.

Adapters convert foreign errors (grpc.aio, httpx, OSError) into these once, keeping the
cause (`raise ... from e`); the API layer maps them to gRPC status codes in one place.
Messages name the image or file and the cause, and never hold credentials.
"""

from __future__ import annotations

import grpc


class PinsvcError(Exception):
    """Base of every error pinsvc raises on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    retryable: bool = False


class InvalidArgument(PinsvcError):
    """Bad input; nothing was touched. `problems` lists every bad value."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class InsufficientSpace(PinsvcError):
    """The images do not fit on the image filesystem; nothing was pulled."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class NoSpaceLeft(PinsvcError):
    """The runtime ran out of disk during a pull ("no space left on device")."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Conflict(PinsvcError):
    """The node's configuration is in a state pinsvc must not override (a foreign file at
    the drop-in path, a later drop-in that replaces our list, a drop-in that fails
    validation)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ImageNotFound(PinsvcError):
    """The registry does not have the image (manifest unknown)."""

    code = grpc.StatusCode.NOT_FOUND


class Unauthorized(PinsvcError):
    """The registry refused the credentials, or wanted some and had none."""

    code = grpc.StatusCode.PERMISSION_DENIED


class RegistryError(PinsvcError):
    """The registry failed or could not be reached; transient ones are retried."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, *, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


class RuntimeUnavailable(PinsvcError):
    """The container runtime's CRI socket does not answer."""

    code = grpc.StatusCode.UNAVAILABLE
    retryable = True


class RuntimeError_(PinsvcError):
    """The container runtime answered with an error pinsvc cannot classify further."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


class Timeout(PinsvcError):
    """An attempt or a wait ran past its bound."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    retryable = True


class ReloadFailed(PinsvcError):
    """The runtime could not be asked to reload (no process, systemctl failed)."""

    code = grpc.StatusCode.UNAVAILABLE


class VerificationFailed(PinsvcError):
    """After the reload the runtime does not report the wanted pins."""

    code = grpc.StatusCode.ABORTED


class StateError(PinsvcError):
    """The agent's own state or configuration is unusable."""

    code = grpc.StatusCode.FAILED_PRECONDITION


def combined(errs: list[Exception]) -> PinsvcError:
    """One error standing for several: the first one's code, every message."""
    wrapped = [e if isinstance(e, PinsvcError) else RuntimeError_(str(e)) for e in errs]
    if len(wrapped) == 1:
        return wrapped[0]
    error = PinsvcError("; ".join(str(e) for e in wrapped))
    error.code = wrapped[0].code
    error.retryable = all(e.retryable for e in wrapped)
    return error
