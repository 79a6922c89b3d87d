"""A real full disk (issue 5): CRI-O's image storage (graphroot) on a 64 MiB tmpfs.

The space check refuses what cannot fit, for the reason it names (free bytes or usage of
that tmpfs, from statvfs of the mountpoint CRI-O reports); with the check off, the pulls
fill the tmpfs: "no space left on device" fails the Apply fast, the queued pulls are
cancelled without an attempt, nothing new is pinned and status says why.

The CRI-O of this module pulls from the session registry; its tmpfs is mounted here and
unmounted at the end even when a test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import time

import grpc
import pytest

from pinsvc_client import SetSpec
from devenv import images as fixture_images
from devenv.crio import Crio, mounts_under
from tests.e2e.conftest import agent_maker, apply, clean_node
from tests.e2e.helpers import Kind, condition, final_status, image_events, set_status

MiB = 1 << 20
TMPFS_BYTES = 64 * MiB
BIG_LAYER = 24 * MiB
"""Six images of one incompressible 24 MiB layer each: two fit on the tmpfs, a third does not."""
BIG_IMAGES = 6
DROPIN = "50-pinned-images"
APPLY_BOUND = 90.0


@contextlib.contextmanager
def mounted_tmpfs(point, size: int):
    """A tmpfs of `size` bytes at `point`, unmounted on exit even when the test failed."""
    point.mkdir(parents=True)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"tmpfs", os.fsencode(point), b"tmpfs", 0, f"size={size},mode=0700".encode()) != 0:
        raise OSError(ctypes.get_errno(), f"mount -t tmpfs {point}: {os.strerror(ctypes.get_errno())}")
    try:
        yield point
    finally:
        libc.umount2(os.fsencode(point), 2)  # MNT_DETACH: even with CRI-O's mounts below it
        assert point not in mounts_under(point), f"{point} is still mounted"


@pytest.fixture(scope="module")
def tmpfs(peers_root):
    with mounted_tmpfs(peers_root / "diskfull-storage", TMPFS_BYTES) as point:
        yield point


@pytest.fixture(scope="module")
def full_crio(peers_root, registry, tmpfs):
    node = Crio(peers_root / "diskfull-crio", registries=[registry.host], storage_dir=tmpfs / "storage")
    try:
        node.start()
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module")
def big(registry) -> list[str]:
    """References of the big images, pushed once."""
    images = [fixture_images.build_image(f"pinsvc-test/big-{i}", [fixture_images.make_layer(f"diskfull/{i}", BIG_LAYER)])
              for i in range(BIG_IMAGES)]
    return asyncio.run(fixture_images.push_many(registry.host, images))


@pytest.fixture
def fullnode(full_crio):
    clean_node(full_crio)
    return full_crio


@pytest.fixture
def make_agent(tmp_path, fullnode, registry):
    yield from agent_maker(tmp_path, fullnode, registry)


def dropin_bytes(node: Crio) -> bytes | None:
    path = node.dropin_dir / DROPIN
    return path.read_bytes() if path.exists() else None


def state_pinned(agent) -> list[str]:
    return json.loads((agent.workdir / "state" / "state.json").read_text())["pinned"]


def node_images(node: Crio) -> set[str]:
    return {d for i in node.images_json().get("images") or [] for d in i.get("repoDigests") or []}


def free_bytes(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


async def pin_small(agent, node, image: str) -> tuple[bytes, list[str], set[str]]:
    """Generation 1 pins one small image; returns the drop-in, the state's pins and the images."""
    events, error = await asyncio.wait_for(apply(agent, SetSpec("web", 1, (image,))), APPLY_BOUND)
    assert error is None, error
    assert image in node.pinned_images()
    return dropin_bytes(node), state_pinned(agent), node_images(node)


def assert_untouched(agent, node, before: tuple[bytes, list[str], set[str]]) -> None:
    dropin, pinned, images = before
    assert dropin_bytes(node) == dropin, "the drop-in is untouched"
    assert state_pinned(agent) == pinned, "the state's pins are untouched"
    assert node_images(node) == images, "no image was added"
    assert not [p for p in node.dropin_dir.iterdir() if p.name != DROPIN], "no other file in the drop-in directory"


