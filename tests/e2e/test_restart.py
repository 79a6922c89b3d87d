"""An agent killed in the middle of an Apply comes back with its state and converges
without pulling again what is already present."""

import grpc

from pinsvc_client import SetSpec
from tests.e2e.conftest import apply
from tests.e2e.helpers import Kind, final_status, image_events, set_status


async def test_agent_killed_during_apply_restarts_and_converges(agent, node, workload):
    images = (workload["app-a"], workload["app-b"], workload["oci"], workload["three-layers"],
              workload["multiarch"])
    spec = SetSpec("web", 7, images)
    pulled_before_kill = []
    async with agent.client() as client:
        try:
            async for event in client.apply([spec], parallelism=1):
                if event.WhichOneof("event") == "image" and event.image.kind == Kind.PULLED:
                    pulled_before_kill.append(event.image.image)
                    agent.kill()
        except grpc.aio.AioRpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE
    assert pulled_before_kill, "the agent must die after at least one pull"
    assert not (node.dropin_dir / "50-pinned-images").exists(), "nothing pinned before every image is there"

    agent.start()
    async with agent.client() as client:
        status = await client.status()
    web = set_status(status, "web")
    assert (web.desired_generation, web.current_generation) == (7, 0), "the restarted agent remembers the request"

    events, error = await apply(agent, spec)
    assert error is None, error
    again = set(image_events(events, Kind.PULLED))
    assert not again & set(pulled_before_kill), "images present before the kill are not pulled again"
    assert set(pulled_before_kill) <= set(image_events(events, Kind.ALREADY_PRESENT))
    assert set(images) <= node.pinned_images()
    assert set_status(final_status(events), "web").current_generation == 7
