"""What a user sees when things go wrong, against the real CRI-O and registry."""

import grpc

from pinsvc_client import SetSpec
from tests.e2e.conftest import apply
from tests.e2e.helpers import Kind, Stage, condition, final_status, image_events, set_status, stages

DIGEST = "sha256:" + "ab" * 32


def node_images(node) -> list[dict]:
    return node.images_json().get("images", [])


async def test_insufficient_space_pulls_and_writes_nothing(agent_factory, node, workload):
    agent = agent_factory(**{"space-min-free-bytes": str(1 << 60)})
    events, error = await apply(agent, SetSpec("big", 1, (workload["app-a"], workload["app-b"])))
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    message = error.details()
    assert "insufficient space" in message and "needed" in message and "free" in message
    assert "below the minimum free of 1048576.0 TiB" in message
    # 1 MiB shared base counted once + 2 x 256 KiB unique layers (2.5 MiB if counted twice)
    assert "3.0 MiB needed (1.5 MiB compressed x 2)" in message, message
    assert node_images(node) == [], "nothing may be pulled"
    assert not any(node.dropin_dir.iterdir()), "nothing may be written"
    status = final_status(events)
    big = set_status(status, "big")
    assert (big.current_generation, big.last_failed_generation) == (0, 1)
    assert "insufficient space" in big.last_failed_generation_error
    assert condition(status, "PinnedImageSetsDegraded").status == "True"


async def test_bad_input_is_rejected_naming_every_bad_value(agent, node, workload):
    tag = workload["app-a"].split("@")[0] + ":latest"
    short = "busybox@" + DIGEST
    sha512 = workload["app-a"].split("@")[0] + "@sha512:" + "ab" * 64
    events, error = await apply(agent, SetSpec("web", 1, (tag, short, sha512, workload["oci"])),
                                SetSpec("Bad_Name", 1, (workload["oci"],)),
                                SetSpec("web", 2, (workload["oci"],)))
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    message = error.details()
    for value in (tag, short, "sha512", "'Bad_Name'", "set name 'web' appears more than once"):
        assert value in message, value
    assert events == []
    assert node_images(node) == [] and not any(node.dropin_dir.iterdir())
    async with agent.client() as client:
        assert list((await client.status()).pinned_image_sets) == [], "nothing recorded"


async def test_too_many_images_in_a_set_is_rejected(agent, workload):
    repo = workload["app-a"].split("@")[0]
    images = tuple(f"{repo}@sha256:{i:064x}" for i in range(501))
    _, error = await apply(agent, SetSpec("huge", 1, images))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "501 images (at most 500)" in error.details()


async def test_unknown_digest_fails_that_image_and_status_records_it(agent, node, workload):
    missing = workload["app-a"].split("@")[0] + "@" + DIGEST
    events, error = await apply(agent, SetSpec("good", 1, (workload["oci"],)),
                                SetSpec("bad", 4, (workload["app-b"], missing)))
    assert error is not None and error.code() == grpc.StatusCode.NOT_FOUND
    assert missing in error.details()
    assert image_events(events, Kind.FAILED) == [missing]
    status = final_status(events)
    bad, good = set_status(status, "bad"), set_status(status, "good")
    assert (bad.desired_generation, bad.current_generation, bad.last_failed_generation) == (4, 0, 4)
    assert missing in bad.last_failed_generation_error and "manifest unknown" in bad.last_failed_generation_error
    assert (good.current_generation, good.last_failed_generation) == (1, 0)
    detail = {i.image: i for i in status.images}
    assert detail[missing].last_error and not detail[missing].present
    assert workload["oci"] in node.pinned_images(), "the good set is pinned anyway"
    assert workload["app-b"] not in node.pinned_images(), "a failed set pins nothing new"
    assert condition(status, "PinnedImageSetsDegraded").status == "True"
    assert "bad" in condition(status, "PinnedImageSetsDegraded").message


