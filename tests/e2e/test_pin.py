"""Pinning through the agent against the real CRI-O and registry, checked by crictl."""

from pinsvc.client import SetSpec
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