@pytest.mark.timeout(180)
async def test_space_check_refuses_what_does_not_fit_on_the_small_disk_for_the_reason_it_names(
        make_agent, fullnode, tmpfs, workload, big):
    # The defaults (16 GiB must stay free) would refuse anything on 64 MiB: scaled down to
    # the tmpfs, 8 MiB must stay free and usage may reach 60 %.
    agent = make_agent(**{"space-min-free-bytes": str(8 * MiB), "space-max-usage-percent": "60"})
    before = await pin_small(agent, fullnode, workload["oci"])  # 1 MiB needed: fits

    async with agent.client() as client:
        plan = await client.check_space([workload["oci"], *big[:3]])
    assert plan.mountpoint.startswith(str(tmpfs)), f"the space of CRI-O's storage, not of /: {plan.mountpoint}"
    assert plan.total_bytes == TMPFS_BYTES
    assert abs(plan.free_bytes - free_bytes(fullnode.storage_root)) < MiB
    assert not plan.fits

    # Three big images need 2 x 72 MiB: more than is free at all.
    events, error = await asyncio.wait_for(apply(agent, SetSpec("web", 2, (workload["oci"], *big[:3]))), APPLY_BOUND)
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    message = error.details()
    assert "insufficient space" in message and str(tmpfs) in message, message
    assert "144.0 MiB needed (72.0 MiB compressed x 2)" in message, message
    assert "below the minimum free of 8.0 MiB" in message, message
    assert not image_events(events, Kind.PULLING), "nothing is pulled"
    assert_untouched(agent, fullnode, before)
    web = set_status(final_status(events), "web")
    assert (web.current_generation, web.last_failed_generation) == (1, 2)
    assert "insufficient space" in web.last_failed_generation_error

    # One big image (48 MiB) would leave more than 8 MiB free, but push usage past 60 %.
    events, error = await asyncio.wait_for(apply(agent, SetSpec("web", 3, (workload["oci"], big[0]))), APPLY_BOUND)
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    message = error.details()
    assert "48.0 MiB needed (24.0 MiB compressed x 2)" in message and "above the threshold of 60%" in message, message
    assert "below the minimum free" not in message
    assert not image_events(events, Kind.PULLING)
    assert_untouched(agent, fullnode, before)
    status = final_status(events)
    degraded = condition(status, "PinnedImageSetsDegraded")
    assert degraded.status == "True" and "insufficient space" in degraded.message
    print(f"space check on the {TMPFS_BYTES // MiB} MiB tmpfs: {plan.verdict}; refused: {message}")


