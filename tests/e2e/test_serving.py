"""How the agent serves: unix socket mode, health, reflection, and pull-secret credentials."""

import asyncio
import base64
import json
import stat

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from pinsvc_client import SetSpec
from pinsvc.devenv import images as fixture_images
from tests.e2e.conftest import AUTH_PASSWORD, AUTH_USER, apply


async def test_socket_is_private_and_health_and_reflection_are_served(agent):
    assert stat.S_IMODE(agent.socket.stat().st_mode) == 0o600
    async with grpc.aio.insecure_channel(f"unix:{agent.socket}") as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="pinsvc.v1.PinService"))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        async for response in stream:
            names = {s.name for s in response.list_services_response.service}
            break
    assert {"pinsvc.v1.PinService", "grpc.health.v1.Health"} <= names


@pytest.fixture(scope="module")
def private_image(auth_registry) -> str:
    image = fixture_images.build_image("team/private", [fixture_images.make_layer("private", 64 << 10)])
    (ref,) = asyncio.run(fixture_images.push_many(auth_registry.host, [image], auth=(AUTH_USER, AUTH_PASSWORD)))
    return ref


async def test_pull_secret_credentials_reach_the_runtime_and_never_leak(agent_factory, node, auth_registry,
                                                                        private_image, tmp_path):
    spec = SetSpec("private", 1, (private_image,))
    agent = agent_factory(**{"registry-insecure": auth_registry.host})
    _, error = await apply(agent, spec)
    assert error is not None and error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert private_image in error.details() and auth_registry.host in error.details()

    secret = tmp_path / "config.json"
    token = base64.b64encode(f"{AUTH_USER}:{AUTH_PASSWORD}".encode()).decode()
    secret.write_text(json.dumps({"auths": {auth_registry.host: {"auth": token}}}))
    agent = agent_factory(**{"registry-insecure": auth_registry.host, "registry-pull-secret": str(secret),
                             "log-level": "debug"})
    events, error = await apply(agent, spec)
    assert error is None, error
    assert private_image in node.pinned_images()
    async with agent.client() as client:
        status = await client.status()
    outputs = [agent.log(), str(events), str(status), (agent.workdir / "state" / "state.json").read_text()]
    for text in outputs:
        assert AUTH_PASSWORD not in text and token not in text
