"""What core needs of the world outside it, declared as Protocols. The implementations are
in pinsvc/adapters (put together by pinsvc/wiring.py); unit tests hand in fakes
(tests/unit/fakes.py). Core imports these, never an adapter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

from pinsvc.model import (ApplyOutcome, Credentials, Emit, FsUsage, Layer, NodeStatus, ReloadResult,
                          RuntimeImage, WriteResult)
from pinsvc.refs import ImageRef


class ImageRuntime(Protocol):
    """The container runtime's image service (CRI-O over the CRI: adapters/cri.py)."""

    async def list_images(self) -> list[RuntimeImage]: ...

    async def image_status(self, image: str) -> RuntimeImage | None:
        """The image, or None when the runtime does not have it."""

    async def pull(self, image: str, credentials: Credentials | None = None) -> str:
        """Pulls `image` by exactly this reference; returns the image id."""

    async def image_fs(self) -> list[FsUsage]:
        """The image filesystems (mountpoint and used bytes)."""

    async def version(self) -> str:
        """The runtime's name and version ("cri-o 1.36.3"); raises RuntimeUnavailable (or
        Timeout) when it does not answer. Cheap: the runtime health watcher asks it."""

    async def close(self) -> None: ...


class Layered(Protocol):
    """An image's manifest, as far as the space check reads it."""

    @property
    def layers(self) -> tuple[Layer, ...]: ...


class ManifestSource(Protocol):
    """Image manifests from the registries (adapters/registry.py)."""

    async def many(self, refs: Iterable[ImageRef]) -> Mapping[ImageRef, Layered | Exception]:
        """The manifest of each image, or why it could not be read."""

    async def aclose(self) -> None: ...


class PullCredentials(Protocol):
    """The node's pull secret (adapters/pullsecret.py)."""

    def lookup(self, ref: ImageRef) -> Credentials | None:
        """The credentials for pulling `ref`, or None."""


class ConfigReloader(Protocol):
    """Asks the runtime to reread its configuration (adapters/reload.py)."""

    async def reload(self) -> ReloadResult: ...


class DropinFile(Protocol):
    """The drop-in that lists the pinned images, in the runtime's drop-in directory
    (adapters/dropin.py). Its text is pinsvc/dropin_format.py."""

    @property
    def path(self) -> Path: ...

    def read(self) -> bytes | None:
        """Its bytes (None: no file); blocking."""

    async def write(self, images: Iterable[str]) -> WriteResult:
        """Makes it list exactly `images` (none: removes it), only when the bytes differ."""

    async def restore(self, previous: bytes | None) -> None:
        """Puts back a WriteResult.previous."""

    def check_conflicts(self) -> None:
        """Raises Conflict when writing it would not pin anything or break a reload;
        blocking."""

    def remove_leftovers(self) -> list[Path]:
        """Removes what an interrupted write left behind; blocking."""


class Metrics(Protocol):
    """What the agent reports to its metrics (pinsvc/metrics.py, or NoMetrics)."""

    def observer(self, emit: Emit) -> Emit:
        """`emit` of one request, observing each event first."""

    def observe_outcome(self, outcome: ApplyOutcome) -> None: ...

    def observe_apply_cancelled(self) -> None: ...

    def observe_drift_repair(self, kind: str, repaired: bool) -> None: ...

    def observe_status(self, status: NodeStatus) -> None: ...


class NoMetrics:
    """Metrics off: every observation is dropped (and prometheus_client is never imported)."""

    def observer(self, emit: Emit) -> Emit:
        return emit

    def observe_outcome(self, outcome: ApplyOutcome) -> None:
        pass

    def observe_apply_cancelled(self) -> None:
        pass

    def observe_drift_repair(self, kind: str, repaired: bool) -> None:
        pass

    def observe_status(self, status: NodeStatus) -> None:
        pass