async def test_registry_stopped_midway_retries_then_fails_clearly_and_keeps_old_pins(
        agent, node, registry, workload):
    _, error = await apply(agent, SetSpec("web", 1, (workload["oci"],)))
    assert error is None, error
    images = (workload["oci"], workload["app-a"], workload["app-b"], workload["three-layers"])
    events = []
    try:
        async with agent.client() as client:
            try:
                async for event in client.apply([SetSpec("web", 2, images)], parallelism=1):
                    events.append(event)
                    if event.WhichOneof("event") == "image" and event.image.kind == Kind.PULLED:
                        if registry.running:
                            registry.stop()
                error = None
            except grpc.aio.AioRpcError as e:
                error = e
    finally:
        if not registry.running:
            registry.start()
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE, error
    assert image_events(events, Kind.RETRYING), "transient failures are retried"
    failed = image_events(events, Kind.FAILED)
    assert failed and all(i in error.details() for i in failed)
    assert "connection refused" in error.details().lower() or "connect" in error.details().lower()
    status = final_status(events)
    web = set_status(status, "web")
    assert (web.current_generation, web.last_failed_generation) == (1, 2)
    assert workload["oci"] in node.pinned_images(), "the last good generation stays pinned"
    # Once the registry is back, the same Apply converges.
    _, error = await apply(agent, SetSpec("web", 2, images))
    assert error is None, error
    assert set(images) <= node.pinned_images()


async def test_foreign_later_dropin_is_detected(agent, node, workload):
    foreign = node.dropin_dir / "60-admin.conf"
    foreign.write_text('[crio.image]\npinned_images = ["quay.io/admin/tool@' + DIGEST + '"]\n')
    events, error = await apply(agent, SetSpec("web", 1, (workload["oci"],)))
    assert error is not None and error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert str(foreign) in error.details()
    status = final_status(events)
    assert condition(status, "PinnedImageSetsDegraded").status == "True"
    assert str(foreign) in condition(status, "PinnedImageSetsDegraded").message
    assert not (node.dropin_dir / "50-pinned-images").exists()
    foreign.unlink()


async def test_foreign_file_at_our_path_is_never_overwritten(agent, node, workload):
    ours = node.dropin_dir / "50-pinned-images"
    ours.write_text("# written by the admin\n[crio.image]\npinned_images = []\n")
    _, error = await apply(agent, SetSpec("web", 1, (workload["oci"],)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "adopt" in error.details()
    assert ours.read_text().startswith("# written by the admin")


async def test_bad_existing_dropin_does_not_make_things_worse(agent, node, workload):
    _, error = await apply(agent, SetSpec("web", 1, (workload["oci"],)))
    assert error is None, error
    ours = node.dropin_dir / "50-pinned-images"
    good = ours.read_bytes()
    broken = node.dropin_dir / "40-broken.conf"
    broken.write_text("[crio.image\npinned_images = \n")
    _, error = await apply(agent, SetSpec("web", 2, (workload["oci"], workload["app-a"])))
    assert error is not None and error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert str(broken) in error.details()
    assert ours.read_bytes() == good, "our drop-in is left as it was"
    assert workload["app-a"] not in {d for i in node.images_json()["images"] for d in i.get("repoDigests", [])}, \
        "nothing is pulled for a node whose configuration cannot load"
    assert workload["oci"] in node.pinned_images(), "CRI-O keeps the old pins"
    broken.unlink()
    # A half-written drop-in of our own is replaced by a good one.
    ours.write_bytes(good[: len(good) // 2])
    _, error = await apply(agent, SetSpec("web", 2, (workload["oci"], workload["app-a"])))
    assert error is None, error
    assert {workload["oci"], workload["app-a"]} <= node.pinned_images()


async def test_pins_that_do_not_take_effect_restore_the_previous_dropin(agent_factory, node, workload):
    # A reload that never reaches CRI-O (strategy none): the new list is never read.
    agent = agent_factory(**{"reload-strategy": "none", "verify-timeout-seconds": "1"})
    events, error = await apply(agent, SetSpec("web", 1, (workload["oci"],)))
    assert error is not None and error.code() == grpc.StatusCode.ABORTED
    assert f"{workload['oci']} is present but not pinned" in error.details()
    assert Stage.DROPIN_RESTORED in stages(events)
    assert not (node.dropin_dir / "50-pinned-images").exists(), "the previous state (no drop-in) is back"
    status = final_status(events)
    assert condition(status, "PinnedImageSetsDegraded").status == "True"
    assert set_status(status, "web").last_failed_generation == 1
