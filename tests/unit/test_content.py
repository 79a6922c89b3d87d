"""The coordinator's content rules (pinsvc/coordinator/content.py): generations of sets
written without one, and what keeps a node from its desired content."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2
from pinsvc_client import PinError, SetSpec, Unavailable, pb
from pinsvc_client.errors import DETAILS_KEY

from pinsvc.coordinator import content
from pinsvc.coordinator.objects import PinnedImageSet
from pinsvc.coordinator.record import cause

A, B, C = ("r.io/x@sha256:" + c * 64 for c in "abc")


def image_set(images, generation=None, name="s") -> PinnedImageSet:
    return PinnedImageSet(name, generation, "", {}, tuple(images), "test")


def status(*sets, pinned=True) -> pb.NodeStatus:
    """sets: (name, desired, current, images[, failed]) as the agent reports them."""
    out = pb.NodeStatus()
    members: dict[str, list[str]] = {}
    for name, desired, current, images, *failed in sets:
        out.pinned_image_sets.add(name=name, desired_generation=desired, current_generation=current,
                                  last_failed_generation=failed[0] if failed else 0,
                                  last_failed_generation_error="boom" if failed else "")
        for image in images:
            members.setdefault(image, []).append(name)
    for image, names in members.items():
        out.images.add(image=image, sets=names, pinned=pinned, present=pinned)
    return out


def test_a_set_without_generation_is_1_on_a_node_that_never_saw_it():
    assert content.specs([image_set([A])], status()) == [SetSpec("s", 1, (A,))]
    assert content.specs([image_set([A])], None) == [SetSpec("s", 1, (A,))]


def test_the_same_content_keeps_the_agents_generation_and_other_content_is_the_next():
    reported = status(("s", 4, 4, [A, B]))
    assert content.specs([image_set([B, A])], reported)[0].generation == 4, "order does not matter"
    assert content.specs([image_set([A, C])], reported)[0].generation == 5
    assert content.specs([image_set([A])], reported)[0].generation == 5


def test_a_failed_generation_is_retried_as_is_and_an_edit_moves_past_it():
    reported = status(("s", 2, 1, [A, C], 2))
    assert content.specs([image_set([A, C])], reported)[0].generation == 2
    assert content.specs([image_set([A])], reported)[0].generation == 3


def test_a_generation_from_the_api_server_is_kept():
    assert content.specs([image_set([A], generation=7)], status(("s", 9, 9, [B])))[0].generation == 7


def test_a_node_at_the_content_has_no_gaps():
    wanted = [SetSpec("s", 2, (A, B))]
    assert content.gaps(wanted, status(("s", 2, 2, [A, B]))) == []


def test_gaps_name_missing_stale_unwanted_failed_and_unpinned_sets():
    wanted = [SetSpec("s", 2, (A, B))]
    assert content.gaps(wanted, status(("other", 1, 1, [A]))) == ["s: missing", "other: pinned but not wanted"]
    (stale,) = content.gaps(wanted, status(("s", 2, 2, [A, C])))
    assert stale.startswith("s: stale: ") and f"{B} missing" in stale and f"{C} not wanted" in stale
    (older,) = content.gaps(wanted, status(("s", 1, 1, [A, B])))
    assert "generation 1" in older and "2" in older
    assert content.gaps(wanted, status(("s", 2, 1, [A, B], 2))) == ["s: generation 2 failed: boom"]
    assert content.gaps(wanted, status(("s", 2, 1, [A, B]))) == ["s: generation 2 not pinned yet"]
    (unpinned,) = content.gaps(wanted, status(("s", 2, 2, [A, B]), pinned=False))
    assert unpinned == f"s: {A}, {B} not pinned by the runtime"


def test_same_generation_other_images_is_not_current():
    """A hand-edited dump keeps metadata.generation: the numbers match, the content not."""
    assert content.gaps([SetSpec("s", 1, (B,))], status(("s", 1, 1, [A])))


def test_long_lists_are_shortened():
    images = [f"r.io/x@sha256:{i:064x}" for i in range(10)]
    (gap,) = content.gaps([SetSpec("s", 1, tuple(images))], status(("s", 1, 1, [])))
    assert "and 7 more missing" in gap


def _with_reason(cls, code, reason: str) -> PinError:
    details = status_pb2.Status(code=code.value[0], message="m")
    details.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain="pinsvc.io"))
    return cls(code, "m", trailing_metadata=((DETAILS_KEY, details.SerializeToString()),))


def test_only_an_agent_that_does_not_answer_is_unavailable():
    assert cause(Unavailable(grpc.StatusCode.UNAVAILABLE, "connection refused")) == "AgentUnavailable"
    registry = _with_reason(Unavailable, grpc.StatusCode.UNAVAILABLE, "REGISTRY")
    assert not registry.retryable and registry.reason == "REGISTRY"
    assert cause(registry) == "RegistryUnavailable"
    assert cause(_with_reason(Unavailable, grpc.StatusCode.UNAVAILABLE, "RUNTIME_UNAVAILABLE")) == "RuntimeUnavailable"
    assert cause(_with_reason(PinError, grpc.StatusCode.NOT_FOUND, "NOT_FOUND")) == "ImageNotFound"
    assert cause(_with_reason(PinError, grpc.StatusCode.PERMISSION_DENIED, "UNAUTHORIZED")) == "Unauthorized"
    assert cause(_with_reason(PinError, grpc.StatusCode.RESOURCE_EXHAUSTED, "INSUFFICIENT_SPACE")) == "InsufficientSpace"
    assert cause(_with_reason(PinError, grpc.StatusCode.RESOURCE_EXHAUSTED, "NO_SPACE")) == "NoSpaceLeft"
    assert cause(_with_reason(PinError, grpc.StatusCode.DEADLINE_EXCEEDED, "TIMEOUT")) == "PrefetchFailed"
    assert cause(PinError(grpc.StatusCode.NOT_FOUND, "an agent without reasons")) == "ImageNotFound"
