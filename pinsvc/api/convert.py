"""protobuf <-> plain model types. The only place besides the servicer that imports the
generated pinsvc.v1 code."""

from __future__ import annotations

import time

from pinsvc_client import pb

from pinsvc import limits
from pinsvc.errors import InvalidArgument
from pinsvc.model import ImageEvent, ImagePhase, NodeStatus, PinnedImageSet, SpacePlan, StageEvent

_PHASES = {ImagePhase.PENDING: pb.IMAGE_PHASE_PENDING, ImagePhase.PULLING: pb.IMAGE_PHASE_PULLING,
           ImagePhase.PRESENT: pb.IMAGE_PHASE_PRESENT, ImagePhase.PINNED: pb.IMAGE_PHASE_PINNED,
           ImagePhase.FAILED: pb.IMAGE_PHASE_FAILED}
_DRIFT_KINDS = {"image_removed": pb.DriftRepair.IMAGE_REMOVED, "image_unpinned": pb.DriftRepair.IMAGE_UNPINNED,
                "dropin_changed": pb.DriftRepair.DROPIN_CHANGED, "dropin_removed": pb.DriftRepair.DROPIN_REMOVED}


def sets_from_pb(request: pb.ApplyRequest) -> list[PinnedImageSet]:
    """Raises InvalidArgument over MAX_SETS_PER_REQUEST before converting anything (a 4 MiB
    message holds 2 million empty sets)."""
    if too_many := limits.count_problem(len(request.sets), limits.MAX_SETS_PER_REQUEST, "sets in the request"):
        raise InvalidArgument(too_many)
    return [PinnedImageSet(s.name, s.generation, tuple(s.images)) for s in request.sets]


def attempt_timeout(options: pb.PullOptions) -> float | None:
    return options.attempt_timeout_seconds if options.HasField("attempt_timeout_seconds") else None


def space_plan_pb(plan: SpacePlan) -> pb.SpacePlan:
    return pb.SpacePlan(
        images=[pb.ImagePlan(image=p.image, present=p.present, compressed_bytes=p.compressed_bytes,
                             layers=p.layers, layers_shared=p.layers_shared, new_bytes=p.new_bytes, via=p.via)
                for p in plan.images],
        compressed_bytes=plan.compressed_bytes, required_bytes=plan.required_bytes,
        free_bytes=plan.free_bytes, total_bytes=plan.total_bytes, mountpoint=plan.mountpoint,
        decompression_factor=plan.decompression_factor, min_free_bytes=plan.min_free_bytes,
        max_usage_percent=plan.max_usage_percent, usage_after_percent=plan.usage_after_percent,
        fits=plan.fits, verdict=plan.verdict)


def image_event_pb(e: ImageEvent) -> pb.ImageEvent:
    return pb.ImageEvent(image=e.image, kind=pb.ImageEvent.Kind.Value(e.kind.name), attempt=e.attempt,
                         bytes=e.bytes, duration_seconds=e.duration_seconds,
                         queue_wait_seconds=e.queue_wait_seconds, reason=e.reason,
                         retry_in_seconds=e.retry_in_seconds, via=e.via)


def event_pb(e: ImageEvent | StageEvent | NodeStatus) -> pb.ApplyEvent:
    out = pb.ApplyEvent(time_unix_nano=time.time_ns())
    if isinstance(e, ImageEvent):
        out.image.CopyFrom(image_event_pb(e))
    elif isinstance(e, StageEvent):
        out.stage.CopyFrom(pb.StageEvent(stage=pb.StageEvent.Stage.Value(e.kind.name), message=e.message,
                                         duration_seconds=e.duration_seconds,
                                         space=space_plan_pb(e.space) if e.space else None))
    else:
        out.status.CopyFrom(status_pb(e))
    return out


def status_pb(s: NodeStatus) -> pb.NodeStatus:
    return pb.NodeStatus(
        node=s.node, dropin_path=s.dropin_path,
        pinned_image_sets=[pb.PinnedImageSetStatus(
            name=x.name, desired_generation=x.desired_generation, current_generation=x.current_generation,
            last_failed_generation=x.last_failed_generation,
            last_failed_generation_error=x.last_failed_generation_error) for x in s.sets],
        conditions=[pb.Condition(type=c.type, status=c.status, reason=c.reason, message=c.message,
                                 last_transition_time=c.last_transition_time) for c in s.conditions],
        images=[pb.ImageDetail(image=i.image, phase=_PHASES.get(i.phase, pb.IMAGE_PHASE_UNSPECIFIED),
                               attempts=i.attempts, bytes=i.bytes, last_error=i.last_error,
                               pinned=i.pinned, present=i.present, sets=list(i.sets)) for i in s.images],
        drift_repairs=[pb.DriftRepair(kind=_DRIFT_KINDS.get(r.kind, pb.DriftRepair.KIND_UNSPECIFIED),
                                      target=r.target, time=r.time, repaired=r.repaired, error=r.error,
                                      count=r.count) for r in s.drift_repairs])