@pytest.mark.timeout(180)
async def test_a_disk_that_fills_during_the_pulls_fails_fast_cancels_the_queue_and_pins_nothing(
        make_agent, fullnode, tmpfs, workload, big):
    agent = make_agent(**{"space-enabled": False})
    before = await pin_small(agent, fullnode, workload["oci"])
    wanted = (workload["oci"], *big)
    t0 = time.monotonic()
    events, error = await asyncio.wait_for(apply(agent, SetSpec("web", 2, wanted), parallelism=2), APPLY_BOUND)
    took = time.monotonic() - t0
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    assert "no space left on device" in error.details(), error.details()

    pulled = set(image_events(events, Kind.PULLED))
    failed = {e.image.image: e.image for e in events
              if e.WhichOneof("event") == "image" and e.image.kind == Kind.FAILED}
    cancelled = {e.image.image: e.image for e in events
                 if e.WhichOneof("event") == "image" and e.image.kind == Kind.CANCELLED}
    attempted = set(image_events(events, Kind.PULLING))
    assert len(pulled) <= 2, f"two big images fit on {TMPFS_BYTES // MiB} MiB, not more: {len(pulled)}"
    assert failed and all("no space left on device" in f.reason for f in failed.values()), failed
    assert all(f.attempt == 1 for f in failed.values()), "a full disk is not retried"
    assert not image_events(events, Kind.RETRYING)
    assert set(big) == pulled | set(failed) | set(cancelled), "every big image has an outcome"
    never_tried = set(cancelled) - attempted
    assert len(never_tried) >= 2, f"queued pulls are cancelled, not attempted: {never_tried}"
    full = next(iter(failed))
    for image, event in cancelled.items():
        assert f"cancelled: no space left on device while pulling {full}" in event.reason or \
            "no space left on device" in event.reason, event.reason

    # Nothing new is pinned: the drop-in and the state's pins are those of generation 1.
    dropin, pinned, _ = before
    assert dropin_bytes(fullnode) == dropin and state_pinned(agent) == pinned
    assert fullnode.pinned_images() == {workload["oci"]}
    assert not [p for p in fullnode.dropin_dir.iterdir() if p.name != DROPIN]
    status = final_status(events)
    web = set_status(status, "web")
    assert (web.desired_generation, web.current_generation, web.last_failed_generation) == (2, 1, 2)
    assert "no space left on device" in web.last_failed_generation_error
    degraded = condition(status, "PinnedImageSetsDegraded")
    assert degraded.status == "True" and "no space left on device" in degraded.message
    detail = {i.image: i for i in status.images}
    assert all("no space left on device" in detail[i].last_error for i in (*failed, *cancelled))
    print(f"disk full after {len(pulled)} big images: failed in {took:.2f}s; failed {len(failed)} "
          f"({next(iter(failed.values())).reason}), cancelled {len(cancelled)} of which never attempted "
          f"{len(never_tried)}; tmpfs free after: {free_bytes(fullnode.storage_root) / MiB:.1f} MiB")

    # Space freed (the big images removed): the node works again.
    clean_node(fullnode)
    events, error = await asyncio.wait_for(apply(agent, SetSpec("web", 3, (workload["oci"], big[0]))), APPLY_BOUND)
    assert error is None, error
    assert {workload["oci"], big[0]} <= fullnode.pinned_images()


@pytest.mark.timeout(120)
async def test_a_full_disk_under_the_agents_state_fails_the_apply_clearly_and_changes_nothing(
        make_agent, fullnode, workload, tmp_path):
    """On a node the agent's state (/var/lib/pinsvc) shares the disk that fills up."""
    with mounted_tmpfs(tmp_path / "state-fs", 1 * MiB) as statefs:
        agent = make_agent(**{"state-dir": str(statefs / "state"), "space-enabled": False})
        events, error = await asyncio.wait_for(apply(agent, SetSpec("web", 1, (workload["oci"],))), APPLY_BOUND)
        assert error is None, error
        before = dropin_bytes(fullnode), node_images(fullnode)
        filler = statefs / "filler"
        with open(filler, "wb", buffering=0) as f:  # fill the disk
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * (64 << 10))
        events, error = await asyncio.wait_for(
            apply(agent, SetSpec("web", 2, (workload["oci"], workload["app-a"]))), APPLY_BOUND)
        assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        assert "state file" in error.details() and "no space left on device" in error.details(), error.details()
        assert (dropin_bytes(fullnode), node_images(fullnode)) == before, "nothing pulled or written"
        async with agent.client() as client:  # status (not persisted) says why
            status = await client.status()
        degraded = condition(status, "PinnedImageSetsDegraded")
        assert degraded.status == "True" and "no space left on device" in degraded.message
        assert condition(status, "PinnedImageSetsProgressing").status == "False"
        assert set_status(status, "web").current_generation == 1
        print(f"state dir on a full disk: {error.code().name}: {error.details()}")
        filler.unlink()  # space again: the same Apply converges
        events, error = await asyncio.wait_for(
            apply(agent, SetSpec("web", 2, (workload["oci"], workload["app-a"]))), APPLY_BOUND)
        assert error is None, error
        assert {workload["oci"], workload["app-a"]} <= fullnode.pinned_images()
        agent.stop()
