"""Small helpers for e2e tests: reading Apply events, a free loopback port."""

import socket

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


def free_port() -> int:
    """A loopback TCP port free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
