from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImagePhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_PHASE_UNSPECIFIED: _ClassVar[ImagePhase]
    IMAGE_PHASE_PENDING: _ClassVar[ImagePhase]
    IMAGE_PHASE_PULLING: _ClassVar[ImagePhase]
    IMAGE_PHASE_PRESENT: _ClassVar[ImagePhase]
    IMAGE_PHASE_PINNED: _ClassVar[ImagePhase]
    IMAGE_PHASE_FAILED: _ClassVar[ImagePhase]
IMAGE_PHASE_UNSPECIFIED: ImagePhase
IMAGE_PHASE_PENDING: ImagePhase
IMAGE_PHASE_PULLING: ImagePhase
IMAGE_PHASE_PRESENT: ImagePhase
IMAGE_PHASE_PINNED: ImagePhase
IMAGE_PHASE_FAILED: ImagePhase

class CheckSpaceRequest(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, images: _Optional[_Iterable[str]] = ...) -> None: ...

class SpacePlan(_message.Message):
    __slots__ = ("images", "compressed_bytes", "required_bytes", "free_bytes", "total_bytes", "mountpoint", "decompression_factor", "min_free_bytes", "max_usage_percent", "usage_after_percent", "fits", "verdict")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_BYTES_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_BYTES_FIELD_NUMBER: _ClassVar[int]
    FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MOUNTPOINT_FIELD_NUMBER: _ClassVar[int]
    DECOMPRESSION_FACTOR_FIELD_NUMBER: _ClassVar[int]
    MIN_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_USAGE_PERCENT_FIELD_NUMBER: _ClassVar[int]
    USAGE_AFTER_PERCENT_FIELD_NUMBER: _ClassVar[int]
    FITS_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[ImagePlan]
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
    def __init__(self, images: _Optional[_Iterable[_Union[ImagePlan, _Mapping]]] = ..., compressed_bytes: _Optional[int] = ..., required_bytes: _Optional[int] = ..., free_bytes: _Optional[int] = ..., total_bytes: _Optional[int] = ..., mountpoint: _Optional[str] = ..., decompression_factor: _Optional[float] = ..., min_free_bytes: _Optional[int] = ..., max_usage_percent: _Optional[float] = ..., usage_after_percent: _Optional[float] = ..., fits: _Optional[bool] = ..., verdict: _Optional[str] = ...) -> None: ...

class ImagePlan(_message.Message):
    __slots__ = ("image", "present", "compressed_bytes", "layers", "layers_shared", "new_bytes", "via")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    COMPRESSED_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_SHARED_FIELD_NUMBER: _ClassVar[int]
    NEW_BYTES_FIELD_NUMBER: _ClassVar[int]
    VIA_FIELD_NUMBER: _ClassVar[int]
    image: str
    present: bool
    compressed_bytes: int
    layers: int
    layers_shared: int
    new_bytes: int
    via: str
    def __init__(self, image: _Optional[str] = ..., present: _Optional[bool] = ..., compressed_bytes: _Optional[int] = ..., layers: _Optional[int] = ..., layers_shared: _Optional[int] = ..., new_bytes: _Optional[int] = ..., via: _Optional[str] = ...) -> None: ...

class PinnedImageSet(_message.Message):
    __slots__ = ("name", "generation", "images")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    name: str
    generation: int
    images: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., generation: _Optional[int] = ..., images: _Optional[_Iterable[str]] = ...) -> None: ...

class PullOptions(_message.Message):
    __slots__ = ("parallelism", "attempt_timeout_seconds")
    PARALLELISM_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    parallelism: int
    attempt_timeout_seconds: float
    def __init__(self, parallelism: _Optional[int] = ..., attempt_timeout_seconds: _Optional[float] = ...) -> None: ...

class ApplyRequest(_message.Message):
    __slots__ = ("sets", "pull")
    SETS_FIELD_NUMBER: _ClassVar[int]
    PULL_FIELD_NUMBER: _ClassVar[int]
    sets: _containers.RepeatedCompositeFieldContainer[PinnedImageSet]
    pull: PullOptions
    def __init__(self, sets: _Optional[_Iterable[_Union[PinnedImageSet, _Mapping]]] = ..., pull: _Optional[_Union[PullOptions, _Mapping]] = ...) -> None: ...

class ApplyEvent(_message.Message):
    __slots__ = ("time_unix_nano", "image", "stage", "status")
    TIME_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    time_unix_nano: int
    image: ImageEvent
    stage: StageEvent
    status: NodeStatus
    def __init__(self, time_unix_nano: _Optional[int] = ..., image: _Optional[_Union[ImageEvent, _Mapping]] = ..., stage: _Optional[_Union[StageEvent, _Mapping]] = ..., status: _Optional[_Union[NodeStatus, _Mapping]] = ...) -> None: ...

