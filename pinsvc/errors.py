"""The error tree. Every error knows its gRPC status code and whether retrying can help.

Adapters convert foreign errors (grpc.aio, httpx, OSError) into these once, keeping the
cause (`raise ... from e`); the API layer maps them to gRPC status codes in one place.
Messages name the image or file and the cause, and never hold credentials. `error_class`
is a short, bounded name of the kind of failure (metrics labels, span attributes).
"""

from __future__ import annotations

import asyncio
import errno

import grpc


class PinsvcError(Exception):
    """Base of every error pinsvc raises on purpose. `retryable`: trying again later can
    help; `retry_after_seconds`: how long the peer asked to wait first (None = not said)."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    error_class = "internal"
    retryable: bool = False
    retry_after_seconds: float | None = None


class InvalidArgument(PinsvcError):
    """Bad input; nothing was touched. `problems` lists every bad value; the message names
    the first MAX_SHOWN and counts the others."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    error_class = "invalid_argument"
    MAX_SHOWN = 50

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        shown = self.problems[:self.MAX_SHOWN]
        more = len(self.problems) - len(shown)
        super().__init__("; ".join(shown) + (f"; ... and {more} more problems" if more else ""))


class InsufficientSpace(PinsvcError):
    """The images do not fit on the image filesystem; nothing was pulled."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    error_class = "insufficient_space"


class NoSpaceLeft(PinsvcError):
    """The runtime ran out of disk during a pull ("no space left on device")."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    error_class = "no_space"


class Conflict(PinsvcError):
    """The node's configuration is in a state pinsvc must not override (a foreign file at
    the drop-in path, a later drop-in that replaces our list, a drop-in that fails
    validation)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    error_class = "conflict"


class ImageNotFound(PinsvcError):
    """The registry does not have the image (manifest unknown)."""

    code = grpc.StatusCode.NOT_FOUND
    error_class = "not_found"


class Unauthorized(PinsvcError):
    """The registry refused the credentials, or wanted some and had none."""

    code = grpc.StatusCode.PERMISSION_DENIED
    error_class = "unauthorized"


class RegistryError(PinsvcError):
    """The registry failed or could not be reached; transient ones are retried."""

    code = grpc.StatusCode.UNAVAILABLE
    error_class = "registry"

    def __init__(self, message: str, *, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


class RuntimeUnavailable(PinsvcError):
    """The container runtime's CRI socket does not answer."""

    code = grpc.StatusCode.UNAVAILABLE
    error_class = "runtime_unavailable"
    retryable = True


class RuntimeError_(PinsvcError):
    """The container runtime answered with an error pinsvc cannot classify further."""

    code = grpc.StatusCode.INTERNAL
    error_class = "runtime"

    def __init__(self, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


class Timeout(PinsvcError):
    """An attempt or a wait ran past its bound."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    error_class = "timeout"
    retryable = True


class ReloadFailed(PinsvcError):
    """The runtime could not be asked to reload (no process, systemctl failed)."""

    code = grpc.StatusCode.UNAVAILABLE
    error_class = "reload_failed"


class VerificationFailed(PinsvcError):
    """After the reload the runtime does not report the wanted pins."""

    code = grpc.StatusCode.ABORTED
    error_class = "verification_failed"


class StateError(PinsvcError):
    """The agent's own state or configuration is unusable."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    error_class = "state"


ERROR_CLASSES = frozenset(c.error_class for c in (
    PinsvcError, InvalidArgument, InsufficientSpace, NoSpaceLeft, Conflict, ImageNotFound, Unauthorized,
    RegistryError, RuntimeUnavailable, RuntimeError_, Timeout, ReloadFailed, VerificationFailed,
    StateError)) | {"cancelled", "other"}


def error_class(error: BaseException | None) -> str:
    """The short class of an error, one of ERROR_CLASSES ("" for None)."""
    if error is None:
        return ""
    if isinstance(error, PinsvcError):
        return error.error_class
    if isinstance(error, asyncio.CancelledError):
        return "cancelled"
    if isinstance(error, TimeoutError):
        return "timeout"
    return "other"


def from_os_error(what: str, e: OSError) -> PinsvcError:
    """An OSError on one of pinsvc's own files (`what` names it): NoSpaceLeft when its disk
    is full, else StateError; the cause is kept by the caller (`raise ... from e`)."""
    if e.errno == errno.ENOSPC:
        return NoSpaceLeft(f"cannot write {what}: no space left on device")
    if e.errno == errno.EDQUOT:
        return NoSpaceLeft(f"cannot write {what}: no space left on device (disk quota exceeded)")
    return StateError(f"cannot write {what}: {e.strerror or e}")


def about(image: str, error: BaseException) -> str:
    """The error's message for a list of failed images: prefixed with the image unless the
    message already names it (most do), so that the reference is said once."""
    message = str(error)
    return message if image in message else f"{image}: {message}"


def parts(error: BaseException | None) -> list[BaseException]:
    """The errors a `combined` error stands for (the error itself when it is not one)."""
    if error is None:
        return []
    inner = getattr(error, "parts", None)
    return [p for e in inner for p in parts(e)] if inner else [error]


def combined(errs: list[Exception]) -> PinsvcError:
    """One error standing for several: the first one's code and class, every message; the
    errors themselves in `parts`."""
    wrapped = [e if isinstance(e, PinsvcError) else RuntimeError_(str(e)) for e in errs]
    if len(wrapped) == 1:
        return wrapped[0]
    error = PinsvcError("; ".join(str(e) for e in wrapped))
    error.code = wrapped[0].code
    error.error_class = wrapped[0].error_class
    error.retryable = all(e.retryable for e in wrapped)
    error.parts = wrapped
    return error
