"""What core needs of the world outside it, declared as Protocols. The implementations are
in pinsvc/adapters (put together by pinsvc/wiring.py); unit tests hand in fakes
(tests/unit/fakes.py). Core imports these, never an adapter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from pinsvc.mirrors.config import RegistriesConfig
from pinsvc.mirrors.resolve import Endpoint
from pinsvc.model import (ApplyOutcome, Credentials, Emit, FsUsage, Layer, NodeStatus, ReloadResult,
                          RuntimeImage, SizedImage, WriteResult)
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

    async def image_diff_ids(self, image: str) -> tuple[str, ...]:
        """The uncompressed digests of the layers (the config's `rootfs.diff_ids`) of an
        image the runtime has (`image`: a reference or its id); () when it does not say."""

    async def close(self) -> None: ...


class ImageSources(Protocol):
    """Where the runtime pulls an image from: its registries configuration, mirrors
    included (adapters/registries_conf.py); `pinsvc.mirrors.resolve` turns it into each
    image's endpoints."""

    def current(self) -> RegistriesConfig:
        """The configuration as the runtime's files hold it now; blocking (stats the files,
        re-reads changed ones). Raises StateError naming a malformed file."""


class ManifestSource(Protocol):
    """Image manifests from the registries (adapters/registry/client.py)."""

    async def many(self, wanted: Mapping[ImageRef, Sequence[Endpoint]], *, diff_ids: bool = False,
                   timeout: float | None = None) -> Mapping[ImageRef, SizedImage | Exception]:
        """Per image, its layers from the first of its endpoints (in order; refused ones are
        not contacted) that serves the manifest, or why none did, naming each endpoint.
        `diff_ids`: the layers' uncompressed digests too (one more request per image, to
        the image config). `timeout`: seconds for the whole call (None = unbounded); an
        image not sized by then fails, naming the endpoint it waited on."""

    async def cached_layers(self, digests: Iterable[str]) -> Mapping[str, tuple[Layer, ...]]:
        """The layers of the manifests among `digests` that the agent has cached (an index
        resolved to the node's platform); never contacts a registry."""

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
