"""Plain model types shared by the stages, the orchestrator and the adapters (no protobuf,
no I/O)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pinsvc.errors import PinsvcError

_REDACTED = "<redacted>"


class ImagePhase(enum.StrEnum):
    """Where one image of the desired sets stands. A `str`: the state file and the API spell
    the values as they are."""

    PENDING = "pending"
    PULLING = "pulling"
    PRESENT = "present"
    PINNED = "pinned"
    FAILED = "failed"


class ImageEventKind(enum.Enum):
    QUEUED = "queued"
    ALREADY_PRESENT = "already_present"
    PULLING = "pulling"
    PULLED = "pulled"
    RETRYING = "retrying"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class ImageEvent:
    """One change in the pull of one image."""

    image: str
    kind: ImageEventKind
    attempt: int = 0
    bytes: int = 0
    duration_seconds: float = 0.0
    queue_wait_seconds: float = 0.0
    reason: str = ""
    retry_in_seconds: float = 0.0
    # RETRYING/FAILED: errors.error_class of `reason` (bounded: for metrics labels).
    error_class: str = ""
    # PULLED: the registry endpoint that served the image's manifest to the space check
    # (e.g. a mirror's repository); "" when not known.
    via: str = ""


class StageKind(enum.Enum):
    SPACE_CHECKED = "space_checked"
    IMAGES_READY = "images_ready"
    DROPIN_WRITTEN = "dropin_written"
    DROPIN_UNCHANGED = "dropin_unchanged"
    RUNTIME_RELOADED = "runtime_reloaded"
    PINS_VERIFIED = "pins_verified"
    DROPIN_RESTORED = "dropin_restored"


@dataclass(frozen=True)
class PullResult:
    """How the pull of one image ended. `error` is None on success."""

    image: str
    already_present: bool = False
    attempts: int = 0
    duration_seconds: float = 0.0
    queue_wait_seconds: float = 0.0
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class RuntimeImage:
    """An image as the runtime reports it (CRI `Image`), reduced to what pinsvc uses."""

    id: str
    repo_digests: tuple[str, ...] = ()
    repo_tags: tuple[str, ...] = ()
    size: int = 0
    pinned: bool = False


@dataclass(frozen=True)
class PinnedImageSet:
    name: str
    generation: int
    images: tuple[str, ...]


@dataclass(frozen=True)
class Layer:
    digest: str
    """Of the blob as the registry stores it (compressed)."""
    size: int
    diff_id: str = ""
    """Of the uncompressed layer, from the image config ("" = not read); what the runtime
    reports of the images it has."""


@dataclass(frozen=True)
class SizedImage:
    """What a registry said of one image: its layers for the node's platform and the
    endpoint that served the manifest ("" = read from the agent's manifest cache)."""

    layers: tuple[Layer, ...]
    via: str = ""


@dataclass(frozen=True)
class ImagePlan:
    image: str
    present: bool
    compressed_bytes: int = 0
    layers: int = 0
    layers_shared: int = 0
    new_bytes: int = 0
    via: str = ""


@dataclass(frozen=True)
class SpacePlan:
    images: tuple[ImagePlan, ...]
    compressed_bytes: int
    required_bytes: int
    free_bytes: int
    total_bytes: int
    mountpoint: str
    decompression_factor: float
    min_free_bytes: int
    max_usage_percent: float
    usage_after_percent: float
    fits: bool
    verdict: str
    missing: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class StageEvent:
    kind: StageKind
    message: str = ""
    duration_seconds: float = 0.0
    space: SpacePlan | None = None


Emit = Callable[[ImageEvent | StageEvent], None]
"""Where a request's events go (its stream, through the metrics when they are on)."""


@dataclass(frozen=True)
class SetStatus:
    name: str
    desired_generation: int
    current_generation: int
    last_failed_generation: int
    last_failed_generation_error: str


@dataclass(frozen=True)
class ConditionStatus:
    type: str
    status: str
    reason: str
    message: str
    last_transition_time: str


@dataclass(frozen=True)
class ImageDetail:
    image: str
    phase: ImagePhase
    attempts: int
    bytes: int
    last_error: str
    pinned: bool
    present: bool
    sets: tuple[str, ...]


@dataclass(frozen=True)
class DriftRepairStatus:
    kind: str  # image_removed, image_unpinned, dropin_changed, dropin_removed
    target: str
    time: str
    repaired: bool
    error: str
    count: int


@dataclass(frozen=True)
class NodeStatus:
    node: str
    sets: tuple[SetStatus, ...]
    conditions: tuple[ConditionStatus, ...]
    images: tuple[ImageDetail, ...]
    dropin_path: str
    drift_repairs: tuple[DriftRepairStatus, ...] = ()

    def condition(self, type: str) -> ConditionStatus | None:
        return next((c for c in self.conditions if c.type == type), None)


@dataclass(frozen=True)
class ApplyOutcome:
    status: NodeStatus
    # The first failure, when a set failed (already recorded in the status).
    error: PinsvcError | None


# ---- what the adapters hand back ---------------------------------------------------------------

@dataclass(frozen=True)
class Credentials:
    """What a registry accepts for one pull (from the pull secret): the fields of the CRI
    `AuthConfig`. `repr()`/`str()` show the username and the server but never a password or
    token.
    """

    username: str = ""
    password: str = ""
    identity_token: str = ""
    registry_token: str = ""
    server_address: str = ""

    def __repr__(self) -> str:
        shown = [f"{name}={value!r}" for name, value in
                 (("username", self.username), ("server_address", self.server_address)) if value]
        shown += [f"{name}={_REDACTED}" for name, value in
                  (("password", self.password), ("identity_token", self.identity_token),
                   ("registry_token", self.registry_token)) if value]
        return f"Credentials({', '.join(shown)})"

    __str__ = __repr__


@dataclass(frozen=True)
class FsUsage:
    """An image filesystem as the runtime reports it (CRI `ImageFsInfo`)."""

    mountpoint: str
    used_bytes: int


@dataclass(frozen=True)
class WriteResult:
    """How a write of the drop-in went."""

    changed: bool
    """The file at the drop-in path was written or removed."""
    removed: bool
    """The file was removed (empty list)."""
    sha256: str
    """Hex SHA-256 of the drop-in content now in place ('' when there is none of ours)."""
    previous: bytes | None
    """The bytes at the drop-in path before the call (None = no file), for `restore`."""
    validated: bool = False
    """The candidate was accepted by `crio config` before it was installed."""


@dataclass(frozen=True)
class ReloadResult:
    strategy: str
    duration_seconds: float
    """Time taken to ask for the reload (not how long CRI-O takes to apply it)."""
    detail: str
    """What was done, e.g. `SIGHUP sent to pid 123 (from pidfile /run/crio.pid)`."""
