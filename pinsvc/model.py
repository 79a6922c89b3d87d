"""Plain model types shared by the stages and the orchestrator (no protobuf, no I/O)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


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
    size: int


@dataclass(frozen=True)
class ImagePlan:
    image: str
    present: bool
    compressed_bytes: int = 0
    layers: int = 0
    layers_shared: int = 0
    new_bytes: int = 0


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
    phase: str
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
