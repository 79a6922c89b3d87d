"""Drift against the real CRI-O: pins undone behind the agent's back are found by the periodic
check and repaired toward the last verified pins; no drift means no write and no reload."""

import asyncio
import time

import pytest

from pinsvc_client import SetSpec
from devenv.crio import RELOAD_COMPLETED
from pinsvc.dropin_format import render_dropin
from pinsvc_client import pb
from tests.e2e.conftest import apply
from tests.e2e.helpers import condition

INTERVAL = {"verify-drift-interval-seconds": "0.5"}
Kind = pb.DriftRepair.Kind


@pytest.fixture
def drift_agent(agent_factory):
    return agent_factory(**INTERVAL)


async def pinned_set(agent, node, *images):
    _, error = await apply(agent, SetSpec("web", 1, tuple(images)))
    assert error is None, error
    assert set(images) <= node.pinned_images()
    return node.dropin_dir / "50-pinned-images"


async def wait_for(agent, predicate, timeout=15.0) -> pb.NodeStatus:
    """Polls GetStatus until predicate(status) holds; fails with the last status."""
    deadline = time.monotonic() + timeout
    async with agent.client() as client:
        while True:
            status = await client.status()
            if predicate(status):
                return status
            if time.monotonic() > deadline:
                pytest.fail(f"not reached in {timeout}s; status:\n{status}\nagent log:\n{agent.log()[-4000:]}")
            await asyncio.sleep(0.1)


def reloads_completed(node) -> int:
    return sum(RELOAD_COMPLETED in line for line in node.reload_log_lines())


def repairs(status, kind) -> list[pb.DriftRepair]:
    return [r for r in status.drift_repairs if r.kind == kind]


async def test_removed_image_is_pulled_again_and_pinned(drift_agent, node, workload):
    gone, kept = workload["app-a"], workload["oci"]
    await pinned_set(drift_agent, node, gone, kept)

    node.crictl("rmi", gone)
    assert gone not in node.pinned_images()

    status = await wait_for(drift_agent, lambda s: repairs(s, Kind.IMAGE_REMOVED))
    repair = repairs(status, Kind.IMAGE_REMOVED)[0]
    assert (repair.target, repair.repaired, repair.error, repair.count) == (gone, True, "", 1)
    assert repair.time.endswith("Z")
    assert {gone, kept} <= node.pinned_images(), "crictl sees it present and pinned again"
    image = next(i for i in status.images if i.image == gone)
    assert image.present and image.pinned and image.phase == pb.IMAGE_PHASE_PINNED and not image.last_error
    assert condition(status, "PinnedImageSetsDegraded").status == "False"
    assert "drift: image_removed" in drift_agent.log() and "WARNING" in drift_agent.log()


async def test_hand_edited_dropin_is_rewritten_and_reloaded(drift_agent, node, workload):
    a, b = workload["app-a"], workload["oci"]
    dropin = await pinned_set(drift_agent, node, a, b)
    written = dropin.read_bytes()
    reloads = reloads_completed(node)

    dropin.write_bytes(render_dropin([a]).encode())  # someone dropped an image by hand...
    node.reload()  # ...and reloaded CRI-O: b is no longer pinned
    assert b not in node.pinned_images()

    status = await wait_for(drift_agent, lambda s: repairs(s, Kind.DROPIN_CHANGED))
    repair = repairs(status, Kind.DROPIN_CHANGED)[0]
    assert (repair.target, repair.repaired, repair.error) == (str(dropin), True, "")
    assert dropin.read_bytes() == written
    assert {a, b} <= node.pinned_images()
    assert reloads_completed(node) >= reloads + 2, "ours, then the agent's after rewriting the drop-in"
    assert all(i.pinned for i in status.images)


async def test_removed_dropin_is_written_again(drift_agent, node, workload):
    a = workload["three-layers"]
    dropin = await pinned_set(drift_agent, node, a)
    written = dropin.read_bytes()
    dropin.unlink()

    status = await wait_for(drift_agent, lambda s: repairs(s, Kind.DROPIN_REMOVED))
    assert repairs(status, Kind.DROPIN_REMOVED)[0].repaired
    assert dropin.read_bytes() == written
    assert a in node.pinned_images()


async def test_image_removed_and_dropin_edited_at_once(drift_agent, node, workload):
    a, b = workload["app-a"], workload["app-b"]
    dropin = await pinned_set(drift_agent, node, a, b)
    written = dropin.read_bytes()
    node.crictl("rmi", a)
    dropin.write_bytes(render_dropin([a]).encode())

    status = await wait_for(drift_agent, lambda s: repairs(s, Kind.DROPIN_CHANGED)
                            and repairs(s, Kind.IMAGE_REMOVED))
    assert all(r.repaired for r in status.drift_repairs), status.drift_repairs
    assert dropin.read_bytes() == written
    assert {a, b} <= node.pinned_images()


async def test_no_drift_no_write_no_reload(drift_agent, node, workload):
    dropin = await pinned_set(drift_agent, node, workload["app-a"], workload["oci"])
    before = dropin.stat()
    reloads = len(node.reload_log_lines())

    await asyncio.sleep(3)  # six checks

    after = dropin.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert len(node.reload_log_lines()) == reloads, "no reload may happen"
    async with drift_agent.client() as client:
        status = await client.status()
    assert list(status.drift_repairs) == []
    assert "drift:" not in drift_agent.log()


async def test_foreign_file_is_not_overwritten_degraded_until_fixed(drift_agent, node, workload):
    a = workload["app-a"]
    dropin = await pinned_set(drift_agent, node, a)
    foreign = b"[crio.image]\npinned_images = []\n"
    dropin.write_bytes(foreign)  # not pinsvc's any more (no header): never overwritten

    status = await wait_for(drift_agent, lambda s: any(r.count >= 2 for r in repairs(s, Kind.DROPIN_CHANGED)))
    [repair] = repairs(status, Kind.DROPIN_CHANGED)
    assert not repair.repaired and "not written by pinsvc" in repair.error
    degraded = condition(status, "PinnedImageSetsDegraded")
    assert (degraded.status, degraded.reason) == ("True", "DriftRepairFailed")
    assert dropin.read_bytes() == foreign

    dropin.unlink()  # the operator removes it: the next check writes ours again
    status = await wait_for(drift_agent, lambda s: condition(s, "PinnedImageSetsDegraded").status == "False")
    assert repairs(status, Kind.DROPIN_REMOVED)[-1].repaired
    assert a in node.pinned_images()


async def test_repairs_survive_a_restart_and_drift_off_checks_nothing(agent_factory, node, workload):
    a = workload["oci"]
    first = agent_factory(**INTERVAL)
    await pinned_set(first, node, a)
    node.crictl("rmi", a)
    await wait_for(first, lambda s: repairs(s, Kind.IMAGE_REMOVED))
    first.stop()

    again = agent_factory(**{"state-dir": str(first.workdir / "state"), "verify-drift-interval-seconds": "0"})
    node.crictl("rmi", a)
    await asyncio.sleep(2)
    async with again.client() as client:
        status = await client.status()
    assert [r.target for r in repairs(status, Kind.IMAGE_REMOVED)] == [a], "kept across the restart"
    assert a not in node.pinned_images(), "drift checks off: nothing repaired"