class ImageEvent(_message.Message):
    __slots__ = ("image", "kind", "attempt", "bytes", "duration_seconds", "queue_wait_seconds", "reason", "retry_in_seconds", "via")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[ImageEvent.Kind]
        QUEUED: _ClassVar[ImageEvent.Kind]
        ALREADY_PRESENT: _ClassVar[ImageEvent.Kind]
        PULLING: _ClassVar[ImageEvent.Kind]
        PULLED: _ClassVar[ImageEvent.Kind]
        RETRYING: _ClassVar[ImageEvent.Kind]
        FAILED: _ClassVar[ImageEvent.Kind]
        CANCELLED: _ClassVar[ImageEvent.Kind]
    KIND_UNSPECIFIED: ImageEvent.Kind
    QUEUED: ImageEvent.Kind
    ALREADY_PRESENT: ImageEvent.Kind
    PULLING: ImageEvent.Kind
    PULLED: ImageEvent.Kind
    RETRYING: ImageEvent.Kind
    FAILED: ImageEvent.Kind
    CANCELLED: ImageEvent.Kind
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RETRY_IN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    VIA_FIELD_NUMBER: _ClassVar[int]
    image: str
    kind: ImageEvent.Kind
    attempt: int
    bytes: int
    duration_seconds: float
    queue_wait_seconds: float
    reason: str
    retry_in_seconds: float
    via: str
    def __init__(self, image: _Optional[str] = ..., kind: _Optional[_Union[ImageEvent.Kind, str]] = ..., attempt: _Optional[int] = ..., bytes: _Optional[int] = ..., duration_seconds: _Optional[float] = ..., queue_wait_seconds: _Optional[float] = ..., reason: _Optional[str] = ..., retry_in_seconds: _Optional[float] = ..., via: _Optional[str] = ...) -> None: ...

