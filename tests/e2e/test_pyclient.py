"""The Python client library (`pinsvc_client`) against a real agent, CRI-O and registry: over
the unix socket and over TCP with mutual TLS, async and sync, checked by crictl."""

import asyncio

import grpc
import pytest
from pinsvc_client import (
    ConfigError, InvalidArgument, PinError, ResourceExhausted, SetSpec, SyncPinClient, Unavailable, connect, pb)

from tests.e2e.helpers import Kind, Stage, condition, set_status
from tests.e2e.test_mtls import pki, tcp_agent  # noqa: F401  (pki is a fixture)


def kinds(events) -> list[str]:
    return [e.WhichOneof("event") for e in events]


async def test_unix_socket_health_space_apply_with_a_callback_and_status(agent, node, workload):
    images = (workload["app-a"], workload["oci"])
    events: list[pb.ApplyEvent] = []
    async with connect(agent.endpoint, node="e2e-node", timeout=30) as client:
        assert await client.health() == "SERVING"
        plan = await client.check_space(images)
        assert plan.fits and plan.required_bytes > 0 and plan.free_bytes > plan.required_bytes
        assert sorted(i.image for i in plan.images) == sorted(images) and not any(i.present for i in plan.images)

        status = await client.apply([SetSpec("web", 1, images)], on_event=events.append)
        assert set_status(status, "web").current_generation == 1
        assert kinds(events)[-1] == "status" and events[-1].status == status
        assert sorted(e.image.image for e in events if kinds([e]) == ["image"] and e.image.kind == Kind.PULLED) \
            == sorted(images)
        assert Stage.PINS_VERIFIED in [e.stage.stage for e in events if e.HasField("stage")]

        again = await client.status()
        assert again.node == "e2e-node" and set_status(again, "web").current_generation == 1
        assert {i.image for i in again.images if i.pinned} == set(images)
        assert all(i.present for i in (await client.check_space(images)).images)
    assert set(images) <= node.pinned_images()  # crictl's view


async def test_apply_as_an_async_iterator(agent, node, workload):
    image = workload["three-layers"]
    async with connect(agent.endpoint) as client:
        call = client.apply([SetSpec("iter", 1, (image,))], parallelism=1)
        events = [event async for event in call]
    assert kinds(events)[-1] == "status" and call.status == events[-1].status
    pulled = [e.image for e in events if e.HasField("image") and e.image.kind == Kind.PULLED]
    assert [p.image for p in pulled] == [image] and pulled[0].bytes > 0
    assert image in node.pinned_images()


async def test_errors_carry_the_grpc_code_and_name_the_value(agent_factory, node, workload):
    agent = agent_factory()
    tag = workload["app-a"].split("@")[0] + ":latest"
    async with connect(agent.endpoint) as client:
        with pytest.raises(InvalidArgument) as bad:
            await client.check_space([tag])
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and tag in bad.value.details()
        with pytest.raises(InvalidArgument) as bad_apply:
            await client.apply([SetSpec("web", 1, (tag, workload["oci"]))])
        assert tag in str(bad_apply.value) and bad_apply.value.status is None
    assert not any(node.dropin_dir.iterdir()) and node.pinned_images() == set()

    full = agent_factory(**{"space-min-free-bytes": str(1 << 60)})
    async with connect(full.endpoint) as client:
        with pytest.raises(ResourceExhausted) as no_space:
            await client.apply([SetSpec("big", 1, (workload["app-a"],))])
    assert "insufficient space" in no_space.value.details()
    failed = set_status(no_space.value.status, "big")  # the final status streamed before the error
    assert (failed.current_generation, failed.last_failed_generation) == (0, 1)
    assert condition(no_space.value.status, "PinnedImageSetsDegraded").status == "True"

    full.stop()
    async with connect(full.endpoint, timeout=5) as client:
        with pytest.raises(Unavailable) as down:
            await client.status()
    assert down.value.retryable and isinstance(down.value, grpc.aio.AioRpcError)


async def test_mtls_over_tcp(agent_factory, node, workload, pki):  # noqa: F811
    agent, endpoint = tcp_agent(agent_factory, pki)
    image = workload["oci"]
    async with connect(endpoint, tls=pki.tls(), timeout=10) as client:
        assert (await client.status()).node == "e2e-node"
        assert await client.health() == "SERVING"
        assert (await client.check_space([image])).fits
        status = await client.apply([SetSpec("over-mtls", 1, (image,))])
    assert set_status(status, "over-mtls").current_generation == 1 and image in node.pinned_images()

    with pytest.raises(ConfigError, match="TCP needs tls"):
        connect(endpoint)
    async with connect(endpoint, insecure=True, timeout=10) as client:  # plaintext to the mTLS port
        with pytest.raises(Unavailable):
            await client.status()
    async with connect(endpoint, tls=pki.tls(pki.expired_client), timeout=10) as client:
        with pytest.raises(Unavailable):
            await client.status()

    node_agent, node_endpoint = tcp_agent(agent_factory, pki, **pki.server_flags(pki.node_server))
    async with connect(node_endpoint, tls=pki.tls(), server_name="node-a.pinsvc.test", timeout=10) as client:
        assert (await client.status()).node == "e2e-node"


async def test_stage_rpcs_pin_step_by_step(agent, node, workload):
    image = workload["app-b"]
    async with connect(agent.endpoint, timeout=60) as client:
        events = [e async for e in client.pull_images([image], parallelism=1)]
        assert [e.kind for e in events if e.image == image][-1] == Kind.PULLED
        written = await client.write_dropin([image])
        assert written.changed and not written.removed and image in (node.dropin_dir / "50-pinned-images").read_text()
        assert (await client.reload_runtime()).strategy == "signal"
        verified = await client.verify_pins([image], wait_seconds=10)
        assert verified.ok and [(c.image, c.pinned) for c in verified.images] == [(image, True)]
        assert (await client.write_dropin([])).removed
        await client.reload_runtime()
        assert (await client.verify_pins(unpinned=[image], wait_seconds=10)).ok
    assert image not in node.pinned_images()


def test_the_sync_client_from_plain_code(agent, node, workload):
    images = (workload["app-a"],)
    with pytest.raises(RuntimeError):  # plain sync code: no event loop runs in this thread
        asyncio.get_running_loop()
    seen: list[pb.ApplyEvent] = []
    with SyncPinClient(agent.endpoint, timeout=30) as client:
        assert client.health() == "SERVING"
        assert client.check_space(images).fits
        status = client.apply([SetSpec("sync", 1, images)], on_event=seen.append)
        assert set_status(status, "sync").current_generation == 1 and kinds(seen)[-1] == "status"
        events = list(client.apply_events([SetSpec("sync", 2, images)]))
        assert kinds(events)[-1] == "status"
        assert [e.image.kind for e in events if e.HasField("image")] == [Kind.ALREADY_PRESENT]
        assert set_status(client.status(), "sync").current_generation == 2
        with pytest.raises(InvalidArgument, match="bad name"):
            client.apply([SetSpec("bad name", 1, images)])
        for _ in client.apply_events([SetSpec("sync", 2, images)]):
            break  # leaving early cancels the stream; the client goes on working
        assert client.health() == "SERVING"
    assert set(images) <= node.pinned_images()
    with pytest.raises(RuntimeError, match="closed"):
        client.status()
    with pytest.raises(PinError):  # the loop thread is per client: a new one works after a close
        with SyncPinClient(agent.endpoint.replace("agent.sock", "nothing.sock"), timeout=5) as other:
            other.status()
