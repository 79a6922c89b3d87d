"""An image's endpoints, tried as the runtime tries them (containers/image
`docker.newImageSource`): in order; an endpoint the registries configuration refuses
(`Endpoint.refused`, e.g. the blocked source of a mirrored repository) is never contacted;
the first that serves the manifest serves the whole image. When none does, one error names
every endpoint with what it answered, so that "the mirror is missing the image" and "the
mirror is down" read differently.

The `Trail` of an image records the endpoints tried so far and the one being asked: the
error of a space check whose deadline passed names them too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pinsvc.errors import ImageNotFound, PinsvcError, RegistryError, Unauthorized
from pinsvc.mirrors.resolve import Endpoint
from pinsvc.refs import ImageRef


def own_endpoint(ref: ImageRef) -> Endpoint:
    """The image's own registry as its only endpoint (no registries configuration)."""
    return Endpoint(ref.normalized(), mirror=False)


def is_own(image: ImageRef, endpoints: tuple[Endpoint, ...]) -> bool:
    """Whether `endpoints` is just the image's own registry, to be contacted."""
    return len(endpoints) == 1 and not endpoints[0].refused and endpoints[0].ref == image.normalized()


@dataclass
class Trail:
    """What an image's endpoints answered so far, and which one is being asked."""

    causes: list[tuple[Endpoint, PinsvcError | None, str]] = field(default_factory=list)
    """(endpoint, its error or None when it was not contacted, what to say of it)."""
    waiting: Endpoint | None = None

    def refused(self, endpoint: Endpoint) -> None:
        self.causes.append((endpoint, None, f"not contacted: {endpoint.refused}"))

    def failed(self, endpoint: Endpoint, error: PinsvcError) -> None:
        """The adapter's messages start with "image <reference on the endpoint>: "; the
        endpoint is named once, in front."""
        self.causes.append((endpoint, error, str(error).removeprefix(f"image {endpoint.ref}: ")))

    def restart(self) -> None:
        """A new pass over the endpoints (the previous one failed and is retried)."""
        self.causes.clear()
        self.waiting = None

    def said(self) -> list[str]:
        out = [f"{endpoint}: {cause}" for endpoint, _, cause in self.causes]
        if self.waiting is not None:
            out.append(f"{self.waiting}: no answer yet")
        return out


def none_served(image: ImageRef, trail: Trail) -> PinsvcError:
    """The error when every endpoint failed or was refused. Its class says what a retry or
    the user can do: a registry error (retryable) when an endpoint could not be reached,
    not found when every endpoint contacted answered that, unauthorized when one refused
    the credentials, a registry error (not retryable) otherwise or when none may be
    contacted."""
    errors = [error for _, error, _ in trail.causes if error is not None]
    message = (f"image {image}: none of its {len(trail.causes)} endpoints (registries.conf, in the "
               f"runtime's order) served it: " + "; ".join(trail.said()))
    if any(error.retryable for error in errors):
        return RegistryError(message, retryable=True)
    if errors and all(isinstance(error, ImageNotFound) for error in errors):
        return ImageNotFound(message)
    if any(isinstance(error, Unauthorized) for error in errors):
        return Unauthorized(message)
    return RegistryError(message, retryable=False)


def deadline_passed(image: ImageRef, seconds: float, trail: Trail) -> RegistryError:
    """The error of an image not sized in the `seconds` the space check's deadline left."""
    said = "; ".join(trail.said()) or "no endpoint answered"
    return RegistryError(f"image {image}: no registry served its manifest in the {math.ceil(seconds * 10) / 10:g} s "
                         f"the space check's deadline left ({said})", retryable=True)
