"""How the agent serves: unix socket mode, health, reflection. (Pull-secret credentials: test_credentials.py.)"""

import stat

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


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
