"""Pinning through the agent against the real CRI-O and registry, checked by crictl."""

import asyncio

import grpc
import pytest

from pinsvc_client import SetSpec
from tests.e2e.conftest import apply
from tests.e2e.helpers import Kind, Stage, condition, final_status, image_events, set_status, stages


async def test_pin_a_set(agent, node, workload):
    images = [workload["app-a"], workload["app-b"], workload["oci"], workload["multiarch"]]
    events, error = await apply(agent, SetSpec("web", 1, tuple(images)))
    assert error is None, error
    assert sorted(image_events(events, Kind.PULLED)) == sorted(images)
    assert stages(events) == [Stage.SPACE_CHECKED, Stage.IMAGES_READY, Stage.DROPIN_WRITTEN,
                              Stage.RUNTIME_RELOADED, Stage.PINS_VERIFIED]
    status = final_status(events)
    web = set_status(status, "web")
    assert (web.desired_generation, web.current_generation, web.last_failed_generation) == (1, 1, 0)
    assert condition(status, "PinnedImageSetsDegraded").status == "False"
    assert condition(status, "PinnedImageSetsProgressing").status == "False"
    assert all(i.pinned for i in status.images) and len(status.images) == 4
    # Independent check with crictl.
    assert set(images) <= node.pinned_images()
    dropin = (node.dropin_dir / "50-pinned-images").read_text()
    assert dropin.startswith("# Managed by pinsvc")
    assert all(i in dropin for i in images)


async def test_reapply_writes_and_reloads_nothing(agent, node, workload):
    spec = SetSpec("web", 1, (workload["app-a"], workload["oci"]))
    _, error = await apply(agent, spec)
    assert error is None, error
    dropin = node.dropin_dir / "50-pinned-images"
    before = dropin.stat()
    reloads = len(node.reload_log_lines())

    events, error = await apply(agent, spec)
    assert error is None, error
    assert sorted(image_events(events, Kind.ALREADY_PRESENT)) == sorted(spec.images)
    assert not image_events(events, Kind.PULLED)
    assert stages(events) == [Stage.IMAGES_READY, Stage.DROPIN_UNCHANGED, Stage.PINS_VERIFIED]
    after = dropin.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert len(node.reload_log_lines()) == reloads, "no reload may happen"


async def test_changing_a_set_pins_the_new_and_unpins_the_old(agent, node, workload):
    old, kept, new = workload["app-a"], workload["oci"], workload["three-layers"]
    _, error = await apply(agent, SetSpec("web", 1, (old, kept)))
    assert error is None, error
    events, error = await apply(agent, SetSpec("web", 2, (kept, new)))
    assert error is None, error
    pinned = node.pinned_images()
    assert {kept, new} <= pinned and old not in pinned
    present = {d for i in node.images_json()["images"] for d in i.get("repoDigests", [])}
    assert old in present, "unpinning never removes the image; kubelet GC does that"
    status = final_status(events)
    assert set_status(status, "web").current_generation == 2


async def test_removing_every_set_removes_the_dropin_and_every_pin(agent, node, workload):
    _, error = await apply(agent, SetSpec("web", 1, (workload["app-a"],)), SetSpec("db", 3, (workload["oci"],)))
    assert error is None, error
    assert {workload["app-a"], workload["oci"]} <= node.pinned_images()
    events, error = await apply(agent)
    assert error is None, error
    assert not (node.dropin_dir / "50-pinned-images").exists()
    assert not ({workload["app-a"], workload["oci"]} & node.pinned_images())
    assert Stage.DROPIN_WRITTEN in stages(events) and Stage.RUNTIME_RELOADED in stages(events)
    assert list(final_status(events).pinned_image_sets) == []


async def test_two_sets_share_images_and_the_union_is_pinned(agent, node, workload):
    a, b, shared = workload["app-a"], workload["app-b"], workload["oci"]
    events, error = await apply(agent, SetSpec("one", 1, (a, shared, shared)), SetSpec("two", 1, (b, shared)))
    assert error is None, error
    assert sorted(image_events(events, Kind.PULLED)) == sorted([a, b, shared]), "each image pulled once"
    assert {a, b, shared} <= node.pinned_images()
    detail = {i.image: i for i in final_status(events).images}
    assert sorted(detail[shared].sets) == ["one", "two"]


async def test_a_newer_apply_cancels_the_one_in_flight(agent, node, registry, workload):
    registry.pause()  # the first Apply hangs on the registry
    try:
        async with agent.client() as client:
            first = asyncio.ensure_future(_drain(client.apply([SetSpec("web", 1, (workload["app-a"],))])))
            await asyncio.sleep(1.0)
            assert not first.done()
            second = await _drain(client.apply([]))
            with pytest.raises(grpc.aio.AioRpcError) as superseded:
                await first
    finally:
        registry.resume()
    assert superseded.value.code() == grpc.StatusCode.ABORTED
    assert "superseded" in superseded.value.details()
    status = final_status(second)
    assert list(status.pinned_image_sets) == []
    assert workload["app-a"] not in node.pinned_images()


async def _drain(stream) -> list:
    return [event async for event in stream]
