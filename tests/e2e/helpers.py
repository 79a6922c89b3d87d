"""Small helpers for reading Apply events in e2e tests."""

from pinsvc_client import pb

Kind = pb.ImageEvent.Kind
Stage = pb.StageEvent.Stage


def image_events(events, kind) -> list[str]:
    return [e.image.image for e in events if e.WhichOneof("event") == "image" and e.image.kind == kind]


def stages(events) -> list[int]:
    return [e.stage.stage for e in events if e.WhichOneof("event") == "stage"]


def final_status(events) -> pb.NodeStatus:
    assert events and events[-1].WhichOneof("event") == "status", "the stream must end with the node status"
    return events[-1].status


def condition(status: pb.NodeStatus, type: str) -> pb.Condition:
    return next(c for c in status.conditions if c.type == type)


def set_status(status: pb.NodeStatus, name: str) -> pb.PinnedImageSetStatus:
    return next(s for s in status.pinned_image_sets if s.name == name)