class StageEvent(_message.Message):
    __slots__ = ("stage", "message", "duration_seconds", "space")
    class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STAGE_UNSPECIFIED: _ClassVar[StageEvent.Stage]
        SPACE_CHECKED: _ClassVar[StageEvent.Stage]
        IMAGES_READY: _ClassVar[StageEvent.Stage]
        DROPIN_WRITTEN: _ClassVar[StageEvent.Stage]
        DROPIN_UNCHANGED: _ClassVar[StageEvent.Stage]
        RUNTIME_RELOADED: _ClassVar[StageEvent.Stage]
        PINS_VERIFIED: _ClassVar[StageEvent.Stage]
        DROPIN_RESTORED: _ClassVar[StageEvent.Stage]
    STAGE_UNSPECIFIED: StageEvent.Stage
    SPACE_CHECKED: StageEvent.Stage
    IMAGES_READY: StageEvent.Stage
    DROPIN_WRITTEN: StageEvent.Stage
    DROPIN_UNCHANGED: StageEvent.Stage
    RUNTIME_RELOADED: StageEvent.Stage
    PINS_VERIFIED: StageEvent.Stage
    DROPIN_RESTORED: StageEvent.Stage
    STAGE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    stage: StageEvent.Stage
    message: str
    duration_seconds: float
    space: SpacePlan
    def __init__(self, stage: _Optional[_Union[StageEvent.Stage, str]] = ..., message: _Optional[str] = ..., duration_seconds: _Optional[float] = ..., space: _Optional[_Union[SpacePlan, _Mapping]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("node", "pinned_image_sets", "conditions", "images", "dropin_path", "drift_repairs")
    NODE_FIELD_NUMBER: _ClassVar[int]
    PINNED_IMAGE_SETS_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    DROPIN_PATH_FIELD_NUMBER: _ClassVar[int]
    DRIFT_REPAIRS_FIELD_NUMBER: _ClassVar[int]
    node: str
    pinned_image_sets: _containers.RepeatedCompositeFieldContainer[PinnedImageSetStatus]
    conditions: _containers.RepeatedCompositeFieldContainer[Condition]
    images: _containers.RepeatedCompositeFieldContainer[ImageDetail]
    dropin_path: str
    drift_repairs: _containers.RepeatedCompositeFieldContainer[DriftRepair]
    def __init__(self, node: _Optional[str] = ..., pinned_image_sets: _Optional[_Iterable[_Union[PinnedImageSetStatus, _Mapping]]] = ..., conditions: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ..., images: _Optional[_Iterable[_Union[ImageDetail, _Mapping]]] = ..., dropin_path: _Optional[str] = ..., drift_repairs: _Optional[_Iterable[_Union[DriftRepair, _Mapping]]] = ...) -> None: ...

class DriftRepair(_message.Message):
    __slots__ = ("kind", "target", "time", "repaired", "error", "count")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[DriftRepair.Kind]
        IMAGE_REMOVED: _ClassVar[DriftRepair.Kind]
        IMAGE_UNPINNED: _ClassVar[DriftRepair.Kind]
        DROPIN_CHANGED: _ClassVar[DriftRepair.Kind]
        DROPIN_REMOVED: _ClassVar[DriftRepair.Kind]
    KIND_UNSPECIFIED: DriftRepair.Kind
    IMAGE_REMOVED: DriftRepair.Kind
    IMAGE_UNPINNED: DriftRepair.Kind
    DROPIN_CHANGED: DriftRepair.Kind
    DROPIN_REMOVED: DriftRepair.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    REPAIRED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    kind: DriftRepair.Kind
    target: str
    time: str
    repaired: bool
    error: str
    count: int
    def __init__(self, kind: _Optional[_Union[DriftRepair.Kind, str]] = ..., target: _Optional[str] = ..., time: _Optional[str] = ..., repaired: _Optional[bool] = ..., error: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class PinnedImageSetStatus(_message.Message):
    __slots__ = ("name", "desired_generation", "current_generation", "last_failed_generation", "last_failed_generation_error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESIRED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    CURRENT_GENERATION_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILED_GENERATION_ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    desired_generation: int
    current_generation: int
    last_failed_generation: int
    last_failed_generation_error: str
    def __init__(self, name: _Optional[str] = ..., desired_generation: _Optional[int] = ..., current_generation: _Optional[int] = ..., last_failed_generation: _Optional[int] = ..., last_failed_generation_error: _Optional[str] = ...) -> None: ...

class Condition(_message.Message):
    __slots__ = ("type", "status", "reason", "message", "last_transition_time")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    LAST_TRANSITION_TIME_FIELD_NUMBER: _ClassVar[int]
    type: str
    status: str
    reason: str
    message: str
    last_transition_time: str
    def __init__(self, type: _Optional[str] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ..., last_transition_time: _Optional[str] = ...) -> None: ...

class ImageDetail(_message.Message):
    __slots__ = ("image", "phase", "attempts", "bytes", "last_error", "pinned", "present", "sets")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    SETS_FIELD_NUMBER: _ClassVar[int]
    image: str
    phase: ImagePhase
    attempts: int
    bytes: int
    last_error: str
    pinned: bool
    present: bool
    sets: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, image: _Optional[str] = ..., phase: _Optional[_Union[ImagePhase, str]] = ..., attempts: _Optional[int] = ..., bytes: _Optional[int] = ..., last_error: _Optional[str] = ..., pinned: _Optional[bool] = ..., present: _Optional[bool] = ..., sets: _Optional[_Iterable[str]] = ...) -> None: ...

class PullImagesRequest(_message.Message):
    __slots__ = ("images", "options")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedScalarFieldContainer[str]
    options: PullOptions
    def __init__(self, images: _Optional[_Iterable[str]] = ..., options: _Optional[_Union[PullOptions, _Mapping]] = ...) -> None: ...

class WriteDropinRequest(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, images: _Optional[_Iterable[str]] = ...) -> None: ...

class WriteDropinResponse(_message.Message):
    __slots__ = ("path", "changed", "removed", "sha256")
    PATH_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    path: str
    changed: bool
    removed: bool
    sha256: str
    def __init__(self, path: _Optional[str] = ..., changed: _Optional[bool] = ..., removed: _Optional[bool] = ..., sha256: _Optional[str] = ...) -> None: ...

class ReloadRuntimeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadRuntimeResponse(_message.Message):
    __slots__ = ("strategy", "duration_seconds", "detail")
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    strategy: str
    duration_seconds: float
    detail: str
    def __init__(self, strategy: _Optional[str] = ..., duration_seconds: _Optional[float] = ..., detail: _Optional[str] = ...) -> None: ...

class VerifyPinsRequest(_message.Message):
    __slots__ = ("pinned", "unpinned", "timeout_seconds")
    PINNED_FIELD_NUMBER: _ClassVar[int]
    UNPINNED_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    pinned: _containers.RepeatedScalarFieldContainer[str]
    unpinned: _containers.RepeatedScalarFieldContainer[str]
    timeout_seconds: float
    def __init__(self, pinned: _Optional[_Iterable[str]] = ..., unpinned: _Optional[_Iterable[str]] = ..., timeout_seconds: _Optional[float] = ...) -> None: ...

class PinCheck(_message.Message):
    __slots__ = ("image", "present", "pinned", "want_pinned")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    WANT_PINNED_FIELD_NUMBER: _ClassVar[int]
    image: str
    present: bool
    pinned: bool
    want_pinned: bool
    def __init__(self, image: _Optional[str] = ..., present: _Optional[bool] = ..., pinned: _Optional[bool] = ..., want_pinned: _Optional[bool] = ...) -> None: ...

class VerifyPinsResponse(_message.Message):
    __slots__ = ("ok", "images", "message", "duration_seconds")
    OK_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    images: _containers.RepeatedCompositeFieldContainer[PinCheck]
    message: str
    duration_seconds: float
    def __init__(self, ok: _Optional[bool] = ..., images: _Optional[_Iterable[_Union[PinCheck, _Mapping]]] = ..., message: _Optional[str] = ..., duration_seconds: _Optional[float] = ...) -> None: ...
