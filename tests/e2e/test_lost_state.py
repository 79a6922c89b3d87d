"""An agent whose state directory was wiped keeps the pins of the drop-in it finds until an
Apply succeeds for every set, against the real CRI-O and registry."""

import shutil
import tomllib

import grpc

from pinsvc_client import SetSpec
from tests.e2e.conftest import apply
from tests.e2e.helpers import condition, final_status

DIGEST = "sha256:" + "ab" * 32
WARNING = "state missing; keeping 2 pins from"


def dropin_pins(node) -> list[str]:
    doc = tomllib.loads((node.dropin_dir / "50-pinned-images").read_text())
    return doc["crio"]["image"]["pinned_images"]


async def test_wiped_state_keeps_the_dropins_pins_until_an_apply_succeeds(agent, node, workload):
    old = sorted((workload["app-a"], workload["oci"]))
    _, error = await apply(agent, SetSpec("web", 1, tuple(old)))
    assert error is None, error
    assert dropin_pins(node) == old and set(old) <= node.pinned_images()

    agent.stop()
    shutil.rmtree(agent.workdir / "state")
    agent.start()
    assert agent.log().count(WARNING) == 1, agent.log()
    async with agent.client() as client:
        status = await client.status()
    kept = {i.image: i for i in status.images}
    assert set(old) <= set(kept) and all(kept[i].pinned and not kept[i].sets for i in old)

    agent.stop()  # a restart before the next Apply: the inherited pins were recorded
    agent.start()
    assert agent.log().count(WARNING) == 1, "adopted once, then read from the state"

    missing = workload["app-b"].split("@")[0] + "@" + DIGEST
    events, error = await apply(agent, SetSpec("other", 1, (workload["app-b"], missing)))
    assert error is not None and error.code() == grpc.StatusCode.NOT_FOUND, error
    assert dropin_pins(node) == old, "a failed Apply keeps the pins it found"
    pinned = node.pinned_images()
    assert set(old) <= pinned and workload["app-b"] not in pinned
    degraded = condition(final_status(events), "PinnedImageSetsDegraded")
    assert degraded.status == "True" and "keeping the 2 pins inherited" in degraded.message

    agent.stop()  # the state now records the set "other": nothing to adopt, the pins are kept
    agent.start()
    _, error = await apply(agent, SetSpec("other", 2, (workload["three-layers"], missing)))
    assert error is not None and error.code() == grpc.StatusCode.NOT_FOUND, error
    assert dropin_pins(node) == old and set(old) <= node.pinned_images()

    _, error = await apply(agent, SetSpec("other", 3, (workload["app-b"],)))
    assert error is None, error
    assert dropin_pins(node) == [workload["app-b"]], "a full success replaces them exactly"
    pinned = node.pinned_images()
    assert workload["app-b"] in pinned and not set(old) & pinned
    async with agent.client() as client:
        status = await client.status()
    assert {i.image for i in status.images} == {workload["app-b"]}
    assert condition(status, "PinnedImageSetsDegraded").status == "False"


async def test_foreign_dropin_is_not_adopted(agent, node, workload):
    ours = node.dropin_dir / "50-pinned-images"
    ours.write_text(f'# written by the admin\n[crio.image]\npinned_images = ["{workload["oci"]}"]\n')
    agent.stop()
    agent.start()
    assert "state missing" not in agent.log()
    async with agent.client() as client:
        status = await client.status()
    assert list(status.images) == []
